"""A pod plan before the pod: the train step compiled by the TPU compiler for a named slice, on a CPU host.

    sarmae-train --config configs/sarmae_vit_l16.py --dry_run --topology v5e:16x16 [--find_max_batch]

`plan(config, "v5e:16x16")` maps the run's mesh (`config.mesh`, -1 taking the slice's remaining chips) and
sharding rules onto the slice's compile-only devices (runtime/tpu_topology.py), lowers the exact train step a
run would compile (dry_run.lower_train_step) and compiles it with libtpu. Per chip it reports:

* HBM: parameters + optimizer state (from their shardings), batch and frozen teacher, activations and
  temporaries, program code, and the compiler's peak, against the chip's HBM; a step that does not fit
  ends in the compiler's RESOURCE_EXHAUSTED, turned into a verdict that names the knobs to turn;
* FLOPs per step from the compiler's cost analysis, next to the analytic model FLOPs;
* HBM traffic per step read from the compiled program's text (training/hlo_traffic.py: loop trip counts
  applied, a slice counted by what it cuts out), beside the cost analysis's "bytes accessed" (which counts
  every operand whole: each block's slice of the stacked `[depth, ...]` weights as the whole stack);
* the collectives of the compiled program (training/hlo_collectives.py);
* a roofline bound on the step time: max(FLOPs / peak FLOP/s, HBM traffic / HBM bandwidth), with the FLOPs
  the larger of the compiler's and the analytic count (each can miss work: the compiler counts a loop body
  once, the analytic count holds only the matrix products), and the MFU and images/s at that bound.

These are the compiler's figures for a chip running at its data-sheet peak, not measured speeds: a real
step is slower (collectives not overlapped, kernels below peak, input pipeline).

"Batch per chip" is the global batch over the data x fsdp batch shards (with tensor parallelism the chips
of a tensor group share their examples).
"""
from __future__ import annotations

import logging
import math
import re
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from sarmae_jax.models import param_trees
from sarmae_jax.runtime import sharding, tpu_topology
from sarmae_jax.training import dry_run, flops, hlo_collectives, hlo_traffic

log = logging.getLogger("sarmae_jax")
GiB = 1024**3
_AVAILABLE_HBM = re.compile(r"exceeds available HBM \(([\d.]+)([KMGT])\)")
_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _tree_bytes_per_chip(tree: Any) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (its shards, not the whole)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
    return total


def batch_shards(config, num_chips: int) -> int:
    data, fsdp, _ = sharding.mesh_shape(config.mesh, num_chips)
    return data * fsdp


