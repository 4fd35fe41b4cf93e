"""ViT-B/16 MAE + SARC train step on this machine: JAX vs the same step in PyTorch, side by side.

    PYTHONPATH=. python benchmarks/train_step.py [--batch 8] [--steps 6] [--per_block_params] [--skip_torch]
                                                 [--teacher dinov3|released] [--attention xla] [--scan_unroll 1]

The JAX step is the ViT-B/16 recipe (configs/sarmae_vit_b16.py: blocks scanned with the loop unrolled)
in float32, built and jitted by the trainer's own builder (`sarmae_jax.training.state.build`);
`--attention` and `--scan_unroll` override the recipe for ablations.

Both sides: ViT-B/16 encoder on 25% visible patches, 512x8 decoder, SARC head (768 -> 768 -> 768 + LN)
against a frozen teacher, AdamW, float32. `--teacher dinov3` (the default) is the recipe's teacher: the
full DINOv3 ViT-B/16 (12 blocks over class + 4 register + 196 patch tokens, random weights: the speed
does not depend on them); `--teacher released` is the released code's simplified teacher (patch-embedding
conv + LN only). Every printed row names the teacher it ran.
PyTorch side: transformers' `ViTMAEForPreTraining` (the public SARMAE code's model family) plus the
same head and the same teacher (transformers' `DINOv3ViTModel`, or the conv + LN). Model FLOPs are analytic
(sarmae_jax/training/flops.py):

    per block over T tokens, width D:  2*T*D*3D + 4*T^2*D + 2*T*D^2 + 4*T*D*4D
    step = 3 x (encoder on 50 tokens + decoder on 197 tokens + head) + teacher forward

and are compared with the machine's measured float32 matmul peak (a large jnp.dot).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import sarmae_vit_b16
from sarmae_jax.convert import teacher_weights
from sarmae_jax.runtime import sharding
from sarmae_jax.training import flops
from sarmae_jax.training import state as state_lib


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def torch_matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The same 2048^3 float32 matmul in PyTorch (MKL on CPU): how far apart the two GEMM libraries are."""
    import torch

    a = torch.ones(n, n)
    a @ a
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


TEACHER_LABELS = {
    "dinov3": "the recipe's teacher: full DINOv3 ViT-B/16",
    "released": "released teacher: patch embedding + LN only",
}


def bench_config(batch: int, attention: str | None = None, scan_unroll: int | None = None,
                 teacher: str = "dinov3"):
    """The ViT-B/16 recipe (configs/sarmae_vit_b16.py) in float32 at `batch`, with `teacher`: the recipe's
    own (`dinov3`) or the released simplified one (`released`); random teacher weights either way."""
    c = sarmae_vit_b16.get_config()
    c.model.dtype = "float32"
    c.sarc.teacher.kind = teacher
    c.sarc.teacher.checkpoint = "random-init"
    c.train.batch_size = batch
    c.sare.enabled = True
    c.train.num_steps = 1000
    if attention is not None:
        c.model.attention_impl = attention
    if scan_unroll is not None:
        c.model.scan_unroll = scan_unroll
    return c


def jax_step(c):
    """A closure running one jitted train step (state donated and carried), after compiling and a first step."""
    batch = c.train.batch_size
    parts = state_lib.build(c, sharding.make_mesh(c.mesh), epoch_size=100 * batch)
    state = parts.init_state(jax.random.key(0))
    teacher_params = teacher_weights.load_teacher_params(c.sarc.teacher, parts.modules.teacher, 224)
    rng = np.random.default_rng(0)
    batch_np = {
        "sar": rng.integers(0, 255, (batch, 224, 224, 1), dtype=np.uint8),
        "optical": rng.integers(0, 255, (batch, 224, 224, 3), dtype=np.uint8),
        "is_paired": np.arange(batch) % 4 != 3,
    }
    train_step = parts.jit_step()
    box = {"state": state}

    def step():
        box["state"], metrics = train_step(box["state"], batch_np, teacher_params)
        if not np.isfinite(float(metrics["loss"])):  # float() also waits for the step
            raise FloatingPointError("the JAX step produced a non-finite loss")

    t = time.perf_counter()
    step()
    print(f"JAX compile + first step: {time.perf_counter() - t:.1f} s", flush=True)
    return step


def jax_step_seconds(c, steps: int) -> float:
    """Median seconds of `steps` JAX train steps for config `c` (after compiling); for benchmarks/speckle.py."""
    step = jax_step(c)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def torch_teacher(kind: str):
    """`optical [B, 3, 224, 224] -> patch tokens [B, 196, 768]`, frozen: the same teacher as the JAX side."""
    import torch

    if kind == "dinov3":
        from transformers import DINOv3ViTConfig, DINOv3ViTModel

        cfg = DINOv3ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                              patch_size=16, image_size=224, num_register_tokens=4)
        model = DINOv3ViTModel(cfg).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        skip = 1 + cfg.num_register_tokens
        return lambda optical: model(pixel_values=optical).last_hidden_state[:, skip:]
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 768, 16, 16), torch.nn.Flatten(2))
    norm = torch.nn.LayerNorm(768, eps=1e-5)
    for p in list(conv.parameters()) + list(norm.parameters()):
        p.requires_grad_(False)
    return lambda optical: norm(conv(optical).transpose(1, 2))


