"""On-device preprocessing inside the train step: integer pixels -> [0, 1] -> (SARE) -> normalised.

The normalisation is one rule for the whole project (pre-training, evaluation, export), defined in
`data_pipelines.normalization` and recorded in every manifest and checkpoint, so nothing downstream
has to guess.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.normalization import IMAGENET_MEAN, IMAGENET_STD, SAR_MEAN, SAR_STD


def to_unit_interval(pixels: jax.Array) -> jax.Array:
    """Integer pixels `[..., C]` (uint8 or uint16) -> float32 in [0, 1]; floats pass through unchanged."""
    if jnp.issubdtype(pixels.dtype, jnp.integer):
        return pixels.astype(jnp.float32) / float(np.iinfo(pixels.dtype).max)
    return pixels.astype(jnp.float32)


def normalize_sar(intensity: jax.Array, channels: int) -> jax.Array:
    """`[B, H, W, 1]` in [0, 1] -> `[B, H, W, channels]` with mean 0.5 / std 0.5 normalisation."""
    x = (intensity - SAR_MEAN) / SAR_STD
    if x.shape[-1] != channels:
        x = jnp.broadcast_to(x, x.shape[:-1] + (channels,))
    return x


def normalize_optical(rgb: jax.Array) -> jax.Array:
    """`[B, H, W, 3]` in [0, 1] -> ImageNet-normalised (what DINO-family teachers were trained on)."""
    return (rgb - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def denormalize_sar(x: jax.Array) -> jax.Array:
    """Inverse of `normalize_sar` (first channel), for pictures: `[..., C]` -> `[..., 1]` in [0, 1]."""
    return jnp.clip(x[..., :1] * SAR_STD + SAR_MEAN, 0.0, 1.0)
