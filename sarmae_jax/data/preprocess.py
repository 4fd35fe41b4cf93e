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


def normalize_sar(stored: jax.Array, channels: int) -> jax.Array:
    """`[B, H, W, C]` stored values in [0, 1] -> `[B, H, W, channels]`, mean 0.5 / std 0.5 normalisation.

    A single stored channel (C = 1) is repeated to `channels`; C > 1 channels (polarisations) must be
    exactly `channels`: none is repeated or dropped.
    """
    if stored.shape[-1] not in (1, channels):
        raise ValueError(f"SAR images have {stored.shape[-1]} channels (shape {stored.shape}); the model takes "
                         f"{channels}: expected 1 channel (repeated) or exactly {channels}")
    x = (stored - SAR_MEAN) / SAR_STD
    if x.shape[-1] != channels:
        x = jnp.broadcast_to(x, x.shape[:-1] + (channels,))
    return x


def normalize_optical(rgb: jax.Array) -> jax.Array:
    """`[B, H, W, 3]` in [0, 1] -> ImageNet-normalised (what DINO-family teachers were trained on)."""
    return (rgb - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def denormalize_sar(x: jax.Array, data_channels: int = 1) -> jax.Array:
    """Inverse of `normalize_sar`, for pictures: `[B, H, W, C]` -> `[B, data_channels * H, W, 1]` in [0, 1].

    One channel (`data_channels=1`: grey repeated to C, the copies are identical) is shown as it is;
    a multi-channel input shows its `data_channels` channels one above the other (first channel on
    top), so every polarisation is seen.
    """
    x = jnp.clip(x[..., :data_channels] * SAR_STD + SAR_MEAN, 0.0, 1.0)
    if data_channels == 1:
        return x
    b, h, w, c = x.shape
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(b, c * h, w, 1)
