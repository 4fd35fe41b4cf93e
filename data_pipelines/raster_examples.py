"""One planned sample (a SAR raster, or one file per polarisation, and an optional optical raster) ->
record examples: units, channels, no-data, tiles, scaling, contrast check, resize, quantise.

The rules are those of :mod:`rasters` (reading), :mod:`sar_values` (units), :mod:`optical_values`
(bands, reflectance) and :mod:`tiles` (windows, no-data, contrast). 8/16-bit PNG/JPEG images in the
intensity domain go through :mod:`images` exactly as before (bitwise the same records).

SAR channels: ``polarisations`` names them in stored order. A multi-band file whose band
descriptions name the polarisations is reordered to that order; one without names is taken in file
order; a band count other than ``len(polarisations)`` is an error. Without ``polarisations`` one
channel is stored: a 1-band file, or an 8-bit colour image reduced as before (grey-as-RGB: channel
0; pseudo-colour: the channel mean, counted as ``color_averaged``).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from data_pipelines import images, optical_values, rasters, records, sar_values, tiles


def _bad(path: str, reason: str) -> images.BadImage:
    return images.BadImage(f"{path}\t{reason}")


def read_sar(paths: tuple[str, ...], polarisations: tuple[str, ...] | None, what: str = "polarisation"
             ) -> rasters.Raster:
    """The raster of a sample: one file, or one single-band file per polarisation (or optical band)
    stacked in order, named by `polarisations`. Raises BadImage with "file\\treason"."""
    if len(paths) == 1:
        try:
            return rasters.read_raster(paths[0])
        except images.BadImage as e:
            raise _bad(paths[0], str(e)) from None
    parts = []
    for path, pol in zip(paths, polarisations):
        try:
            r = rasters.read_raster(path)
        except images.BadImage as e:
            raise _bad(path, str(e)) from None
        if r.pixels.shape[-1] != 1:
            raise _bad(path, f"{what} file {pol} has {r.pixels.shape[-1]} bands ({rasters.describe(r.pixels)}); "
                       "expected 1")
        if parts and r.pixels.shape[:2] != parts[0][1].pixels.shape[:2]:
            raise _bad(path, f"{what} {pol} is {_hw(r.pixels)}, but {polarisations[0]} "
                       f"({os.path.basename(paths[0])}) is {_hw(parts[0][1].pixels)}: different grids")
        parts.append((path, r))
    first = parts[0][1]
    return rasters.Raster(np.concatenate([r.pixels for _, r in parts], -1), first.kind, band_names=polarisations,
                          nodata=first.nodata, metadata=first.metadata, bit_depth=first.bit_depth)


def sar_channels(raster: rasters.Raster, polarisations: tuple[str, ...] | None, path: str) -> np.ndarray:
    """[H, W, C] pixels in stored channel order (see the module docstring). Raises BadImage."""
    x = raster.pixels
    want = len(polarisations) if polarisations else 1
    if raster.rgb and want == 1:
        return x  # reduced to one channel by the legacy rule after scaling
    if x.shape[-1] != want:
        hint = (f"--polarisations names {want} ({','.join(polarisations)})" if polarisations
                else "1 SAR channel is stored without --polarisations (e.g. --polarisations VV,VH)")
        raise _bad(path, f"{x.shape[-1]} bands ({rasters.describe(x)}), but {hint}")
    names = raster.band_names
    if polarisations and names and set(polarisations) <= set(names):
        return x[..., [names.index(p) for p in polarisations]]
    return x


def sar_values_of(path: str, parts: tuple[str, ...], settings, domain: str, min_size: int
                  ) -> tuple[np.ndarray, np.ndarray, rasters.Raster, dict[str, Any]]:
    """The SAR raster(s) of one sample -> (stored [H, W, C] float32 in [0, 1], valid [H, W] bool, the
    raster, info {"units": (units, reason) of the file, "color_averaged": bool}). Raises BadImage
    "file\treason". Shared by the converter and the image-folder builder."""
    pols = settings.polarisations or None
    raster = read_sar(tuple(parts) or (path,), pols)
    pixels = sar_channels(raster, pols, path)
    try:
        units, reason = sar_values.detect_units(raster, settings.sar_units)
    except images.BadImage as e:
        raise _bad(path, str(e)) from None
    h, w = pixels.shape[:2]
    if min(h, w) < min_size:
        raise _bad(path, f"image {h}x{w} is smaller than one {min_size}x{min_size} "
                   + ("tile" if getattr(settings, "tile", None) else "patch"))
    averaged = False
    if (raster.rgb or raster.kind == "image") and units == domain == "intensity" and not np.iscomplexobj(pixels):
        try:  # the released reading of images, unchanged
            stored, averaged = images.sar_channel(images.to_unit_intensity(pixels, settings.intensity_rule))
        except images.BadImage as e:
            raise _bad(path, str(e)) from None
        valid = np.ones((h, w), bool)
    else:
        valid = tiles.valid_mask(pixels, nodata=settings.nodata if settings.nodata is not None else raster.nodata,
                                 zero_is_nodata=units != "db" and raster.kind == "tiff")
        values = sar_values.convert(sar_values.physical(pixels, units), units, domain)
        bits = pixels.dtype.itemsize * 8 if pixels.dtype in (np.uint8, np.uint16) else None
        try:
            stored = sar_values.to_stored(values, valid, domain, db_range=settings.db_range,
                                          rule=settings.intensity_rule, integer_bits=bits)
        except images.BadImage as e:
            raise _bad(path, f"{e} ({rasters.describe(pixels)})") from None
        if raster.rgb and not pols:  # an 8-bit colour image in other units than the dataset's: one channel
            stored, averaged = images.sar_channel(stored)
    return stored, valid, raster, {"units": (units, reason), "color_averaged": bool(averaged)}


def decode(sample, settings, root: str, domain: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A planned sample (``sar``, ``sar_parts``, ``optical``) -> (examples, info). `domain` is the
    dataset's stored SAR domain. Raises BadImage "file\treason" when the whole sample is unusable;
    tiles that fail are skipped and reported in info["tile_errors"] / info["skipped"]."""
    stored, valid, raster, sar_info = sar_values_of(sample.sar, sample.sar_parts, settings, domain,
                                                    settings.tile or settings.min_size)
    units, reason = sar_info["units"]
    info: dict[str, Any] = {"color_averaged": int(sar_info["color_averaged"]), "units": None,
                            "skipped": {"nodata": 0, "contrast": 0}, "tile_errors": [], "boa_add_offset": None}
    if units != domain:
        info["units"] = {"file": os.path.relpath(sample.sar, root), "units": units, "reason": reason}
    h, w = stored.shape[:2]
    optical = opt_valid = None
    if sample.optical is not None:
        optical, opt_valid = _optical(sample, settings, info)
        if settings.tile and optical.shape[:2] != (h, w):
            raise _bad(sample.optical, f"optical grid {_hw(optical)} differs from its SAR grid {h}x{w} "
                       f"({os.path.relpath(sample.sar, root)}); tiles need co-registered rasters of one grid "
                       "(no registration is guessed)")
    size = (settings.image_size, settings.image_size)
    rel = os.path.relpath(sample.sar, root)
    spec = settings.spec
    examples = []
    for r, c in tiles.windows(h, w, settings.tile, settings.stride):
        win = np.s_[r:r + settings.tile, c:c + settings.tile] if settings.tile else np.s_[:, :]
        where = f"{rel}#row={r},col={c}" if settings.tile else rel
        file_of = f"{sample.sar}#row={r},col={c}" if settings.tile else sample.sar
        ok, share, owner = valid[win], 1.0 - float(valid[win].mean()), sample.sar
        if opt_valid is not None:
            opt_share = 1.0 - float(opt_valid[win].mean() if settings.tile else opt_valid.mean())
            share, owner = max((share, owner), (opt_share, sample.optical))
        if share > settings.max_nodata_share:
            if not settings.tile:
                raise _bad(owner, f"no-data share {share:.2f} (NaN/Inf, nodata value or zeros in a linear "
                           f"product) above --max_nodata_share {settings.max_nodata_share}")
            info["skipped"]["nodata"] += 1
            continue
        problem = tiles.contrast_problem(stored[win], ok, kind="sar")
        if problem is None and optical is not None:
            o_win = optical[win] if settings.tile else optical
            o_ok = opt_valid[win] if settings.tile else opt_valid
            problem = tiles.contrast_problem(o_win, o_ok, kind="optical")
            problem = problem and f"{problem} (optical {sample.optical})"
        if problem is not None:
            if not settings.tile:
                raise _bad(sample.optical if "optical" in problem else sample.sar, problem)
            info["skipped"]["contrast"] += 1
            info["tile_errors"].append({"file": file_of, "reason": problem})
            continue
        sar_tile = images.resize_intensity(stored[win], size)
        opt_tile = None
        if optical is not None:
            rgb = images.resize_intensity(optical[win] if settings.tile else optical, size)
            opt_tile = images.quantise(np.repeat(rgb, 3, -1) if rgb.shape[-1] == 1 else rgb, np.uint8)
        tile_hw = (settings.tile, settings.tile) if settings.tile else (h, w)
        examples.append(records.make_example(spec, sar=images.quantise(sar_tile, records.SAR_DTYPES[settings.sar_dtype]),
                                             optical=opt_tile, source=where, original_size=tile_hw,
                                             bit_depth=raster.bit_depth))
    return examples, info