def with_batch_per_chip(config: ml_collections.ConfigDict, batch_per_chip: int, num_chips: int) -> ml_collections.ConfigDict:
    """A copy of `config` whose global batch puts `batch_per_chip` examples on every batch shard."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.train.batch_size = int(batch_per_chip) * batch_shards(config, num_chips)
    return out


def plan(config: ml_collections.ConfigDict, slice_name: str, *, teacher_tokens: bool | None = None,
         devices: list | None = None, num_slices: int = 1) -> dict[str, Any]:
    """Compile the train step of `config` for TPU slice `slice_name`; the report of the module docstring.

    `teacher_tokens` as in `dry_run.lower_train_step` (None: follow the dataset). A step that does not fit
    the chip's HBM returns `fits=False` with the compiler's message and `knobs`; other errors raise.
    """
    chip, _ = tpu_topology.parse_slice(slice_name)
    devices = devices if devices is not None else tpu_topology.slice_devices(slice_name, num_slices)
    start = time.perf_counter()
    step = dry_run.lower_train_step(config, devices, teacher_tokens=teacher_tokens)
    lower_s = time.perf_counter() - start
    mesh, state = step.mesh, step.abstract_state
    c = step.config
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    analytic, teacher_flops = flops.train_step_flops(c, shards, live_teacher=not step.teacher_tokens)
    report: dict[str, Any] = {
        "slice": slice_name, "num_slices": sharding.num_slices(devices), "chip": chip.kind, "device_kind": chip.device_kind, "num_chips": len(devices),
        "num_hosts": len({d.process_index for d in devices}), "mesh": dict(mesh.shape),
        "global_batch": c.train.batch_size, "batch_per_chip": c.train.batch_size // shards,
        "grad_accum_steps": c.train.grad_accum_steps, "dtype": c.model.dtype, "remat": c.model.remat,
        "model": f"ViT-{c.model.size}/{c.model.patch_size}",
        "teacher": _teacher_name(c, step.teacher_tokens), "parameters": param_trees.count_params(state.params),
        "lower_seconds": lower_s,
        "hbm_bytes": chip.hbm_bytes,
        "state_bytes": {"params": _tree_bytes_per_chip(state.params), "opt_state": _tree_bytes_per_chip(state.opt_state)},
        "input_bytes": {"batch": _tree_bytes_per_chip(step.abstract_batch),
                        "teacher": _tree_bytes_per_chip(step.abstract_teacher)},
        "analytic_flops_per_chip": analytic / len(devices),
        "analytic_teacher_flops_per_chip": teacher_flops / len(devices),
    }
    start = time.perf_counter()
    # A compile-only executable written to JAX's persistent compilation cache cannot be loaded back (no
    # TPU client): keep it out of the cache.
    min_compile_time = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        with jax.set_mesh(mesh):
            compiled = step.lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if not str(e).startswith("RESOURCE_EXHAUSTED"):
            raise
        report.update(compile_seconds=time.perf_counter() - start, fits=False,
                      compiler_message=str(e).strip().splitlines()[0], compiler_hbm_bytes=_available_hbm(str(e)))
        report["knobs"] = knobs(report, c)
        return report
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time)
    report["compile_seconds"] = time.perf_counter() - start
    report["fits"] = True
    report["memory"] = dry_run.memory_report(compiled)
    costs = compiled.cost_analysis()
    costs = costs[0] if isinstance(costs, (list, tuple)) else costs
    text = compiled.as_text()
    report["compiler_flops_per_chip"] = float(costs.get("flops", 0.0))
    report["bytes_accessed_per_chip"] = float(costs.get("bytes accessed", 0.0))
    report["hbm_traffic_per_chip"] = float(hlo_traffic.hbm_bytes(text)["bytes"])
    report["loops_counted_once"] = [n for n in hlo_collectives.loop_trip_counts(text) if n is None or n > 1]
    report["collectives"] = vars(hlo_collectives.parse(text))
    report["roofline"] = roofline(report, chip)
    return report


def _teacher_name(c, tokens: bool) -> str:
    if not c.sarc.enabled:
        return "none (SARC off)"
    t = c.sarc.teacher
    return f"{t.kind} {t.size}/{t.patch_size} " + ("tokens precomputed" if tokens else "live")


def _available_hbm(message: str) -> int | None:
    found = _AVAILABLE_HBM.search(message)
    return int(float(found.group(1)) * _UNITS[found.group(2)]) if found else None


hbm_total = dry_run.memory_total  # one rule for "fits", the GPU dry run's and the TPU plan's


def hbm_traffic(report: dict[str, Any]) -> float:
    """HBM bytes per chip and step: the program's traffic (hlo_traffic.py); reports cached before it was
    counted (benchmarks/pod_plan.jsonl) carry only the cost analysis's bytes accessed."""
    return report.get("hbm_traffic_per_chip", report["bytes_accessed_per_chip"])


def roofline(report: dict[str, Any], chip: tpu_topology.Chip) -> dict[str, float]:
    """Lower bound on the step time from the chip's peak FLOP/s and HBM bandwidth (module docstring)."""
    work = max(report["compiler_flops_per_chip"], report["analytic_flops_per_chip"])
    compute_s = work / (chip.peak_bf16_tflops * 1e12)
    memory_s = hbm_traffic(report) / (chip.hbm_gbytes_per_s * 1e9)
    step_s = max(compute_s, memory_s)
    return {
        "compute_seconds": compute_s, "hbm_seconds": memory_s, "step_seconds": step_s,
        "bound": "compute" if compute_s >= memory_s else "HBM bandwidth",
        "mfu": report["analytic_flops_per_chip"] / (step_s * chip.peak_bf16_tflops * 1e12) if step_s else 0.0,
        "mfu_without_teacher": ((report["analytic_flops_per_chip"] - report.get("analytic_teacher_flops_per_chip", 0.0))
                                / (step_s * chip.peak_bf16_tflops * 1e12) if step_s else 0.0),
        "images_per_second_per_chip": report["global_batch"] / report["num_chips"] / step_s if step_s else 0.0,
    }


def knobs(report: dict[str, Any], config) -> list[str]:
    """What to turn when the step does not fit, the largest lever first."""
    state = sum(report["state_bytes"].values())
    hbm = report.get("compiler_hbm_bytes") or report["hbm_bytes"]
    mesh = report["mesh"]
    out = []
    fsdp = (f"mesh.fsdp (now {mesh['fsdp']}): shard parameters and optimizer state ({state / GiB:.2f} GiB per chip "
            f"now) over more chips, e.g. --config.mesh.data=1 --config.mesh.fsdp=-1")
    per_chip = (f"per-chip batch (now {report['batch_per_chip']}, train.batch_size={report['global_batch']}): lower "
                "train.batch_size; --find_max_batch finds the largest that fits")
    if state > 0.4 * hbm and mesh["fsdp"] < report["num_chips"]:
        out.append(fsdp)
    out.append(per_chip)
    if config.model.remat == "none":
        out.append("model.remat (now none): recompute block activations in the backward pass: "
                   "--config.model.remat=dots (or full, the least memory)")
    accum = config.train.grad_accum_steps
    if report["batch_per_chip"] % (2 * accum) == 0:
        out.append(f"train.grad_accum_steps (now {accum}): micro-batches hold fewer activations at once: "
                   f"--config.train.grad_accum_steps={2 * accum}")
    if fsdp not in out and mesh["fsdp"] < report["num_chips"]:
        out.append(fsdp)
    return out


