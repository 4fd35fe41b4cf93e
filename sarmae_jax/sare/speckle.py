"""SARE: speckle injection on device, batched and jit-able (no per-image Python loops).

The train step calls `apply_sare_from_config(key, images, config.sare, domain)` on the clean batch
`images: [B, H, W, C] float32` of stored values in [0, 1] (the pixel contract of
`docs/architecture.md`: one channel, or C polarisations) before normalisation; the reconstruction
target stays the clean batch. Each image gets ONE multiplicative field `[H, W]` shared by its C
channels, is noised with probability `prob`, and draws its own strength from `strength_range`.
`domain` (`domains.StoredDomain`, from the dataset's manifest) says what the stored values encode:
the physical models below multiply linear intensity and are applied in that domain (`domains.py`,
docs/speckle.md); the laws below are written for the legacy intensity storage, where they are
exactly what they were before the domain existed.

Models (`MODELS`):
- "gamma_intensity": y = x * G, G ~ Gamma(L, 1/L) (unit mean, variance 1/L), x read as intensity.
  Fully developed speckle averaged over L looks; L = 1 is single-look (exponential) intensity.
- "amplitude": y = x * sqrt(G), x read as AMPLITUDE (the square root of intensity, as in most
  8-bit detected SAR products). sqrt(G) is Nakagami(m=L, omega=1): the implied intensity x^2 gets
  exactly the "gamma_intensity" law (E[y^2] = x^2), while the amplitude mean drops by
  Gamma(L + 1/2) / (Gamma(L) sqrt(L)) (0.886 for L = 1, Rayleigh). If the pixels are intensities,
  use "gamma_intensity": speckling sqrt(x) this way and squaring back is the same thing.
- "lognormal": y = x * exp(sigma n), n ~ N(0, 1). Mean exp(sigma^2 / 2), not 1 (not corrected).
- "released": the public SARMAE code (`util/sar_noise.py`): x clamped to >= 1e-8; sigma > 0.05 gives
  the log-normal law above; sigma <= 0.05 gives Gamma with L = 1 / ((2 sigma)^2 + 1e-8), rescaled
  so the noisy image's mean equals the clean image's mean; the result is clamped to [1e-8, 1].
  Images that are not noised pass through untouched (not clamped), as there.

Outputs of the first three models are not clamped: clamping at 1 would cut the bright tail of the
speckle and bias the mean and the looks; values above 1 are real bright speckle.

Sampling: the Gamma-based models invert per-image quantile tables (`quantiles.py`; one random
word, two gathers and a lerp per pixel, CDF error below 5e-5) and fall back to the exact
Marsaglia-Tsang sampler (`sampling.py`) for batches with looks below 1/2; "lognormal" transforms
normals drawn by `sampling.standard_normal`. Every image draws its random words (its field, whether
it is noised, its strength) from its own stream, a function of (key, row) (`sampling.row_word_pairs`):
with the train step's key from (seed, step) and the global batch's row, the field is the same on
every mesh and process count, and no global batch is too large for the streams.

Strength per image: looks drawn LOG-uniformly in [lo, hi] (looks are a ratio scale: going from
1 to 2 looks changes the image as much as 8 to 16), sigma drawn uniformly in [lo, hi] (as the
released code does). Default (see `default_config`): "gamma_intensity" with 1 to 16 looks, the
physically standard speckle law on the quantity the pixel contract says the pixels are, spanning
single-look data (L = 1) to strongly multi-looked products (Sentinel-1 GRD IW has ENL about 4.4).
"""
from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import ml_collections

from sarmae_jax.sare import domains, quantiles, sampling

MODELS = ("gamma_intensity", "amplitude", "lognormal", "released")
LOOKS_MODELS = ("gamma_intensity", "amplitude")  # strength = looks L, config key `looks`
SIGMA_MODELS = ("lognormal", "released")  # strength = sigma, config key `sigma`

RELEASED_GAMMA_MAX_SIGMA = 0.05  # released code: Gamma speckle at or below this sigma
RELEASED_MIN_VALUE = 1e-8  # released code: clamp floor (and the 1e-8 guards in its formulas)


# ------------------------------------------------------------------------------------------------
# Field samplers. `shape` is (B, ...) and the strength is `[B]` (or a scalar): one value per image.


def _per_image(strength, batch: int) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(strength, jnp.float32), (batch,))


