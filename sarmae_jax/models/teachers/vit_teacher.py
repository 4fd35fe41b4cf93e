"""ViT teachers with a position table: a plain ViT (timm / HF names), DINOv2, DINOv2 with registers.

DINOv2 (Oquab et al., 2023) is a ViT with learned positions and LayerScale; its register variant
(Darcet et al., 2023) adds 4 register tokens. Released DINOv2s have 14-pixel patches, so they need
`model.patch_size=14` (the teacher's and the student's patches must coincide).
`images [B, H, W, 3] (ImageNet-normalised) -> patch tokens [B, N, D]`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sarmae_jax.models import vit

Dtype = Any
DINOV2_REGISTERS = 4  # every released DINOv2-with-registers ViT (S/B/L/g) carries 4


class ViTTeacher(nn.Module):
    """A ViT; its patch tokens (class and register tokens dropped) after the final norm. `[B, H, W, 3] -> [B, N, D]`.

    The position table is a parameter (`encoder/pos_embed [1, 1 + N, D]`, N at the input's grid): a frozen
    teacher keeps whatever table its checkpoint was trained with, learned (timm/HF ViT, DINOv2) or MAE's
    fixed sin-cos one (the initial value). A checkpoint made for another grid is resampled once at load.
    With `num_registers=4, layer_scale=True` this is DINOv2 with registers.
    """

    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    num_registers: int = 0
    layer_scale: bool = False
    dtype: Dtype = jnp.float32
    scan_unroll: int = 1  # blocks unrolled per loop trip (`depth`: no loop; parameters stay stacked)

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        tokens = vit.ViTEncoder(
            patch_size=self.patch_size, width=self.width, depth=self.depth, num_heads=self.num_heads,
            dtype=self.dtype, learned_pos_embed=True, num_registers=self.num_registers,
            layer_scale=self.layer_scale, stack=vit.StackOptions(scan_unroll=self.scan_unroll), name="encoder",
        )(images)
        return tokens[:, 1 + self.num_registers:]


def build_plain(cfg, dtype: Dtype = jnp.float32, scan_unroll: int = 1) -> tuple[ViTTeacher, int]:
    size = vit.VIT_SIZES[cfg.size]
    return ViTTeacher(patch_size=cfg.patch_size, dtype=dtype, scan_unroll=scan_unroll, **size), size["width"]


def build_dinov2(cfg, dtype: Dtype = jnp.float32, scan_unroll: int = 1) -> tuple[ViTTeacher, int]:
    size = vit.VIT_SIZES[cfg.size]
    return (ViTTeacher(patch_size=cfg.patch_size, layer_scale=True, dtype=dtype, scan_unroll=scan_unroll, **size),
            size["width"])


def build_dinov2_with_registers(cfg, dtype: Dtype = jnp.float32, scan_unroll: int = 1) -> tuple[ViTTeacher, int]:
    size = vit.VIT_SIZES[cfg.size]
    return (ViTTeacher(patch_size=cfg.patch_size, num_registers=DINOV2_REGISTERS, layer_scale=True, dtype=dtype,
                       scan_unroll=scan_unroll, **size), size["width"])
