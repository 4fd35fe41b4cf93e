"""SAR pixel values: which physical quantity a file holds (``--sar_units``), conversions between the
domains, and the mapping of physical values to the stored [0, 1] of a record.

Units (``A`` amplitude, ``I = A**2`` intensity / linear power such as sigma0, ``dB = 10 log10 I``):

==============  ==============================================================================
``auto`` finds  when
==============  ==============================================================================
db              the file's metadata says dB/decibel; or float pixels with negative values (a negative
                median or values below -1: small negatives in a mostly positive image are the noise
                residue of linear products, which are then intensity)
amplitude       the metadata says amplitude; or integer DN in a TIFF (Sentinel-1 GRD DN are
                detected amplitude)
intensity       the metadata says intensity/sigma0/power/linear; float pixels >= 0; or an 8/16-bit
                PNG/JPEG/BMP image or 8-bit colour TIFF (read as scaled intensity, as the released
                pre-training did). Metadata words count between non-alphanumerics (``Sigma0_VV_db``).
(error)         complex (SLC) pixels: ``--sar_units`` must say whether to store intensity
                ``|z|**2``, amplitude ``|z|`` or dB; signed integers with negative values (scaled dB?)
==============  ==============================================================================

Stored value ``x`` in [0, 1] (the ``sar_units`` entry of the manifest, :mod:`data_pipelines.sar_units`):

* ``db``: ``x = clip((dB - lo) / (hi - lo), 0, 1)`` with one ``db_range = [lo, hi]`` per dataset;
* ``intensity`` / ``amplitude``: ``x = clip(max(v, 0) / s, 0, 1)`` with ``s`` per image by the intensity
  rule (``percentile``: ``s`` = the 99.9th percentile of the valid pixels; 8-bit: ``s = 255``). The
  physical scale is dropped on purpose: speckle multiplies, so a per-image scale does not change it.
"""
from __future__ import annotations

import re

import numpy as np

from data_pipelines import images
from data_pipelines.rasters import Raster

UNITS = ("auto", "intensity", "amplitude", "db")
DEFAULT_DB_RANGE = (-35.0, 10.0)  # VH over land reaches -30 dB; strong point targets exceed 0 dB
# Words between non-alphanumerics (underscores separate too: SNAP names bands "Sigma0_VV_db").
_TAG_WORDS = tuple((units, re.compile(rf"(?<![a-z0-9])({words})(?![a-z0-9])", re.I)) for units, words in (
    ("db", "db|decibels?"), ("amplitude", "amplitude"),
    ("intensity", "intensity|sigma0|sigma_0|gamma0|beta0|power|linear")))


def detect_units(raster: Raster, stated: str = "auto") -> tuple[str, str]:
    """(units, reason) of one file. `stated` other than "auto" is taken as given (checked against the
    data where a contradiction is certain). Raises BadImage for complex data under "auto", for signed
    integers with negative values under "auto", and for negative values stated as linear."""
    x = raster.pixels
    if stated != "auto":
        if stated in ("intensity", "amplitude") and not np.iscomplexobj(x):
            finite = x[np.isfinite(x)] if x.dtype.kind == "f" else x.ravel()
            if raster.nodata is not None:
                finite = finite[finite != raster.nodata]
            if finite.size and (np.median(finite) < 0 or finite.min() < -1):
                raise images.BadImage(f"--sar_units {stated} but the pixels hold negative values (min "
                                      f"{float(finite.min()):g}, median {float(np.median(finite)):g}; {_desc(x)}): "
                                      "linear values are >= 0 (dB?)")
        return stated, "stated by --sar_units"
    if np.iscomplexobj(x):
        raise images.BadImage(f"complex (SLC) pixels ({_desc(x)}): pass --sar_units intensity (|z|^2), "
                              "amplitude (|z|) or db")
    text = " ".join(str(v) for v in raster.metadata.values())
    text += " " + " ".join(raster.band_names or ())
    for units, pattern in _TAG_WORDS:
        if pattern.search(text):
            return units, f"metadata says {pattern.search(text).group(0)!r}"
    if x.dtype.kind == "f":
        valid = x[np.isfinite(x)]
        if raster.nodata is not None:
            valid = valid[valid != raster.nodata]
        if valid.size and valid.min() < 0:
            # dB of land and sea is mostly negative; linear products may hold small negative residues of
            # thermal-noise removal (about -1e-3), never values below -1.
            if np.median(valid) < 0 or valid.min() < -1:
                return "db", f"float pixels with negative values (min {float(valid.min()):.3g})"
            return "intensity", (f"float pixels >= 0 but for small negatives (min {float(valid.min()):.3g}, "
                                 "noise residue; stored as 0)")
        return "intensity", "float pixels >= 0 (linear power)"
    if raster.kind == "image" or raster.rgb:
        return "intensity", f"{raster.bit_depth}-bit image file (the released reading: scaled intensity)"
    if x.dtype.kind == "i" and x.min() < 0:
        raise images.BadImage(f"signed integer pixels with negative values ({_desc(x)}, min {int(x.min())}): "
                              "scaled dB or something else; pass --sar_units")
    return "amplitude", "integer DN in a TIFF (detected amplitude, as Sentinel-1 GRD)"


