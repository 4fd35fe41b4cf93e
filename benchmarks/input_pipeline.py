"""Input pipeline throughput, side by side in one run:

1. the training pipeline (sarmae_jax.data.pipeline): paired 224x224 SAR + optical from ArrayRecord
   through read, decode and batching, with 0 worker processes (decoding in the training
   process; with and without the background read thread) and with N Grain worker processes;
   for both record compressions (uncompressed: the converter's default; zstd:1);
2. for comparison, the public code's way: per image, PIL-decode a SAR PNG and an optical PNG
   from a folder, convert, and stack into a float batch;
3. the SAR-1M converter's images/s on the same generated PNG files (1 and N processes).

Data: synthetic scenes (data_pipelines/synthetic.py) with gamma speckle (4 looks) so the SAR
compresses like real SAR does; 75% paired, mixed at paired_share 0.7 as in training.

    PYTHONPATH=. python benchmarks/input_pipeline.py --num_records 1024 --workers 2

Prints a Markdown table with the machine, its CPU count and the load average before and after
(other jobs on a shared machine lower every number).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

import numpy as np
from PIL import Image

from data_pipelines import images, records, shard_io, synthetic, synthetic_scenes
from sarmae_jax.data import pipeline

SIZE = 224


def _scenes(n: int, seed: int = 0):
    """n speckled SAR scenes [n, S, S] uint8 and their optical renderings [n, S, S, 3] uint8."""
    rng = np.random.default_rng(seed)
    sars, opts = [], []
    for start in range(0, n, 128):
        labels = rng.integers(0, len(synthetic.CLASS_NAMES), min(128, n - start))
        clean, optical = synthetic_scenes.generate_scenes(rng, labels, SIZE)
        speckled = clean * rng.gamma(4.0, 1 / 4.0, clean.shape).astype(np.float32)
        sars.append(images.quantise(speckled, np.uint8))
        opts.append(optical)
    return np.concatenate(sars), np.concatenate(opts)


def write_records(out: str, sar: np.ndarray, optical: np.ndarray, num_paired: int, writer_options: str) -> None:
    spec = records.RecordSpec((SIZE, SIZE), "uint8")
    examples = (records.make_example(spec, sar=sar[i], optical=optical[i] if i < num_paired else None,
                                     source=f"bench/{i}") for i in range(len(sar)))
    entry = shard_io.write_split(out, "train", examples, spec=spec, num_examples=len(sar), examples_per_shard=256,
                                dataset_name="bench", writer_options=writer_options)
    records.write_dataset_metadata(out, dataset_name="bench", spec=spec, splits={"train": entry}, class_names=[],
                                   resize_rule="none", writer_options=writer_options)


def write_png_folder(root: str, sar: np.ndarray, optical: np.ndarray, num_paired: int) -> None:
    """The SAR-1M layout: SAR/, OPT/, paired.json, unpaired.json."""
    import json

    os.makedirs(os.path.join(root, "SAR"))
    os.makedirs(os.path.join(root, "OPT"))
    for i in range(len(sar)):
        Image.fromarray(sar[i]).save(os.path.join(root, "SAR", f"{i:06d}.png"))
        if i < num_paired:
            Image.fromarray(optical[i]).save(os.path.join(root, "OPT", f"{i:06d}.png"))
    with open(os.path.join(root, "paired.json"), "w") as f:
        json.dump([{"sar": f"SAR/{i:06d}.png", "optical": f"OPT/{i:06d}.png"} for i in range(num_paired)], f)
    with open(os.path.join(root, "unpaired.json"), "w") as f:
        json.dump([f"SAR/{i:06d}.png" for i in range(num_paired, len(sar))], f)


def pipeline_rate(path: str, *, workers: int, read_threads: int, batch_size: int, num_batches: int
                  ) -> tuple[float, float | None]:
    """(samples per wall-clock second, samples per CPU-second of this process and its workers).

    CPU seconds are the honest per-core number on a shared machine: other jobs stretch the wall
    clock, not the CPU time a sample costs. Worker processes' CPU time is read with psutil
    (None without it)."""
    cfg = pipeline.default_config()
    cfg.path = path
    cfg.num_workers = workers
    cfg.read_threads = read_threads
    cfg.paired_share = 0.7
    iterator = pipeline.make_train_iterator(cfg, global_batch_size=batch_size, seed=0)
    next(iterator)  # warm-up: worker start, first reads
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(num_batches):
        next(iterator)
    n = batch_size * num_batches
    wall, cpu_after = time.perf_counter() - wall, _cpu_seconds()
    return n / wall, (None if cpu is None or cpu_after is None else n / (cpu_after - cpu))


def _cpu_seconds() -> float | None:
    """User + system CPU seconds of this process and its live children (Grain workers)."""
    try:
        import psutil
    except ImportError:
        return None
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def pil_folder_rate(root: str, num_paired: int, count: int, batch_size: int) -> tuple[float, float]:
    """The released code's way: per sample PIL open + convert + to float, then stack a batch."""
    start, cpu = time.perf_counter(), time.process_time()
    done = 0
    while done < count:
        sars, opts = [], []
        for i in range(done, done + batch_size):
            j = i % num_paired
            sar = Image.open(os.path.join(root, "SAR", f"{j:06d}.png")).convert("RGB")
            opt = Image.open(os.path.join(root, "OPT", f"{j:06d}.png")).convert("RGB")
            sars.append(np.asarray(sar.resize((SIZE, SIZE), Image.BICUBIC), np.float32) / 255.0)
            opts.append(np.asarray(opt.resize((SIZE, SIZE), Image.BICUBIC), np.float32) / 255.0)
        np.stack(sars), np.stack(opts)
        done += batch_size
    return done / (time.perf_counter() - start), done / (time.process_time() - cpu)


