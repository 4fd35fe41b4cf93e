"""The recipe's train step on one accelerator, A/B: variants side by side in one process, round robin, and
the same step in PyTorch. Writes ms/step, images/s, MFU with and without the teacher, and peak memory to JSON.

    python benchmarks/gpu_ab.py --out gpu_ab.json                    # one H200: sized to finish in ~9 minutes
    python benchmarks/gpu_ab.py --smoke --out /tmp/ab.json           # tiny model on CPU: checks the script

Variants (JAX, the ViT-B/16 recipe: bf16, full DINOv3 ViT-B/16 teacher with random weights, batch at the
recipe's exact paired share 0.7, built by the trainer's own `training.state.build`):
  every row      the teacher on every row (`data.paired_share=None`), the step before paired rows
  paired rows    the recipe's step: the teacher on the paired rows only (training/paired_rows.py)
  cudnn          paired rows + `model.attention_impl=cudnn`: every sequence padded to a multiple of 64 with
                 its true length passed (encoder 50 -> 64, decoder 197 -> 256, teacher 201 -> 256;
                 `models/attention.py: padded_attention`); a variant the backend refuses is recorded so,
                 with its message
  where guard    paired rows + `train.nonfinite_guard=where` instead of the `cond`
  batch 512      paired rows at 512 per device
Each `--xla_flags` set (default: command buffers with conditionals; Triton GEMM) reruns the paired-rows
step in a child process, as XLA reads its flags once per process. PyTorch: transformers' ViTMAE (the
same encoder/decoder sizes), the same anchor head, transformers' DINOv3 ViT-B/16 teacher on the paired
rows, bf16 autocast, `torch.compile` (`--no_torch_compile` to skip it), AdamW; the ratio to it is the
JAX step's images/s over PyTorch's, measured in the same run. MFU is against `flops.PEAK_TFLOPS`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import numpy as np

from configs import sarmae_vit_b16
from sarmae_jax.convert import teacher_weights
from sarmae_jax.data import batch_sampling
from sarmae_jax.runtime import sharding
from sarmae_jax.training import flops, layout_plan, loop
from sarmae_jax.training import state as state_lib

SHARE = 0.7
XLA_FLAG_SETS = {
    "command buffers with conditionals": "--xla_gpu_enable_command_buffer=+CONDITIONAL,+WHILE",
    "Triton GEMM": "--xla_gpu_enable_triton_gemm=true",
}


def recipe_config(per_device: int, smoke: bool, **changes):
    c = sarmae_vit_b16.get_config()
    c.sarc.teacher.checkpoint = "random-init"
    c.train.batch_size, c.train.num_steps = per_device * jax.device_count(), 1000
    c.optim.warmup_steps = 10
    if smoke:
        c.model.size, c.model.image_size, c.model.patch_size = "mini", 32, 8
        c.model.decoder.width, c.model.decoder.depth, c.model.decoder.num_heads = 32, 1, 2
        c.sarc.teacher.size, c.sarc.teacher.patch_size = "mini", 8
    for key, value in changes.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def jax_variant(c):
    """(run one step, return its loss; flops per step; teacher flops per step)."""
    mesh = sharding.make_mesh(c.mesh)
    parts = state_lib.build(c, mesh, epoch_size=100 * c.train.batch_size)
    teacher = jax.device_put(teacher_weights.load_teacher_params(c.sarc.teacher, parts.modules.teacher,
                                                                 c.model.image_size), sharding.replicated(mesh))
    b, s = c.train.batch_size, c.model.image_size
    rng = np.random.default_rng(0)
    batch = loop.global_batch({"sar": rng.integers(0, 256, (b, s, s, 1), dtype=np.uint8),
                               "optical": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
                               "is_paired": batch_sampling.paired_at(np.arange(b), SHARE)},
                              sharding.batch_sharding(mesh))
    step = parts.jit_step()
    box = {"state": parts.init_state(jax.random.key(0))}

    def run() -> float:
        with jax.set_mesh(mesh):
            box["state"], m = step(box["state"], batch, teacher)
        return float(m["loss"])

    total, teacher_flops = flops.train_step_flops(c, mesh.shape["data"] * mesh.shape["fsdp"])
    return run, total, teacher_flops


def torch_variant(per_device: int, smoke: bool, compile_: bool):
    """The same step in PyTorch (module docstring); returns (run, None, None)."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel, ViTMAEConfig, ViTMAEForPreTraining

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    size, patch, width, depth, heads, dec_w, dec_d, dec_h = ((32, 8, 128, 4, 4, 32, 1, 2) if smoke else
                                                             (224, 16, 768, 12, 12, 512, 8, 16))
    n = (size // patch) ** 2
    mae = ViTMAEForPreTraining(ViTMAEConfig(
        hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=4 * width,
        decoder_hidden_size=dec_w, decoder_num_hidden_layers=dec_d, decoder_num_attention_heads=dec_h,
        decoder_intermediate_size=4 * dec_w, mask_ratio=0.75, image_size=size, patch_size=patch, num_channels=1,
        layer_norm_eps=1e-6)).to(dev)
    teacher = DINOv3ViTModel(DINOv3ViTConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                                             intermediate_size=4 * width, patch_size=patch, image_size=size)).to(dev)
    teacher.requires_grad_(False).eval()
    head = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.Linear(width, width),
                               torch.nn.LayerNorm(width)).to(dev)
    params = list(mae.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    b = per_device
    paired = torch.as_tensor(batch_sampling.paired_at(np.arange(b), SHARE), device=dev)
    rows = paired.nonzero()[:, 0]
    sar = torch.rand(b, 1, size, size, device=dev)
    optical = torch.rand(b, 3, size, size, device=dev)

    def loss_fn():
        with torch.autocast(dev, dtype=torch.bfloat16):
            noisy = sar * torch.distributions.Gamma(4.0, 4.0).sample(sar.shape).to(dev)  # speckle, on device
            out = mae.vit(pixel_values=noisy * 2 - 1)
            latent, mask, ids_restore = out.last_hidden_state, out.mask, out.ids_restore
            pred = mae.decoder(latent, ids_restore).logits
            target = mae.patchify(sar * 2 - 1)
            loss_mae = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
            ids_keep = torch.argsort(ids_restore, dim=1)[:, : latent.shape[1] - 1]
            with torch.no_grad():
                t = teacher(pixel_values=optical[rows]).last_hidden_state[:, -n:]
                t = torch.gather(t, 1, ids_keep[rows][:, :, None].expand(-1, -1, width))
            s = head(latent[rows, 1:])
            align = (1 - torch.nn.functional.cosine_similarity(s.float(), t.float(), dim=-1).mean(1)).mean()
            return loss_mae + 0.8 * align

    step_loss = torch.compile(loss_fn) if compile_ else loss_fn

    def run() -> float:
        loss = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    return run, None, None


def peak_memory_gib() -> float | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", 0) / 1024**3 or None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per_device", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed rounds (each runs every variant once)")
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--smoke", action="store_true", help="tiny model, tiny batches (CPU check of the script)")
    p.add_argument("--no_torch", action="store_true")
    p.add_argument("--no_torch_compile", action="store_true")
    p.add_argument("--only", default=None, help="(internal) run only this JAX variant, print its JSON")
    p.add_argument("--xla_flags", default=",".join(XLA_FLAG_SETS), help="flag sets to try in child processes")
    a = p.parse_args()
    per = 4 if a.smoke else a.per_device
    big = 8 if a.smoke else 512
    specs = {"every row": dict(per=per, changes={"data.paired_share": None}),
             "paired rows": dict(per=per, changes={}),
             "cudnn": dict(per=per, changes={"model.attention_impl": "cudnn"}),
             "where guard": dict(per=per, changes={"train.nonfinite_guard": "where"}),
             f"batch {big}": dict(per=big, changes={})}
    if a.only:
        specs = {a.only: specs[a.only]}
    device = jax.devices()[0]
    peak = flops.peak_tflops_per_device(device.device_kind)
    runs, info, results = {}, {}, {}
    for name, spec in specs.items():
        try:
            c = recipe_config(spec["per"], a.smoke, **spec["changes"])
            t = time.perf_counter()
            run, total, teacher = jax_variant(c)
            run()
            runs[name], info[name] = run, dict(per_device=spec["per"], flops=total, teacher_flops=teacher,
                                               compile_and_first_step_s=time.perf_counter() - t, config=c)
        except Exception as e:  # noqa: BLE001 - a variant the backend refuses (cuDNN, memory) is a result
            results[name] = {"refused": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    if not a.no_torch and not a.only:
        run, _, _ = torch_variant(per, a.smoke, not a.no_torch_compile)
        run()
        runs["PyTorch"], info["PyTorch"] = run, dict(per_device=per, flops=info.get("paired rows", {}).get("flops"),
                                                     teacher_flops=info.get("paired rows", {}).get("teacher_flops"))
    times = {name: [] for name in runs}
    for _ in range(a.steps):  # round robin: every variant sees the same machine state
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    for name in runs:
        s, i = statistics.median(times[name]), info[name]
        r = dict({k: v for k, v in i.items() if k != "config"}, ms_per_step=1e3 * s,
                 images_per_s=i["per_device"] * jax.device_count() / s)
        gpu = next((g for kind, g in layout_plan.GPUS.items() if kind in device.device_kind), None)
        if gpu is not None and name != "PyTorch":  # the plan's bound for this step (docs/scale.md)
            bound = layout_plan.single_device_bound(i["config"], gpu)
            r["bound_ms"], r["measured_over_bound"] = 1e3 * bound["no_overlap_s"], s / bound["no_overlap_s"]
        if i["flops"] and peak:
            r["mfu"] = i["flops"] / s / jax.device_count() / 1e12 / peak
            r["mfu_without_teacher"] = (i["flops"] - i["teacher_flops"]) / s / jax.device_count() / 1e12 / peak
        results[name] = r
    if "PyTorch" in results and "paired rows" in results:
        results["ratio JAX paired rows / PyTorch (images/s)"] = (results["paired rows"]["images_per_s"]
                                                                 / results["PyTorch"]["images_per_s"])
    results["peak memory GiB (process, all variants)"] = peak_memory_gib()
    if a.only:
        print(json.dumps(results))
        return
    for label, flags_ in XLA_FLAG_SETS.items():
        if label not in a.xla_flags.split(","):
            continue
        env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags_).strip())
        cmd = [sys.executable, __file__, "--only", "paired rows", "--out", "-", "--steps", str(a.steps)] + (
            ["--smoke"] if a.smoke else [])
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        results[f"paired rows, XLA_FLAGS {flags_}"] = (json.loads(out.stdout.strip().splitlines()[-1])["paired rows"]
                                                      if out.returncode == 0 else {"refused": out.stderr[-300:]})
    doc = {"device": f"{jax.device_count()} x {device.device_kind}", "jax": jax.__version__, "args": vars(a),
           "measured_on": device.platform, "results": results}
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    for name, r in results.items():
        print(f"{name}: {r}")


if __name__ == "__main__":
    main()