def torch_step(batch: int, teacher_kind: str = "dinov3"):
    """A closure running one PyTorch train step, after a first step."""
    import torch
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(0)
    cfg = ViTMAEConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=16,
                       decoder_intermediate_size=2048, mask_ratio=0.75, norm_pix_loss=False, image_size=224,
                       patch_size=16, layer_norm_eps=1e-6)
    model = ViTMAEForPreTraining(cfg)
    head = torch.nn.Sequential(torch.nn.Linear(768, 768), torch.nn.ReLU(), torch.nn.Linear(768, 768),
                               torch.nn.LayerNorm(768))
    teacher = torch_teacher(teacher_kind)
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-4, betas=(0.9, 0.95),
                            weight_decay=0.05)
    sar = torch.rand(batch, 3, 224, 224)
    optical = torch.rand(batch, 3, 224, 224)
    paired = (torch.arange(batch) % 4 != 3).float()

    def step():
        # Released-style SARE on [0, 1]: the encoder sees noise, the loss targets the clean image.
        noisy = (sar * torch.exp(0.3 * torch.randn(batch, 1, 224, 224))).clamp(1e-8, 1)
        out = model.vit(pixel_values=noisy * 2 - 1)  # random masking inside; latent after the final norm
        latent, mask, ids_restore = out.last_hidden_state, out.mask, out.ids_restore
        logits = model.decoder(latent, ids_restore).logits
        target = (sar * 2 - 1).reshape(batch, 3, 14, 16, 14, 16).permute(0, 2, 4, 3, 5, 1).reshape(batch, 196, 768)
        loss_mae = (((logits - target) ** 2).mean(-1) * mask).sum() / mask.sum()
        ids_keep = torch.argsort(ids_restore, dim=1)[:, : latent.shape[1] - 1]
        with torch.no_grad():
            t_tokens = teacher(optical)
            t_vis = torch.gather(t_tokens, 1, ids_keep[:, :, None].expand(-1, -1, 768))
        s = head(latent[:, 1:])
        cos = torch.nn.functional.cosine_similarity(s, t_vis, dim=-1).mean(1)
        align = ((1 - cos) * paired).sum() / paired.sum().clamp(min=1)
        loss = loss_mae + 0.8 * align
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(head.parameters()), 1.0)
        opt.step()

    step()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed rounds")
    parser.add_argument("--skip_torch", action="store_true")
    parser.add_argument("--per_block_params", action="store_true",
                        help="also time the step with unstacked per-block parameters (model.scan_layers=False)")
    parser.add_argument("--teacher", choices=sorted(TEACHER_LABELS), default="dinov3",
                        help="dinov3: the recipe's full teacher (default); released: patch embedding + LN only")
    parser.add_argument("--attention", default=None, help="model.attention_impl (default: the recipe's)")
    parser.add_argument("--scan_unroll", type=int, default=None, help="model.scan_unroll (default: the recipe's)")
    args = parser.parse_args()

    c = bench_config(args.batch, args.attention, args.scan_unroll, args.teacher)
    teacher = TEACHER_LABELS[args.teacher]
    step_flops = flops.train_step_flops_per_image(c) * args.batch
    peak = matmul_peak_gflops()
    print(f"machine: {os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"f32 matmul peak (2048^3 jnp.dot): {peak:.1f} GFLOP/s")
    print(f"teacher: {teacher} (sarc.teacher.kind={args.teacher!r})")
    print(f"model FLOPs per step (batch {args.batch}): {step_flops / 1e9:.1f} GFLOP")
    steps, short = {}, {}
    recipe = "the recipe" if args.teacher == "dinov3" else "the recipe's student"
    name = f"JAX (sarmae_jax, {recipe}: scanned blocks, loop unrolled; {teacher})"
    steps[name], short[name] = jax_step(c), recipe
    if args.per_block_params:
        c_blocks = bench_config(args.batch, args.attention, args.scan_unroll, args.teacher)
        c_blocks.model.scan_layers = False
        name = f"JAX (sarmae_jax, per-block parameters: model.scan_layers=False; {teacher})"
        steps[name], short[name] = jax_step(c_blocks), "per-block parameters"
    if not args.skip_torch:
        import torch

        torch.set_num_threads(os.cpu_count())
        print(f"f32 matmul peak of PyTorch's GEMM (2048^3, same threads): {torch_matmul_peak_gflops():.1f} GFLOP/s "
              "(shares below are of the best jnp.dot peak above)")
        steps[f"PyTorch {torch.__version__} (transformers ViTMAE; {teacher})"] = torch_step(args.batch, args.teacher)
    # Round robin, so that every implementation sees the same machine (shared CPUs drift by 20%+).
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    print(f"{args.steps} rounds, implementations interleaved; median (and fastest) step")
    print("| implementation | s/step | images/s | GFLOP/s | share of matmul peak |")
    print("|---|---|---|---|---|")
    medians = {}
    for name, ts in times.items():
        s = medians[name] = statistics.median(ts)
        print(f"| {name} | {s:.3f} ({min(ts):.3f}) | {args.batch / s:.2f} | {step_flops / s / 1e9:.1f} | "
              f"{step_flops / s / 1e9 / peak:.0%} |")
    if not args.skip_torch:
        torch_s = medians[list(steps)[-1]]
        for name, label in short.items():
            print(f"JAX, {label} / PyTorch speed: {torch_s / medians[name]:.2f}x")


if __name__ == "__main__":
    main()
