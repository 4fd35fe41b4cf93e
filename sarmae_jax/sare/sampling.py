"""Fast, exact, batched samplers for per-pixel noise fields (standard normal, Gamma with a per-row shape).

Why this module exists: on a CPU the speckle kernels are bound by random-number generation.
- JAX lowers its Threefry-2x32 hash on CPU as a rolled 5-iteration `while` loop
  (`jax/_src/random/threefry2x32.py`, `use_rolled_loops=True`), so every draw writes and re-reads
  the whole [n] state arrays five times and nothing fuses with the consumer. `threefry_2x32` here
  is the same hash, bit for bit (a test checks it against `jax.extend.random.threefry_2x32`),
  written unrolled in jnp ops: XLA fuses it into the elementwise consumer (erf_inv, exp, the
  multiply by the image), which makes random bits about 6x cheaper on CPU. The key stays a normal
  Threefry key, so the streams are as reproducible across devices and backends as `jax.random`'s.
- Both output words of a hash are used where a draw needs two values: a Marsaglia-Tsang candidate
  (normal, uniform) costs one hash.
- `jax.random.gamma` with a per-pixel shape runs a `while_loop` rejection sampler per element
  (17-21 images/s for 224x224 on a 2-core CPU in benchmarks/speckle.py). Here Marsaglia-Tsang runs as ONE vectorised
  round over every pixel, materialised once as one array (rejected = -1); the few rejected pixels
  (at most 4.9%, at shape 1) take accepted candidates from a small per-row pool drawn with the
  same shape, located by ranks built from packed mask words (no full-size cumsum or scatter).
  If a row's pool ever runs out (more than 8 standard deviations from the mean for 224x224
  rows), that whole row is redrawn by a `while_loop` until every pixel is accepted, so the result
  is exact in distribution, never truncated.

Assignment of pool candidates to rejected pixels, and the decision to redraw a row, depend only on
which candidates were accepted, which is independent of the accepted values; every output is
therefore an independent accepted Marsaglia-Tsang sample, i.e. exactly Gamma distributed (up to
float32 arithmetic).

Uniforms carry 23 random bits and are taken at bin centres, (k + 1/2) / 2^23, so they lie in the
open interval (0, 1): logs and powers never see 0 or 1. Normals come from the inverse error
function of such uniforms; like `jax.random.normal` in float32 their tails stop near |z| = 5.3.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

_MANTISSA_BITS = 23
_BIN_WIDTH = 2.0**-_MANTISSA_BITS
# |t| below this uses the Taylor series of the Marsaglia-Tsang log acceptance ratio (see
# `_log_acceptance`); 12 terms keep its truncation error under float32 resolution there.
_SERIES_THRESHOLD = 0.25
_SERIES_TERMS = 12
# Rejected fraction of one Marsaglia-Tsang round is at most 0.049 (shape 1); see `_pool_size`.
_GROUP = 32  # rejection bits packed per uint32 word (contiguous pixels) in `_pack_rejections`


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = 0x1BD11BDA


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
    return (x << jnp.uint32(bits)) | (x >> jnp.uint32(32 - bits))


def threefry_2x32(keypair: jax.Array, first: jax.Array, second: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 (20 rounds), unrolled so that XLA fuses it with whatever consumes its words.

    Bit-identical to `jax.extend.random.threefry_2x32(keypair, concatenate([first, second]))`,
    whose two output halves are returned here as a pair.

    Args:
      keypair: `[2]` uint32 key words.
      first, second: uint32 counter words of one shape (the hash's two input lanes).
    Returns:
      (first_out, second_out): uint32 arrays of that shape.
    """
    keys = (keypair[0], keypair[1], keypair[0] ^ keypair[1] ^ jnp.uint32(_THREEFRY_PARITY))
    x0, x1 = first + keys[0], second + keys[1]
    for block in range(5):
        for bits in _THREEFRY_ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, bits) ^ x0
        x0 = x0 + keys[(block + 1) % 3]
        x1 = x1 + keys[(block + 2) % 3] + jnp.uint32(block + 1)
    return x0, x1


