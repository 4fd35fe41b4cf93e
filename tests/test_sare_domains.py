"""SARE agrees with the stored domain (sarmae_jax.sare.domains): speckle multiplies linear intensity
whether a dataset stores intensity, amplitude or dB, one field per image shared by its channels.

Deterministic (fixed keys); statistical thresholds are several standard errors wide, stated where set.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from sarmae_jax.sare import domains, speckle

DB = domains.StoredDomain("db", (-30.0, 5.0))
STORED = {
    "intensity": domains.StoredDomain("intensity"),
    "amplitude": domains.StoredDomain("amplitude"),
    "db": DB,
}
SHAPE = (4, 128, 128, 2)  # two channels (VV, VH): 65,536 field samples per channel
LINEAR = 0.05  # the flat region's linear intensity: -13 dB, inside DB's range


def _flat(domain: domains.StoredDomain) -> jax.Array:
    """A flat two-channel region of intensity LINEAR (VV) and LINEAR / 4 (VH), stored in `domain`."""
    levels = jnp.asarray([LINEAR, LINEAR / 4], jnp.float32)
    return jnp.broadcast_to(domains.from_intensity(levels, domain), SHAPE)


def _speckle(domain, model, strength, seed=0):
    noisy, info = speckle.apply_sare(jax.random.key(seed), _flat(domain), model=model, prob=1.0,
                                     strength_range=(strength, strength), domain=domain)
    assert bool(info["applied"].all())
    return noisy


def _enl_relative_standard_error(looks: float, n: int) -> float:
    # ENL = mean^2 / var: its relative error is about that of the sample variance of Gamma(L),
    # sqrt((2 + 6 / L) / n) (excess kurtosis of Gamma(L) is 6 / L); the mean's part is smaller.
    return float(np.sqrt((2 + 6 / looks) / n))


@pytest.mark.parametrize("name", list(STORED))
@pytest.mark.parametrize("looks", [1.0, 4.4])
def test_gamma_intensity_gives_looks_in_linear_intensity_whatever_the_stored_domain(name, looks):
    domain = STORED[name]
    intensity = np.asarray(domains.to_intensity(_speckle(domain, "gamma_intensity", looks), domain), np.float64)
    for channel, level in enumerate([LINEAR, LINEAR / 4]):
        samples = intensity[..., channel].ravel()
        se = _enl_relative_standard_error(looks, samples.size)
        enl = float(speckle.equivalent_number_of_looks(samples))
        assert enl == pytest.approx(looks, rel=5 * se), (name, channel, enl)
        assert samples.mean() == pytest.approx(level, rel=5 / np.sqrt(looks * samples.size))  # unit-mean field


def test_the_released_law_multiplying_db_values_would_fail_the_looks_test():
    # What the trainer did before the stored domain reached SARE: the Gamma field times the stored dB values.
    noisy = _flat(DB) * speckle.gamma_field(jax.random.key(0), SHAPE[:3] + (1,), 1.0)
    enl = float(speckle.equivalent_number_of_looks(domains.to_intensity(noisy, DB)[..., 0]))
    assert not enl == pytest.approx(1.0, rel=0.5)


def test_db_speckle_is_additive_with_the_log_gamma_moments():
    noisy = _speckle(DB, "gamma_intensity", 1.0)
    lo, hi = DB.db_range
    shift_db = np.asarray((noisy - _flat(DB)) * (hi - lo), np.float64)[..., 0].ravel()
    # 10 log10(G), G ~ Gamma(1, 1): mean (10 / ln 10)(digamma(1) - ln 1) = -2.51 dB, std 5.57 dB.
    scale = 10 / np.log(10)
    assert shift_db.mean() == pytest.approx(scale * scipy.special.digamma(1.0), abs=5 * 5.57 / np.sqrt(shift_db.size))
    assert shift_db.std() == pytest.approx(scale * np.sqrt(scipy.special.polygamma(1, 1.0)), rel=0.02)


@pytest.mark.parametrize("name", list(STORED))
@pytest.mark.parametrize("model", ["gamma_intensity", "amplitude", "lognormal"])
def test_one_field_per_image_is_shared_by_its_channels(name, model):
    domain = STORED[name]
    strength = 0.5 if model == "lognormal" else 2.0
    clean = _flat(domain)
    noisy = _speckle(domain, model, strength)
    # The implied intensity factor is the same in both channels, pixel by pixel.
    factor = domains.to_intensity(noisy, domain) / domains.to_intensity(clean, domain)
    np.testing.assert_allclose(np.asarray(factor[..., 0]), np.asarray(factor[..., 1]), rtol=2e-4)
    # ... and differs between images.
    assert not np.allclose(np.asarray(factor[0, ..., 0]), np.asarray(factor[1, ..., 0]))


@pytest.mark.parametrize("name", ["amplitude", "db"])
def test_amplitude_model_is_the_physical_law_on_amplitude_and_db_storage(name):
    domain = STORED[name]
    np.testing.assert_array_equal(np.asarray(_speckle(domain, "amplitude", 2.0)),
                                  np.asarray(_speckle(domain, "gamma_intensity", 2.0)))


def test_on_intensity_storage_every_model_keeps_its_meaning_bit_for_bit():
    images = jax.random.uniform(jax.random.key(3), (4, 32, 32, 3))
    for model, strength in (("gamma_intensity", 2.0), ("amplitude", 2.0), ("lognormal", 0.4), ("released", 0.3)):
        key = jax.random.key(7)
        explicit = speckle.apply_sare(key, images, model=model, prob=0.5, strength_range=(strength, strength),
                                      domain=domains.StoredDomain("intensity"))[0]
        legacy = speckle.apply_sare(key, images, model=model, prob=0.5, strength_range=(strength, strength))[0]
        np.testing.assert_array_equal(np.asarray(explicit), np.asarray(legacy))
    # The legacy laws themselves: intensity x G, amplitude x sqrt(G).
    key_field = jax.random.split(jax.random.key(7), 3)[2]
    field = speckle.gamma_field(key_field, (4, 32, 32, 1), jnp.full((4,), 2.0))
    noisy, info = speckle.apply_sare(jax.random.key(7), images, model="amplitude", prob=1.0, strength_range=(2.0, 2.0))
    np.testing.assert_allclose(np.asarray(noisy), np.asarray(images * jnp.sqrt(field)), rtol=1e-6)


def test_released_works_on_the_stored_values_whatever_the_domain():
    images = _flat(DB)
    key = jax.random.key(1)
    as_db = speckle.apply_sare(key, images, model="released", prob=1.0, strength_range=(0.3, 0.3), domain=DB)[0]
    as_stored = speckle.apply_sare(key, images, model="released", prob=1.0, strength_range=(0.3, 0.3))[0]
    np.testing.assert_array_equal(np.asarray(as_db), np.asarray(as_stored))


def test_lognormal_in_db_adds_sigma_times_4_34_db():
    sigma = 0.5
    noisy = _speckle(DB, "lognormal", sigma)
    lo, hi = DB.db_range
    shift_db = np.asarray((noisy - _flat(DB)) * (hi - lo), np.float64).ravel()
    assert shift_db.std() == pytest.approx(10 / np.log(10) * sigma, rel=0.02)
    assert abs(shift_db.mean()) < 5 * shift_db.std() / np.sqrt(shift_db.size)


def test_db_speckle_is_not_clipped_and_stays_finite_below_half_a_look():
    noisy = np.asarray(_speckle(DB, "gamma_intensity", 0.05))  # exact sampler; G underflows to 0 at times
    assert np.isfinite(noisy).all()
    assert noisy.min() < 0.0  # darker than the range's floor: kept, not clipped


@pytest.mark.parametrize("bad", [dict(domain="decibel"), dict(domain="db"), dict(domain="db", db_range=(5.0, -30.0)),
                                 dict(domain="intensity", db_range=(-30.0, 5.0))])
def test_stored_domain_refuses_what_it_cannot_mean(bad):
    with pytest.raises(ValueError, match="StoredDomain"):
        domains.StoredDomain(**bad)


def test_stored_domain_from_a_manifest_units_entry():
    assert domains.StoredDomain.from_units(None) == domains.LEGACY
    assert domains.StoredDomain.from_units({"domain": "db", "channels": ["VV", "VH"], "db_range": [-30, 5]}) == DB
    assert domains.StoredDomain.from_units({"domain": "amplitude", "channels": ["HH"]}).domain == "amplitude"
