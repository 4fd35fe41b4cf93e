"""Analytic model FLOPs of one SARMAE training step, for throughput, TFLOP/s and MFU.

Counts multiply-adds of matrix products as 2 FLOPs (the convention of MFU reports); elementwise work
(norms, GELU, softmax) is left out. The backward pass of a trained part costs twice its forward,
so a trained part counts 3x its forward and the frozen teacher 1x (no backward).

Per transformer block over T tokens, width D, MLP width M = 4D:
    qkv 2*T*D*3D + attention scores and values 2*2*T*T*D + output 2*T*D*D + MLP 2*2*T*D*M
"""
from __future__ import annotations

from sarmae_jax.models import mae, patches, sarmae, teachers, vit
from sarmae_jax.runtime import tpu_topology
from sarmae_jax.training import paired_rows

TEACHER_CHANNELS = 3  # the teacher sees the optical RGB image, whatever `model.in_channels` the SAR student has


def block_forward_flops(tokens: int, width: int, mlp_ratio: float = 4.0) -> float:
    t, d = tokens, width
    m = mlp_ratio * d
    return 2 * t * d * 3 * d + 4 * t * t * d + 2 * t * d * d + 4 * t * d * m


def vit_forward_flops(tokens: int, width: int, depth: int, patch_pixels: int, patches: int) -> float:
    """Patch embedding of `patches` patches (`patch_pixels` inputs each) + `depth` blocks over `tokens`."""
    return 2 * patches * patch_pixels * width + depth * block_forward_flops(tokens, width)


def train_step_flops_per_image(config, live_teacher: bool = True, teacher_row_fraction: float = 1.0) -> float:
    """Model FLOPs of one training step per image (forward + backward, teacher forward only).

    `live_teacher=False`: the dataset's precomputed teacher tokens replace the teacher, which then costs 0.
    `teacher_row_fraction`: the share of a batch's rows the teacher runs on (`paired_rows`; 1 = every
    row); the anchor head runs on the same rows.
    """
    return (3 * _trained_forward_flops(config, teacher_row_fraction)
            + (teacher_flops_per_image(config) * teacher_row_fraction if live_teacher else 0.0))


def train_step_flops(config, batch_shards: int, live_teacher: bool = True) -> tuple[float, float]:
    """(model FLOPs of one global step, the teacher's share of them), with the teacher on the rows the
    step runs it on for a batch split over `batch_shards` data x fsdp devices (`paired_rows`)."""
    t = config.train
    fraction = paired_rows.teacher_row_fraction(t.batch_size, batch_shards, t.grad_accum_steps,
                                                config.data.paired_share)
    total = train_step_flops_per_image(config, live_teacher, fraction) * t.batch_size
    teacher = teacher_flops_per_image(config) * fraction * t.batch_size if live_teacher else 0.0
    return total, teacher


def _trained_forward_flops(config, head_row_fraction: float = 1.0) -> float:
    m = config.model
    enc = vit.VIT_SIZES[m.size]
    n = patches.num_patches(m.image_size, m.patch_size)
    k = mae.num_kept(n, m.mask_ratio)
    patch_pixels = m.patch_size**2 * sarmae.input_channels(m)
    dec = m.decoder
    # The encoder embeds all N patches, then keeps K (+ class token) through the blocks.
    encoder = vit_forward_flops(k + 1, enc["width"], enc["depth"], patch_pixels, n)
    decoder = (2 * (k + 1) * enc["width"] * dec.width
               + dec.depth * block_forward_flops(n + 1, dec.width)
               + 2 * n * dec.width * patch_pixels)
    trained = encoder + decoder
    if config.sarc.enabled:
        tw = vit.VIT_SIZES[config.sarc.teacher.size]["width"]
        head = 2 * k * enc["width"] * enc["width"] + 2 * k * enc["width"] * tw  # anchor head
        trained += head * head_row_fraction
    return trained


def teacher_flops_per_image(config) -> float:
    """Forward FLOPs of the frozen teacher on one image (0 without SARC)."""
    if not config.sarc.enabled:
        return 0.0
    m, t = config.model, config.sarc.teacher
    n = patches.num_patches(m.image_size, m.patch_size)
    tw = vit.VIT_SIZES[t.size]["width"]
    teacher_pixels = t.patch_size**2 * TEACHER_CHANNELS
    if t.kind == "released":
        return 2 * n * teacher_pixels * tw
    # The teacher's blocks run over class + register tokens + all N patches (DINOv3 and DINOv2-with-
    # registers carry 4 registers); the module of the configured kind knows its count.
    module, _ = teachers.build_teacher(t)
    tokens = 1 + getattr(module, "num_registers", 0) + n
    return vit_forward_flops(tokens, tw, vit.VIT_SIZES[t.size]["depth"], teacher_pixels, n)


# Dense bf16 peak TFLOP/s of one device (one chip for TPUs, one GPU), from the vendors' data sheets.
# Matched against `jax.Device.device_kind` by substring, first match wins (so "H100 PCIe" before "H100",
# "TPU v5 lite" (v5e) before "TPU v5" (v5p)). The TPU rows are the chip table's (runtime/tpu_topology.py).
# MFU is reported against these whatever model.dtype is: it is the share of what the device could do.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = tuple(sorted(
    ((chip.device_kind, chip.peak_bf16_tflops) for chip in tpu_topology.CHIPS.values()),
    key=lambda row: -len(row[0]))) + (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("B200", 2250.0),
    ("A100", 312.0),
)


def peak_tflops_per_device(device_kind: str, override: float | None = None) -> float | None:
    """The device's dense bf16 peak in TFLOP/s: `override` if given, else from `PEAK_TFLOPS`, else None."""
    if override is not None:
        return float(override)
    kind = device_kind.lower()
    for name, peak in PEAK_TFLOPS:
        if name.lower() in kind:
            return peak
    return None