def hash_word_pairs(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Two independent streams of `n` uniformly random uint32 words, one Threefry hash per pair.

    Counter i of the first lane is paired with counter n + i of the second lane, exactly as
    `jax.extend.random.threefry_2x32(keypair, arange(2 n))` splits its counters.

    Args:
      key: a JAX PRNG key (any implementation; a Threefry key pair is derived from it).
      n: number of words per stream (static).
    Returns:
      (first, second): two `[n]` uint32 arrays.
    """
    if not 0 < 2 * n < 2**32:
        raise ValueError(f"hash_word_pairs: n={n} words per stream; expected 0 < n < 2**31")
    keypair = jax.random.bits(key, (2,), jnp.uint32)
    counter = jnp.arange(n, dtype=jnp.uint32)
    return threefry_2x32(keypair, counter, counter + jnp.uint32(n))


def row_word_pairs(key: jax.Array, num_rows: int, row_length: int) -> tuple[jax.Array, jax.Array]:
    """Two independent `[num_rows, row_length]` uint32 word streams, row r's a function of (key, r) alone.

    Row r hashes under its own Threefry key pair (the hash of counters (r, 0) under the key's pair), its
    counter i paired with row_length + i as in `hash_word_pairs`. No stream is longer than one row, so
    a batch of any size (the global batch of a pod) draws the same words for its row r, and the fields
    are the same on every mesh and process count (the step computes them on the global batch).

    Args:
      key: a JAX PRNG key; num_rows: rows R (static); row_length: words per row m (static).
    Returns:
      (first, second): two `[R, m]` uint32 arrays.
    """
    if not 0 < 2 * row_length < 2**32:
        raise ValueError(f"row_word_pairs: row_length={row_length} words per row; expected 0 < m < 2**31")
    if not 0 < num_rows <= 2**32:
        raise ValueError(f"row_word_pairs: num_rows={num_rows}; expected 0 < R <= 2**32")
    keypair = jax.random.bits(key, (2,), jnp.uint32)
    rows = jnp.arange(num_rows, dtype=jnp.uint32)
    k0, k1 = threefry_2x32(keypair, rows, jnp.zeros_like(rows))
    counter = jnp.arange(row_length, dtype=jnp.uint32)[None, :]
    return threefry_2x32((k0[:, None], k1[:, None]), counter, counter + jnp.uint32(row_length))


def open_unit_interval(bits: jax.Array) -> jax.Array:
    """uint32 words -> float32 uniforms on the open interval (0, 1), 23 bits each (bin centres)."""
    k = (bits >> (32 - _MANTISSA_BITS)).astype(jnp.float32)
    return (k + 0.5) * _BIN_WIDTH


def normal_from_bits(bits: jax.Array) -> jax.Array:
    """uint32 words -> float32 standard normals by the inverse CDF (exactly symmetric)."""
    # 2u - 1 = (2k + 1 - 2^23) / 2^23 is exact in float32 and never reaches -1 or 1.
    return math.sqrt(2.0) * jax.lax.erf_inv(2.0 * open_unit_interval(bits) - 1.0)


@functools.partial(jax.jit, static_argnames="shape")
def standard_normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 N(0, 1) values of the given static shape; one fused Threefry hash per value.

    Only the first word of each hash is used: with the hash fused into the consumer, the second
    word would cost a materialised intermediate (or, joined by a concatenate inside the
    consumer's fusion, a loop XLA's CPU backend does not vectorise: 5x slower, measured).
    """
    first, _ = row_word_pairs(key, shape[0], math.prod(shape[1:]))  # one stream per row (leading axis)
    return normal_from_bits(first).reshape(shape)


def _log_acceptance(t: jax.Array, d: jax.Array) -> jax.Array:
    """log of the Marsaglia-Tsang acceptance ratio, 0.5 z^2 + d (1 - v + log v), with t = c z.

    The textbook form cancels catastrophically in float32 for large shapes (the released speckle
    uses shapes up to 1e8). With d c^2 = 1/9 it equals 3 d g(t), g(t) = log1p(t) - t + t^2/2 -
    t^3/3 = -sum_{k>=4} (-t)^k / k, which is evaluated by its series where |t| is small.
    """
    small = jnp.abs(t) < _SERIES_THRESHOLD
    ts = jnp.where(small, t, 0.0)
    series = jnp.zeros_like(ts)
    for k in range(4 + _SERIES_TERMS - 1, 3, -1):  # Horner: sum_k (-1)^(k+1) t^(k-4) / k
        series = series * ts + ((-1.0) ** (k + 1)) / k
    g_small = series * ts**4
    td = jnp.where(small | (t <= -1.0), 0.5, t)  # keeps log1p finite in the unused lanes
    g_direct = jnp.log1p(td) - td + td * td / 2.0 - td**3 / 3.0
    return 3.0 * d * jnp.where(small, g_small, g_direct)


def _marsaglia_tsang_round(first: jax.Array, second: jax.Array, d: jax.Array, c: jax.Array):
    """One vectorised Marsaglia-Tsang round from hash words. Returns v = (1 + c z)^3 > 0 where the
    candidate is accepted and -1 where it is rejected (Gamma(d + 1/3) sample = d * v).

    Rejection is encoded in the value (accepted v > 0) so that ONE array leaves the fusion that
    computes the round: XLA's CPU fusion duplicates or splits a producer with several outputs
    (optimization_barrier is removed before fusion there), which computed the round 4 times.
    """
    z = normal_from_bits(first)
    u = open_unit_interval(second)
    t = c * z
    accepted = (t > -1.0) & (jnp.log(u) < _log_acceptance(t, d))
    return jnp.where(accepted, (1.0 + t) ** 3, -1.0)


def _pool_size(row_length: int) -> int:
    """Pool candidates per row: enough that running out is > 8 standard deviations away.

    Rejections per row are Binomial(m, p <= 0.049) (sd <= 0.22 sqrt(m)); the pool of P accepts
    >= 0.951 P. P = m / 16 + 2 sqrt(m) + 16 leaves a margin of >= 8 sd for any row length.
    """
    return -(-row_length // 16) + math.ceil(2.0 * math.sqrt(row_length)) + 16


def _pack_rejections(v: jax.Array) -> jax.Array:
    """`[R, m]` round values (< 0 = rejected) -> `[R, ceil(m / 32)]` uint32 words, bit l of word w set
    where pixel 32 w + l was rejected. One reduction over a minor axis of 32: no full-size cumsum."""
    rows, m = v.shape
    padded = -(-m // _GROUP) * _GROUP
    rejected = jnp.pad(v, ((0, 0), (0, padded - m)), constant_values=1.0) < 0.0
    lanes = jnp.arange(_GROUP, dtype=jnp.uint32)
    return jnp.sum(rejected.reshape(rows, padded // _GROUP, _GROUP).astype(jnp.uint32) << lanes,
                   axis=-1, dtype=jnp.uint32)


def _rejection_ranks(words: jax.Array, row_length: int) -> jax.Array:
    """Each pixel's 0-based rank among the rejected pixels of its row, from `_pack_rejections`'
    words: rejections in earlier words (a cumsum over m / 32 popcounts) plus the popcount of the
    word's lower lanes. `[R, m]` int32; meaningless at accepted pixels."""
    per_word = jax.lax.population_count(words).astype(jnp.int32)
    before_word = jnp.cumsum(per_word, axis=1) - per_word
    lower_lanes = (jnp.uint32(1) << jnp.arange(_GROUP, dtype=jnp.uint32)) - jnp.uint32(1)
    within_word = jax.lax.population_count(words[:, :, None] & lower_lanes).astype(jnp.int32)
    rank = before_word[:, :, None] + within_word
    return rank.reshape(words.shape[0], -1)[:, :row_length]


@functools.partial(jax.jit, static_argnames=("row_length", "pool_size"))
def standard_gamma_rows(key: jax.Array, alpha: jax.Array, row_length: int, *,
                        pool_size: int | None = None) -> jax.Array:
    """Gamma(alpha_r, 1) samples, one shape per row.

    Args:
      key: PRNG key.
      alpha: `[R]` float32 shapes, > 0 (traced values are fine; no recompilation per value).
      row_length: m, samples per row (static).
      pool_size: replacement candidates per row (static); default `_pool_size(row_length)`.
        Only tests set it (small, to exercise the exact fallback).
    Returns:
      `[R, m]` float32; row r iid Gamma(alpha[r], 1).

    Algorithm (exact in distribution, see the module docstring): one Marsaglia-Tsang round over
    every pixel; the k-th rejected pixel of a row takes the k-th accepted candidate of the row's
    pool. Which candidate a pixel gets depends only on accept/reject indicators, and accepted
    values are independent of those, so outputs are iid accepted samples. Rows whose pool ran out
    (> 8 sd away) are redrawn whole by a rejection `while_loop`; whether a row is redrawn also
    depends only on indicators, so that keeps the law exact. A `lax.switch` picks, per call, the
    common branch, the one with the alpha < 1 boost, or that fallback: the branches start from
    the materialised round, so the common path carries no full-size loop state or copies.
    """
    alpha = jnp.asarray(alpha, jnp.float32)
    rows = alpha.shape[0]
    key_main, key_pool, key_boost, key_fallback = jax.random.split(key, 4)

    # Shapes below 1 are sampled at alpha + 1 and boosted: Gamma(a) = Gamma(a + 1) * U^(1/a).
    boosted = alpha < 1.0
    shape = jnp.where(boosted, alpha + 1.0, alpha)
    d = (shape - 1.0 / 3.0)[:, None]
    c = jax.lax.rsqrt(9.0 * d)

    def round_values(round_key, length):
        first, second = row_word_pairs(round_key, rows, length)
        return _marsaglia_tsang_round(first, second, d, c)

    v = round_values(key_main, row_length)

    pool_size = pool_size or _pool_size(row_length)
    pool_v = round_values(key_pool, pool_size)
    pool_accepted = pool_v > 0.0
    pool_rank = jnp.cumsum(pool_accepted, axis=1, dtype=jnp.int32) - 1  # [R, P]: small
    available = pool_rank[:, -1] + 1
    compact_pool = jnp.ones((rows, pool_size), jnp.float32).at[
        jnp.arange(rows)[:, None], jnp.where(pool_accepted, pool_rank, pool_size)].set(pool_v, mode="drop")

    words = _pack_rejections(v)
    rejected_count = jnp.sum(jax.lax.population_count(words), axis=1, dtype=jnp.int32)
    pool_ran_out = rejected_count > available

    def finish(v):  # accepted round values -> samples
        return d * v

    def filled(v, words, compact_pool):
        rank = jnp.minimum(_rejection_ranks(words, row_length), pool_size - 1)
        return jnp.where(v >= 0.0, v, jnp.take_along_axis(compact_pool, rank, axis=1))

    def boost(gamma):
        bits, _ = row_word_pairs(key_boost, rows, row_length)
        factor = open_unit_interval(bits) ** (1.0 / alpha)[:, None]
        return jnp.where(boosted[:, None], gamma * factor, gamma)

    def common(v, words, compact_pool):
        return finish(filled(v, words, compact_pool))

    def common_boosted(v, words, compact_pool):
        return boost(common(v, words, compact_pool))

    def fallback_round(state):
        round_index, v, unresolved = state
        round_v = round_values(jax.random.fold_in(key_fallback, round_index), row_length)
        take = unresolved & (round_v > 0.0)
        return round_index + 1, jnp.where(take, round_v, v), unresolved & ~take

    def exact_fallback(v, words, compact_pool):
        v = filled(v, words, compact_pool)
        unresolved = jnp.broadcast_to(pool_ran_out[:, None], v.shape)
        _, v, _ = jax.lax.while_loop(lambda state: jnp.any(state[2]), fallback_round,
                                     (jnp.int32(0), v, unresolved))
        return boost(finish(v))

    branch = jnp.where(jnp.any(pool_ran_out), 2, jnp.where(jnp.any(boosted), 1, 0))
    return jax.lax.switch(branch, (common, common_boosted, exact_fallback), v, words, compact_pool)
