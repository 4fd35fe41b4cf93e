"""Vision Transformer pieces shared by the MAE encoder, the MAE decoder and the ViT teachers.

Flax Linen modules whose parameters carry *logical* axis names (`embed`, `heads`, `mlp`, ...);
`sarmae_jax.runtime.sharding` maps those names to mesh axes, so the model never mentions a mesh.

Layout conventions (chosen so that PyTorch conversion is a transpose, never a re-ordering):
  - images are NHWC, `[B, H, W, C]`;
  - a patch is flattened in (row, column, channel) order, as MAE's `patchify`;
  - tokens are `[B, T, D]`, the class token first.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sarmae_jax.models import attention
from sarmae_jax.models.initializers import dense_init, fused_dense_init, partitioned
from sarmae_jax.models.patches import PatchEmbed
from sarmae_jax.models.positions import sincos_2d

Dtype = Any

# Standard sizes. Decoder sizes are separate (see mae.py); these are encoder / teacher sizes.
VIT_SIZES: dict[str, dict[str, int]] = {
    "mini": dict(width=128, depth=4, num_heads=4),  # smoke runs and tests on CPU
    "tiny": dict(width=192, depth=12, num_heads=3),
    "small": dict(width=384, depth=12, num_heads=6),
    "base": dict(width=768, depth=12, num_heads=12),
    "large": dict(width=1024, depth=24, num_heads=16),
    "huge": dict(width=1280, depth=32, num_heads=16),
}

LAYER_NORM_EPS = 1e-6


# ----------------------------------------------------------------------------------------------
# Transformer block
# ----------------------------------------------------------------------------------------------
def drop_path(x: jax.Array, rate: jax.Array | float, rng: jax.Array | None) -> jax.Array:
    """Stochastic depth on a residual branch `x: [B, ...]`; identity when `rng` is None."""
    if rng is None:
        return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(rng, keep, shape)
    return jnp.where(mask, x / jnp.maximum(keep, 1e-6), 0.0).astype(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm layout: one `qkv` matrix)."""

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str | None = None  # see attention.dot_product_attention; None: explicit

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        if d % self.num_heads:
            raise ValueError(f"width {d} is not divisible by num_heads {self.num_heads}")
        head_dim = d // self.num_heads
        qkv = _Projection(
            (3, self.num_heads, head_dim), 1, ("embed", None, "heads", "kv"), (None, "heads", "kv"),
            self.dtype, self.param_dtype, name="qkv",
        )(x)
        qkv = nn.with_logical_constraint(qkv, ("activation_batch", "activation_length", None, "activation_heads", "activation_kv"))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, H, Dh]
        out = attention.dot_product_attention(q, k, v, self.attention_impl)
        out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
        return _Projection((d,), 2, ("heads", "kv", "embed"), ("embed",), self.dtype, self.param_dtype, name="proj")(out)


