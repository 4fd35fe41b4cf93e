"""The pod plan table of docs/scale.md: the ViT-B/16 and ViT-L/16 recipes compiled by the TPU compiler for
v5e, v5p and v6e slices, on a machine without a TPU (needs the `tpu` extra: pip install -e ".[tpu]").

    python benchmarks/pod_plan.py [--workers 2] [--cache pod_plan.jsonl] [--smoke]

For each recipe (configs/sarmae_vit_b16.py, configs/sarmae_vit_l16.py; their mesh: data parallel over all
chips), each teacher mode (the full frozen DINOv3 ViT-B/16 run live, or its tokens precomputed into the
dataset) and each slice in `SLICES`, one compile at the recipe's global batch (4096) says whether the step
fits a chip, its HBM per chip and the roofline bound on its step time; then, per chip kind, a search
(training/tpu_plan.find_max_batch) on the kind's largest slice finds the largest batch per chip that fits.
Every compile is cached in `--cache` (JSON lines), so an interrupted run resumes where it stopped; the
table is printed (Markdown) at the end. Groups run in `--workers` processes (the TPU compiler uses about
one core per compile).

These are compiler figures (memory from the compiler's buffer assignment, step time a roofline bound at
the chip's data-sheet peak), not measured speeds.
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
# Per kind: slices at which the recipe's batch 4096 is checked; the batch search runs on the last one.
SLICES = {"v5e": ("v5e:8x8", "v5e:16x16"), "v5p": ("v5p:4x4x4", "v5p:4x8x8"), "v6e": ("v6e:8x8", "v6e:16x16")}
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


def run_group(recipe: str, teacher: str, kind: str, cache_path: str, smoke: bool) -> list[dict]:
    """All compiles of one (recipe, teacher mode, chip kind): recipe batch on each slice, then the search."""
    from sarmae_jax.runtime import tpu_topology

    tpu_topology.quiet_libtpu_start()
    from sarmae_jax.training import tpu_plan

    config = smoke_config() if smoke else load_recipe(RECIPES[recipe])
    cache = Cache(cache_path)
    slices = SMOKE_SLICES[kind] if smoke else SLICES[kind]

    def compile_cached(cfg, slice_name, teacher_tokens, devices=None):
        chips = len(devices) if devices is not None else len(tpu_topology.slice_devices(slice_name))
        key = (recipe, teacher, slice_name, cfg.train.batch_size // tpu_plan.batch_shards(cfg, chips))
        if key not in cache.entries:
            started = time.time()
            report = tpu_plan.plan(cfg, slice_name, teacher_tokens=teacher_tokens, devices=devices)
            print(f"[{recipe} | {teacher} | {slice_name}] {key[3]} per chip: "
                  f"{'fits' if report['fits'] else 'does not fit'} ({time.time() - started:.0f} s)", flush=True)
            cache.put(key, report)
        return cache.entries[key]

    reports = [compile_cached(config, s, TEACHERS[teacher]) for s in slices]
    search = tpu_plan.find_max_batch(config, slices[-1], teacher_tokens=TEACHERS[teacher], multiple=SEARCH_MULTIPLE,
                                     max_probes=1 if smoke else 12, compile_fn=compile_cached)
    return reports + [{"search": {"slice": slices[-1], "best": search["best"] and search["best"]["batch_per_chip"],
                                  "probes": [r["batch_per_chip"] for r in search["probes"]]}}]


SMOKE_SLICES = {"v5e": ("v5e:2x2",), "v5p": ("v5p:2x2x1",), "v6e": ("v6e:2x2",)}


def _gib(n):
    return f"{n / 1024**3:.1f} GiB"


def table(cache: Cache, smoke: bool) -> str:
    rows = ["| recipe | teacher | slice | chips | batch per chip (global 4096) | fits | HBM per chip | roofline step "
            "| images/s per chip | largest batch per chip | images/s per chip there |".replace(
                "4096", str(RECIPE_BATCH["smoke" if smoke else "full"])),
            "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    slices = SMOKE_SLICES if smoke else SLICES
    for recipe in RECIPES:
        for teacher in TEACHERS:
            for kind, names in slices.items():
                fits_at = {k[3]: r for k, r in cache.entries.items() if k[:3] == (recipe, teacher, names[-1]) and r["fits"]}
                best = max(fits_at, default=None)
                for name in names:
                    r = next((r for k, r in cache.entries.items() if k[:3] == (recipe, teacher, name)
                              and r["global_batch"] == RECIPE_BATCH["smoke" if smoke else "full"]), None)
                    if r is None:
                        continue
                    hbm = _gib(r["memory"]["total"]) if r["fits"] else f"> {_gib(r.get('compiler_hbm_bytes') or r['hbm_bytes'])}"
                    roof = r.get("roofline")
                    step = f"{roof['step_seconds'] * 1e3:.3g} ms ({'compute' if roof['bound'] == 'compute' else 'HBM'})" if roof else "-"
                    ips = f"{roof['images_per_second_per_chip']:.0f}" if roof else "-"
                    largest = f"{best}" if best is not None else "none"
                    there = f"{fits_at[best]['roofline']['images_per_second_per_chip']:.0f}" if best is not None else "-"
                    if name != names[-1]:
                        largest, there = "(see below)", ""
                    rows.append(f"| {recipe} | {teacher} | {name} | {r['num_chips']} | {r['batch_per_chip']} | "
                                f"{'yes' if r['fits'] else 'no'} | {hbm} | {step} | {ips} | {largest} | {there} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="groups compiled at once (one core each)")
    parser.add_argument("--cache", default="pod_plan.jsonl", help="JSON-lines file of compile reports (resumable)")
    parser.add_argument("--smoke", action="store_true", help="the tiny test model on 4-chip slices: checks the script")
    args = parser.parse_args()
    from sarmae_jax.runtime import tpu_topology

    if not tpu_topology.compiler_available():
        sys.exit(f"benchmarks/pod_plan.py needs the TPU compiler: {tpu_topology.INSTALL_HINT}")
    if args.smoke:
        global RECIPES
        RECIPES = {"smoke": None}
    groups = [(r, t, k) for r in RECIPES for t in TEACHERS for k in (SMOKE_SLICES if args.smoke else SLICES)]
    started = time.time()
    context = multiprocessing.get_context("spawn")  # libtpu and JAX start afresh in each worker
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        futures = {pool.submit(run_group, *g, args.cache, args.smoke): g for g in groups}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            result = future.result()
            print(f"group {done}/{len(groups)} done: {' | '.join(futures[future])}: largest batch per chip "
                  f"{result[-1]['search']['best']} (probes {result[-1]['search']['probes']}); "
                  f"{(time.time() - started) / 60:.0f} min so far", flush=True)
    print(f"\nTPU compiler: libtpu {importlib.metadata.version('libtpu')}, jax {__import__('jax').__version__}; host: "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {(time.time() - started) / 60:.0f} min\n")
    print(table(Cache(args.cache), args.smoke))


if __name__ == "__main__":
    main()