def _optical(sample, settings, info) -> tuple[np.ndarray, np.ndarray]:
    """The optical raster of a sample -> ([H, W, 1|3] float32 in [0, 1], valid [H, W])."""
    path = sample.optical
    try:
        parts = getattr(sample, "optical_parts", ())
        raster = read_sar(parts, settings.optical_bands, "band") if parts else rasters.read_raster(path)
        bands = optical_values.select_bands(raster, settings.optical_bands or None)
        scaling = optical_values.scaling_of(raster, settings.optical_scaling)
        offset, source = 0.0, None
        if scaling == "reflectance":
            offset, source = optical_values.boa_add_offset(raster, settings.boa_add_offset)
        valid = tiles.valid_mask(bands, nodata=raster.nodata,
                                 zero_is_nodata=scaling == "reflectance" and bands.dtype.kind in "iu")
        rgb = optical_values.to_rgb(bands, valid, scaling, offset=offset, rule=settings.intensity_rule,
                                    max_reflectance=settings.optical_max_reflectance)
    except images.BadImage as e:  # (a band file's error already names its file)
        file, reason = str(e).split("\t", 1) if "\t" in str(e) else (path, str(e))
        raise _bad(file, f"{reason} (optical of {os.path.basename(sample.sar)})") from None
    if min(rgb.shape[:2]) < settings.min_size:
        raise _bad(path, f"image {_hw(rgb)} is smaller than one {settings.min_size}x{settings.min_size} patch")
    info["boa_add_offset"] = source and {"offset": offset, "source": source}
    return rgb, valid


def _hw(x: np.ndarray) -> str:
    return f"{x.shape[0]}x{x.shape[1]}"
