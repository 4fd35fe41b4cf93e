"""Model selection over epochs (never on the test split), seed aggregation, JSON and Markdown output.

Numbers are percentages in results (top-1 accuracy x 100), as the field reports them.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from sarmae_jax.runtime import paths


def summarise_curves(curves: dict[str, Sequence[float]]) -> dict[str, Any]:
    """Per-epoch accuracy curves (fractions) -> the reported numbers (percent).

    `test_last`: test accuracy after the last epoch (the headline number).
    With a "val" curve: `best_val_epoch` (1-based, first of ties), `val_best` and `test_at_best_val`,
    the test accuracy of that epoch. The test curve never chooses anything.
    """
    test = list(curves["test"])
    out: dict[str, Any] = {"test_last": 100.0 * test[-1], "epochs": len(test)}
    if "val" in curves:
        val = list(curves["val"])
        best = int(np.argmax(val))
        out.update(best_val_epoch=best + 1, val_best=100.0 * val[best], test_at_best_val=100.0 * test[best])
    return out


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample std (ddof=1, as "mean +- std over 5 seeds" is usually computed; 0 for one run)."""
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


def aggregate_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of one (protocol, split) over seeds -> mean/std of every numeric key they share."""
    keys = [k for k in runs[0] if k in ("test_last", "test_at_best_val", "val_best")]
    return {k: mean_std([r[k] for r in runs]) for k in keys}


def fmt(stat: dict[str, float] | float) -> str:
    if isinstance(stat, dict):
        return f"{stat['mean']:.2f} ± {stat['std']:.2f}" if stat["n"] > 1 else f"{stat['mean']:.2f}"
    return f"{stat:.2f}"


def markdown(results: dict[str, Any]) -> str:
    """A Markdown report: one classification table (rows protocol x split), one reconstruction table."""
    lines = [f"# Evaluation of `{results['encoder']}`", "",
             f"Dataset: {results['dataset']}; test split `{results['test_split']}`"
             + (f"; validation `{results['val_split']}`" if results.get("val_split") else "; no validation split")
             + ". Top-1 accuracy (%) on the test split after the last epoch"
             + ("; and at the best validation epoch." if results.get("val_split") else "."), ""]
    cls = results.get("classification", [])
    if cls:
        with_val = any("test_at_best_val" in row["summary"] for row in cls)
        head = "| protocol | split | train examples | seeds | test (last epoch) |"
        head += " test (best val epoch) |" if with_val else ""
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for row in cls:
            s = row["summary"]
            line = (f"| {row['protocol']} | {row['split_name']} | {row['num_train']} | {s['test_last']['n']} "
                    f"| {fmt(s['test_last'])} |")
            if with_val:
                line += f" {fmt(s['test_at_best_val']) if 'test_at_best_val' in s else '–'} |"
            lines.append(line)
        lines.append("")
    rec = results.get("reconstruction")
    if rec:
        lines += [f"## Reconstruction and despeckling ({rec['num_images']} held-out synthetic scenes, "
                  f"mask ratio {rec['mask_ratio']})", "",
                  "| looks L | PSNR noisy | PSNR recon | PSNR recon (masked patches) | SSIM noisy | SSIM recon "
                  "| ENL noisy | ENL recon |", "|---|---|---|---|---|---|---|---|"]
        for r in rec["levels"]:
            lines.append(f"| {r['looks']:g} | {r['psnr_noisy']:.2f} | {r['psnr_recon']:.2f} | {r['psnr_recon_masked']:.2f} "
                         f"| {r['ssim_noisy']:.3f} | {r['ssim_recon']:.3f} | {r['enl_noisy']:.2f} | {r['enl_recon']:.2f} |")
        lines += ["", f"ENL over {rec['flat_windows']} flat {rec['window']}x{rec['window']} windows "
                      f"(clean coefficient of variation < {rec['flat_cv']}). Figure: `{rec['figure']}`.", ""]
    return "\n".join(lines)


def write(results: dict[str, Any], out_dir: str | os.PathLike) -> tuple[str, str]:
    """`out_dir/results.json` and `out_dir/results.md` (local or gs://); returns both paths."""
    out_dir = paths.as_path(out_dir)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    paths.write_atomic(json_path, json.dumps(results, indent=2).encode())
    paths.write_atomic(md_path, markdown(results).encode())
    return str(json_path), str(md_path)
