"""Statistical and behavioural tests of the SARE speckle kernels (sarmae_jax.sare.speckle, sarmae_jax.sare.sampling).

Statistical tests use fixed keys, so they are deterministic; thresholds are set several standard
errors wide (stated next to each) so that a correct sampler passes and a wrong law fails.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats
from jax.extend.random import threefry_2x32 as threefry_2x32_reference

from sarmae_jax.sare import quantiles, sampling, speckle

# Every apply_sare call below uses this one shape (compiled once per model, shared by the law,
# ENL, released-mode, shape and config tests); the fields are per image, shared by the 3 channels,
# so a flat image gives 16 x 64 x 64 = 65,536 field samples per law.
SHAPE = (16, 64, 64, 3)
KS_MIN_PVALUE = 1e-3


def _field_on_flat_image(model, strength, seed=0, level=0.1):
    """The multiplicative field of `model` at a fixed strength, read off a flat image: [N] float64."""
    flat = jnp.full(SHAPE, level, jnp.float32)
    noisy, info = speckle.apply_sare(jax.random.key(seed), flat, model=model, prob=1.0,
                                     strength_range=(strength, strength))
    assert bool(info["applied"].all())
    return np.asarray(noisy[..., 0], np.float64).ravel() / level


def _assert_moments(samples, mean, var):
    n = samples.size
    # Sample mean within 5 standard errors; variance within 6% (at least 2.4 standard errors of the
    # sample variance for these laws at n = 65,536, the heaviest tail being log-normal at sigma
    # 0.7; far below e.g. the 1/L vs 1/(L+1) difference).
    assert abs(samples.mean() - mean) < 5 * np.sqrt(var / n)
    assert samples.var() == pytest.approx(var, rel=0.06)


def test_threefry_is_bit_identical_to_jax():
    keypair = jnp.array([0x12345678, 0x9ABCDEF0], jnp.uint32)
    counters = jnp.arange(2 * 1000, dtype=jnp.uint32)
    first, second = sampling.threefry_2x32(keypair, counters[:1000], counters[1000:])
    expected = np.asarray(threefry_2x32_reference(keypair, counters))
    np.testing.assert_array_equal(np.concatenate([first, second]), expected)


@pytest.mark.parametrize("looks", [0.5, 1.0, 4.5])
def test_gamma_field_has_unit_mean_variance_one_over_looks_and_gamma_law(looks):
    samples = _field_on_flat_image("gamma_intensity", looks)
    _assert_moments(samples, 1.0, 1.0 / looks)
    assert scipy.stats.kstest(samples, scipy.stats.gamma(a=looks, scale=1.0 / looks).cdf).pvalue > KS_MIN_PVALUE
    # ENL on a flat image equals L (65,536 samples: relative standard error below 1.5% for L >= 1).
    assert float(speckle.equivalent_number_of_looks(samples)) == pytest.approx(looks, rel=0.08)


@pytest.mark.parametrize("looks", [1.0, 3.0])
def test_nakagami_field_follows_nakagami_law_and_its_square_has_looks(looks):
    samples = _field_on_flat_image("amplitude", looks)
    law = scipy.stats.nakagami(nu=looks, scale=1.0)  # omega = scale^2 = 1: unit mean intensity
    _assert_moments(samples, law.mean(), law.var())
    assert np.mean(samples**2) == pytest.approx(1.0, abs=5 * np.sqrt(1.0 / looks / samples.size))
    assert scipy.stats.kstest(samples, law.cdf).pvalue > KS_MIN_PVALUE
    assert float(speckle.equivalent_number_of_looks(samples**2)) == pytest.approx(looks, rel=0.08)


@pytest.mark.parametrize("sigma", [0.1, 0.7])
def test_lognormal_field_follows_lognormal_law(sigma):
    samples = _field_on_flat_image("lognormal", sigma)
    law = scipy.stats.lognorm(s=sigma)
    _assert_moments(samples, np.exp(sigma**2 / 2), law.var())
    assert scipy.stats.kstest(samples, law.cdf).pvalue > KS_MIN_PVALUE


def test_gamma_sampler_is_exact_when_the_pool_runs_out_and_accurate_for_huge_shapes():
    """A pool of 1 runs out on every Gamma row, forcing the whole-row rejection fallback (and the
    alpha < 1 boost after it); the law must stay exactly Gamma.

    Shapes 1e4 and 1e8 (the released mode reaches 1e8 looks) check the acceptance test, whose
    textbook form cancels catastrophically in float32.
    """
    shapes = jnp.array([1.0, 1.0, 0.5, 1e4, 1e8])
    gamma = sampling.standard_gamma_rows(jax.random.key(3), shapes, 20_000, pool_size=1)
    gamma = np.asarray(gamma, np.float64)
    assert scipy.stats.kstest(gamma[:2].ravel(), scipy.stats.gamma(a=1.0).cdf).pvalue > KS_MIN_PVALUE
    assert scipy.stats.kstest(gamma[2], scipy.stats.gamma(a=0.5).cdf).pvalue > KS_MIN_PVALUE
    for row, shape in ((3, 1e4), (4, 1e8)):
        standardised = (gamma[row] - shape) / np.sqrt(shape)
        if shape < 1e6:  # at 1e8 float32 resolution of the sample (~8) is comparable to its sd
            assert scipy.stats.kstest(standardised, "norm").pvalue > KS_MIN_PVALUE
        assert abs(standardised.mean()) < 0.03 and standardised.std() == pytest.approx(1.0, rel=0.05)


def test_released_mode_has_the_uncorrected_lognormal_mean_bias():
    # Dim flat image: x * exp(0.7 * 5.3) < 1, so neither clamp is active ("before clamping").
    sigma = 0.7
    ratio = _field_on_flat_image("released", sigma, seed=1, level=1e-3)
    sd = np.sqrt((np.exp(sigma**2) - 1) * np.exp(sigma**2) / ratio.size)
    assert abs(ratio.mean() - np.exp(sigma**2 / 2)) < 5 * sd  # 1.278, not 1
    assert scipy.stats.kstest(ratio, scipy.stats.lognorm(s=sigma).cdf).pvalue > KS_MIN_PVALUE


def test_released_mode_gamma_branch_keeps_the_mean_and_clamps():
    sigma = 0.03  # <= 0.05: Gamma with L = 1 / (4 sigma^2 + 1e-8) = 277.8 looks, mean rescaled
    images = jnp.full(SHAPE, 0.2, jnp.float32)
    noisy, _ = speckle.apply_sare(jax.random.key(2), images, model="released", prob=1.0,
                                  strength_range=(sigma, sigma))
    noisy = np.asarray(noisy)
    assert noisy.mean(axis=(1, 2, 3)) == pytest.approx([0.2] * SHAPE[0], rel=1e-5)
    assert float(speckle.equivalent_number_of_looks(noisy[0])) == pytest.approx(1 / (4 * sigma**2), rel=0.1)
    # Direct call with per-image sigmas: both branches on bright pixels, clamped to [1e-8, 1].
    bright = speckle.released_noise(jax.random.key(2), jnp.ones((4, 8, 8, 1)), jnp.array([0.7, 0.0, 0.7, 0.0]))
    assert float(bright.max()) == 1.0 and float(bright.min()) >= 1e-8


@pytest.mark.parametrize("model", speckle.MODELS)
def test_shape_dtype_channel_sharing_and_probability_one(model):
    # Dim enough that the released clamp at 1 never acts: x * exp(0.5 * 5.3) < 1.
    base = jax.random.uniform(jax.random.key(0), SHAPE[:3] + (1,), minval=0.01, maxval=0.05)
    images = jnp.concatenate([base, 0.5 * base, base], axis=-1)  # channels differ by a scale
    strength = (1.0, 4.0) if model in speckle.LOOKS_MODELS else (0.1, 0.5)
    noisy, info = speckle.apply_sare(jax.random.key(1), images, model=model, prob=1.0, strength_range=strength)
    batch = SHAPE[0]
    assert noisy.shape == images.shape and noisy.dtype == jnp.float32
    assert info["applied"].shape == (batch,) and info["applied"].dtype == jnp.bool_ and bool(info["applied"].all())
    assert info["strength"].shape == (batch,) and info["strength"].dtype == jnp.float32
    assert bool(jnp.all((info["strength"] >= strength[0]) & (info["strength"] <= strength[1])))
    factor = np.asarray(noisy / images)
    np.testing.assert_allclose(factor[..., 0], factor[..., 1], rtol=1e-5)  # one field per image
    np.testing.assert_allclose(factor[..., 0], factor[..., 2], rtol=1e-5)
    assert np.all(np.abs(factor - 1) > 0, axis=(1, 2, 3)).all()  # every image was noised
    assert not np.allclose(factor[0], factor[1])  # but with its own field


def test_one_compilation_serves_every_probability_and_strength_deterministically():
    """prob 0 is the identity, the fraction applied matches prob, looks are log-uniform, and the
    same key gives the same output, all through ONE compiled function (prob and range traced)."""
    traces = []

    @jax.jit
    def step(key, images, prob, low, high):
        traces.append(1)
        return speckle.apply_sare(key, images, model="gamma_intensity", prob=prob, strength_range=(low, high))

    images = jax.random.uniform(jax.random.key(0), (4000, 2, 2, 1))
    clean, info = step(jax.random.key(1), images, 0.0, 1.0, 1.0)
    assert not bool(info["applied"].any()) and bool(jnp.array_equal(clean, images))
    noisy, info = step(jax.random.key(1), images, 0.3, 1.0, 1.0)
    applied = np.asarray(info["applied"])
    assert applied.mean() == pytest.approx(0.3, abs=4 * np.sqrt(0.21 / 4000))
    changed = np.any(np.asarray(noisy) != np.asarray(images), axis=(1, 2, 3))
    np.testing.assert_array_equal(changed, applied)
    first, info = step(jax.random.key(7), images, 1.0, 1.0, 16.0)
    log_looks = np.log2(np.asarray(info["strength"])) / 4.0  # looks are drawn log-uniformly
    assert scipy.stats.kstest(log_looks, "uniform").pvalue > KS_MIN_PVALUE
    again, _ = step(jax.random.key(7), images, 1.0, 1.0, 16.0)
    other_strength, _ = step(jax.random.key(7), images, 1.0, 0.5, 20.0)  # also the boosted L < 1 path
    assert len(traces) == 1
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.allclose(first, other_strength) and not np.allclose(first, noisy)


def test_config_defaults_disabled_identity_and_dispatch():
    config = speckle.default_config()
    speckle.validate_config(config)
    assert config.model == "gamma_intensity" and config.prob == 0.5
    images = jnp.full(SHAPE, 0.4)
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


# ------------------------------------------------------------------------------------------------
# Inverse-CDF tables (sarmae_jax.sare.quantiles): the fast path of the Gamma-based models.


def _knot_probabilities():
    tails = quantiles.knot_tails()
    return np.concatenate([tails, 1.0 - tails[::-1][1:]]), np.concatenate([tails, tails[::-1][1:]])


def test_quantile_knots_cover_both_tails_on_the_float32_bit_grid():
    tails = quantiles.knot_tails()
    assert tails.size == quantiles.HALF + 1 and quantiles.NUM_KNOTS == 2 * quantiles.HALF + 1 == 2945
    assert tails[0] == 2.0**-24 and tails[-1] == 0.5 and np.all(np.diff(tails) > 0)
    # Each knot is the float32 whose top 6 mantissa bits start a cell: exactly representable.
    assert np.array_equal(tails.astype(np.float32).astype(np.float64), tails)
    u, _ = _knot_probabilities()
    np.testing.assert_allclose(quantiles.normal_quantiles(), scipy.stats.norm.ppf(u), atol=1e-9)


def test_table_lookup_decodes_every_uniform_exactly():
    # With the identity quantile table (row = the knots' u), the lookup must return each pixel's own
    # uniform: this checks the folding, the bit-pattern cell index and the in-cell position.

    u, _ = _knot_probabilities()
    rows = jnp.asarray(np.stack([u, u]), jnp.float32)
    key = jax.random.key(5)
    looked_up = quantiles.sample_rows(key, rows, 50_000)
    bits, _ = sampling.row_word_pairs(key, 2, 50_000)
    np.testing.assert_allclose(looked_up, sampling.open_unit_interval(bits), rtol=2e-7, atol=0)


@pytest.mark.parametrize("looks", [0.5, 0.77, 1.0, 1.03, 2.9, 15.9, 300.0, 17_000.0])
def test_gamma_quantile_rows_match_scipy(looks):
    # At every knot the row's value, mapped through the true CDF, is within 5e-5 of the knot's
    # probability (1e-5 typical; a Kolmogorov-Smirnov test on 1e6 pixels resolves ~1e-3). Rows of
    # looks between the table's rows are interpolated; above 2^14 looks they are Wilson-Hilferty.

    row = np.asarray(quantiles.gamma_rows(jnp.asarray([looks])), np.float64)[0]
    law = scipy.stats.gamma(a=looks, scale=1.0 / looks)
    _, tail_probability = _knot_probabilities()
    lower = np.arange(row.size) <= quantiles.HALF
    mapped = np.where(lower, law.cdf(row), law.sf(row))
    assert np.max(np.abs(mapped - tail_probability)) < 5e-5
    assert np.all(np.diff(row) >= 0)


def test_gamma_field_below_half_a_look_uses_the_exact_sampler():
    shape = (4, 128, 128, 1)
    field = np.asarray(speckle.gamma_field(jax.random.key(3), shape, 0.3), np.float64).ravel()
    assert scipy.stats.kstest(field, scipy.stats.gamma(a=0.3, scale=1 / 0.3).cdf).pvalue > KS_MIN_PVALUE
    # The exact path is Marsaglia-Tsang: the same key gives its samples, not the table's.
    exact = sampling.standard_gamma_rows(jax.random.key(3), jnp.full((4,), 0.3), 128 * 128) / 0.3
    np.testing.assert_array_equal(field, np.asarray(exact, np.float64).ravel())


def test_row_streams_are_threefry_of_the_row_key():
    """Row r: Threefry under the pair hashed from (r, 0), counters i and m + i (as `hash_word_pairs`)."""
    key = jax.random.key(3)
    first, second = sampling.row_word_pairs(key, 3, 5)
    pair = np.asarray(jax.random.bits(key, (2,), jnp.uint32))
    for r in range(3):
        row_pair = threefry_2x32_reference(pair, np.array([r, 0], np.uint32))
        words = np.asarray(threefry_2x32_reference(row_pair, np.arange(10, dtype=np.uint32)))
        np.testing.assert_array_equal(first[r], words[:5])
        np.testing.assert_array_equal(second[r], words[5:])


@pytest.mark.parametrize("model", speckle.MODELS)
def test_each_image_has_its_own_stream_whatever_the_batch(model):
    """Row r's field, strength and coin depend on (key, r) alone: the first rows of a batch of 12 are
    the batch of 5. (One stream for the whole batch made every field depend on the batch size.)"""
    images = jax.random.uniform(jax.random.key(1), (12, 16, 16, 1), minval=0.05, maxval=1.0)
    key = jax.random.key(7)
    strength = (1.0, 8.0) if model in speckle.LOOKS_MODELS else (0.02, 0.5)
    big, big_info = speckle.apply_sare(key, images, model=model, prob=0.5, strength_range=strength)
    small, small_info = speckle.apply_sare(key, images[:5], model=model, prob=0.5, strength_range=strength)
    np.testing.assert_array_equal(big[:5], small)
    np.testing.assert_array_equal(big_info["strength"][:5], small_info["strength"])
    np.testing.assert_array_equal(big_info["applied"][:5], small_info["applied"])
    assert 0 < int(big_info["applied"].sum()) < 12 and len(np.unique(np.asarray(big[:, 0, 0, 0]))) > 6


@pytest.mark.parametrize("model", ["gamma_intensity", "lognormal"])
def test_no_global_batch_ceiling(model):
    """262,144 images of 224 x 224 (a pod's global batch, 1.3e10 pixels) trace: no stream spans the batch.
    (A single stream refused 2**31 words or more: any batch above ~42,800 such images.)"""
    images = jax.ShapeDtypeStruct((262_144, 224, 224, 1), jnp.float32)
    strength = (1.0, 16.0) if model in speckle.LOOKS_MODELS else (0.1, 0.5)
    noisy, _ = jax.eval_shape(lambda x: speckle.apply_sare(jax.random.key(0), x, model=model, prob=0.5,
                                                           strength_range=strength), images)
    assert noisy.shape == images.shape
