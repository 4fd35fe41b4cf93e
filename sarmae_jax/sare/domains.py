"""Speckle in the dataset's stored domain: fields act on linear intensity, pixels may store A or dB.

A dataset's manifest says what its stored values `x` in [0, 1] mean (`data_pipelines.sar_units`):
scaled intensity `I = x s`, scaled amplitude `A = sqrt(I) = x s`, or decibels
`dB = lo + x (hi - lo)`. Speckle multiplies linear INTENSITY by a unit-mean field `F` whatever the
storage, so the stored value of the speckled pixel is

===========  ==========================================  ============================================
domain       speckled stored value                        why
===========  ==========================================  ============================================
intensity    `x F`                                        `I F / s`
amplitude    `x sqrt(F)`                                  `sqrt(I F) / s`
db           `x + 10 log10(F) / (hi - lo)`                `(10 log10(I F) - lo) / (hi - lo)`
===========  ==========================================  ============================================

The dB row is exactly "convert to linear, multiply, convert back", written additively so that no
intensity is ever formed: `10 ** (dB / 10)` of a deep shadow times a small field underflows float32
(to 0, then -inf dB), the additive form cannot. The field is floored at `FIELD_FLOOR` (-300 dB)
before its logarithm, so that a Gamma draw that underflowed to 0 (possible only below half a look)
gives a finite, very dark pixel instead of -inf.

Nothing is clipped: a speckled value above 1 is a bright speckle peak above the stored scale (or
above `hi` dB), one below 0 in dB is a dark one below `lo`; cutting them would bias the mean and
the looks. The encoder sees them as normalised values beyond [-1, 1].

`StoredDomain` is hashable: it is a static argument of the jitted step (one compile per domain).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

DOMAINS = ("intensity", "amplitude", "db")
FIELD_FLOOR = 1e-30  # intensity factor floor before log10 in the dB domain: -300 dB
_DB_PER_NEPER = 10.0 / math.log(10.0)  # 10 log10(F) = _DB_PER_NEPER * ln(F)


@dataclasses.dataclass(frozen=True)
class StoredDomain:
    """What stored SAR values in [0, 1] encode. `db_range` = (lo, hi) in dB, only for "db"."""

    domain: str = "intensity"
    db_range: tuple[float, float] | None = None

    def __post_init__(self):
        if self.domain not in DOMAINS:
            raise ValueError(f"StoredDomain.domain={self.domain!r}: expected one of {DOMAINS}")
        if self.domain == "db":
            if self.db_range is None or len(self.db_range) != 2 or not self.db_range[0] < self.db_range[1]:
                raise ValueError(f"StoredDomain.db_range={self.db_range!r}: expected (lo, hi) in dB with lo < hi")
            object.__setattr__(self, "db_range", (float(self.db_range[0]), float(self.db_range[1])))
        elif self.db_range is not None:
            raise ValueError(f"StoredDomain: db_range={self.db_range!r} given for domain {self.domain!r}; "
                             "only the 'db' domain has one")

    @classmethod
    def from_units(cls, units: Mapping[str, Any] | None) -> "StoredDomain":
        """From a manifest's `sar_units` entry (`data_pipelines.sar_units.read`); None: legacy intensity."""
        if units is None:
            return cls()
        db_range = units.get("db_range") if units["domain"] == "db" else None
        return cls(units["domain"], None if db_range is None else tuple(db_range))


LEGACY = StoredDomain()


def speckle_stored(images: jax.Array, intensity_field: jax.Array, domain: StoredDomain) -> jax.Array:
    """Apply a multiplicative INTENSITY field to stored values, in the stored domain (table above).

    Args:
      images: `[B, H, W, C]` float32 stored values in [0, 1] (all C channels in `domain`).
      intensity_field: `[B, H, W, 1]` float32 > 0, unit-mean factor on linear intensity; broadcast
        over the C channels (one field per image, shared by its polarisations).
      domain: the dataset's stored domain (static).
    Returns:
      `[B, H, W, C]` float32 speckled stored values, not clipped.
    """
    if domain.domain == "intensity":
        return images * intensity_field
    if domain.domain == "amplitude":
        return images * jnp.sqrt(intensity_field)
    lo, hi = domain.db_range
    return images + (_DB_PER_NEPER / (hi - lo)) * jnp.log(jnp.maximum(intensity_field, FIELD_FLOOR))


def to_intensity(stored: jax.Array, domain: StoredDomain) -> jax.Array:
    """Stored values -> linear intensity (in units of the stored scale `s**k`; dB: absolute linear power)."""
    stored = jnp.asarray(stored, jnp.float32)
    if domain.domain == "intensity":
        return stored
    if domain.domain == "amplitude":
        return stored**2
    lo, hi = domain.db_range
    return 10.0 ** ((lo + stored * (hi - lo)) / 10.0)


def from_intensity(intensity: jax.Array, domain: StoredDomain) -> jax.Array:
    """Inverse of `to_intensity`: linear intensity -> stored values (not clipped)."""
    intensity = jnp.asarray(intensity, jnp.float32)
    if domain.domain == "intensity":
        return intensity
    if domain.domain == "amplitude":
        return jnp.sqrt(intensity)
    lo, hi = domain.db_range
    return (10.0 * jnp.log10(intensity) - lo) / (hi - lo)
