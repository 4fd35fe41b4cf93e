"""Statistical and behavioural tests of the SARE speckle kernels (sarmae_jax.speckle, sarmae_jax.sampling).

Statistical tests use fixed keys, so they are deterministic; thresholds are set several standard
errors wide (stated next to each) so that a correct sampler passes and a wrong law fails.
"""
import functools

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from sarmae_jax import sampling, speckle

FIELD_SHAPE = (4, 128, 128, 1)  # 65,536 samples per law
KS_MIN_PVALUE = 1e-3


@functools.lru_cache(maxsize=None)
def _jitted_field(name):
    """One compiled sampler per field type; the strength is traced (also checks no recompilation)."""
    sampler = getattr(speckle, name)
    return jax.jit(lambda key, strength: sampler(key, FIELD_SHAPE, strength))


def _field(name, strength, seed=0):
    return np.asarray(_jitted_field(name)(jax.random.key(seed), jnp.float32(strength))).ravel()


def _assert_moments(samples, mean, var):
    n = samples.size
    # Sample mean within 5 standard errors; variance within 6% (several standard errors of the
    # sample variance for these laws at n = 65,536, far below e.g. the 1/L vs 1/(L+1) difference).
    assert abs(samples.mean() - mean) < 5 * np.sqrt(var / n)
    assert samples.var() == pytest.approx(var, rel=0.06)


@pytest.mark.parametrize("looks", [0.5, 1.0, 4.5])
def test_gamma_field_has_unit_mean_variance_one_over_looks_and_gamma_law(looks):
    samples = _field("gamma_field", looks)
    _assert_moments(samples, 1.0, 1.0 / looks)
    assert scipy.stats.kstest(samples, scipy.stats.gamma(a=looks, scale=1.0 / looks).cdf).pvalue > KS_MIN_PVALUE


@pytest.mark.parametrize("looks", [1.0, 3.0])
def test_nakagami_field_follows_nakagami_law(looks):
    samples = _field("nakagami_field", looks)
    law = scipy.stats.nakagami(nu=looks, scale=1.0)  # omega = scale^2 = 1: unit mean intensity
    _assert_moments(samples, law.mean(), law.var())
    assert np.mean(samples**2) == pytest.approx(1.0, abs=5 * np.sqrt(1.0 / looks / samples.size))
    assert scipy.stats.kstest(samples, law.cdf).pvalue > KS_MIN_PVALUE


@pytest.mark.parametrize("sigma", [0.1, 0.7])
def test_lognormal_field_follows_lognormal_law(sigma):
    samples = _field("lognormal_field", sigma)
    law = scipy.stats.lognorm(s=sigma)
    _assert_moments(samples, np.exp(sigma**2 / 2), law.var())
    assert scipy.stats.kstest(samples, law.cdf).pvalue > KS_MIN_PVALUE


def test_gamma_sampler_is_exact_when_the_pool_runs_out():
    """Force the while_loop fallback (pool of 1) and check the law is still exactly Gamma."""
    gamma, normal = sampling.standard_gamma_rows(jax.random.key(3), jnp.array([1.0, 1.0]), 20_000, pool_size=1)
    samples = np.asarray(gamma).ravel()
    assert scipy.stats.kstest(samples, scipy.stats.gamma(a=1.0).cdf).pvalue > KS_MIN_PVALUE
    assert scipy.stats.kstest(np.asarray(normal).ravel(), "norm").pvalue > KS_MIN_PVALUE


def test_gamma_sampler_is_accurate_for_huge_shapes():
    """The released mode uses up to 1e8 looks; the textbook acceptance test cancels in float32."""
    for shape in (1e4, 1e8):
        gamma, _ = sampling.standard_gamma_rows(jax.random.key(5), jnp.array([shape]), 40_000)
        standardised = (np.asarray(gamma, np.float64).ravel() - shape) / np.sqrt(shape)
        if shape < 1e6:  # at 1e8 float32 resolution of the sample (~8) is comparable to its sd
            assert scipy.stats.kstest(standardised, "norm").pvalue > KS_MIN_PVALUE
        assert abs(standardised.mean()) < 0.03 and standardised.std() == pytest.approx(1.0, rel=0.05)


