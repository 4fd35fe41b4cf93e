"""The layout-plan table of docs/scale.md, from the JSON files `sarmae-train --dry_run --topology T --plan
--plan_out FILE` wrote (benchmarks/layout_plans/*.json); nothing is compiled.

    python benchmarks/plan_table.py benchmarks/layout_plans/*.json

Per plan (a recipe on a slice), three rows: the compiled winner, the best compiled layout with the teacher
run live (the recipes' default teacher), and the layout the recipes used before the plan (data parallel over
every chip, remat none, one micro-batch, live teacher), which is an analytic estimate unless the plan
compiled it.
"""
from __future__ import annotations

import argparse
import json
import os

RECIPES = {"sarmae_vit_b16": "ViT-B/16", "sarmae_vit_l16": "ViT-L/16"}


def _source(row) -> str:
    compiled = row.get("compiled")
    if not compiled:
        return "estimate"
    return "compiled" if compiled.get("fits") else "compiled: does not fit"


def _line(plan: dict, label: str, row: dict) -> str:
    c, col = row["candidate"], row["collective_s"]
    coll = sum(col.values()) * 1e3
    return (f"| {plan['recipe']} | {plan['slice']} | {label} | `{row['mesh']}` | {c['remat']} | {c['accum']} | "
            f"{'live' if c['live_teacher'] else 'precomputed'} | {row['memory_bytes'] / 2**30:.2f} GiB | "
            f"{row['compute_s'] * 1e3:.1f} | {row['hbm_s'] * 1e3:.1f} | {coll:.1f} | "
            f"{row['no_overlap_s'] * 1e3:.1f} / {row['full_overlap_s'] * 1e3:.1f} | {row['wall_hours']:.1f} | "
            f"{row['chip_hours']:,.0f} | {_source(row)} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plans", nargs="+", help="JSON files written by --plan_out")
    a = p.parse_args()
    print("| recipe | slice | row | mesh | remat | A | teacher | HBM/chip | compute ms | HBM ms | collectives ms "
          "| bound ms (no / full overlap) | wall h | chip-h | source |")
    print("|---|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for path in a.plans:
        with open(path) as f:
            plan = json.load(f)
        config = os.path.basename(path).split("_v5")[0].split("_v6")[0].split("_v4")[0]  # sarmae_vit_b16_v5e_16x16.json
        plan["recipe"] = RECIPES.get(config, config)
        fitting = [r for r in plan["rows"] if r.get("compiled") and r["compiled"].get("fits")]
        fitting.sort(key=lambda r: r["no_overlap_s"])
        if fitting:
            print(_line(plan, "winner", fitting[0]))
        live = [r for r in fitting if r["candidate"]["live_teacher"]]
        if live and live[0] is not fitting[0]:
            print(_line(plan, "best live teacher", live[0]))
        before = [r for r in plan["rows"] if r["candidate"]["fsdp"] == 1 and r["candidate"]["tensor"] == 1
                  and r["candidate"]["remat"] == "none" and r["candidate"]["accum"] == 1
                  and r["candidate"]["live_teacher"]]
        if before:
            print(_line(plan, "before (data parallel)", before[0]))


if __name__ == "__main__":
    main()
