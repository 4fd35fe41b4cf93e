"""The released SARMAE code's teacher: DINOv3's patch embedding + final LayerNorm, no transformer blocks.

What the public code actually ran as its "DINOv3 teacher" (the paper describes the full DINOv3, see
`dinov3.py`). `images [B, H, W, 3] (ImageNet-normalised) -> patch tokens [B, N, D]`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sarmae_jax.models import vit
from sarmae_jax.models.patches import PatchEmbed

Dtype = Any


class ReleasedTeacher(nn.Module):
    """Patch embedding + LayerNorm, as the released SARMAE code's teacher. `[B, H, W, 3] -> [B, N, D]`.

    Params `patch_embed/proj`, `norm`, `cls_token`: the released `SimplifiedDINOv3`'s state dict (its
    `optical_encoder.*` in a released pre-training checkpoint; `sarmae_jax.convert.released`)."""

    patch_size: int = 16
    width: int = 768
    norm_eps: float = 1e-5  # DINOv3's final norm epsilon
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        # Unused, as in the released SimplifiedDINOv3; kept so the params are its state dict and round-trip.
        self.param("cls_token", nn.initializers.zeros_init(), (1, 1, self.width), jnp.float32)
        x = PatchEmbed(self.patch_size, self.width, self.dtype, name="patch_embed")(images)
        return nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="norm")(x)


def build(cfg, dtype: Dtype = jnp.float32, scan_unroll: int = 1) -> tuple[ReleasedTeacher, int]:
    """`cfg`: the `sarc.teacher` config. Returns the module and its token width (no blocks: `scan_unroll`
    has nothing to unroll)."""
    width = vit.VIT_SIZES[cfg.size]["width"]
    return ReleasedTeacher(patch_size=cfg.patch_size, width=width, dtype=dtype), width
