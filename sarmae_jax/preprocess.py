"""On-device preprocessing inside the train step: integer pixels -> [0, 1] -> (SARE) -> normalised.

The normalisation is one rule for the whole project (pre-training, evaluation, export); it is
written into every checkpoint's metadata as `NORMALIZATION`, so nothing downstream has to guess.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SAR_MEAN, SAR_STD = 0.5, 0.5  # [0, 1] intensities -> [-1, 1], as the released pre-training
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NORMALIZATION = {
    "sar": {"input": "intensity in [0, 1] (integer pixels / dtype max)", "mean": SAR_MEAN, "std": SAR_STD,
            "channels": "grayscale repeated to the model's input channels"},
    "optical": {"input": "RGB in [0, 1] (uint8 / 255)", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
}


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