def find_max_batch(config: ml_collections.ConfigDict, slice_name: str, *, teacher_tokens: bool | None = None,
                   multiple: int = 8, max_probes: int = 12, on_probe: Callable[[dict], None] | None = None,
                   compile_fn: Callable[..., dict] | None = None, known: list[dict] = ()) -> dict[str, Any]:
    """The largest batch per chip (a multiple of `multiple` and of train.grad_accum_steps) whose step fits.

    Each probe is one compile. HBM grows about linearly with the batch, so the next probe is where the
    line through the fitting probes (or through one probe and the batch-independent bytes) meets the
    chip's HBM, kept inside the bracket [largest fit, smallest misfit]; after a probe that does not fit
    (the line overshot, or the step cannot be built for that batch) the bracket is halved instead. It ends
    when the bracket is one step wide.
    Returns {"best": report of the largest fitting batch or None, "probes": every report, in order}.
    `compile_fn(config, slice_name, teacher_tokens, devices)` replaces `plan` (a cache, in the plan script);
    `known`: reports of this slice already compiled (e.g. at the config's own batch), not compiled again.
    """
    compile_fn = compile_fn or (lambda cfg, name, tokens, devices: plan(cfg, name, teacher_tokens=tokens, devices=devices))
    done = {r["batch_per_chip"]: r for r in known if r["slice"] == slice_name}
    chip, _ = tpu_topology.parse_slice(slice_name)
    devices = tpu_topology.slice_devices(slice_name)
    unit = math.lcm(multiple, config.train.grad_accum_steps)
    current = max(unit, config.train.batch_size // batch_shards(config, len(devices)) // unit * unit)
    probes: list[dict] = []
    fit: dict[int, dict] = {}
    misfit: set[int] = set()
    available = chip.hbm_bytes
    while len(probes) < max_probes:
        cfg = with_batch_per_chip(config, current, len(devices))
        try:
            report = done.get(current) or compile_fn(cfg, slice_name, teacher_tokens, devices)
        except ValueError as e:  # not "does not fit": a step that cannot be built is an error, with its batch
            raise ValueError(f"{slice_name}: the step at {current} per chip (train.batch_size="
                             f"{cfg.train.batch_size}) cannot be built: {e}") from e
        probes.append(report)
        if on_probe is not None:
            on_probe(report)
        if report["fits"]:
            fit[current] = report
        else:
            misfit.add(current)
            available = report.get("compiler_hbm_bytes") or available
        lo, hi = max(fit, default=0), min(misfit, default=None)
        if hi is not None and hi - lo <= unit:
            break
        if not fit:  # even this batch does not fit: halve until one does
            if current == unit:
                break
            current = max(unit, current // 2 // unit * unit)
            continue
        guess = predict_batch(fit, available, unit)
        if hi is not None and (not report["fits"] or not lo < guess < hi):
            guess = (lo + hi) // 2 // unit * unit  # the line overshot (or cannot say): bisect the bracket
        upper = hi - unit if hi is not None else max(guess, 2 * lo)
        current = min(max(guess, lo + unit), upper)
    best = fit[max(fit)] if fit else None
    return {"best": best, "probes": probes, "multiple": unit}


def predict_batch(fit: dict[int, dict], available: int, unit: int) -> int:
    """Batch per chip (a multiple of `unit`) at which the line through the fitting probes reaches `available`.

    `fit`: batch per chip -> report of a step that fits (of any slice of the chip kind: with data parallelism
    the per-chip program does not depend on the slice size). One probe: the line through it and the
    batch-independent bytes (state, teacher, code).
    """
    points = sorted((b, hbm_total(r["memory"])) for b, r in fit.items())
    if len(points) >= 2:
        (b0, m0), (b1, m1) = points[-2], points[-1]
        slope = (m1 - m0) / (b1 - b0)
    else:
        (b1, m1), = points
        r = fit[b1]
        fixed = sum(r["state_bytes"].values()) + r["input_bytes"]["teacher"] + r["memory"]["generated_code"]
        slope = max(m1 - fixed, 1) / b1
    if slope <= 0:
        return b1 * 2
    return int((b1 + (available - m1) / slope) // unit * unit)


# ------------------------------------------------------------------------------------------- report text
def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def _bytes(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _slices(r: dict[str, Any]) -> str:
    return f" x {r['num_slices']} slices (DCN)" if r.get("num_slices", 1) > 1 else ""


def format_plan(r: dict[str, Any]) -> str:
    """Human-readable lines of one `plan` report."""
    chip = tpu_topology.CHIPS[r["chip"]]
    lines = [
        f"TPU plan: {r['model']} on {r['slice']}{_slices(r)} ({r['num_chips']} x {r['device_kind']}, {r['num_hosts']} host(s)), "
        f"mesh {r['mesh']}",
        f"  global batch {r['global_batch']} = {r['batch_per_chip']} per chip in {r['grad_accum_steps']} micro-batch(es); "
        f"compute {r['dtype']}, remat {r['remat']}; teacher {r['teacher']}; {r['parameters']:,} trainable parameters",
        f"  lowered in {r['lower_seconds']:.1f} s, compiled by the TPU compiler (libtpu) in {r['compile_seconds']:.1f} s",
    ]
    state, inputs = r["state_bytes"], r["input_bytes"]
    lines.append(f"  HBM per chip ({chip.kind}: {_gib(chip.hbm_bytes)}):")
    lines.append(f"    parameters + optimizer state  {_gib(state['params'] + state['opt_state'])} "
                 f"(parameters {_gib(state['params'])}, optimizer state {_gib(state['opt_state'])})")
    lines.append(f"    batch + frozen teacher        {_gib(inputs['batch'] + inputs['teacher'])}")
    if not r["fits"]:
        lines.append(f"  DOES NOT FIT: {r['compiler_message']}")
        lines.append("  turn one of these knobs:")
        lines += [f"    - {k}" for k in r["knobs"]]
        return "\n".join(lines)
    mem = r["memory"]
    total = hbm_total(mem)
    lines += [
        f"    activations / temporaries     {_gib(mem['temp'])}",
        f"    program code                  {_gib(mem['generated_code'])}",
        f"    total                         {_gib(total)} of {_gib(chip.hbm_bytes)}: fits "
        f"({_gib(chip.hbm_bytes - total)} to spare; the compiler's peak of live buffers {_gib(mem['peak_live'])})",
        f"  per step per chip: {r['compiler_flops_per_chip'] / 1e12:.3f} TFLOP (compiler's cost analysis), model FLOPs "
        f"(analytic) {r['analytic_flops_per_chip'] / 1e12:.3f} TFLOP; HBM traffic {hbm_traffic(r) / 1e9:.2f} GB "
        f"(program text; the cost analysis's bytes accessed {r['bytes_accessed_per_chip'] / 1e9:.2f} GB count each "
        "sliced operand whole)",
    ]
    if r["loops_counted_once"]:
        trips = ", ".join("unknown" if n is None else str(n) for n in r["loops_counted_once"])
        lines.append(f"    (the cost analysis counts one trip of each of {len(r['loops_counted_once'])} loop(s), trip "
                     f"counts {trips}: its FLOPs are a lower bound; the layer scans of the student and the teacher "
                     "are loops unless model.scan_unroll >= depth)")
    col = r["collectives"]
    parts = [f"{k} {col['count'][k]} ({_bytes(col['bytes'][k])})" for k in hlo_collectives.KINDS if col["count"][k]]
    lines.append("  collectives per step per chip: " + (", ".join(parts) if parts else "none"))
    roof = r["roofline"]
    lines += [
        f"  roofline ({chip.peak_bf16_tflops:g} TFLOP/s bf16, {chip.hbm_gbytes_per_s:g} GB/s HBM): compute "
        f"{roof['compute_seconds'] * 1e3:.1f} ms, HBM {roof['hbm_seconds'] * 1e3:.1f} ms -> at least "
        f"{roof['step_seconds'] * 1e3:.1f} ms per step ({roof['bound']}-bound); at that bound MFU "
        f"{roof['mfu']:.1%}, {roof['images_per_second_per_chip']:.0f} images/s per chip",
        "  (compiler figures for a chip at its data-sheet peak, not measured speeds)",
    ]
    return "\n".join(lines)


def format_search(result: dict[str, Any]) -> str:
    lines = [f"largest batch per chip (multiples of {result['multiple']}):"]
    for r in result["probes"]:
        verdict = f"fits, {_gib(hbm_total(r['memory']))}" if r["fits"] else f"does not fit ({r['compiler_message']})"
        lines.append(f"  {r['batch_per_chip']:>6} per chip (global {r['global_batch']}): {verdict} "
                     f"[compiled in {r['compile_seconds']:.0f} s]")
    best = result["best"]
    lines.append(f"  -> {best['batch_per_chip']} per chip (train.batch_size={best['global_batch']})" if best else
                 f"  -> not even {result['multiple']} per chip fits: see the knobs above")
    return "\n".join(lines)
