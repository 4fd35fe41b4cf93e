"""Raster files -> pixels with their true dtype, bands, no-data value and metadata.

One reader for the converter and the evaluation builders:

* **TIFF / GeoTIFF** (``.tif``, ``.tiff``) through ``tifffile`` (+ ``imagecodecs`` for deflate, LZW,
  zstd, JPEG and tiled/COG files): 1 to N bands, interleaved (``YXS``), planar (``SYX``) or
  multi-page (``IYX``); uint8, uint16, int16, int32, float32/64 and complex (SLC). Nothing is
  converted: a uint16 band stays uint16 (Pillow cuts 3-band uint16 TIFFs to 8 bits and reads only the
  first page of multi-page files, silently). The GeoTIFF tags read are ``GDAL_NODATA`` (no-data value)
  and ``GDAL_METADATA`` (band descriptions such as ``VV`` or ``B04``, and dataset items such as
  ``BOA_ADD_OFFSET`` or units).
* **PNG, JPEG, BMP** through Pillow, exactly as :func:`data_pipelines.images.read_image` reads them
  (8/16-bit, RGB/RGBA/palette); Pillow's decompression-bomb limit is a setting
  (:func:`set_max_image_pixels`, ``--max_image_pixels``).

A file whose layout cannot be read or is ambiguous (several image series of different shapes, two
non-spatial axes) raises :class:`BadRaster` naming what was found: dtype, band count, shape.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import numpy as np
import tifffile
from PIL import Image

from data_pipelines import images

TIFF_EXTENSIONS = (".tif", ".tiff")
# Pillow refuses images over 2 * MAX_IMAGE_PIXELS (about 179 Mpx by default) as decompression bombs.
DEFAULT_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS
BadRaster = images.BadImage


@dataclasses.dataclass(frozen=True)
class Raster:
    """One decoded raster.

    Attributes:
      pixels: [H, W, C] in the file's dtype (complex for SLC files).
      kind: "tiff" (tifffile) or "image" (Pillow: PNG/JPEG/BMP, the released code's inputs).
      band_names: per-band descriptions from GDAL_METADATA (e.g. ("VV", "VH")), or None.
      nodata: the GDAL_NODATA value, or None.
      metadata: dataset-level GDAL_METADATA items and the ImageDescription, {name: text}.
      bit_depth: bits per sample of the file (8, 16, 32, 64).
      rgb: whether the file declares itself an 8-bit colour image (Pillow RGB/RGBA/P modes or a TIFF
        with photometric RGB): read like the released code reads images, alpha dropped.
    """

    pixels: np.ndarray
    kind: str
    band_names: tuple[str, ...] | None = None
    nodata: float | None = None
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)
    bit_depth: int = 8
    rgb: bool = False


def describe(array) -> str:
    """'dtype uint16, 2 bands, shape (2, 120, 120)': what a reader found, for error messages."""
    shape = tuple(array.shape)
    bands = shape[-1] if len(shape) == 3 else 1
    return f"dtype {array.dtype}, {bands} band{'s' * (bands != 1)}, shape {shape}"


def set_max_image_pixels(limit: int) -> None:
    """Pillow's decompression-bomb limit for PNG/JPEG/BMP (0: none). Pillow refuses images over twice
    this many pixels; the default (about 89.5 Mpx) refuses images over about 179 Mpx."""
    Image.MAX_IMAGE_PIXELS = None if not limit else int(limit)


def read_raster(path: str) -> Raster:
    """Reads `path` (TIFF through tifffile, other images through Pillow). Raises BadRaster."""
    if path.lower().endswith(TIFF_EXTENSIONS):
        return _read_tiff(path)
    try:
        pixels, bit_depth = images.read_image(path)
    except images.BadImage as e:
        if "DecompressionBombError" in str(e):
            raise BadRaster(f"{e}; the image is larger than Pillow's decompression-bomb limit: pass "
                            "--max_image_pixels 0 (or a larger pixel count) to the converter, or call "
                            "data_pipelines.rasters.set_max_image_pixels(0), to read it") from None
        raise
    return Raster(pixels, "image", bit_depth=bit_depth, rgb=pixels.shape[-1] == 3)


_ITEM = re.compile(r'<Item\s+name="([^"]+)"([^>]*)>(.*?)</Item>', re.S)
_SAMPLE = re.compile(r'sample="(\d+)"')


def _gdal_metadata(text: str) -> tuple[dict[str, str], dict[int, str]]:
    """GDAL_METADATA XML -> (dataset items, {band index: description})."""
    items, names = {}, {}
    for name, attrs, value in _ITEM.findall(text or ""):
        sample = _SAMPLE.search(attrs)
        if sample is None:
            items[name] = value.strip()
        elif name.upper() == "DESCRIPTION" or 'role="description"' in attrs:
            names[int(sample.group(1))] = value.strip()
    return items, names


def _read_tiff(path: str) -> Raster:
    try:
        tif = tifffile.TiffFile(path)
    except Exception as e:  # noqa: BLE001 -- any parser failure is this file's fault, reported with its type
        raise BadRaster(f"unreadable TIFF ({type(e).__name__}: {e})") from None
    with tif:
        if not tif.series:
            raise BadRaster("TIFF without an image series")
        series = tif.series[0]
        page = tif.pages[0]
        found = f"dtype {series.dtype}, shape {tuple(series.shape)}, axes {series.axes!r}"
        others = [s for s in tif.series[1:] if s.kind != "reduced" and tuple(s.shape) != tuple(series.shape)]
        if others:
            raise BadRaster(f"ambiguous TIFF layout: {len(tif.series)} image series of different shapes "
                            f"({found}; then {tuple(others[0].shape)}); expected one raster")
        try:
            data = series.asarray()
        except Exception as e:  # noqa: BLE001 -- a codec imagecodecs lacks, corrupt tiles, ...
            raise BadRaster(f"unreadable TIFF data ({found}, compression {page.compression!r}: "
                            f"{type(e).__name__}: {e})") from None
        tags = page.tags
        items, names = _gdal_metadata(tags["GDAL_METADATA"].value if "GDAL_METADATA" in tags else "")
        if "ImageDescription" in tags and isinstance(tags["ImageDescription"].value, str):
            items.setdefault("ImageDescription", tags["ImageDescription"].value)
        nodata = None
        if "GDAL_NODATA" in tags:
            try:
                nodata = float(str(tags["GDAL_NODATA"].value).strip().strip("\0"))
            except ValueError:
                raise BadRaster(f"GDAL_NODATA tag {tags['GDAL_NODATA'].value!r} is not a number ({found})") from None
        photometric_rgb = int(page.photometric) in (2, 6)  # RGB, or YCbCr (JPEG) decoded to RGB
        bit_depth = int(np.dtype(series.dtype).itemsize * 8)
        if int(page.photometric) == 3 and page.colormap is not None and data.dtype == np.uint8:
            # Palette image: its colours, as Pillow's "P" mode gives them (colour map entries are 16-bit).
            data, photometric_rgb = np.moveaxis((page.colormap[:, data] >> 8).astype(np.uint8), 0, -1), True
            series_axes = "YXS"
        else:
            series_axes = series.axes
    pixels = _to_hwc(data, series_axes, found)
    band_names = tuple(names.get(i, "") for i in range(pixels.shape[-1])) if names else None
    rgb = photometric_rgb and pixels.dtype == np.uint8 and pixels.shape[-1] in (3, 4)
    if rgb:
        pixels = pixels[..., :3]  # alpha (extra sample) dropped, as the Pillow path does
    return Raster(pixels, "tiff", band_names=band_names, nodata=nodata, metadata=items, bit_depth=bit_depth, rgb=rgb)


def _to_hwc(data: np.ndarray, axes: str, found: str) -> np.ndarray:
    """Any series layout with Y and X plus at most one band axis (S, I, C, Q, Z, T...) -> [H, W, C]."""
    if "Y" not in axes or "X" not in axes:
        raise BadRaster(f"ambiguous TIFF layout: no Y/X axes ({found})")
    keep = [i for i, a in enumerate(axes) if a not in "YX" and data.shape[i] > 1]
    if len(keep) > 1:
        raise BadRaster(f"ambiguous TIFF layout: two non-spatial axes {axes!r} ({found}); expected bands "
                        "as samples or pages, not both")
    squeeze = tuple(i for i, a in enumerate(axes) if a not in "YX" and data.shape[i] == 1)
    data = np.squeeze(data, squeeze) if squeeze else data
    axes = "".join(a for i, a in enumerate(axes) if i not in squeeze)
    order = [axes.index("Y"), axes.index("X")] + [i for i, a in enumerate(axes) if a not in "YX"]
    data = np.transpose(data, order)
    return data if data.ndim == 3 else data[..., None]
