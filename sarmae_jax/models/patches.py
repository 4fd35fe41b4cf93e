"""Patches: the grid arithmetic, (un)patchify, and the patch embedding.

Layout conventions (chosen so that PyTorch conversion is a transpose, never a re-ordering):
images are NHWC `[B, H, W, C]`; a patch is flattened in (row, column, channel) order, as MAE's
`patchify`; patches are row-major.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sarmae_jax.models.initializers import conv_as_dense_init, partitioned

Dtype = Any


def num_patches(image_size: int, patch_size: int) -> int:
    """Patches of a square `image_size` image cut into `patch_size` squares: `(image_size / patch_size) ** 2`."""
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
    return (image_size // patch_size) ** 2


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """`[B, H, W, C]` -> `[B, (H/p)*(W/p), p*p*C]`, patches row-major, pixels (row, col, channel)."""
    b, h, w, c = images.shape
    p = patch_size
    x = images.reshape(b, h // p, p, w // p, p, c)
    x = jnp.einsum("bhpwqc->bhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, channels: int) -> jax.Array:
    """Inverse of `patchify` for a square grid: `[B, N, p*p*C]` -> `[B, H, W, C]`."""
    b, n, _ = patches.shape
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"unpatchify expects a square patch grid, got {n} patches")
    p = patch_size
    x = patches.reshape(b, g, g, p, p, channels)
    x = jnp.einsum("bhwpqc->bhpwqc", x)
    return x.reshape(b, g * p, g * p, channels)


class PatchEmbed(nn.Module):
    """Non-overlapping `p x p` patches -> linear projection. `[B, H, W, C]` -> `[B, N, D]`."""

    patch_size: int
    width: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        p = self.patch_size
        x = nn.Conv(
            self.width,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            # MAE initialises the patch projection like a Linear layer (xavier on the flattened kernel).
            kernel_init=partitioned(conv_as_dense_init, (None, None, None, "embed")),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)),
            name="proj",
        )(images)
        b, gh, gw, d = x.shape
        return x.reshape(b, gh * gw, d)
