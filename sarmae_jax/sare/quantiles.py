"""Speckle by table lookup: per-image inverse-CDF tables on a float32-bit-pattern grid.

Why: on a CPU, exact Gamma speckle by Marsaglia-Tsang (`sampling.standard_gamma_rows`) costs a
normal (erf_inv), a uniform, an acceptance test with logs, and a pool for the rejected pixels, per
pixel. Inverting the CDF instead costs one random word, integer bit operations, two gathers from
a small per-image table and a lerp: no transcendental per pixel (benchmarks/speckle.py, docs/benchmarks.md).

The grid. A uniform u in (0, 1) is folded to t = min(u, 1 - u) in (0, 1/2]. The float32 bit
pattern of t indexes the cell: its exponent picks the octave [2^e, 2^(e+1)) (e = -24 ... -2) and
its top `CELL_BITS` mantissa bits one of 64 equal cells in that octave; the remaining 17 bits are
the position within the cell. So the knots t_j = 2^(-24 + j // 64) (1 + (j % 64) / 64), j = 0 ...
1472, resolve both tails down to u = 2^-24 with 1/64-octave relative resolution, and a row of the
table holds the quantile at u = t_j (lower half) and u = 1 - t_j (upper half): 2,945 knots.
Between knots the quantile is interpolated linearly in u: the sampled law is the piecewise-linear
interpolant of the true quantile function at the knots.

Accuracy (tests/test_speckle.py checks it against scipy): for Gamma with L >= 1/2 looks the knots'
CDF error is below 3e-5 (1e-5 typical), far below what a Kolmogorov-Smirnov test on a million
pixels can see (~1e-3); below 1/2 look the interpolation across L degrades, so the speckle module
uses the exact Marsaglia-Tsang sampler (`sampling.standard_gamma_rows`) for such batches.

Gamma quantiles for per-image, traced L: a process-wide table of V(L, u_j) = sqrt(L) log Q_L(u_j)
(Q_L the quantile of Gamma(L, scale 1/L)) at 16 values of L per octave from 2^-1 to 2^14, built
once on the host in float64 by integrating the density of log X (no SciPy needed at run time).
V tends to the normal quantile z(u) as L grows and varies slowly with log L, so each image's row
is a linear interpolation between two table rows in log2 L; above 2^14 looks the Wilson-Hilferty
transform of z is used, whose error is far below float32 resolution there.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from sarmae_jax.sare import sampling

CELL_BITS = 6  # 64 cells per octave
MIN_EXPONENT = -24  # smallest t = (0 + 1/2) / 2^23 = 2^-24 for sampling.open_unit_interval's uniforms
NUM_OCTAVES = -1 - MIN_EXPONENT  # octaves 2^-24 ... 2^-2 (t < 1/2)
HALF = NUM_OCTAVES << CELL_BITS  # knot index of t = 1/2
NUM_KNOTS = 2 * HALF + 1

TABLE_MIN_LOG2_LOOKS = -1.0
MIN_TABULATED_LOOKS = 2.0**TABLE_MIN_LOG2_LOOKS  # smaller looks: the exact sampler (see above)
TABLE_MAX_LOG2_LOOKS = 14.0
TABLE_ROWS_PER_OCTAVE = 16


def knot_tails() -> np.ndarray:
    """t_j, j = 0 ... HALF, float64: the lower-half knots (u = t_j) and the upper-half tails (u = 1 - t_j)."""
    j = np.arange(HALF + 1)
    return np.ldexp(1.0 + (j % (1 << CELL_BITS)) / (1 << CELL_BITS), MIN_EXPONENT + j // (1 << CELL_BITS))


def _log_knot_probabilities() -> tuple[np.ndarray, np.ndarray]:
    """(log CDF target, log survival target) per knot, float64 [NUM_KNOTS]; exactly one is the
    small side (log t_j), which is what the quantile is solved from for accuracy in the tails."""
    t = knot_tails()
    lower = np.log(t)  # knots 0 ... HALF: CDF = t_j
    upper = np.log(t[::-1][1:])  # knots HALF+1 ... 2 HALF: survival = t_(2 HALF - i)
    return lower, upper


@functools.lru_cache(maxsize=None)
def normal_quantiles() -> np.ndarray:
    """z(u_i) for every knot, float64 [NUM_KNOTS] (Newton on erfc; |error| < 1e-12)."""
    lower_log_t, _ = _log_knot_probabilities()
    t = np.exp(lower_log_t)
    z = -np.sqrt(-2.0 * np.log(t))  # a start below the root (Mills-ratio bound)
    phi = lambda x: np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    cdf = np.vectorize(lambda x: 0.5 * math.erfc(-x / math.sqrt(2.0)))
    for _ in range(60):
        step = (cdf(z) - t) / phi(z)
        z = z - step
        if np.max(np.abs(step)) < 1e-13:
            break
    return np.concatenate([z, -z[::-1][1:]])


def _gamma_log_quantiles(looks: float) -> np.ndarray:
    """log Q_L(u_i) for every knot, float64, Q_L the quantile of Gamma(L, scale 1/L).

    The density of s = log X is g(s) = exp(L (s - e^s) + L log L - lgamma(L)), smooth in s; it is
    integrated by the trapezoid rule on a fine grid (cumulated from the left for the lower half
    and from the right for the upper half, so neither tail suffers cancellation). The mass left of
    the grid is the exact limit exp(L s + L log L - lgamma(L + 1)) of the CDF, which also gives the
    lower-tail knots that fall left of the grid.
    """
    const = looks * math.log(looks) - math.lgamma(looks)
    left_const = looks * math.log(looks) - math.lgamma(looks + 1.0)  # log CDF(s) -> L s + left_const
    # Grid: left edge where the left mass is 1e-14 (or 12 sd of a normal approximation, if wider),
    # right edge where the density has fallen by e^-60.
    s_lo = min((math.log(1e-14) - left_const) / looks, -12.0 / math.sqrt(looks))
    s_hi = max(math.log1p(70.0 / looks), 12.0 / math.sqrt(looks))
    s = np.linspace(s_lo, s_hi, 100_001)
    log_g = looks * (s - np.exp(s)) + const
    g = np.exp(log_g - log_g.max())
    segments = 0.5 * (g[1:] + g[:-1]) * np.diff(s)
    left_mass = math.exp(looks * s_lo + left_const - log_g.max())
    total = left_mass + segments.sum()
    cdf = (left_mass + np.concatenate([[0.0], np.cumsum(segments)])) / total
    survival = np.concatenate([np.cumsum(segments[::-1])[::-1], [0.0]]) / total

    lower_log_t, upper_log_t = _log_knot_probabilities()
    log_cdf = np.log(cdf)
    in_grid = lower_log_t >= log_cdf[0]
    lower = np.where(in_grid, np.interp(lower_log_t, log_cdf, s),
                     (lower_log_t + math.log(total) + log_g.max() - left_const) / looks)
    positive = survival > 0
    upper = np.interp(upper_log_t, np.log(survival[positive])[::-1], s[positive][::-1])
    return np.concatenate([lower, upper])


@functools.lru_cache(maxsize=None)
def gamma_table() -> np.ndarray:
    """V = sqrt(L) log Q_L(u_i), float32 `[rows, NUM_KNOTS]`, rows at log2 L = -1, -1 + 1/16, ..., 14.

    Built once per process on the host (about 1.5 s on one core).
    """
    log2_looks = np.arange(TABLE_MIN_LOG2_LOOKS, TABLE_MAX_LOG2_LOOKS + 1e-9, 1.0 / TABLE_ROWS_PER_OCTAVE)
    rows = [math.sqrt(2.0**e) * _gamma_log_quantiles(2.0**e) for e in log2_looks]
    return np.stack(rows).astype(np.float32)


def gamma_rows(looks: jax.Array) -> jax.Array:
    """Quantiles of Gamma(L_b, scale 1/L_b) (unit mean) at every knot: `looks [B]` -> `[B, NUM_KNOTS]`.

    Valid for L >= MIN_TABULATED_LOOKS (smaller L is clamped to it: callers route those to the exact
    sampler).
    """
    looks = jnp.asarray(looks, jnp.float32)
    log2_looks = jnp.log2(looks)
    table = jnp.asarray(gamma_table())
    position = (jnp.clip(log2_looks, TABLE_MIN_LOG2_LOOKS, TABLE_MAX_LOG2_LOOKS) - TABLE_MIN_LOG2_LOOKS) * TABLE_ROWS_PER_OCTAVE
    row = jnp.minimum(jnp.floor(position).astype(jnp.int32), table.shape[0] - 2)
    weight = (position - row)[:, None]
    v = (1.0 - weight) * table[row] + weight * table[row + 1]
    root = jnp.sqrt(jnp.maximum(looks, 2.0**TABLE_MIN_LOG2_LOOKS))[:, None]
    tabulated = jnp.exp(v / root)
    # Wilson-Hilferty above the table: X / L = (1 - 1/(9L) + z / (3 sqrt(L)))^3.
    z = jnp.asarray(normal_quantiles(), jnp.float32)
    wilson_hilferty = jnp.maximum(1.0 - 1.0 / (9.0 * root**2) + z / (3.0 * root), 0.0) ** 3
    return jnp.where((log2_looks > TABLE_MAX_LOG2_LOOKS)[:, None], wilson_hilferty, tabulated)


def lognormal_rows(sigma: jax.Array) -> jax.Array:
    """Quantiles of exp(sigma N(0, 1)) at every knot: `sigma [B]` -> `[B, NUM_KNOTS]`."""
    z = jnp.asarray(normal_quantiles(), jnp.float32)
    return jnp.exp(jnp.asarray(sigma, jnp.float32)[:, None] * z)


def sample_rows(key: jax.Array, rows: jax.Array, row_length: int) -> jax.Array:
    """`[R, m]` draws, row r from the law whose knot quantiles are `rows[r]` (`[R, NUM_KNOTS]`).

    One fused pass per pixel: a Threefry word, its 23-bit uniform folded to t = min(u, 1 - u), the
    float32 bits of t as (knot, position in cell), two gathers from the row, a lerp.

    Pass `rows` materialised (for example as an operand or result of a `lax.cond`): XLA:CPU fuses
    a row-building producer into this loop and recomputes it per pixel (3.5x slower, measured), and
    it drops `optimization_barrier`s before fusion.
    """
    num_rows = rows.shape[0]
    bits, _ = sampling.row_word_pairs(key, num_rows, row_length)  # a stream per row: no batch-size ceiling
    upper = bits >= jnp.uint32(1 << 31)  # u > 1/2
    # Inverting the bits maps the uniform's bin k to 2^23 - 1 - k, i.e. u to 1 - u exactly.
    t = sampling.open_unit_interval(jnp.where(upper, ~bits, bits))
    t_bits = jax.lax.bitcast_convert_type(t, jnp.int32)
    within_bits = 23 - CELL_BITS
    knot = (t_bits >> within_bits) - ((127 + MIN_EXPONENT) << CELL_BITS)
    position = (t_bits & ((1 << within_bits) - 1)).astype(jnp.float32) * (2.0**-within_bits)
    near = jnp.where(upper, 2 * HALF - knot, knot)
    far = jnp.where(upper, near - 1, near + 1)
    at_near = jnp.take_along_axis(rows, near, axis=1)
    at_far = jnp.take_along_axis(rows, far, axis=1)
    return at_near + (at_far - at_near) * position