def _split_across_devices(logical_axes: tuple[str | None, ...]) -> bool:
    """Whether any of these logical axes is sharded over more than one device under the current
    logical-axis rules and mesh (`jax.set_mesh`); False outside a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return False
    for entry in nn.logical_to_mesh_axes(logical_axes):
        for axis in (entry if isinstance(entry, tuple) else (entry,)):
            if axis is not None and mesh.shape[axis] > 1:
                return True
    return False


class _Projection(nn.Module):
    """`y = x . kernel + bias`, contracting the last `in_axes` axes of x, with an *unflattened* kernel
    `[*in, *features]` (flax's DenseGeneral initialises a flattened 2-D kernel, which logical axis
    names of the full shape cannot describe).

    The product is one 2-D matmul over the kernel viewed as `[prod(in), prod(features)]` (a free
    reshape). Contracting the multi-axis kernel directly makes XLA:CPU materialise a transposed copy
    of it in every backward pass: 3-13% of a ViT-B block's forward and backward on a 2-core CPU.
    The exception is a kernel with a split axis that is not the leading axis of its flattened group
    (tensor parallelism on `heads` in qkv's `[embed, 3, heads, kv]`): the flattened view cannot carry
    that sharding, so such a kernel is contracted as it is.
    """

    features: tuple[int, ...]
    in_axes: int
    kernel_axes: tuple[str | None, ...]
    bias_axes: tuple[str | None, ...]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[x.ndim - self.in_axes:]
        kernel = self.param("kernel", partitioned(fused_dense_init, self.kernel_axes), in_shape + self.features, self.param_dtype)
        bias = self.param("bias", partitioned(nn.initializers.zeros, self.bias_axes), self.features, self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        inner_axes = self.kernel_axes[1:self.in_axes] + self.kernel_axes[self.in_axes + 1:]
        if _split_across_devices(inner_axes):
            contract = (tuple(range(x.ndim - self.in_axes, x.ndim)), tuple(range(self.in_axes)))
            return jax.lax.dot_general(x, kernel, (contract, ((), ()))) + bias
        fan_in, fan_out = int(np.prod(in_shape)), int(np.prod(self.features))
        y = x.reshape(x.shape[:x.ndim - self.in_axes] + (fan_in,)) @ kernel.reshape(fan_in, fan_out)
        return y.reshape(y.shape[:-1] + self.features) + bias


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, `x * Phi(x)`, written as PyTorch's kernel writes it: `x/2 * (1 + erf(x / sqrt(2)))`.

    The same function as `jax.nn.gelu(x, approximate=False)` (within 5e-7 in float32), which goes
    through `erfc`; XLA:CPU expands that into exp, selects and three loops over the activations.
    On the 2-core benchmark CPU, [8, 197, 2048] float32: 1.0 vs 2.6 ms forward, 2.1 vs 3.8 ms backward.
    """
    return x * (0.5 + 0.5 * jax.lax.erf(x * jnp.asarray(2 ** -0.5, x.dtype)))


class Mlp(nn.Module):
    hidden: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        x = nn.Dense(
            self.hidden, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=partitioned(dense_init, ("embed", "mlp")), bias_init=partitioned(nn.initializers.zeros, ("mlp",)),
            name="fc1",
        )(x)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_mlp"))
        # Exact (erf) GELU, as PyTorch's nn.GELU default: the tanh approximation would break parity.
        x = gelu(x)
        return nn.Dense(
            d, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=partitioned(dense_init, ("mlp", "embed")), bias_init=partitioned(nn.initializers.zeros, ("embed",)),
            name="fc2",
        )(x)


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (CaiT; DINOv2, DINOv3): `x * gamma`, `gamma [D]` float32."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param("gamma", partitioned(nn.initializers.ones, ("norm",)), (x.shape[-1],), jnp.float32)
        return x * gamma.astype(x.dtype)


def layer_norm(name: str, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=LAYER_NORM_EPS, dtype=dtype, param_dtype=param_dtype,
        scale_init=partitioned(nn.initializers.ones, ("norm",)), bias_init=partitioned(nn.initializers.zeros, ("norm",)),
        name=name,
    )


class Block(nn.Module):
    """Pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`. `[B, T, D]`.

    Written as a scan body: `__call__(x, layer_index) -> (x, None)`; `layer_index` sets this layer's
    drop-path rate (linearly rising from 0 to `drop_path_rate` over the stack, as timm).
    """

    num_heads: int
    mlp_ratio: float = 4.0
    depth: int = 1
    drop_path_rate: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    layer_scale: bool = False  # LayerScale (`ls1`, `ls2`) on both branches, as DINOv2

    @nn.compact
    def __call__(self, x: jax.Array, layer_index: jax.Array):
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        rate = self.drop_path_rate * layer_index / max(self.depth - 1, 1)
        use_drop = self.drop_path_rate > 0 and not self.deterministic

        def branch_rng():
            return self.make_rng("drop_path") if use_drop else None

        h = layer_norm("norm1", self.dtype, self.param_dtype)(x)
        h = Attention(self.num_heads, self.dtype, self.param_dtype, self.attention_impl, name="attn")(h)
        if self.layer_scale:
            h = LayerScale(name="ls1")(h)
        x = x + drop_path(h, rate, branch_rng())
        h = layer_norm("norm2", self.dtype, self.param_dtype)(x)
        h = Mlp(int(x.shape[-1] * self.mlp_ratio), self.dtype, self.param_dtype, name="mlp")(h)
        if self.layer_scale:
            h = LayerScale(name="ls2")(h)
        x = x + drop_path(h, rate, branch_rng())
        return x, None


REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    # Recompute everything in the backward pass: least memory, ~1/3 more FLOPs.
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep matmul outputs, recompute the cheap elementwise work (norms, GELU, residual adds).
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class StackOptions:
    """How a stack of blocks is compiled: scanned (one block compiled once) and rematerialised.

    `scan_unroll`: scan iterations unrolled per loop trip (`depth` unrolls fully while keeping the
    stacked `[depth, ...]` parameter layout). On GPU a rolled loop keeps XLA from fusing and
    overlapping across blocks: see docs/benchmarks.md (GPU).
    """

    scan: bool = True
    remat: str = "none"
    scan_unroll: int = 1


class BlockStack(nn.Module):
    """`depth` blocks. Scanned parameters are stacked on a leading `layers` axis: `[depth, ...]`."""

    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    options: StackOptions = StackOptions()
    layer_scale: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.options.remat not in REMAT_POLICIES:
            raise ValueError(f"remat policy {self.options.remat!r}: expected one of {sorted(REMAT_POLICIES)}")
        block_cls = Block
        if self.options.remat != "none":
            block_cls = nn.remat(Block, policy=REMAT_POLICIES[self.options.remat], prevent_cse=not self.options.scan)
        kwargs = dict(
            num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, depth=self.depth,
            drop_path_rate=self.drop_path_rate, deterministic=self.deterministic,
            dtype=self.dtype, param_dtype=self.param_dtype, attention_impl=self.attention_impl,
            layer_scale=self.layer_scale,
        )
        indices = jnp.arange(self.depth, dtype=jnp.float32)
        if self.options.scan:
            scanned = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "drop_path": True},
                in_axes=0,
                length=self.depth,
                unroll=min(max(self.options.scan_unroll, 1), self.depth),
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = scanned(**kwargs, name="blocks")(x, indices)
            return x
        for i in range(self.depth):
            x, _ = block_cls(**kwargs, name=f"blocks_{i}")(x, indices[i])
        return x