@functools.partial(jax.jit, static_argnames="shape")
def gamma_field(key: jax.Array, shape: tuple[int, ...], looks) -> jax.Array:
    """Unit-mean Gamma speckle field on intensity: Gamma(L, scale 1/L), variance 1/L.

    Args:
      key: PRNG key.
      shape: static (B, ...) field shape, e.g. (B, H, W, 1).
      looks: number of looks L > 0, scalar or `[B]` (traced values compile once).
    Returns:
      float32 array of `shape`, each image's field iid Gamma(L_b, 1/L_b).

    Sampler: when every L_b >= 1/2, inversion of per-image quantile tables (`quantiles.py`: the
    knots' CDF error is below 5e-5, about 1e-5 typically; a few times faster on CPU); otherwise the
    exact Marsaglia-Tsang sampler (`sampling.standard_gamma_rows`) for the whole batch.
    """
    batch, per_image = shape[0], math.prod(shape[1:])
    looks = _per_image(looks, batch)

    # The rows are built outside the cond so that they reach the per-pixel lookup as a materialised
    # array: fused into it, XLA recomputed each row entry for every pixel (3.5x slower, measured).
    rows = quantiles.gamma_rows(looks)

    def tabulated(key, looks, rows):  # the fast path: per-image inverse-CDF tables (quantiles.py)
        return quantiles.sample_rows(key, rows, per_image)

    def exact(key, looks, rows):  # below 1/2 look the table is not accurate enough: Marsaglia-Tsang
        return sampling.standard_gamma_rows(key, looks, per_image) / looks[:, None]

    field = jax.lax.cond(jnp.all(looks >= quantiles.MIN_TABULATED_LOOKS), tabulated, exact, key, looks, rows)
    return field.reshape(shape)


@functools.partial(jax.jit, static_argnames="shape")
def nakagami_field(key: jax.Array, shape: tuple[int, ...], looks) -> jax.Array:
    """Amplitude speckle field: sqrt of `gamma_field`, Nakagami(m = L, omega = 1); L = 1 is Rayleigh."""
    return jnp.sqrt(gamma_field(key, shape, looks))


@functools.partial(jax.jit, static_argnames="shape")
def lognormal_field(key: jax.Array, shape: tuple[int, ...], sigma) -> jax.Array:
    """Log-normal field exp(sigma n), n ~ N(0, 1); sigma >= 0 scalar or `[B]`. Mean exp(sigma^2/2)."""
    sigma = _per_image(sigma, shape[0]).reshape((shape[0],) + (1,) * (len(shape) - 1))
    return jnp.exp(sigma * sampling.standard_normal(key, shape))


@jax.jit
def released_noise(key: jax.Array, images: jax.Array, sigma) -> jax.Array:
    """The released SARMAE noise applied to every image of the batch (selection happens outside).

    Args:
      key: PRNG key.
      images: `[B, H, W, C]` float32 in [0, 1], channels identical (one field shared by them).
      sigma: `[B]` or scalar, >= 0.
    Returns:
      `[B, H, W, C]` float32 in [1e-8, 1].
    """
    batch, height, width, _ = images.shape
    sigma = _per_image(sigma, batch)
    looks = 1.0 / ((2.0 * sigma) ** 2 + RELEASED_MIN_VALUE)
    lognormal_rows = sigma > RELEASED_GAMMA_MAX_SIGMA
    # One table lookup serves both laws: per image the quantiles of exp(sigma z) or of Gamma(L, 1/L)
    # (L >= 100 here: the Gamma branch needs sigma <= 0.05). Gamma rows are built only when an image
    # needs them; the cond also hands the rows to the lookup materialised (see quantiles.sample_rows).
    rows = jax.lax.cond(
        jnp.all(lognormal_rows), lambda: quantiles.lognormal_rows(sigma),
        lambda: jnp.where(lognormal_rows[:, None], quantiles.lognormal_rows(sigma), quantiles.gamma_rows(looks)))
    field = quantiles.sample_rows(key, rows, height * width).reshape(batch, height, width, 1)
    lognormal_column = lognormal_rows[:, None, None, None]

    positive = jnp.maximum(images, RELEASED_MIN_VALUE)
    lognormal = positive * field
    gamma_noisy = positive * field
    mean_ratio = jnp.mean(positive, axis=(1, 2, 3), keepdims=True) / (
        jnp.mean(gamma_noisy, axis=(1, 2, 3), keepdims=True) + RELEASED_MIN_VALUE)
    noisy = jnp.where(lognormal_column, lognormal, gamma_noisy * mean_ratio)
    return jnp.clip(noisy, RELEASED_MIN_VALUE, 1.0)