def test_released_mode_has_the_uncorrected_lognormal_mean_bias():
    # Dim flat image: x * exp(0.7 * 5.3) < 1, so neither clamp is active ("before clamping").
    sigma, intensity = 0.7, 1e-3
    images = jnp.full((4, 64, 64, 1), intensity, jnp.float32)
    noisy = speckle.released_noise(jax.random.key(1), images, jnp.full((4,), sigma))
    ratio = np.asarray(noisy[..., 0]).ravel() / intensity
    sd = np.sqrt((np.exp(sigma**2) - 1) * np.exp(sigma**2) / ratio.size)
    assert abs(ratio.mean() - np.exp(sigma**2 / 2)) < 5 * sd  # 1.278, not 1
    assert scipy.stats.kstest(ratio, scipy.stats.lognorm(s=sigma).cdf).pvalue > KS_MIN_PVALUE


def test_released_mode_gamma_branch_keeps_the_mean_and_clamps():
    sigma = 0.03  # <= 0.05: Gamma with L = 1 / (4 sigma^2 + 1e-8) = 277.8 looks, mean rescaled
    images = jnp.full((4, 64, 64, 1), 0.2, jnp.float32)
    noisy = np.asarray(speckle.released_noise(jax.random.key(2), images, jnp.full((4,), sigma)))
    assert noisy.mean(axis=(1, 2, 3)) == pytest.approx([0.2] * 4, rel=1e-5)
    assert float(speckle.equivalent_number_of_looks(noisy[0])) == pytest.approx(1 / (4 * sigma**2), rel=0.1)
    bright = speckle.released_noise(jax.random.key(2), jnp.ones_like(images), jnp.array([0.7, 0.0, 0.7, 0.0]))
    assert float(bright.max()) == 1.0 and float(bright.min()) >= 1e-8


@pytest.mark.parametrize("model, looks", [("gamma_intensity", 1.0), ("gamma_intensity", 6.0), ("amplitude", 2.0)])
def test_equivalent_number_of_looks_on_flat_image_matches_looks(model, looks):
    flat = jnp.full((8, 64, 64, 3), 0.1, jnp.float32)
    noisy, _ = speckle.apply_sare(jax.random.key(4), flat, model=model, prob=1.0, strength_range=(looks, looks))
    intensity = np.asarray(noisy[..., 0]) ** (2 if model == "amplitude" else 1)
    # 32,768 samples: the ENL estimate's relative standard error is below 2% for L >= 1.
    assert float(speckle.equivalent_number_of_looks(intensity)) == pytest.approx(looks, rel=0.08)
    per_image = speckle.equivalent_number_of_looks(intensity, axis=(1, 2))
    assert per_image.shape == (8,)


@pytest.mark.parametrize("model", speckle.MODELS)
def test_shape_dtype_channel_sharing_and_probability_one(model):
    # Dim enough that the released clamp at 1 never acts: x * exp(0.5 * 5.3) < 1.
    base = jax.random.uniform(jax.random.key(0), (6, 16, 16, 1), minval=0.01, maxval=0.05)
    images = jnp.concatenate([base, 0.5 * base, base], axis=-1)  # channels differ by a scale
    strength = (1.0, 4.0) if model in speckle.LOOKS_MODELS else (0.1, 0.5)
    noisy, info = speckle.apply_sare(jax.random.key(1), images, model=model, prob=1.0, strength_range=strength)
    assert noisy.shape == images.shape and noisy.dtype == jnp.float32
    assert info["applied"].shape == (6,) and info["applied"].dtype == jnp.bool_ and bool(info["applied"].all())
    assert info["strength"].shape == (6,) and info["strength"].dtype == jnp.float32
    assert bool(jnp.all((info["strength"] >= strength[0]) & (info["strength"] <= strength[1])))
    factor = np.asarray(noisy / images)
    np.testing.assert_allclose(factor[..., 0], factor[..., 1], rtol=1e-5)  # one field per image
    np.testing.assert_allclose(factor[..., 0], factor[..., 2], rtol=1e-5)
    assert np.all(np.abs(factor - 1) > 0, axis=(1, 2, 3)).all()  # every image was noised
    assert not np.allclose(factor[0], factor[1])  # but with its own field


