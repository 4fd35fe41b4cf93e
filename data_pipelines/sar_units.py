"""What a dataset's stored SAR pixels mean: the ``sar_units`` entry of its manifest.

A stored SAR value is ``x = pixel / dtype max`` in [0, 1] (see :mod:`data_pipelines.records`). The
entry says which physical quantity ``x`` encodes and how, so that speckle (which multiplies linear
intensity, whatever the storage) and every reader agree with the converter:

=============  =========================================================================
``domain``     meaning of ``x``
=============  =========================================================================
intensity      linear power (sigma0-like), scaled: ``I = x * s`` for a recorded scale ``s``
amplitude      ``A = sqrt(I)``, scaled: ``A = x * s``
db             decibels mapped linearly: ``dB = lo + x * (hi - lo)`` with ``db_range = [lo, hi]``
=============  =========================================================================

Other keys of the entry:

* ``channels``: the names of the stored channels in order (``["VV", "VH"]``); its length equals
  the records' SAR channel count.
* ``db_range``: ``[lo, hi]`` in dB, required for the ``db`` domain.
* anything a converter adds to say how it decided (e.g. ``decision``, ``scaling``), free-form.

Manifests written before this entry existed hold single-channel scaled intensity (the released
pre-training's reading of 8/16-bit SAR images): :func:`read` returns :data:`LEGACY` for them.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KEY = "sar_units"
DOMAINS = ("intensity", "amplitude", "db")
LEGACY = {"domain": "intensity", "channels": ["SAR"]}


def validate(entry: Mapping[str, Any], source: str, channels: int | None = None) -> dict[str, Any]:
    """Checks one ``sar_units`` entry; `channels` (if given) is the records' SAR channel count.
    Returns it as a plain dict. Raises ValueError naming `source` and the offending key."""
    entry = dict(entry)
    domain = entry.get("domain")
    if domain not in DOMAINS:
        raise ValueError(f"{source}: {KEY}.domain={domain!r}; expected one of {list(DOMAINS)}")
    names = entry.get("channels")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{source}: {KEY}.channels={names!r}; expected a non-empty list of channel names")
    if channels is not None and len(names) != channels:
        raise ValueError(f"{source}: {KEY}.channels names {len(names)} channel(s) {names}, but the records "
                         f"hold {channels}")
    if domain == "db":
        lo_hi = entry.get("db_range")
        if (not isinstance(lo_hi, (list, tuple)) or len(lo_hi) != 2
                or not all(isinstance(v, (int, float)) for v in lo_hi) or not lo_hi[0] < lo_hi[1]):
            raise ValueError(f"{source}: {KEY}.db_range={lo_hi!r}; expected [lo, hi] in dB with lo < hi "
                             "for the 'db' domain")
        entry["db_range"] = [float(lo_hi[0]), float(lo_hi[1])]
    return entry


def read(manifest: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The ``sar_units`` entry of a manifest (validated against its SAR channel count), or
    :data:`LEGACY` for a single-channel manifest written before the entry existed."""
    shape = manifest.get("features", {}).get("sar", {}).get("shape", [0, 0, 1])
    channels = int(shape[-1])
    if KEY not in manifest:
        if channels != 1:
            raise ValueError(f"{source}: records hold {channels} SAR channels but the manifest has no "
                             f"{KEY!r} entry naming them")
        return dict(LEGACY)
    return validate(manifest[KEY], source, channels)