def physical(pixels: np.ndarray, units: str) -> np.ndarray:
    """Pixels of a file in `units` -> float64 values in those units; complex -> |z|^2, |z| or dB."""
    if np.iscomplexobj(pixels):
        power = np.abs(pixels.astype(np.complex128)) ** 2
        return {"intensity": power, "amplitude": np.sqrt(power), "db": _db(power)}[units]
    return pixels.astype(np.float64)


def convert(values: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Physical values from domain `src` to `dst` (intensity = amplitude^2, dB = 10 log10 intensity)."""
    if src == dst:
        return values
    intensity = {"intensity": values, "amplitude": values ** 2,
                 "db": 10.0 ** (values / 10.0)}[src]
    return {"intensity": intensity, "amplitude": np.sqrt(intensity), "db": _db(intensity)}[dst]


def _db(intensity: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return 10.0 * np.log10(intensity)  # zeros -> -inf: no-data in dB (below any db_range)


def to_stored(values: np.ndarray, valid: np.ndarray, domain: str, *, db_range=DEFAULT_DB_RANGE,
              rule: str = "percentile", integer_bits: int | None = None) -> np.ndarray:
    """Physical values [H, W, C] (in `domain`) -> float32 stored values in [0, 1]; invalid pixels -> 0.

    `valid` [H, W] bool marks pixels that are not no-data. `integer_bits` 8 selects the 8-bit rule
    (v / 255) for linear domains, as for 8-bit images.
    Raises BadImage: a constant image (nothing to learn from).
    """
    if domain == "db":
        lo, hi = db_range
        x = (values - lo) / (hi - lo)
    elif integer_bits == 8:
        x = values / 255.0
    else:
        values = np.maximum(values, 0.0)  # linear power / amplitude: negatives are noise residue
        v = values[valid]
        if not v.size:
            raise images.BadImage("no valid pixels")
        if rule == "full_range":
            if integer_bits != 16 and (v.min() < 0 or v.max() > 1):
                raise images.BadImage(f"values in [{v.min():g}, {v.max():g}], outside [0, 1] (intensity rule "
                                      "full_range)")
            x = values / (65535.0 if integer_bits == 16 else 1.0)
        else:
            lo = 0.0
            hi = float(np.percentile(v, 99.9))
            if hi <= lo:
                hi = float(v.max())
            if hi <= lo:
                raise images.BadImage(f"constant image (all values {lo:g}); nothing to learn from")
            x = (values - lo) / (hi - lo)
    x = np.where(valid[..., None], np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _desc(x: np.ndarray) -> str:
    bands = x.shape[-1] if x.ndim == 3 else 1
    return f"dtype {x.dtype}, {bands} band{'s' * (bands != 1)}, shape {tuple(x.shape)}"
