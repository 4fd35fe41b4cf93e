"""The layout-plan table of docs/scale.md, from the JSON files `sarmae-train --dry_run --topology T --plan
--plan_out FILE` wrote (benchmarks/layout_plans/*.json); nothing is compiled.

    python benchmarks/plan_table.py benchmarks/layout_plans/*.json

Per plan (a recipe on a slice), up to three rows: the winner, the best layout with the teacher run live
(the recipes' default teacher), and the layout the recipes used before the plan (data parallel over every
chip, remat none, one micro-batch, live teacher; "= before" where it is one of the others). Among the
compiled rows when the plan compiled any, else by estimate; each row says which.
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
        compiled = sorted((r for r in plan["rows"] if r.get("compiled") and r["compiled"].get("fits")),
                          key=lambda r: r["no_overlap_s"])
        ranked = compiled or [r for r in plan["rows"] if r["fits_estimate"]]  # estimate order without compiles
        suffix = "" if compiled else " (by estimate)"
        before = next((r for r in plan["rows"] if r["candidate"]["fsdp"] == 1 and r["candidate"]["tensor"] == 1
                       and r["candidate"]["remat"] == "none" and r["candidate"]["accum"] == 1
                       and r["candidate"]["live_teacher"]), None)
        shown = []
        if ranked:
            shown.append(("winner" + suffix, ranked[0]))
        live = next((r for r in ranked if r["candidate"]["live_teacher"]), None)
        if live is not None and live is not ranked[0]:
            shown.append(("best live teacher" + suffix, live))
        for i, (label, row) in enumerate(shown):
            if row is before:
                shown[i] = (label + " = before", row)
        if before is not None and all(row is not before for _, row in shown):
            shown.append(("before (data parallel)", before))
        for label, row in shown:
            print(_line(plan, label, row))

if __name__ == "__main__":
    main()
