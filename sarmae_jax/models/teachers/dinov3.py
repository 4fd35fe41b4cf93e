"""The full DINOv3 ViT (Siméoni et al., 2025) as a frozen SARC teacher: `images [B, H, W, 3] -> patch tokens [B, N, D]`.

What the paper describes and the released SARMAE code did not run (it kept only the patch embedding
and the final norm; that stays available as the `released` teacher kind). Architecture as the official
`dinov3` code and transformers' `DINOv3ViTModel` (S/16, B/16, L/16 and any other plain-MLP size):
  - patch embedding (conv p x p), then `[class, R register ("storage") tokens, patches]`;
  - no absolute position embedding: 2-D rotary embeddings (RoPE) on the queries and keys of the
    patch tokens only (class and register tokens are not rotated);
  - pre-norm blocks with LayerScale on both residual branches, exact GELU MLP;
  - the final LayerNorm; the teacher returns the patch tokens after it (class and registers dropped).
The key bias of the fused qkv projection is zero in every released DINOv3 (`mask_k_bias` upstream,
`key_bias=False` in transformers); the converters write zeros there, so one fused qkv kernel serves.
Inference only: RoPE coordinate augmentation (training-time jitter/rescale) is not applied.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sarmae_jax.models import vit
from sarmae_jax.models.patches import PatchEmbed

Dtype = Any
NUM_REGISTER_TOKENS = 4  # all released DINOv3 ViTs (S/B/L/H+/7B) carry 4 storage tokens
ROPE_THETA = 100.0
NORM_EPS = 1e-5  # DINOv3's "layernormbf16" epsilon, the one its released ViTs use


def rope_tables(head_dim: int, grid_h: int, grid_w: int, theta: float = ROPE_THETA) -> tuple[np.ndarray, np.ndarray]:
    """`(cos, sin)`, each `[grid_h * grid_w, head_dim]` float32, patches row-major.

    As DINOv3: patch centres normalised to [-1, 1] per axis; `head_dim / 4` frequencies
    `theta ** -(4k / head_dim)`; angles `2 pi * coord * freq` for (y, x), flattened `[y freqs, x freqs]`
    and tiled twice so that `rotate_half` pairs channel `i` with `i + head_dim / 2`.
    Computed in float32 exactly as transformers does, so the tables agree to the last bit or two.
    """
    if head_dim % 4:
        raise ValueError(f"DINOv3 RoPE needs a head width divisible by 4, got {head_dim}")
    inv_freq = (1.0 / theta ** np.arange(0, 1, 4 / head_dim, dtype=np.float32)).astype(np.float32)
    ys = (np.arange(0.5, grid_h, dtype=np.float32) / np.float32(grid_h)).astype(np.float32)
    xs = (np.arange(0.5, grid_w, dtype=np.float32) / np.float32(grid_w)).astype(np.float32)
    coords = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    coords = (np.float32(2.0) * coords - np.float32(1.0)).astype(np.float32)
    angles = (np.float32(2 * math.pi) * coords[:, :, None]) * inv_freq[None, None, :]
    angles = np.tile(angles.reshape(coords.shape[0], -1), (1, 2)).astype(np.float32)
    return np.cos(angles), np.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array, num_prefix: int) -> jax.Array:
    """Rotate the patch tokens of `x: [B, T, H, Dh]` (the first `num_prefix` tokens untouched)."""
    prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
    half = patches.shape[-1] // 2
    rotated = jnp.concatenate([-patches[..., half:], patches[..., :half]], axis=-1)
    patches = patches * cos[None, :, None, :] + rotated * sin[None, :, None, :]
    return jnp.concatenate([prefix, patches.astype(x.dtype)], axis=1)


class RopeAttention(nn.Module):
    """Fused-qkv multi-head attention with RoPE on the patch tokens. `[B, T, D] -> [B, T, D]`."""

    num_heads: int
    num_prefix: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        d = x.shape[-1]
        head_dim = d // self.num_heads
        qkv = nn.DenseGeneral((3, self.num_heads, head_dim), dtype=self.dtype, name="qkv")(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, H, Dh]
        q = apply_rope(q, cos, sin, self.num_prefix)
        k = apply_rope(k, cos, sin, self.num_prefix)
        out = jax.nn.dot_product_attention(q, k, v)
        return nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype, name="proj")(out)


class DINOv3Block(nn.Module):
    """`x + ls1(attn(norm1(x)))`, then `x + ls2(mlp(norm2(x)))`; a scan body `(x, None)`."""

    num_heads: int
    num_prefix: int
    mlp_ratio: float = 4.0
    norm_eps: float = NORM_EPS
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array]):
        cos, sin = rope
        d = x.shape[-1]
        h = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="norm1")(x)
        h = RopeAttention(self.num_heads, self.num_prefix, self.dtype, name="attn")(h, cos, sin)
        x = x + vit.LayerScale(name="ls1")(h)
        h = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="norm2")(x)
        h = nn.Dense(int(d * self.mlp_ratio), dtype=self.dtype, name="fc1")(h)
        h = nn.Dense(d, dtype=self.dtype, name="fc2")(vit.gelu(h))
        x = x + vit.LayerScale(name="ls2")(h)
        return x, None


class DINOv3(nn.Module):
    """DINOv3 ViT; `__call__(images [B, H, W, 3] ImageNet-normalised) -> patch tokens [B, N, D]` after the final norm.

    Parameters: `patch_embed/proj`, `cls_token [1, 1, D]`, `register_tokens [1, R, D]`,
    `blocks/...` stacked on a leading depth axis (one scanned block), `norm`.
    """

    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    num_registers: int = NUM_REGISTER_TOKENS
    mlp_ratio: float = 4.0
    rope_theta: float = ROPE_THETA
    norm_eps: float = NORM_EPS
    dtype: Dtype = jnp.float32
    scan_unroll: int = 1  # blocks unrolled per loop trip (`depth`: no loop; parameters stay stacked)

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        b, h, w, _ = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} must be divisible by the DINOv3 patch size {p}")
        x = PatchEmbed(p, self.width, self.dtype, name="patch_embed")(images)
        normal = nn.initializers.normal(0.02)
        cls = self.param("cls_token", normal, (1, 1, self.width), jnp.float32)
        registers = self.param("register_tokens", normal, (1, self.num_registers, self.width), jnp.float32)
        prefix = jnp.concatenate([cls, registers], axis=1).astype(x.dtype)
        x = jnp.concatenate([jnp.broadcast_to(prefix, (b,) + prefix.shape[1:]), x], axis=1)
        cos, sin = rope_tables(self.width // self.num_heads, h // p, w // p, self.rope_theta)
        rope = (jnp.asarray(cos, self.dtype), jnp.asarray(sin, self.dtype))
        num_prefix = 1 + self.num_registers
        blocks = nn.scan(
            DINOv3Block, variable_axes={"params": 0}, split_rngs={"params": True},
            in_axes=nn.broadcast, length=self.depth, unroll=min(max(self.scan_unroll, 1), self.depth),
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(self.num_heads, num_prefix, self.mlp_ratio, self.norm_eps, self.dtype, name="blocks")
        x, _ = blocks(x, rope)
        x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="norm")(x)
        return x[:, num_prefix:]


def build(cfg, dtype: Dtype = jnp.float32, scan_unroll: int = 1,
          num_registers: int = NUM_REGISTER_TOKENS) -> tuple[DINOv3, int]:
    size = vit.VIT_SIZES[cfg.size]
    module = DINOv3(patch_size=cfg.patch_size, num_registers=num_registers, dtype=dtype, scan_unroll=scan_unroll,
                    **size)
    return module, size["width"]