def equivalent_number_of_looks(intensity, axis=None) -> jax.Array:
    """ENL = mean^2 / variance of INTENSITY over a homogeneous region (sample variance, ddof=1).

    For fully developed L-look speckle on a flat region this estimates L. For amplitude images,
    square them first. `axis` as in `jnp.mean` (None: the whole array is one region).
    """
    intensity = jnp.asarray(intensity, jnp.float32)
    mean = jnp.mean(intensity, axis=axis)
    return mean**2 / jnp.var(intensity, axis=axis, ddof=1)


# ------------------------------------------------------------------------------------------------
# Batch-level SARE.


def _row_uniform(key: jax.Array, batch: int) -> jax.Array:
    """`[B]` uniforms on (0, 1), row r's a function of (key, r) alone, like the fields (`row_word_pairs`)."""
    bits, _ = sampling.row_word_pairs(key, batch, 1)
    return sampling.open_unit_interval(bits[:, 0])


def _draw_strength(key: jax.Array, batch: int, model: str, strength_range) -> jax.Array:
    low, high = (jnp.asarray(bound, jnp.float32) for bound in strength_range)
    uniform = _row_uniform(key, batch)
    if model in LOOKS_MODELS:
        return jnp.exp(jnp.log(low) + uniform * (jnp.log(high) - jnp.log(low)))
    return low + uniform * (high - low)


def apply_sare(key: jax.Array, images: jax.Array, *, model: str, prob, strength_range,
               domain: domains.StoredDomain = domains.LEGACY) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Speckle a random subset of the batch; one field per image shared by its channels.

    Args:
      key: PRNG key (deterministic: the same key gives the same output).
      images: `[B, H, W, C]` float32 clean stored values in [0, 1], in `domain`.
      model: one of `MODELS` (static).
      prob: probability that an image is noised (Python float or traced scalar).
      strength_range: (lo, hi): looks for "gamma_intensity"/"amplitude" (log-uniform), sigma for
        "lognormal"/"released" (uniform). Python floats or traced scalars; traced values let one
        compiled function serve every range.
      domain: what the stored values encode (static; `domains.py`, docs/speckle.md): the physical
        models' fields multiply linear intensity and are applied in this domain; "released" works
        on the stored values whatever they encode, as the released code did.
    Returns:
      (noisy `[B, H, W, C]` float32, {"applied": `[B]` bool, "strength": `[B]` float32}). The
      strength is drawn for every image and used only where `applied` is True.
    """
    if model not in MODELS:
        raise ValueError(f"apply_sare: model={model!r}; expected one of {MODELS}")
    if images.ndim != 4:
        raise ValueError(f"apply_sare: images shape {images.shape}; expected [B, H, W, C]")
    _check_concrete_arguments(model, prob, strength_range)
    low, high = strength_range
    return _apply_sare(key, images, model, prob, low, high, domain)


@functools.partial(jax.jit, static_argnums=(2, 6))
def _apply_sare(key, images, model, prob, low, high, domain=domains.LEGACY):
    # prob and the range are traced: one compiled function serves every value.
    batch, height, width, _ = images.shape
    key_apply, key_strength, key_field = jax.random.split(key, 3)
    applied = _row_uniform(key_apply, batch) < prob
    strength = _draw_strength(key_strength, batch, model, (low, high))

    field_shape = (batch, height, width, 1)  # one field per image, shared by its C channels
    if model == "released":
        noisy = released_noise(key_field, images, strength)
    else:
        noisy = domains.speckle_stored(images, intensity_field(key_field, field_shape, model, strength),
                                       model_domain(model, domain))
    noisy = jnp.where(applied[:, None, None, None], noisy, images)
    return noisy, {"applied": applied, "strength": strength}


def intensity_field(key: jax.Array, shape: tuple[int, ...], model: str, strength) -> jax.Array:
    """The unit-mean factor a physical model (`gamma_intensity`, `amplitude`, `lognormal`) applies to
    linear INTENSITY: Gamma(L, 1/L) for both looks models (the "amplitude" law is its square root on
    amplitude), exp(sigma n) for "lognormal". `shape` (B, H, W, 1), strength `[B]`."""
    if model in LOOKS_MODELS:
        return gamma_field(key, shape, strength)
    return lognormal_field(key, shape, strength)


def model_domain(model: str, domain: domains.StoredDomain) -> domains.StoredDomain:
    """The domain a physical model applies its field in. "amplitude" reads the stored values as
    amplitude: on intensity storage (legacy 8-bit images, often detected amplitude) that is the
    user's reading over the manifest's, its original meaning; on amplitude storage it is the
    manifest's; dB needs no choice (20 log10 A = 10 log10 I)."""
    if model == "amplitude" and domain.domain == "intensity":
        return domains.StoredDomain("amplitude")
    return domain


