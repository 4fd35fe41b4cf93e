"""Throughput of the SARE speckle kernels, side by side with two baselines, in one run.

    PYTHONPATH=. python benchmarks/speckle.py [--batch 256] [--size 224] [--repeats 7]
        [--with_train_step | --train_step_seconds S]

Rows: each model of `sarmae_jax.sare.speckle` through `apply_sare` (prob=1, so every image is noised;
the cost does not depend on prob because fields are drawn for the whole batch), next to
  (i)   one normal per pixel with `jax.random.normal` (the floor for any per-pixel random field),
  (ii)  a per-image NumPy loop in the released code's style (what SARMAE does on the host),
  (iii) `jax.random.gamma` with a per-pixel shape (on a small batch; it is very slow).
Component rows (random bits and normal transforms, for the design choices in docs/speckle.md):
  bits via `jax.random.bits` with the Threefry key (JAX's rolled CPU lowering), with an `rbg` and
  an `unsafe_rbg` key derived from it, and via `sampling.hash_word_pairs` (unrolled Threefry);
  normals by erf_inv (`sampling.standard_normal`) and by Box-Muller, each from fused hash words.
Share of the train step: time of `apply_sare` on a batch of 8 divided by the median ViT-B/16
MAE+SARC train-step time at batch 8 (`--with_train_step` measures it with
`benchmarks/train_step.py:jax_step_seconds`, minutes on CPU; or pass `--train_step_seconds`).
All JAX rows are jitted, warmed up, and timed with block_until_ready. Repeats are interleaved
round-robin across rows, so load from other processes hits every row alike; the median is used.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sarmae_jax.sare import sampling, speckle

DEFAULT_RANGES = {"gamma_intensity": (1.0, 16.0), "amplitude": (1.0, 16.0),
                  "lognormal": (0.0, 0.7), "released": (0.0, 0.7)}


def released_numpy_loop(rng: np.random.Generator, images: np.ndarray, prob: float = 1.0) -> np.ndarray:
    """The released code's approach: a Python loop over images, one NumPy draw per image."""
    out = images.copy()
    for index in range(images.shape[0]):
        if rng.uniform() >= prob:
            continue
        sigma = rng.uniform(0.0, 0.7)
        image = np.maximum(images[index], 1e-8)
        if sigma > 0.05:
            noisy = image * np.exp(sigma * rng.standard_normal(image.shape, dtype=np.float32))
        else:
            looks = 1.0 / (4 * sigma**2 + 1e-8)
            noisy = image * rng.gamma(looks, 1.0 / looks, image.shape).astype(np.float32)
            noisy *= image.mean() / (noisy.mean() + 1e-8)
        out[index] = np.clip(noisy, 1e-8, 1.0)
    return out


def rbg_key_from(key: jax.Array, impl: str) -> jax.Array:
    """An `rbg`/`unsafe_rbg` key (4 words) built from a Threefry key's 2 data words."""
    data = jax.random.key_data(key)
    return jax.random.wrap_key_data(jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)]), impl=impl)


