"""The constants of the layout plan's analytic HBM-traffic model (`training/layout_plan.py`), fitted to compiled
programs: the ViT-B/16 and ViT-L/16 recipes compiled by the TPU compiler for v5e:2x2 (needs the `tpu` extra).

    python benchmarks/plan_calibration.py [--cache benchmarks/plan_calibration.jsonl]

Each compile's HBM traffic is read from its program text (`training/hlo_traffic.py`). The model, per chip
and step (see layout_plan's module docstring):

    traffic = PARAM_PASS_BYTES * P / tensor * A                  # weights, gradients, the update
            + FSDP_GATHER_BYTES * P / tensor * (fsdp - 1) / fsdp * A   # parameters gathered from fsdp chips
            + 28 * P / (fsdp * tensor * data)                     # Adam moments (ZeRO-1), by formula
            + examples * (UNIT_BYTES * units + SCORE_BYTES * scores) * (1 + recomputed share / 3)
            + TEACHER_UNIT_BYTES * teacher rows * teacher units + 4 * teacher parameters

with P the trained parameters, `units` the token x width units of the trained blocks per example and
`scores` their attention score elements (heads x T^2 per block), `teacher units` the teacher's blocks x
tokens x width per image. Five compiles (two batches, two model
sizes, data against fsdp, live against precomputed teacher) determine the five constants; a sixth
(ViT-B/16, data 2 x fsdp 2 at 32 per chip, live teacher) is predicted, not fitted, and its error printed. Every compile is
cached in `--cache` (JSON lines), so a second run prints the fit without compiling.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SLICE = "v5e:2x2"
# (recipe module, per chip, mesh (data, fsdp, tensor), live teacher)
FIT = [("sarmae_vit_b16", 16, (4, 1, 1), False), ("sarmae_vit_b16", 64, (4, 1, 1), False),
       ("sarmae_vit_l16", 16, (4, 1, 1), False), ("sarmae_vit_b16", 16, (1, 4, 1), False),
       ("sarmae_vit_b16", 16, (4, 1, 1), True)]
CHECK = [("sarmae_vit_b16", 32, (2, 2, 1), True)]


def config_for(recipe: str, per_chip: int, mesh: tuple[int, int, int]):
    c = importlib.import_module(f"configs.{recipe}").get_config()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    c.train.batch_size = mesh[0] * mesh[1] * per_chip
    return c


def key(spec) -> str:
    recipe, per_chip, mesh, live = spec
    return f"{recipe} {per_chip}/chip mesh={mesh} {'live' if live else 'precomputed'}"


def compile_all(specs, cache_path: str) -> dict[str, dict]:
    from sarmae_jax.training import tpu_plan
    cached = {}
    if os.path.exists(cache_path):
        with open(cache_path) as f:
            cached = {r["key"]: r for r in map(json.loads, f)}
    for spec in specs:
        if key(spec) in cached:
            continue
        print(f"compiling {key(spec)} for {SLICE} ...", flush=True)
        report = tpu_plan.plan(config_for(*spec[:3]), SLICE, teacher_tokens=not spec[3])
        report["key"] = key(spec)
        cached[key(spec)] = report
        with open(cache_path, "a") as f:
            f.write(json.dumps(report, default=float) + "\n")
    return cached


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default=os.path.join(ROOT, "benchmarks", "plan_calibration.jsonl"))
    a = p.parse_args()
    from sarmae_jax.training import layout_plan
    reports = compile_all(FIT + CHECK, a.cache)
    rows, targets = [], []
    for spec in FIT:
        c = config_for(*spec[:3])
        rows.append(layout_plan.traffic_terms(c, layout_plan.Candidate(*spec[2], "none", 1, spec[3])))
        targets.append(reports[key(spec)]["hbm_traffic_per_chip"])
    names = list(rows[0]["fitted"])
    matrix = np.array([[r["fitted"][n] for n in names] for r in rows])
    known = np.array([r["known"] for r in rows])
    coef = np.linalg.solve(matrix, np.array(targets) - known)
    print("fitted constants (bytes):")
    for n, v in zip(names, coef):
        print(f"  {n} = {v:.1f}")
    print(f"{'compile':<58} {'program GB':>10} {'model GB':>9} {'in layout_plan':>15}")
    constants = dict(zip(names, coef))
    for spec in FIT + CHECK:
        c = config_for(*spec[:3])
        t = layout_plan.traffic_terms(c, layout_plan.Candidate(*spec[2], "none", 1, spec[3]))
        model = t["known"] + sum(constants[n] * t["fitted"][n] for n in names)
        current = t["known"] + sum(getattr(layout_plan, n) * t["fitted"][n] for n in names)
        print(f"{key(spec) + (' (check)' if spec in CHECK else ''):<58} "
              f"{reports[key(spec)]['hbm_traffic_per_chip'] / 1e9:>10.2f} {model / 1e9:>9.2f} {current / 1e9:>15.2f}")


if __name__ == "__main__":
    main()
