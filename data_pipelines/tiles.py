"""Cutting scenes into tiles, no-data masks and the contrast check of stored images.

* **Windows** (``--tile SIZE --stride S``): top-left corners ``(row, col)`` on the grid
  ``0, S, 2S, ...`` with the whole ``SIZE x SIZE`` window inside the raster (the remainder at the
  right and bottom edges, less than one stride, is not covered).
* **No-data** pixels: NaN and +-Inf always; the file's ``GDAL_NODATA`` value; ``--nodata``; and 0
  in linear products (SAR intensity/amplitude from TIFF DN or floats, Sentinel-2 reflectance DN), whose
  scene borders hold 0. A pixel is no-data when any of its bands is. An image or tile whose no-data
  share exceeds ``--max_nodata_share`` (default 0.1) is skipped and counted; the remaining no-data
  pixels of a kept one are stored as 0.
* **Contrast** after scaling to [0, 1], over valid pixels (a regular subsample of at most about
  4k pixels): an image is *near-black* when its
  mean (optical) or 99th percentile (SAR, whose speckled intensity has a low mean by nature) is below
  ``MIN_LEVEL`` = 0.02 (5 of 255 levels), and *near-constant* when its 1st-to-99th percentile span is
  below ``MIN_SPAN`` = 0.02. Either is an error, never a sample: the 3-band uint16 optical files read
  through 8-bit truncation had means of 0.6 to 12.8 of 255 and spans of 2 to 32 levels.
"""
from __future__ import annotations

import numpy as np

DEFAULT_MAX_NODATA_SHARE = 0.1
MIN_LEVEL = 0.02
MIN_SPAN = 0.02
CHECK_PIXELS = 4096


def windows(height: int, width: int, size: int | None, stride: int | None) -> list[tuple[int, int]]:
    """Top-left corners of the tiles of an [height, width] raster; [(0, 0)] (the whole) when size is None."""
    if size is None:
        return [(0, 0)]
    stride = stride or size
    return [(r, c) for r in range(0, height - size + 1, stride) for c in range(0, width - size + 1, stride)]


def valid_mask(pixels: np.ndarray, *, nodata: float | None, zero_is_nodata: bool) -> np.ndarray:
    """[H, W, C] -> [H, W] bool, True where no band is no-data (see the module docstring)."""
    x = pixels
    bad = np.zeros(x.shape[:2], bool)
    if x.dtype.kind in "fc":
        bad |= ~np.isfinite(x).all(-1)
    if nodata is not None and not np.iscomplexobj(x):
        bad |= (x == nodata).any(-1) if not np.isnan(nodata) else False
    if zero_is_nodata:
        bad |= (x == 0).all(-1) if np.iscomplexobj(x) else (x == 0).any(-1)
    return ~bad


def contrast_problem(x: np.ndarray, valid: np.ndarray, *, kind: str) -> str | None:
    """None if stored values `x` [H, W, C] in [0, 1] have contrast, else the reason (near-black /
    near-constant, with the numbers and thresholds). `kind` is "sar" or "optical"."""
    # A regular subsample of at most ~CHECK_PIXELS pixels: percentiles for a threshold check need no
    # more, and sorting whole images would cost the converter half its time.
    step = max(1, int(np.sqrt(x.shape[0] * x.shape[1] / CHECK_PIXELS)))
    v = x[::step, ::step][valid[::step, ::step]]
    if not v.size:
        return "no valid pixels"
    p1, p99 = np.percentile(v, [1, 99])
    level, name = (float(v.mean()), "mean") if kind == "optical" else (float(p99), "99th percentile")
    if level < MIN_LEVEL:
        return (f"near-black {kind} after scaling: {name} {level * 255:.1f} of 255 (< {MIN_LEVEL * 255:.1f}); "
                "check the units/scaling flags")
    if p99 - p1 < MIN_SPAN:
        return (f"near-constant {kind} after scaling: 1st-99th percentile span {(p99 - p1) * 255:.1f} of 255 "
                f"levels (< {MIN_SPAN * 255:.1f})")
    return None