def component_rows(shape: tuple[int, ...]) -> dict:
    """Callables key -> array for the PRNG and normal-transform study."""
    n = math.prod(shape)

    def box_muller(key):
        first, second = sampling.hash_word_pairs(key, n)
        radius = jnp.sqrt(-2.0 * jnp.log(sampling.open_unit_interval(first)))
        return (radius * jnp.cos(2.0 * math.pi * sampling.open_unit_interval(second))).reshape(shape)

    return {
        "bits: jax.random.bits, Threefry (rolled)": jax.jit(lambda k: jax.random.bits(k, (n,), jnp.uint32)),
        "bits: jax.random.bits, rbg key": jax.jit(
            lambda k: jax.random.bits(rbg_key_from(k, "rbg"), (n,), jnp.uint32)),
        "bits: jax.random.bits, unsafe_rbg key": jax.jit(
            lambda k: jax.random.bits(rbg_key_from(k, "unsafe_rbg"), (n,), jnp.uint32)),
        "bits: sampling.hash_word_pairs (unrolled)": jax.jit(lambda k: sampling.hash_word_pairs(k, n // 2)),
        "normal: erf_inv, fused hash": jax.jit(lambda k: sampling.standard_normal(k, shape)),
        "normal: Box-Muller (cos), fused hash": jax.jit(box_muller),
    }


def median_seconds(run, repeats: int) -> float:
    jax.block_until_ready(run(jax.random.key(0)))
    times = []
    for repeat in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(jax.random.key(repeat + 1)))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--jax-gamma-batch", type=int, default=4, help="batch for row (iii); 0 skips it")
    parser.add_argument("--components", action=argparse.BooleanOptionalAction, default=True,
                        help="also time random bits (Threefry / rbg / unsafe_rbg) and normal transforms")
    parser.add_argument("--with_train_step", action="store_true",
                        help="measure the ViT-B/16 recipe's train step at batch 8, DINOv3 teacher included "
                             "(benchmarks/train_step.py)")
    parser.add_argument("--train_step_seconds", type=float, default=None,
                        help="median ViT-B/16 train-step time at batch 8, if measured elsewhere")
    args = parser.parse_args()

    shape = (args.batch, args.size, args.size, 1)
    images = jax.random.uniform(jax.random.key(0), shape, minval=0.05, maxval=0.6)
    host_images = np.asarray(images)
    rng = np.random.default_rng(0)

    rows = {}  # name -> (images per call, zero-argument callable that blocks until done)
    for model in speckle.MODELS:
        rows[model] = (args.batch, lambda key, model=model: speckle.apply_sare(
            key, images, model=model, prob=1.0, strength_range=DEFAULT_RANGES[model])[0])
    normal = jax.jit(lambda key: jax.random.normal(key, shape))
    rows["(i) jax.random.normal per pixel"] = (args.batch, normal)
    rows["(ii) NumPy per-image loop (released style)"] = (
        args.batch, lambda key: released_numpy_loop(rng, host_images))
    if args.jax_gamma_batch:
        gamma_shape = (args.jax_gamma_batch,) + shape[1:]
        looks = jnp.broadcast_to(jnp.linspace(1.0, 16.0, args.jax_gamma_batch)[:, None, None, None], gamma_shape)
        jax_gamma = jax.jit(lambda key: jax.random.gamma(key, looks) / looks)
        rows["(iii) jax.random.gamma, per-pixel shape"] = (args.jax_gamma_batch, jax_gamma)

    if args.components:
        rows.update({name: (args.batch, run) for name, run in component_rows(shape).items()})

    times = {name: [] for name in rows}
    for repeat in range(args.repeats + 1):  # repeat 0 compiles and warms up
        for name, (_, run) in rows.items():
            key = jax.random.fold_in(jax.random.key(1), repeat)
            start = time.perf_counter()
            jax.block_until_ready(run(key))
            if repeat:
                times[name].append(time.perf_counter() - start)

    rate = {name: rows[name][0] / statistics.median(t) for name, t in times.items()}
    floor = rate["(i) jax.random.normal per pixel"]
    loop = rate["(ii) NumPy per-image loop (released style)"]
    print(f"batch {shape}, {args.repeats} repeats (median), {jax.devices()[0].device_kind}, "
          f"{jax.local_device_count()} device(s), {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"| {'kernel':44s} | {'images/s':>9s} | {'vs (i)':>7s} | {'vs (ii)':>7s} |")
    print(f"|{'-' * 46}|{'-' * 11}|{'-' * 9}|{'-' * 9}|")
    for name in rows:
        print(f"| {name:44s} | {rate[name]:9.1f} | {rate[name] / floor:6.2f}x | {rate[name] / loop:6.2f}x |")
    verdict = all(rate[m] >= floor / 2 and rate[m] >= 2 * loop for m in speckle.MODELS)
    print(f"targets (every model >= 0.5x of (i) and >= 2x of (ii)): {'met' if verdict else 'NOT met'}")

    step_seconds = args.train_step_seconds
    if args.with_train_step:
        import train_step  # benchmarks/train_step.py, beside this file

        step_seconds = train_step.jax_step_seconds(train_step.bench_config(8), 3)
    if step_seconds:
        small = images[:8]
        print(f"share of the ViT-B/16 train step at batch 8 ({step_seconds:.2f} s/step), target < 2%:")
        for model in speckle.MODELS:
            seconds = median_seconds(lambda key, model=model: speckle.apply_sare(
                key, small, model=model, prob=1.0, strength_range=DEFAULT_RANGES[model])[0], args.repeats)
            print(f"  {model:16s} {seconds * 1e3:7.2f} ms = {100 * seconds / step_seconds:.3f}%")


if __name__ == "__main__":
    main()
