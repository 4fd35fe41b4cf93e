"""The frozen teacher on paired rows only, with static shapes, balanced over devices and micro-batches.

The batch sampler (`data/batch_sampling.py`) interleaves paired and unpaired examples at exactly
`data.paired_share` = q: any L consecutive rows of a global batch hold floor(L q) or ceil(L q) paired
ones. The train step splits the global batch of B rows over G = data x fsdp devices in contiguous
blocks of L = B / G rows, and into A micro-batches by stride (`step.micro_batches`: row r goes to
micro-batch r mod A). So:

1. `order(is_paired, G)`: within each device block, paired rows first (a stable sort). Paired row s of
   a block lands at local row s, in micro-batch s mod A: every block's paired rows are dealt round
   robin to the micro-batches, and within each (device, micro-batch) block they come first. The loss
   is a mean over rows, so reordering the rows of a batch changes neither it nor its gradient.
2. `capacity(B, G, A, q)`: a static bound C on the paired rows of one (device, micro-batch) block.
3. `select(x, G, C)`: the first C rows of each of the G device blocks of a (micro-)batch, a local slice
   on every device. The teacher, the anchor head and the alignment loss run on those G * C rows only;
   the unpaired rows among them count nothing (their `is_paired` is False).

Every device runs the teacher on the same C rows per micro-batch: balanced, no communication. Without
a share (`paired_share=None`, the natural mix) nothing bounds a block's paired count, and the teacher
runs on every row. `missed` counts paired rows outside the selection (0 whenever the batch comes from
the sampler); the training loop stops on a non-zero count rather than train on a wrong loss.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def capacity(batch_size: int, batch_shards: int, accum: int, paired_share: float | None) -> int:
    """C: rows per (device, micro-batch) block the teacher runs on, out of `batch_size / (shards * accum)`.

    A device block of L = B / G rows holds at most floor(L q) + 1 paired rows (the sampler's exact
    share; the + 1 also covers the float rounding of its floors at large stream positions); dealt round
    robin to A micro-batches, at most ceil of that / A each.
    """
    per_micro_block = batch_size // (batch_shards * accum)
    if paired_share is None or paired_share >= 1.0:
        return per_micro_block
    if paired_share <= 0.0:
        return 0
    block = batch_size // batch_shards
    per_block = min(block, math.floor(block * paired_share + 1e-3) + 1)
    return min(per_micro_block, -(-per_block // accum))


def teacher_row_fraction(batch_size: int, batch_shards: int, accum: int, paired_share: float | None) -> float:
    """Share of a batch's rows that run the teacher: G * A * C / B (for the FLOP count)."""
    return batch_shards * accum * capacity(batch_size, batch_shards, accum, paired_share) / batch_size


def order(is_paired: jax.Array, batch_shards: int) -> jax.Array:
    """`[B]` bool -> `[G, L]` int32 local row order: each device block's paired rows first, stably."""
    blocks = is_paired.reshape(batch_shards, -1)
    return jnp.argsort(~blocks, axis=1, stable=True).astype(jnp.int32)


def apply_order(tree, local_order: jax.Array):
    """Reorder the rows of every `[B, ...]` leaf by `order`'s `[G, L]` local order (a per-block gather)."""
    g, l = local_order.shape

    def take(x):
        blocks = x.reshape(g, l, *x.shape[1:])
        idx = local_order.reshape(g, l, *([1] * (x.ndim - 1)))
        return jnp.take_along_axis(blocks, idx, axis=1).reshape(x.shape)

    return jax.tree.map(take, tree)


def select(x: jax.Array, batch_shards: int, cap: int) -> jax.Array:
    """`[b, ...]` -> `[G * C, ...]`: the first C rows of each of the G contiguous device blocks."""
    blocks = x.reshape(batch_shards, x.shape[0] // batch_shards, *x.shape[1:])
    return blocks[:, :cap].reshape(batch_shards * cap, *x.shape[1:])


def missed(is_paired_micro: jax.Array, batch_shards: int, cap: int) -> jax.Array:
    """`[A, b]` bool (ordered, per micro-batch) -> int32 count of paired rows outside the selection."""
    a, b = is_paired_micro.shape
    blocks = is_paired_micro.reshape(a, batch_shards, b // batch_shards).astype(jnp.int32)
    return jnp.sum(blocks) - jnp.sum(blocks[:, :, :cap])