def apply_sare_from_config(key: jax.Array, images: jax.Array, sare_cfg: ml_collections.ConfigDict,
                           domain: domains.StoredDomain = domains.LEGACY) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`apply_sare` with the settings of `config.sare`, in the stored `domain`; `enabled=False` returns
    the images unchanged."""
    validate_config(sare_cfg)
    if not sare_cfg.enabled:
        batch = images.shape[0]
        return images, {"applied": jnp.zeros((batch,), bool), "strength": jnp.zeros((batch,), jnp.float32)}
    strength_range = sare_cfg.looks if sare_cfg.model in LOOKS_MODELS else sare_cfg.sigma
    return apply_sare(key, images, model=sare_cfg.model, prob=sare_cfg.prob,
                      strength_range=tuple(strength_range), domain=domain)


# ------------------------------------------------------------------------------------------------
# Configuration.


def default_config() -> ml_collections.ConfigDict:
    """Defaults for `config.sare` (see the module docstring for why these)."""
    return ml_collections.ConfigDict({
        "enabled": True,
        # One of MODELS. "released" reproduces the public code (log-normal with a mean bias).
        "model": "gamma_intensity",
        # Probability that an image is speckled (released: noise_ratio 0.5).
        "prob": 0.5,
        # Looks range for "gamma_intensity" / "amplitude", drawn log-uniformly; lo > 0.
        "looks": (1.0, 16.0),
        # Sigma range for "lognormal" / "released", drawn uniformly (released: 0.0 to 0.7).
        "sigma": (0.0, 0.7),
    })


_REQUIRED_KEYS = ("enabled", "model", "prob", "looks", "sigma")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_range(name: str, value, *, positive: bool) -> None:
    bound = "lo > 0" if positive else "lo >= 0"
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(_is_number(v) for v in value)):
        raise ValueError(f"{name}={value!r}: expected a pair of finite numbers (lo, hi) with {bound}")
    low, high = value
    if positive and low <= 0:
        raise ValueError(f"{name}={tuple(value)!r}: expected lo > 0 (looks are positive)")
    if not positive and low < 0:
        raise ValueError(f"{name}={tuple(value)!r}: expected lo >= 0 (sigma is a standard deviation)")
    if low > high:
        raise ValueError(f"{name}={tuple(value)!r}: expected lo <= hi")


def validate_config(sare_cfg, prefix: str = "config.sare") -> None:
    """Raises ValueError naming the key, the value and what is allowed."""
    missing = [key for key in _REQUIRED_KEYS if key not in sare_cfg]
    if missing:
        raise ValueError(f"{prefix} is missing {missing}; expected keys {_REQUIRED_KEYS}")
    unknown = sorted(set(sare_cfg.keys()) - set(_REQUIRED_KEYS))
    if unknown:
        raise ValueError(f"{prefix} has unknown keys {unknown}; expected keys {_REQUIRED_KEYS}")
    if not isinstance(sare_cfg.enabled, bool):
        raise ValueError(f"{prefix}.enabled={sare_cfg.enabled!r}: expected True or False")
    if sare_cfg.model not in MODELS:
        raise ValueError(f"{prefix}.model={sare_cfg.model!r}: expected one of {MODELS}")
    if not _is_number(sare_cfg.prob) or not 0.0 <= sare_cfg.prob <= 1.0:
        raise ValueError(f"{prefix}.prob={sare_cfg.prob!r}: expected a probability in [0, 1]")
    _check_range(f"{prefix}.looks", sare_cfg.looks, positive=True)
    _check_range(f"{prefix}.sigma", sare_cfg.sigma, positive=False)


def _check_concrete_arguments(model: str, prob, strength_range) -> None:
    """Checks `apply_sare`'s arguments where they are Python numbers (traced ones pass through)."""
    if _is_number(prob) and not 0.0 <= prob <= 1.0:
        raise ValueError(f"apply_sare: prob={prob!r}; expected a probability in [0, 1]")
    if len(strength_range) != 2:
        raise ValueError(f"apply_sare: strength_range={strength_range!r}; expected (lo, hi)")
    if all(_is_number(bound) for bound in strength_range):
        name = "looks" if model in LOOKS_MODELS else "sigma"
        _check_range(f"apply_sare: strength_range ({name})", tuple(strength_range),
                     positive=model in LOOKS_MODELS)
