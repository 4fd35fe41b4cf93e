"""The pod plan table of docs/scale.md: the ViT-B/16 and ViT-L/16 recipes compiled by the TPU compiler for
v5e, v5p and v6e slices, on a machine without a TPU (needs the `tpu` extra: pip install -e ".[tpu]").

    python benchmarks/pod_plan.py [--workers 2] [--cache pod_plan.jsonl] [--recipes ViT-L/16] [--kinds v5e] [--refine] [--smoke]

For each recipe (configs/sarmae_vit_b16.py, configs/sarmae_vit_l16.py: data parallel over all chips, global
batch 4096), each teacher mode (the full frozen DINOv3 ViT-B/16 run live, or its tokens precomputed into the
dataset) and each chip kind:

1. the recipe on a 256-chip slice (`SLICES`, 16 per chip): fits or not, HBM per chip, roofline step time;
2. a large batch per chip: where the line through the fitting compiles of that kind (HBM per chip against
   batch per chip) meets the chip's HBM (the compiler's limit where an out-of-memory message told it, else
   97% of the data sheet's), rounded down to a multiple of 8, compiled on a 16-chip slice of the kind
   (`SEARCH_SLICES`: with data parallelism the per-chip program does not depend on the slice size; when
   the table was made, a 16-chip slice also kept the global batch under the speckle sampler's limit of the
   time, 2**31 pixels per step), at
   most `SEARCH_CAP` = 512 per chip (the compiler's host memory grows with the batch); when that does not
   fit, the middle of the bracket, once. With `--refine`, a run over the same cache refines each row by one
   more prediction through its fitting compiles. The table gives the largest batch compiled that fit
   and the smallest that did not: `sarmae-train --dry_run --topology ... --find_max_batch` narrows such a
   bracket to 8 examples, one compile per probe.

Columns "global 4096 fits on N chips" are derived, not compiled: "yes" where a batch of at least 4096 / N per
chip fit, "no" where one of at most that did not, "not compiled" otherwise. Every compile is cached in `--cache` (JSON lines), so an interrupted run resumes where it stopped;
the table is printed (Markdown) at the end. Groups run in `--workers` processes (the TPU compiler uses about
one core per compile).

These are compiler figures (memory from the compiler's buffer assignment, step time a roofline bound at the
chip's data-sheet peak), not measured speeds.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RECIPES = {"ViT-B/16": "configs/sarmae_vit_b16.py", "ViT-L/16": "configs/sarmae_vit_l16.py"}
TEACHERS = {"DINOv3 live": False, "tokens precomputed": True}
SLICES = {"v5e": "v5e:16x16", "v5p": "v5p:4x8x8", "v6e": "v6e:16x16"}  # 256 chips each
SEARCH_SLICES = {"v5e": "v5e:4x4", "v5p": "v5p:2x2x4", "v6e": "v6e:4x4"}  # 16 chips each
SMOKE_SLICES = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
DATASHEET_SHARE = 0.97  # of the data sheet's HBM, where the compiler has not yet said its limit
# The compiler's host memory grows with the batch (B/16 at 1,176 per chip took more than 9 GB of this 24 GB
# machine): larger batches per chip are not compiled here. Global batch 4096 needs 16 per chip on 256 chips.
SEARCH_CAP = 512
DERIVED_CHIPS = (64, 128, 256)  # slice sizes of the "global batch fits on" columns
SEARCH_MULTIPLE = 8  # batch per chip searched in steps of 8 examples
RECIPE_BATCH = {"full": 4096, "smoke": 64}


def load_recipe(path: str):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.sarc.teacher.checkpoint = "random-init"  # nothing is read: the teacher is abstract shapes
    return config


def smoke_config():
    from tests.conftest import tiny_config

    c = tiny_config()
    c.model.scan_unroll = 4  # unrolled like the recipes, so the cost analysis sees every layer
    c.train.batch_size = RECIPE_BATCH["smoke"]
    return c


class Cache:
    """Compile reports keyed by (recipe, teacher, slice, batch per chip), one JSON object per line."""

    def __init__(self, path: str):
        self.path = path
        self.entries = {}
        if os.path.exists(path):
            for line in open(path):
                entry = json.loads(line)
                self.entries[tuple(entry["key"])] = entry["report"]

    def put(self, key, report):
        self.entries[tuple(key)] = report
        with open(self.path, "a") as f:
            f.write(json.dumps({"key": list(key), "report": report}) + "\n")


def run_group(recipe: str, teacher: str, kind: str, cache_path: str, smoke: bool, refine: bool) -> dict:
    """The compiles of one (recipe, teacher mode, chip kind): the recipe's batch, then a large batch."""
    from sarmae_jax.runtime import tpu_topology

    tpu_topology.quiet_libtpu_start()
    from sarmae_jax.training import tpu_plan

    config = smoke_config() if smoke else load_recipe(RECIPES[recipe])
    cache = Cache(cache_path)
    tokens = TEACHERS[teacher]

    def compile_cached(cfg, name, devices):
        key = (recipe, teacher, name, cfg.train.batch_size // tpu_plan.batch_shards(cfg, len(devices)))
        if key not in cache.entries:
            started = time.time()
            report = tpu_plan.plan(cfg, name, teacher_tokens=tokens, devices=devices)
            print(f"[{recipe} | {teacher} | {name}] {key[3]} per chip: "
                  f"{'fits' if report['fits'] else 'does not fit'} ({time.time() - started:.0f} s)", flush=True)
            cache.put(key, report)
        return cache.entries[key]

    slice_name = (SMOKE_SLICES if smoke else SLICES)[kind]
    compile_cached(config, slice_name, tpu_topology.slice_devices(slice_name))
    if smoke:  # the tiny model fits batches whose compiles take minutes: the script's path is checked
        return {"largest_fit": None, "smallest_misfit": None}
    search = SEARCH_SLICES[kind]
    devices = tpu_topology.slice_devices(search)
    chip, _ = tpu_topology.parse_slice(search)

    def known():  # this kind's compiles on any slice: one per-chip program (data parallelism)
        same = [r for k, r in cache.entries.items() if k[:2] == (recipe, teacher) and k[2].split(":")[0] == kind]
        fit = {r["batch_per_chip"]: r for r in same if r["fits"]}
        misfit = min((r["batch_per_chip"] for r in same if not r["fits"]), default=None)
        limit = min([r["compiler_hbm_bytes"] for r in same if r.get("compiler_hbm_bytes")]
                    or [int(DATASHEET_SHARE * chip.hbm_bytes)])
        return fit, misfit, limit

    fit, misfit, limit = known()
    searched = any(k[:3] == (recipe, teacher, search) for k in cache.entries)
    if fit and (refine or not searched):
        guess = tpu_plan.predict_batch(fit, limit, SEARCH_MULTIPLE)
        if misfit is not None:
            guess = min(guess, misfit - SEARCH_MULTIPLE)
        guess = min(guess, SEARCH_CAP)
        if guess > max(fit):
            r = compile_cached(tpu_plan.with_batch_per_chip(config, guess, len(devices)), search, devices)
            if not r["fits"]:  # the line overshot: the middle of the bracket, once
                middle = (max(fit) + guess) // 2 // SEARCH_MULTIPLE * SEARCH_MULTIPLE
                if middle > max(fit):
                    compile_cached(tpu_plan.with_batch_per_chip(config, middle, len(devices)), search, devices)
    fit, misfit, _ = known()
    return {"largest_fit": max(fit, default=None), "smallest_misfit": misfit}


def _gib(n):
    return f"{n / 1024**3:.1f} GiB"


def _roof(r):
    roof = r["roofline"]
    bound = "compute" if roof["bound"] == "compute" else "HBM"
    return f"{roof['step_seconds'] * 1e3:.3g} ms ({bound})", f"{roof['images_per_second_per_chip']:.0f}"


def _fits_on(per_chip: float, largest_fit: int, smallest_misfit: int | None) -> str:
    """'yes' when a batch at least that large per chip fit, 'no' when one at most that large did not, else
    'not compiled' (between the two, or above every batch compiled)."""
    if per_chip <= largest_fit:
        return "yes"
    if smallest_misfit is not None and per_chip >= smallest_misfit:
        return "no"
    return "not compiled"


def table(cache: Cache, smoke: bool) -> str:
    from sarmae_jax.training import tpu_plan

    global_batch = RECIPE_BATCH["smoke" if smoke else "full"]
    slices = SMOKE_SLICES if smoke else SLICES
    rows = [f"| recipe | teacher | chip | HBM per chip at {global_batch // 256 if not smoke else 16} per chip "
            f"(global {global_batch}, {'256' if not smoke else '4'} chips) | roofline step | images/s per chip "
            "| largest batch per chip that fit | HBM per chip there | roofline step there | images/s per chip there "
            f"| smallest that did not fit | global {global_batch} fits on " + " / ".join(map(str, DERIVED_CHIPS)) + " chips |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for recipe in RECIPES:
        for teacher in TEACHERS:
            for kind, name in slices.items():
                same = {k: r for k, r in cache.entries.items() if k[:2] == (recipe, teacher) and k[2].split(":")[0] == kind}
                r = same.get((recipe, teacher, name, global_batch // len(tpu_plan.tpu_topology.slice_devices(name))))
                if r is None:
                    continue
                recipe_cells = ([_gib(tpu_plan.hbm_total(r["memory"])), *_roof(r)] if r["fits"] else
                                [f"does not fit (> {_gib(r.get('compiler_hbm_bytes') or r['hbm_bytes'])})", "-", "-"])
                fits = {x["batch_per_chip"]: x for x in same.values() if x["fits"]}
                misfits = [x["batch_per_chip"] for x in same.values() if not x["fits"]]
                best = max(fits, default=None)
                if best is None:
                    best_cells, derived = ["none", "-", "-", "-"], "no"
                else:
                    b = fits[best]
                    best_cells = [f"{best} ({b['slice']})", _gib(tpu_plan.hbm_total(b["memory"])), *_roof(b)]
                    derived = " / ".join(_fits_on(global_batch / chips, best, min(misfits, default=None))
                                         for chips in DERIVED_CHIPS)
                worst = f"{min(misfits)}" if misfits else "-"
                rows.append(f"| {recipe} | {teacher} | {kind} | " + " | ".join(recipe_cells + best_cells)
                            + f" | {worst} | {derived} |")
    return "\n".join(rows)


def main() -> None:
    global RECIPES  # --smoke: the tiny test model alone
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="groups compiled at once (one core each)")
    parser.add_argument("--cache", default="pod_plan.jsonl", help="JSON-lines file of compile reports (resumable)")
    parser.add_argument("--refine", action="store_true",
                        help="one more batch search per row even where the cache holds one")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset of " + ", ".join(RECIPES))
    parser.add_argument("--kinds", default=",".join(SLICES), help="comma-separated subset of " + ", ".join(SLICES))
    parser.add_argument("--smoke", action="store_true", help="the tiny test model on 4-chip slices: checks the script")
    args = parser.parse_args()
    from sarmae_jax.runtime import tpu_topology

    if not tpu_topology.compiler_available():
        sys.exit(f"benchmarks/pod_plan.py needs the TPU compiler: {tpu_topology.INSTALL_HINT}")
    if args.smoke:
        RECIPES = {"smoke": None}
    recipes, kinds = args.recipes.split(","), args.kinds.split(",")
    unknown = sorted(set(recipes) - set(RECIPES) | set(kinds) - set(SLICES)) if not args.smoke else []
    if unknown:
        parser.error(f"unknown recipe or chip kind {unknown}: expected recipes from {list(RECIPES)}, kinds from {list(SLICES)}")
    groups = [(r, t, k) for k in (SMOKE_SLICES if args.smoke else SLICES) for t in TEACHERS for r in reversed(RECIPES)
              if args.smoke or (r in recipes and k in kinds)]
    started = time.time()
    context = multiprocessing.get_context("spawn")  # libtpu and JAX start afresh in each worker
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        futures = {pool.submit(run_group, *g, args.cache, args.smoke, args.refine): g for g in groups}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            result = future.result()
            print(f"group {done}/{len(groups)} done: {' | '.join(futures[future])}: largest batch per chip that fit "
                  f"{result['largest_fit']}, smallest that did not {result['smallest_misfit']}; "
                  f"{(time.time() - started) / 60:.0f} min so far", flush=True)
    print(f"\nTPU compiler: libtpu {importlib.metadata.version('libtpu')}, jax {__import__('jax').__version__}; host: "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {(time.time() - started) / 60:.0f} min\n")
    print(table(Cache(args.cache), args.smoke))


if __name__ == "__main__":
    main()
