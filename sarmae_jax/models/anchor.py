"""SARC: the projection head and the cross-modal anchor (alignment) loss.

The encoder's visible patch tokens, through a small head, are pulled towards the frozen optical
teacher's tokens of the same patches. Pairing is a per-example mask, so a batch mixing paired and
unpaired samples has static shapes and no Python branching.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sarmae_jax.models import initializers, vit

Dtype = Any
_head_init = nn.initializers.normal(0.01)  # as released: N(0, 0.01) weights, zero biases


class AnchorHead(nn.Module):
    """Linear(D, D) -> ReLU -> Linear(D, teacher_width) -> LayerNorm. `[B, K, D]` -> `[B, K, teacher_width]`."""

    teacher_width: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        d = tokens.shape[-1]
        x = nn.Dense(d, dtype=self.dtype, param_dtype=self.param_dtype,
                     kernel_init=initializers.partitioned(_head_init, ("embed", "mlp")),
                     bias_init=initializers.partitioned(nn.initializers.zeros, ("mlp",)), name="fc1")(tokens)
        x = nn.relu(x)
        x = nn.Dense(self.teacher_width, dtype=self.dtype, param_dtype=self.param_dtype,
                     kernel_init=initializers.partitioned(_head_init, ("mlp", "embed")),
                     bias_init=initializers.partitioned(nn.initializers.zeros, ("embed",)), name="fc2")(x)
        return vit.layer_norm("norm", self.dtype, self.param_dtype)(x).astype(jnp.float32)


def gather_patches(tokens: jax.Array, ids_keep: jax.Array) -> jax.Array:
    """`tokens: [B, N, D]` (patch order), `ids_keep: [B, K]` -> the kept patches `[B, K, D]`."""
    return jnp.take_along_axis(tokens, ids_keep[:, :, None], axis=1)


def _unit(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    # As torch's cosine_similarity, the norm is clamped by eps; clamping the squared norm (not the norm)
    # also keeps the gradient finite at an all-zero vector.
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def alignment_loss(student: jax.Array, teacher: jax.Array, is_paired: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean over paired samples and visible patches of `1 - cos(student, teacher)`.

    student, teacher: `[B, K, Dt]`; is_paired: `[B]` bool. The teacher receives no gradient.
    Returns `(loss, num_paired)`. With no paired sample the loss is exactly 0 (not NaN).
    """
    teacher = jax.lax.stop_gradient(teacher.astype(jnp.float32))
    # Unpaired samples are replaced by zeros *before* the math (and dropped again after): neither their
    # values nor their gradients can reach the loss, even if they were not finite.
    keep = is_paired[:, None, None]
    student = jnp.where(keep, student.astype(jnp.float32), 0.0)
    teacher = jnp.where(keep, teacher, 0.0)
    cos = jnp.sum(_unit(student) * _unit(teacher), axis=-1)  # [B, K]
    per_sample = jnp.mean(1.0 - cos, axis=1)
    num_paired = jnp.sum(is_paired.astype(jnp.float32))
    total = jnp.sum(jnp.where(is_paired, per_sample, 0.0))
    return total / jnp.maximum(num_paired, 1.0), num_paired