def converter_rate(root: str, out: str, workers: int) -> float:
    """Images/s of sar1m.convert, timed inside a fresh interpreter as the console script runs:
    its spawned workers re-import the main module, which here would be this benchmark (and
    JAX with it), a start-up cost the real command does not pay."""
    import subprocess
    import sys

    code = ("import time; from data_pipelines import sar1m; t = time.perf_counter(); "
            f"m = sar1m.convert({root!r}, {out!r}, settings=sar1m.Settings(image_size={SIZE}), "
            f"examples_per_shard=128, workers={workers}, progress=False); "
            "print(m['converter']['counts']['planned'] / (time.perf_counter() - t))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    shutil.rmtree(out)
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_records", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_batches", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2, help="Grain workers / converter processes for the 'several' rows")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings per row")
    args = parser.parse_args()
    load_before = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="sarmae_bench_")
    try:
        sar, optical = _scenes(args.num_records)
        num_paired = int(0.75 * args.num_records)
        paths = {}
        for name, options in (("uncompressed", "group_size:1,uncompressed"), ("zstd:1", "group_size:1,zstd:1")):
            paths[name] = os.path.join(tmp, name.replace(":", ""))
            os.makedirs(paths[name])
            write_records(paths[name], sar, optical, num_paired, options)
        png_root = os.path.join(tmp, "png")
        write_png_folder(png_root, sar, optical, num_paired)

        def best(fn):
            runs = [fn() for _ in range(args.repeats)]
            return max(r[0] for r in runs), (None if runs[0][1] is None else max(r[1] for r in runs))

        rows = []
        for name, path in paths.items():
            for workers, threads, label in ((0, 0, "in process, no read thread"), (0, 1, "in process + read thread"),
                                            (1, 1, "1 worker process"), (args.workers, 1, f"{args.workers} worker processes")):
                rate, cpu_rate = best(lambda: pipeline_rate(path, workers=workers, read_threads=threads,
                                                            batch_size=args.batch_size, num_batches=args.num_batches))
                rows.append((f"pipeline, {name}, {label}", rate, rate / max(1, workers), cpu_rate))
        rate, cpu_rate = best(lambda: pil_folder_rate(png_root, num_paired, count=4 * args.batch_size,
                                                      batch_size=args.batch_size))
        rows.append(("per-image PIL decode of PNG pairs (released code's way), 1 process", rate, rate, cpu_rate))
        for workers in (1, args.workers):
            rate = converter_rate(png_root, os.path.join(tmp, "converted"), workers)
            rows.append((f"converter sarmae-convert-sar1m, {workers} process(es), images/s", rate, rate / workers,
                         None))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"paired 224x224 uint8 SAR + RGB optical, batch {args.batch_size}, paired_share 0.7, best of {args.repeats}")
    print("| measurement | samples/s (wall) | per process (wall) | per CPU-second |\n|---|---|---|---|")
    for label, rate, per_process, cpu_rate in rows:
        cpu = "-" if cpu_rate is None else f"{cpu_rate:,.0f}"
        print(f"| {label} | {rate:,.0f} | {per_process:,.0f} | {cpu} |")


if __name__ == "__main__":
    main()
