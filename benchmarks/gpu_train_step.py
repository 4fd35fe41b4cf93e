"""ViT-B/16 MAE + SARC train step in bf16 on the accelerators of this machine: images/s, TFLOP/s and MFU
at two per-device batch sizes. Prints a Markdown table.

    python benchmarks/gpu_train_step.py                       # H100 / H200: about 3-5 minutes
    python benchmarks/gpu_train_step.py --attention cudnn --batches 128,256 --steps 20
    python benchmarks/gpu_train_step.py --smoke               # tiny model on CPU: checks the script

The step is the trainer's own (`training.state.build(...).jit_step()`, data-parallel mesh over all local devices,
donated state): ViT-B/16 encoder on the 49 visible patches, 512x8 decoder on 196, SARC head against
the frozen teacher (`--teacher dinov3`, the default and the recipe's: the full ViT-B, on the paired rows; or
`released`: patch embedding + LN as in the public code; both random-init; weights do not change the speed). Speckle (Gamma, on device) and
masking are inside the step, as in training; the batch is random uint8 pixels already on the device.
Model FLOPs are analytic (sarmae_jax/training/flops.py); MFU is against the dense bf16 peak of the device
(flops.PEAK_TFLOPS, or --peak_tflops). When a batch does not fit with `--remat none`, it is retried
with `dots` (recompute everything but the matmuls).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from sarmae_jax import config as config_lib
from sarmae_jax.convert import teacher_weights
from sarmae_jax.data import batch_sampling
from sarmae_jax.runtime import sharding
from sarmae_jax.training import flops, loop
from sarmae_jax.training import state as state_lib


def bench_config(args, per_device_batch: int, remat: str):
    c = config_lib.default_config()
    c.model.dtype = "bfloat16"
    c.model.remat = remat
    c.model.attention_impl = args.attention
    c.sarc.teacher.kind = args.teacher
    c.sarc.teacher.checkpoint = "random-init"
    c.train.batch_size = per_device_batch * jax.device_count()
    c.train.peak_tflops_per_device = args.peak_tflops
    c.optim.warmup_steps = 10
    c.train.num_steps = 1000
    if args.sare == "off":
        c.sare.enabled = False
    elif args.sare:
        c.sare.model = args.sare
    c.sarc.enabled = not args.no_sarc
    c.model.scan_layers = not args.no_scan
    c.model.scan_unroll = args.scan_unroll
    if args.smoke:  # a tiny model that compiles and steps in seconds on a CPU
        c.model.size, c.model.image_size, c.model.patch_size = "mini", 32, 8
        c.model.decoder.width, c.model.decoder.depth, c.model.decoder.num_heads = 32, 1, 2
        c.sarc.teacher.size, c.sarc.teacher.patch_size = "mini", 8
    return c


def measure(c, steps: int) -> dict:
    """Seconds per step (median after 2 warm-up steps), compile seconds and peak device memory."""
    mesh = sharding.make_mesh(c.mesh)
    parts = state_lib.build(c, mesh, epoch_size=100 * c.train.batch_size)
    step = parts.jit_step()
    teacher = None
    if parts.modules.teacher is not None:
        teacher = jax.device_put(teacher_weights.load_teacher_params(c.sarc.teacher, parts.modules.teacher,
                                                                     c.model.image_size), sharding.replicated(mesh))
    b, s = c.train.batch_size, c.model.image_size
    rng = np.random.default_rng(0)
    batch = loop.global_batch({
        "sar": rng.integers(0, 256, (b, s, s, 1), dtype=np.uint8),
        "optical": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
        "is_paired": batch_sampling.paired_at(np.arange(b), c.data.paired_share),  # as the sampler lays a batch out
    }, sharding.batch_sharding(mesh))
    state = parts.init_state(jax.random.key(0))
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        compiled = step.lower(state, batch, teacher).compile()
        compile_s = time.perf_counter() - start
        for _ in range(2):
            state, m = compiled(state, batch, teacher)
        jax.block_until_ready(m)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            state, m = compiled(state, batch, teacher)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - start)
    if not np.isfinite(float(m["loss"])):
        raise FloatingPointError(f"non-finite loss {float(m['loss'])}")
    stats = jax.local_devices()[0].memory_stats() or {}
    return {"seconds": statistics.median(times), "compile_seconds": compile_s,
            "peak_gib": stats.get("peak_bytes_in_use", 0) / 1024**3 or None}


def _out_of_memory(e: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="128,256", help="per-device batch sizes, comma-separated")
    parser.add_argument("--remat", default="none", help="first remat policy to try (dots on out-of-memory)")
    parser.add_argument("--attention", default="", choices=("", "explicit", "cudnn", "xla"), help="model.attention_impl")
    parser.add_argument("--teacher", default="dinov3", choices=("released", "dinov3", "vit"),
                        help="the recipe's teacher (dinov3, the full ViT-B/16) by default")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak_tflops", type=float, default=None, help="override the device's bf16 peak")
    parser.add_argument("--smoke", action="store_true", help="tiny model, tiny batches (CPU check of the script)")
    parser.add_argument("--sare", default="", help="speckle model to use, or 'off' (default: the config's)")
    parser.add_argument("--no_sarc", action="store_true", help="no SARC head, no teacher")
    parser.add_argument("--no_scan", action="store_true", help="unrolled blocks instead of nn.scan")
    parser.add_argument("--scan_unroll", type=int, default=1, help="model.scan_unroll (1 = rolled loop)")
    parser.add_argument("--ablate", action="store_true",
                        help="at the first batch size, time the step with parts switched off, one at a time")
    args = parser.parse_args()
    if args.smoke:
        args.batches, args.steps = "2,4", 2

    device = jax.devices()[0]
    peak = flops.peak_tflops_per_device(device.device_kind, args.peak_tflops)
    print(f"{jax.device_count()} x {device.device_kind}, jax {jax.__version__}; teacher {args.teacher}, "
          f"attention {args.attention or 'default'}, bf16 peak {peak or 'unknown'} TFLOP/s per device")
    if args.ablate:
        return ablate(args, int(args.batches.split(",")[0]))
    rows = []
    for per_device in (int(x) for x in args.batches.split(",")):
        for remat in dict.fromkeys((args.remat, "dots")):
            c = bench_config(args, per_device, remat)
            try:
                r = measure(c, args.steps)
            except Exception as e:  # noqa: BLE001 - an out-of-memory batch is a result, retried with remat
                if not _out_of_memory(e):
                    raise
                rows.append((per_device, remat, None, None))
                continue
            flop, _ = flops.train_step_flops(c, jax.device_count())
            tflops = flop / r["seconds"] / jax.device_count() / 1e12
            rows.append((per_device, remat, r, tflops))
            break
    print("\n| per-device batch | remat | s/step | images/s | images/s/device | TFLOP/s/device | MFU | peak memory | compile |")
    print("|---|---|---|---|---|---|---|---|---|")
    for per_device, remat, r, tflops in rows:
        if r is None:
            print(f"| {per_device} | {remat} | out of memory | | | | | | |")
            continue
        images = per_device * jax.device_count() / r["seconds"]
        mfu = f"{tflops / peak:.1%}" if peak else "n/a"
        mem = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] else "n/a"
        print(f"| {per_device} | {remat} | {r['seconds'] * 1e3:.1f} ms | {images:.0f} | {images / jax.device_count():.0f} "
              f"| {tflops:.1f} | {mfu} | {mem} | {r['compile_seconds']:.0f} s |")


def ablate(args, per_device: int) -> None:
    """Where the step's time goes, by difference: each row switches parts off (same batch, same remat)."""
    import copy

    variants = {
        "full step (config defaults)": {},
        "speckle off": {"sare": "off"},
        "SARC off (no head, no teacher)": {"no_sarc": True},
        "unrolled blocks (no nn.scan)": {"no_scan": True},
        "nn.scan, fully unrolled (scan_unroll=24)": {"scan_unroll": 24},
        "plain MAE: speckle, SARC and scan off": {"sare": "off", "no_sarc": True, "no_scan": True},
    }
    print(f"\n| variant (per-device batch {per_device}, remat {args.remat}) | s/step | images/s/device | model TFLOP/s/device |")
    print("|---|---|---|---|")
    for name, change in variants.items():
        v = copy.copy(args)
        for k, val in change.items():
            setattr(v, k, val)
        c = bench_config(v, per_device, args.remat)
        r = measure(c, args.steps)
        tflops = flops.train_step_flops(c, jax.device_count())[0] / r["seconds"] / jax.device_count() / 1e12
        print(f"| {name} | {r['seconds'] * 1e3:.1f} ms | {per_device / r['seconds']:.0f} | {tflops:.1f} |", flush=True)


if __name__ == "__main__":
    main()
