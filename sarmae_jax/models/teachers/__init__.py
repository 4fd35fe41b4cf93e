"""Frozen optical teachers for SARC: `images [B, H, W, 3] (ImageNet-normalised) -> patch tokens [B, N, Dt]`.

A teacher is a swappable part: `build_teacher(cfg)` returns a Linen module and its output width;
its parameters are loaded once (`sarmae_jax.convert.teacher_weights.load_teacher_params`), live outside the
train state and never reach the optimizer.

Kinds (`sarc.teacher.kind`), one module each:
  - `dinov3` (`dinov3.py`): the full DINOv3 ViT, the paper's teacher;
  - `released` (`released.py`): what the public SARMAE code ran: DINOv3's patch embedding and final
    LayerNorm only;
  - `vit`, `dinov2`, `dinov2_reg` (`vit_teacher.py`): a plain frozen ViT, DINOv2 without / with its
    4 register tokens.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from sarmae_jax.models.teachers import dinov3, released, vit_teacher

Dtype = Any
RANDOM_INIT = "random-init"  # an explicit request for an untrained teacher (tests, smoke runs); never a fallback

# kind -> (teacher_cfg, dtype, scan_unroll) -> (module, output width)
TEACHERS: dict[str, Callable[[Any, Dtype, int], tuple[nn.Module, int]]] = {
    "dinov3": dinov3.build,
    "released": released.build,
    "vit": vit_teacher.build_plain,
    "dinov2": vit_teacher.build_dinov2,
    "dinov2_reg": vit_teacher.build_dinov2_with_registers,
}


def build_teacher(cfg, dtype: Dtype = jnp.float32, scan_unroll: int = 1) -> tuple[nn.Module, int]:
    """`cfg`: the `sarc.teacher` config (kind, size, patch_size, checkpoint). `scan_unroll`: the teacher's
    blocks unrolled per loop trip (the train step passes `model.scan_unroll`: the recipes unroll fully, so
    the compiler sees, fuses and counts every block; the parameters stay stacked either way)."""
    if cfg.kind not in TEACHERS:
        raise ValueError(f"config.sarc.teacher.kind={cfg.kind!r}: expected one of {sorted(TEACHERS)}")
    return TEACHERS[cfg.kind](cfg, dtype, scan_unroll)


def teacher_identity(cfg) -> str:
    """A name for the teacher a config describes, stored with precomputed tokens and checked by the trainer."""
    checkpoint = str(cfg.checkpoint).rstrip("/").rsplit("/", 1)[-1]
    return f"{cfg.kind}/{cfg.size}/p{cfg.patch_size}:{checkpoint}"
