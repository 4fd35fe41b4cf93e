"""Optical pixel values: band selection (``--optical_bands``) and the scaling of multispectral
reflectance to the RGB in [0, 1] the teacher sees (``--optical_scaling``, ``--boa_add_offset``,
``--optical_max_reflectance``).

Scalings (``auto`` picks the first that applies):

================  ===================================================================================
``uint8``         8-bit images: ``v / 255`` (the released reading; PNG/JPEG as before)
``percentile``    16-bit PNG images: the intensity rule of :mod:`data_pipelines.images` (as before)
``reflectance``   integer TIFF DN (Sentinel-2 L2A and the datasets built from it) whose median non-zero
                  DN is at most ``MAX_REFLECTANCE_MEDIAN_DN`` (11000: reflectance above 1 for most of an
                  image is no reflectance product; such files get ``percentile``): reflectance
                  ``rho = (DN + BOA_ADD_OFFSET) / 10000``; float TIFF: ``rho`` = the value. Then
                  ``rgb = clip(rho / max_reflectance, 0, 1)`` (default 0.3: land reflectance is mostly
                  below 0.3, so this is a natural-looking true colour, and one fixed stretch keeps
                  brightness comparable across images). DN 0 is no-data.
================  ===================================================================================

``BOA_ADD_OFFSET`` is -1000 for Sentinel-2 processing baseline 04.00 and later (products from
25 January 2022) and 0 before. ``--boa_add_offset auto`` reads it from the file's GDAL metadata
(``BOA_ADD_OFFSET`` or ``BOA_ADD_OFFSET_B<n>`` items) and otherwise takes 0; the manifest counts how
many files had it from metadata and how many were assumed. Pass ``-1000`` for post-2022 products
whose metadata were lost (the images are otherwise 0.1 reflectance too bright).
"""
from __future__ import annotations

import numpy as np

from data_pipelines import images
from data_pipelines.rasters import Raster

SCALINGS = ("auto", "uint8", "percentile", "reflectance")
DEFAULT_MAX_REFLECTANCE = 0.3
REFLECTANCE_DN_SCALE = 10000.0
MAX_REFLECTANCE_MEDIAN_DN = 11000


def parse_bands(text: str) -> tuple[str, ...]:
    """'3,2,1' or 'B04,B03,B02' -> a tuple of 3 band selectors (1-based indices or names)."""
    bands = tuple(b.strip() for b in text.split(",") if b.strip())
    if len(bands) != 3:
        raise ValueError(f"--optical_bands {text!r}: expected 3 bands (red, green, blue), e.g. 3,2,1 or B04,B03,B02")
    return bands


def select_bands(raster: Raster, bands: tuple[str, ...] | None) -> np.ndarray:
    """[H, W, C] -> [H, W, 3] red, green, blue (or [H, W, 1] grey). Without `bands`: 1 band (grey),
    3 bands (taken as red, green, blue in file order) or an 8-bit colour image; any other count is
    an error naming it. Indices are 1-based (GDAL's band numbers); names match the file's band
    descriptions."""
    x = raster.pixels
    c = x.shape[-1]
    if bands is None:
        if c in (1, 3):
            return x
        raise images.BadImage(f"optical file has {c} bands ({_desc(x)}); pass --optical_bands with the red, "
                              "green and blue bands (1-based numbers or band names, e.g. 3,2,1 or B04,B03,B02)")
    picked = []
    for b in bands:
        if b.isdigit():
            i = int(b) - 1
            if not 0 <= i < c:
                raise images.BadImage(f"--optical_bands {','.join(bands)}: band {b} does not exist ({_desc(x)})")
        else:
            names = list(raster.band_names or ())
            if b not in names:
                raise images.BadImage(f"--optical_bands {','.join(bands)}: no band named {b!r} (the file names "
                                      f"{names or 'no bands'}; {_desc(x)})")
            i = names.index(b)
        picked.append(i)
    return x[..., picked]


def boa_add_offset(raster: Raster, stated: str) -> tuple[float, str]:
    """(offset, source): `stated` as a number, or (auto) the file's BOA_ADD_OFFSET metadata, else 0."""
    if stated != "auto":
        return float(stated), "stated"
    for key, value in raster.metadata.items():
        if key.upper().startswith("BOA_ADD_OFFSET"):
            try:
                return float(value), "metadata"
            except ValueError:
                raise images.BadImage(f"metadata item {key}={value!r} is not a number") from None
    return 0.0, "assumed 0 (no BOA_ADD_OFFSET in metadata)"


def scaling_of(raster: Raster, stated: str) -> str:
    """The scaling a file gets under `stated` ("auto": by its dtype and kind, see the table)."""
    if stated != "auto":
        return stated
    if raster.pixels.dtype == np.uint8:
        return "uint8"
    if raster.kind == "image":
        return "percentile"
    x = raster.pixels
    if x.dtype.kind in "iu":
        nonzero = x[x != 0]
        if nonzero.size and np.median(nonzero) > MAX_REFLECTANCE_MEDIAN_DN:
            return "percentile"
    return "reflectance"


def to_rgb(pixels: np.ndarray, valid: np.ndarray, scaling: str, *, offset: float = 0.0,
           max_reflectance: float = DEFAULT_MAX_REFLECTANCE, rule: str = "percentile") -> np.ndarray:
    """Selected bands [H, W, 1|3] -> float32 [0, 1] by `scaling`; invalid pixels -> 0."""
    if scaling == "uint8":
        if pixels.dtype != np.uint8:
            raise images.BadImage(f"--optical_scaling uint8 but the pixels are {pixels.dtype}")
        x = pixels.astype(np.float32) / 255.0
    elif scaling == "percentile":
        x = images.to_unit_intensity(pixels, rule)
    elif scaling == "reflectance":
        v = pixels.astype(np.float64)
        rho = (v + offset) / REFLECTANCE_DN_SCALE if pixels.dtype.kind in "iu" else v
        x = rho / max_reflectance
    else:
        raise ValueError(f"optical scaling {scaling!r}: expected one of {SCALINGS}")
    if not (pixels.dtype.kind in "iu" and valid.all()):  # (8-bit images skip this pass: nothing to mask)
        x = np.where(valid[..., None], np.nan_to_num(x, nan=0.0), 0.0)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _desc(x: np.ndarray) -> str:
    return f"dtype {x.dtype}, {x.shape[-1]} band{'s' * (x.shape[-1] != 1)}, shape {tuple(x.shape)}"