def test_probability_zero_is_identity_fraction_applied_matches_probability_and_looks_are_log_uniform():
    images = jax.random.uniform(jax.random.key(0), (4000, 2, 2, 1))
    clean, info = speckle.apply_sare(jax.random.key(1), images, model="gamma_intensity", prob=0.0,
                                     strength_range=(1.0, 1.0))
    assert not bool(info["applied"].any()) and bool(jnp.array_equal(clean, images))
    noisy, info = speckle.apply_sare(jax.random.key(1), images, model="gamma_intensity", prob=0.3,
                                     strength_range=(1.0, 1.0))
    applied = np.asarray(info["applied"])
    assert applied.mean() == pytest.approx(0.3, abs=4 * np.sqrt(0.21 / 4000))
    changed = np.any(np.asarray(noisy) != np.asarray(images), axis=(1, 2, 3))
    np.testing.assert_array_equal(changed, applied)
    _, info = speckle.apply_sare(jax.random.key(7), images, model="gamma_intensity", prob=1.0,
                                 strength_range=(1.0, 16.0))
    log_looks = np.log2(np.asarray(info["strength"])) / 4.0  # looks are drawn log-uniformly
    assert scipy.stats.kstest(log_looks, "uniform").pvalue > KS_MIN_PVALUE


def test_jit_compiles_once_for_all_strengths_and_is_deterministic():
    traces = []

    @jax.jit
    def step(key, images, prob, low, high):
        traces.append(1)
        return speckle.apply_sare(key, images, model="gamma_intensity", prob=prob, strength_range=(low, high))

    images = jnp.full((2, 16, 16, 3), 0.3)
    key = jax.random.key(9)
    first, _ = step(key, images, 1.0, 1.0, 2.0)
    again, _ = step(key, images, 1.0, 1.0, 2.0)
    other_strength, _ = step(key, images, 1.0, 0.5, 20.0)  # also crosses into the boosted L < 1 path
    other_key, _ = step(jax.random.key(10), images, 0.7, 3.0, 3.0)
    assert len(traces) == 1
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.allclose(first, other_strength) and not np.allclose(first, other_key)


def test_config_defaults_disabled_identity_and_dispatch():
    config = speckle.default_config()
    speckle.validate_config(config)
    assert config.model == "gamma_intensity" and config.prob == 0.5
    images = jnp.full((6, 16, 16, 3), 0.4)
    config.enabled = False
    out, info = speckle.apply_sare_from_config(jax.random.key(0), images, config)
    assert out is images and not bool(info["applied"].any())
    config.enabled, config.model, config.prob, config.sigma = True, "lognormal", 1.0, (0.2, 0.3)
    _, info = speckle.apply_sare_from_config(jax.random.key(0), images, config)
    assert bool(jnp.all((info["strength"] >= 0.2) & (info["strength"] <= 0.3)))  # sigma range used


@pytest.mark.parametrize("key, value, message", [
    ("prob", 1.5, r"config\.sare\.prob=1\.5: expected a probability in \[0, 1\]"),
    ("prob", "half", r"config\.sare\.prob='half'"),
    ("model", "gauss", r"config\.sare\.model='gauss': expected one of"),
    ("looks", (0.0, 4.0), r"config\.sare\.looks=\(0\.0, 4\.0\): expected lo > 0"),
    ("looks", (8.0, 4.0), r"config\.sare\.looks=\(8\.0, 4\.0\): expected lo <= hi"),
    ("looks", (1.0,), r"config\.sare\.looks=\(1\.0,\): expected a pair"),
    ("sigma", (-0.1, 0.5), r"config\.sare\.sigma=\(-0\.1, 0\.5\): expected lo >= 0"),
    ("sigma", (0.0, float("inf")), r"config\.sare\.sigma=.*expected a pair of finite numbers"),
    ("enabled", 1, r"config\.sare\.enabled=1: expected True or False"),
])
def test_validate_config_names_key_value_and_allowed(key, value, message):
    config = ml_collections.ConfigDict({**speckle.default_config().to_dict(), key: value})
    with pytest.raises(ValueError, match=message):
        speckle.validate_config(config)


def test_validate_config_rejects_missing_and_unknown_keys_and_apply_checks_arguments():
    config = speckle.default_config()
    del config["looks"]
    with pytest.raises(ValueError, match=r"config\.sare is missing \['looks'\]"):
        speckle.validate_config(config)
    config = speckle.default_config()
    config.noise_ratio = 0.5
    with pytest.raises(ValueError, match=r"unknown keys \['noise_ratio'\]"):
        speckle.validate_config(config)
    images = jnp.ones((1, 4, 4, 1))
    with pytest.raises(ValueError, match="model='speckle'"):
        speckle.apply_sare(jax.random.key(0), images, model="speckle", prob=0.5, strength_range=(1, 2))
    with pytest.raises(ValueError, match="expected lo > 0"):
        speckle.apply_sare(jax.random.key(0), images, model="amplitude", prob=0.5, strength_range=(0, 2))
