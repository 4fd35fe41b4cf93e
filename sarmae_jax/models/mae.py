"""Masked autoencoder: per-sample random masking, the MAE decoder and the masked reconstruction loss.

Shapes stay static under `jit`: the number of kept patches `K = int(N * (1 - mask_ratio))` is fixed
by the config, so every sample keeps the same count and only *which* patches differ.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sarmae_jax.models import initializers, positions, vit

Dtype = Any


class Masking(NamedTuple):
    """Per-sample masking of `N` patches, `K` of them kept.

    ids_keep:    `[B, K]` int32, indices of the visible patches (in shuffle order).
    ids_restore: `[B, N]` int32, position of each patch in the shuffled order (unshuffles the decoder input).
    mask:        `[B, N]` float32, 1 for masked (removed) patches, 0 for visible, in patch order.
    """

    ids_keep: jax.Array
    ids_restore: jax.Array
    mask: jax.Array


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Visible patches per sample, as MAE: `int(N * (1 - ratio))`."""
    return int(num_patches * (1.0 - mask_ratio))


def masking_from_noise(noise: jax.Array, mask_ratio: float) -> Masking:
    """MAE's shuffle-by-noise masking: keep the `K` patches with the smallest noise.

    `noise: [B, N]` any float; passing the same noise as HF `ViTMAEForPreTraining(noise=...)` gives
    identical masks, which the parity tests rely on.
    """
    b, n = noise.shape
    k = num_kept(n, mask_ratio)
    ids_shuffle = jnp.argsort(noise, axis=1)
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    ids_keep = ids_shuffle[:, :k].astype(jnp.int32)
    mask = (ids_restore >= k).astype(jnp.float32)
    return Masking(ids_keep, ids_restore, mask)


def random_masking(key: jax.Array, batch: int, num_patches: int, mask_ratio: float) -> Masking:
    """Uniformly random masking, independently per sample."""
    return masking_from_noise(jax.random.uniform(key, (batch, num_patches)), mask_ratio)


class MAEDecoder(nn.Module):
    """Lightweight MAE decoder. `__call__(latent [B, 1+K, D_enc], ids_restore [B, N]) -> [B, N, p*p*C]`."""

    patch_size: int = 16
    out_channels: int = 3
    width: int = 512
    depth: int = 8
    num_heads: int = 16
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    stack: vit.StackOptions = vit.StackOptions()

    @nn.compact
    def __call__(self, latent: jax.Array, ids_restore: jax.Array) -> jax.Array:
        b, t, _ = latent.shape
        n = ids_restore.shape[1]
        grid = int(round(n**0.5))
        x = nn.Dense(
            self.width, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=initializers.partitioned(initializers.dense_init, ("embed", "decoder_embed")),
            bias_init=initializers.partitioned(nn.initializers.zeros, ("decoder_embed",)), name="embed",
        )(latent)
        mask_token = self.param(
            "mask_token", initializers.partitioned(nn.initializers.normal(0.02), (None, None, "decoder_embed")), (1, 1, self.width), self.param_dtype
        )
        # Append mask tokens for the N - K removed patches, then unshuffle to patch order.
        fill = jnp.broadcast_to(mask_token.astype(x.dtype), (b, n + 1 - t, self.width))
        x_ = jnp.concatenate([x[:, 1:], fill], axis=1)
        x_ = jnp.take_along_axis(x_, ids_restore[:, :, None], axis=1)
        x = jnp.concatenate([x[:, :1], x_], axis=1)
        x = x + jnp.asarray(positions.sincos_2d(self.width, grid, with_cls_token=True), x.dtype)[None]
        x = vit.BlockStack(
            self.depth, self.num_heads, self.mlp_ratio, 0.0, True, self.dtype, self.param_dtype,
            self.attention_impl, self.stack, name="stack",
        )(x)
        x = vit.layer_norm("norm", self.dtype, self.param_dtype)(x)
        x = nn.Dense(
            self.patch_size**2 * self.out_channels, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=initializers.partitioned(initializers.dense_init, ("decoder_embed", None)),
            bias_init=initializers.partitioned(nn.initializers.zeros, (None,)), name="pred",
        )(x)
        return x[:, 1:].astype(jnp.float32)  # drop the class token; loss in f32


def reconstruction_loss(pred: jax.Array, target: jax.Array, mask: jax.Array, norm_pix: bool = False) -> jax.Array:
    """Mean squared error on masked patches only.

    pred, target: `[B, N, P]` (target = `patchify(clean image)`); mask: `[B, N]`, 1 = masked.
    norm_pix: normalise each target patch by its own mean and variance (MAE's `norm_pix_loss`).
    Returns a scalar: mean over masked patches of the per-patch mean squared error.
    """
    target = target.astype(jnp.float32)
    if norm_pix:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.mean((pred - target) ** 2, axis=-1)
    return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)
