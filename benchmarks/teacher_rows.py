"""The recipe's train step with the frozen teacher on every row against the teacher on paired rows only
(sarmae_jax/training/paired_rows.py), side by side in one process, round robin.

    PYTHONPATH=. python benchmarks/teacher_rows.py [--size base] [--image_size 112] [--batch 20] [--steps 4]
                                                   [--dtype float32] [--out teacher_rows.json]

Both variants: ViT-{size}/16 MAE + SARC against the full DINOv3 ViT-B/16 teacher (the recipe's teacher,
random weights: the time does not depend on them), AdamW, the same batch (paired rows at the recipe's
exact share 0.7, as the batch sampler lays them out) and the same jitted builder as training
(`training.state.build`). "every row" is the same step with `data.paired_share=None`, which runs the
teacher on every row as before; the losses of the two are printed and must agree.
Per variant: median ms/step, images/s, analytic model FLOPs with and without the teacher, and the
share of the machine's float32 matmul peak (a 2048^3 jnp.dot) they reach.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np

from configs import sarmae_vit_b16
from sarmae_jax.convert import teacher_weights
from sarmae_jax.data import batch_sampling
from sarmae_jax.runtime import sharding
from sarmae_jax.training import flops, paired_rows
from sarmae_jax.training import state as state_lib

SHARE = 0.7


def config(size: str, image_size: int, batch: int, dtype: str, share: float | None):
    c = sarmae_vit_b16.get_config()
    c.model.size, c.model.image_size, c.model.dtype = size, image_size, dtype
    c.sarc.teacher.checkpoint = "random-init"  # the recipe's teacher (DINOv3 ViT-B/16), random weights
    c.train.batch_size, c.train.num_steps = batch, 1000
    c.data.paired_share = share
    return c


def make_batch(c, position: int = 0) -> dict[str, np.ndarray]:
    """Batch `position` of the sampler's stream at the exact share: random pixels, its paired rows."""
    b, s = c.train.batch_size, c.model.image_size
    rng = np.random.default_rng(position)
    return {"sar": rng.integers(0, 255, (b, s, s, 1), dtype=np.uint8),
            "optical": rng.integers(0, 255, (b, s, s, 3), dtype=np.uint8),
            "is_paired": batch_sampling.paired_at(position * b + np.arange(b), SHARE)}


def variant(c, mesh):
    """(closure running one step and returning its loss, compile + first step seconds)."""
    parts = state_lib.build(c, mesh, epoch_size=100 * c.train.batch_size)
    teacher = teacher_weights.load_teacher_params(c.sarc.teacher, parts.modules.teacher, c.model.image_size)
    step, batch = parts.jit_step(), make_batch(c)
    box = {"state": parts.init_state(jax.random.key(0))}

    def run() -> float:
        with jax.set_mesh(mesh):
            box["state"], metrics = step(box["state"], batch, teacher)
        return float(metrics["loss"])  # waits for the step

    t = time.perf_counter()
    run()
    return run, time.perf_counter() - t


def matmul_peak_gflops(n: int = 2048) -> float:
    a = jax.numpy.ones((n, n), jax.numpy.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(5))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="base", help="student encoder size (the ViT-B/16 recipe: base)")
    p.add_argument("--image_size", type=int, default=112)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--steps", type=int, default=4, help="timed rounds (each runs every variant once)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args()

    mesh = sharding.make_mesh(config(a.size, a.image_size, a.batch, a.dtype, SHARE).mesh)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    peak = matmul_peak_gflops() if jax.devices()[0].platform == "cpu" else None
    print(f"machine: {os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.devices()[0].device_kind}; "
          f"{jax.device_count()} device(s)" + (f"; f32 matmul peak {peak:.1f} GFLOP/s" if peak else ""))
    variants, info = {}, {}
    for name, share in (("teacher on every row", None), ("teacher on paired rows", SHARE)):
        c = config(a.size, a.image_size, a.batch, a.dtype, share)
        variants[name], compile_s = variant(c, mesh)
        total, teacher = flops.train_step_flops(c, shards)
        rows = paired_rows.teacher_row_fraction(a.batch, shards, c.train.grad_accum_steps, share)
        info[name] = {"compile_and_first_step_s": compile_s, "flops_per_step": total,
                      "teacher_flops_per_step": teacher, "teacher_rows": round(rows * a.batch)}
    losses = {name: [] for name in variants}
    times = {name: [] for name in variants}
    for _ in range(a.steps):  # round robin: both see the same (shared) machine
        for name, run in variants.items():
            t = time.perf_counter()
            losses[name].append(run())
            times[name].append(time.perf_counter() - t)
    print(f"ViT-{a.size}/16 student at {a.image_size} px + DINOv3 ViT-B/16 teacher, {a.dtype}, batch {a.batch} "
          f"(paired share {SHARE}: {int(make_batch(config(a.size, a.image_size, a.batch, a.dtype, SHARE))['is_paired'].sum())}"
          f" paired rows), median of {a.steps} steps")
    results = {}
    for name in variants:
        s = statistics.median(times[name])
        i = info[name]
        r = dict(i, ms_per_step=1e3 * s, images_per_s=a.batch / s, losses=losses[name],
                 model_gflop_per_s=i["flops_per_step"] / s / 1e9,
                 model_gflop_per_s_without_teacher=(i["flops_per_step"] - i["teacher_flops_per_step"]) / s / 1e9)
        if peak:
            r["share_of_matmul_peak"] = r["model_gflop_per_s"] / peak
            r["share_of_matmul_peak_without_teacher"] = r["model_gflop_per_s_without_teacher"] / peak
        results[name] = r
        print(f"  {name:24s} teacher rows {i['teacher_rows']:3d}/{a.batch}  {r['ms_per_step']:8.0f} ms/step  "
              f"{r['images_per_s']:6.2f} img/s  model {i['flops_per_step'] / 1e9:7.1f} GFLOP/step "
              f"(teacher {i['teacher_flops_per_step'] / 1e9:6.1f})  losses {['%.5f' % x for x in losses[name]]}")
    every, paired = (results[n]["ms_per_step"] for n in variants)
    print(f"  step time saved: {1 - paired / every:.1%}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"machine": f"{os.cpu_count()} CPU cores", "jax": jax.__version__, "args": vars(a),
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