class ViTEncoder(nn.Module):
    """ViT encoder: patch embedding + class token + fixed sin-cos positions + blocks + final norm.

    `__call__(images, ids_keep=None)`:
      images:   `[B, H, W, C]` float, already normalised.
      ids_keep: `[B, K]` int32 indices of the patches to keep (MAE masking), or None for all N.
    Returns tokens `[B, 1 + R + K, D]` after the final LayerNorm (class token, R register tokens, patches).

    The student is the default (sin-cos, no registers, no LayerScale). Frozen teachers loaded from other
    ViTs use the rest: `learned_pos_embed` (a `pos_embed [1, 1 + N, D]` parameter at this input's grid,
    initialised to the sin-cos table), `num_registers` (`register_tokens [1, R, D]`, inserted after the
    class token without positions, as DINOv2) and `layer_scale`. Encoders imported from fine-tuned timm
    classifiers (`model.pos_embed="learned"`, `model.final_norm=False`) use `learned_pos_embed` and `final_norm`.
    """

    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    stack: StackOptions = StackOptions()
    learned_pos_embed: bool = False
    num_registers: int = 0
    layer_scale: bool = False
    final_norm: bool = True  # False: no norm after the last block (encoders of timm's average-pooling classifiers)

    @nn.compact
    def __call__(self, images: jax.Array, ids_keep: jax.Array | None = None) -> jax.Array:
        b, h, w, _ = images.shape
        if h != w or h % self.patch_size:
            raise ValueError(f"image size {h}x{w} must be square and divisible by the patch size {self.patch_size}")
        x = PatchEmbed(self.patch_size, self.width, self.dtype, self.param_dtype, name="patch_embed")(images)
        grid = h // self.patch_size
        table = sincos_2d(self.width, grid, with_cls_token=True)
        if self.learned_pos_embed:
            pos = self.param("pos_embed", partitioned(lambda *_: jnp.asarray(table[None]), (None, None, "embed")),
                             (1, 1 + grid * grid, self.width), self.param_dtype)[0].astype(x.dtype)
        else:
            pos = jnp.asarray(table, dtype=x.dtype)
        x = x + pos[None, 1:]
        if ids_keep is not None:
            x = jnp.take_along_axis(x, ids_keep[:, :, None], axis=1)
        cls = self.param("cls_token", partitioned(nn.initializers.normal(0.02), (None, None, "embed")), (1, 1, self.width), self.param_dtype)
        prefix = [(cls + pos[None, :1]).astype(x.dtype)]
        if self.num_registers:
            prefix.append(self.param("register_tokens", partitioned(nn.initializers.normal(0.02), (None, None, "embed")),
                                     (1, self.num_registers, self.width), self.param_dtype).astype(x.dtype))
        prefix = jnp.concatenate(prefix, axis=1)
        x = jnp.concatenate([jnp.broadcast_to(prefix, (b,) + prefix.shape[1:]), x], axis=1)
        x = BlockStack(
            self.depth, self.num_heads, self.mlp_ratio, self.drop_path_rate, self.deterministic,
            self.dtype, self.param_dtype, self.attention_impl, self.stack, self.layer_scale, name="stack",
        )(x)
        return layer_norm("norm", self.dtype, self.param_dtype)(x) if self.final_norm else x
