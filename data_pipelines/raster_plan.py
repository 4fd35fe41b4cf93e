"""Dataset-wide reading decisions made before any shard is written: per-polarisation files grouped
into samples, the stored SAR domain (``--sar_units auto``), the reading flags of the converter, and
the manifest entries that record them.

Per-polarisation files: with ``--polarisations VV,VH`` a file named ``<patch>_VV.<ext>`` (the
suffix matched case-insensitively) is grouped with ``<patch>_VH.<ext>`` beside it into one sample
whose channels are stored in the flag's order; a group missing a polarisation is an error naming the
missing file. Files without such a suffix are multi-band files.

``--sar_units auto`` reads up to ``DECIDE_FILES`` SAR files spread over the list, detects each
one's units (:func:`sar_values.detect_units`) and stores the dataset in the majority's domain (on a
tie, the first sampled file's). Every
file whose own units differ is converted physically to that domain (amplitude squared, dB to linear
and back) and listed in the manifest (``sar_units.files_differing``) and the log.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
from typing import Any

from data_pipelines import images, optical_values, rasters, sar_values, tiles

DECIDE_FILES = 16
MAX_LISTED = 1000  # files_differing entries kept in the manifest (the count is always exact)
UNITS_LOG = "sar_units_files.jsonl"  # every file stored from other units than the dataset's: {"file", "units", "reason"}
# errors.jsonl reasons -> the kinds counted in the manifest (converter.counts.skipped_by_reason), first match wins
REASON_KINDS = (("missing", "missing file"), ("malformed", "malformed list entry"), ("unreadable", "unreadable"),
                ("no-data share", "mostly no-data"), ("near-black", "near-black"), ("near-constant", "near-constant"),
                ("constant image", "constant"), ("smaller than", "too small"), ("complex", "complex without units"),
                ("grid", "different grids"), ("band", "band count or selection"), ("ambiguous", "ambiguous layout"))


def polarisation_group(path: str, polarisations) -> tuple[str, tuple[str, ...]] | None:
    """(group key, the group's paths in polarisation order) for `path` named ``<patch>_<POL>.<ext>``,
    else None."""
    if not polarisations:
        return None
    stem, ext = os.path.splitext(path)
    for pol in polarisations:
        m = re.fullmatch(rf"(.*)_({re.escape(pol)})", stem, re.I)
        if m:
            base, sep_case = m.group(1), m.group(2)
            upper = sep_case.isupper()
            return base + ext, tuple(f"{base}_{p.upper() if upper else p.lower()}{ext}" for p in polarisations)
    return None


def group_polarisations(samples: list, polarisations, errors: list, optical_bands=()) -> list:
    """Samples naming a `<patch>_<POL>` file -> one sample per patch holding all its polarisation files
    (``sar_parts``); an optical `<name>_<BAND>` file with band names in `optical_bands` -> its band files
    (``optical_parts``, one file per band, as BigEarthNet-S2 stores them)."""
    out, seen = [], set()
    band_names = tuple(b for b in optical_bands if not b.isdigit())
    for s in samples:
        group = polarisation_group(s.sar, polarisations)
        if group is not None:
            key, parts = group
            if key in seen:
                continue
            seen.add(key)
            missing = [p for p in parts if not os.path.isfile(p)]
            if missing:
                errors.append({"file": missing[0], "reason": f"missing polarisation file of {os.path.basename(key)} "
                               f"(--polarisations {','.join(polarisations)}; named via {s.origin})"})
                continue
            s = dataclasses.replace(s, sar=parts[0], sar_parts=parts)
        group = polarisation_group(s.optical, band_names) if s.optical and band_names else None
        if group is not None:
            missing = [p for p in group[1] if not os.path.isfile(p)]
            if missing:
                errors.append({"file": missing[0], "reason": f"missing band file of {os.path.basename(group[0])} "
                               f"(--optical_bands {','.join(optical_bands)}; named via {s.origin})"})
                continue
            s = dataclasses.replace(s, optical=group[1][0], optical_parts=group[1])
        out.append(s)
    return out


def decide_domain(sar_files: list[tuple[str, ...]], settings) -> dict[str, Any]:
    """The dataset's stored domain: {"domain", "decision", "reason", "votes"}. Stated units are used
    as given. Raises images.BadImage (the first file's reason) when no sampled file can be decided."""
    if settings.sar_units != "auto":
        return {"domain": settings.sar_units, "decision": "stated", "reason": "--sar_units " + settings.sar_units}
    step = max(1, len(sar_files) // DECIDE_FILES)
    votes, reasons, first_error = collections.Counter(), {}, None
    for paths in sar_files[::step][:DECIDE_FILES]:
        try:
            units, reason = sar_values.detect_units(rasters.read_raster(paths[0]), "auto")
        except images.BadImage as e:
            first_error = first_error or images.BadImage(f"{paths[0]}: {e}")
            continue
        votes[units] += 1
        reasons.setdefault(units, f"{reason} ({os.path.basename(paths[0])})")
    if not votes:
        raise first_error
    domain = votes.most_common(1)[0][0]
    return {"domain": domain, "decision": "auto", "reason": reasons[domain], "votes": dict(votes),
            "files_read": sum(votes.values())}


def new_notes() -> dict[str, Any]:
    """A shard's notes of what the decoder saw beside its examples (kept in the shard's receipt)."""
    return {"units_differing": [], "tiles_skipped": {"nodata": 0, "contrast": 0}, "tile_errors": [],
            "boa_add_offset": {}}


def add_note(notes: dict, info: dict) -> None:
    """Adds one sample's decode info (units, skipped tiles, offsets) to a shard's notes."""
    if info["units"]:
        notes["units_differing"].append(info["units"])
    for why, n in info["skipped"].items():
        notes["tiles_skipped"][why] += n
    notes["tile_errors"] += info["tile_errors"]
    if info["boa_add_offset"]:
        key = f"{info['boa_add_offset']['offset']:g} ({info['boa_add_offset']['source']})"
        notes["boa_add_offset"][key] = notes["boa_add_offset"].get(key, 0) + 1


def merge_notes(notes: list[dict]) -> tuple[list, dict, list, collections.Counter]:
    """All shards' notes -> (files in other units, tiles skipped by reason, tile errors, offset sources)."""
    differing = [u for n in notes for u in n.get("units_differing", ())]
    skipped = {why: sum(n.get("tiles_skipped", {}).get(why, 0) for n in notes) for why in ("nodata", "contrast")}
    tile_errors = [e for n in notes for e in n.get("tile_errors", ())]
    offsets = collections.Counter()
    for n in notes:
        offsets.update(n.get("boa_add_offset", {}))
    return differing, skipped, tile_errors, offsets


def count_reasons(errors: list[dict]) -> dict[str, int]:
    """{kind: count} of errors.jsonl entries (REASON_KINDS; "other" for the rest)."""
    counts = collections.Counter()
    for e in errors:
        reason = e["reason"].lower()
        counts[next((kind for key, kind in REASON_KINDS if key in reason), "other")] += 1
    return dict(sorted(counts.items()))


def sar_units_entry(settings, decision: dict[str, Any], differing: list[dict]) -> dict[str, Any]:
    """The manifest's ``sar_units`` entry (schema: data_pipelines/sar_units.py) plus how it was decided."""
    domain = decision["domain"]
    entry = {"domain": domain, "channels": list(settings.polarisations or ("SAR",)), **decision,
             "files_differing": differing[:MAX_LISTED], "num_files_differing": len(differing),
             "files_differing_log": UNITS_LOG}
    if domain == "db":
        lo, hi = settings.db_range
        entry["db_range"] = [float(lo), float(hi)]
        entry["scaling"] = f"x = clip((dB - {lo:g}) / ({hi:g} - {lo:g}), 0, 1); no-data -> 0"
    else:
        top = "P99.9 of the valid pixels" if settings.intensity_rule == "percentile" else "65535 (float: 1)"
        entry["scaling"] = (f"x = clip(max(v, 0) / s, 0, 1) per image; s = {top} (8-bit: 255); "
                            f"PNG/JPEG/BMP images: the intensity rule {settings.intensity_rule!r}: "
                            f"{images.INTENSITY_RULES[settings.intensity_rule]}; no-data -> 0")
    return entry


def optical_entry(settings, offsets: collections.Counter) -> dict[str, Any]:
    """The manifest's ``optical_units`` entry: bands, scaling, the BOA_ADD_OFFSET sources seen."""
    return {"bands": list(settings.optical_bands or ()) or "file order (1 band: grey; 3 bands: R, G, B)",
            "scaling": settings.optical_scaling, "max_reflectance": settings.optical_max_reflectance,
            "reflectance": f"rho = (DN + BOA_ADD_OFFSET) / {optical_values.REFLECTANCE_DN_SCALE:g}; "
                           "rgb = clip(rho / max_reflectance, 0, 1); DN 0 is no-data",
            "boa_add_offset": settings.boa_add_offset, "boa_add_offset_sources": dict(offsets),
            "contrast_check": {"min_mean": tiles.MIN_LEVEL, "min_p1_p99_span": tiles.MIN_SPAN}}


def _number_pair(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.split(","))
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO,HI with LO < HI")
    return lo, hi


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The reading flags of the converter (docs/data.md, 'Your own collections')."""
    g = parser.add_argument_group("rasters (GeoTIFF products)")
    g.add_argument("--sar_units", choices=sar_values.UNITS, default="auto",
                   help="what the SAR pixels hold; auto decides from tags and data (recorded in the manifest)")
    g.add_argument("--db_range", type=_number_pair, default=sar_values.DEFAULT_DB_RANGE, metavar="LO,HI",
                   help="dB mapped linearly to the stored [0, 1] (db domain)")
    g.add_argument("--polarisations", type=_names, default=(), metavar="VV,VH",
                   help="SAR channels in stored order (band names, or <patch>_<POL> file suffixes)")
    g.add_argument("--optical_bands", type=optical_values.parse_bands, default=(), metavar="R,G,B",
                   help="red, green, blue bands: 1-based numbers (3,2,1) or band names (B04,B03,B02)")
    g.add_argument("--optical_scaling", choices=optical_values.SCALINGS, default="auto")
    g.add_argument("--boa_add_offset", default="auto", help="auto (file metadata, else 0), 0 or -1000")
    g.add_argument("--optical_max_reflectance", type=float, default=optical_values.DEFAULT_MAX_REFLECTANCE)
    g.add_argument("--tile", type=int, default=None, help="cut rasters into SIZE x SIZE tiles (no resize of scenes)")
    g.add_argument("--stride", type=int, default=None, help="tile stride (default: SIZE)")
    g.add_argument("--nodata", type=float, default=None, help="SAR no-data value (default: the file's tag)")
    g.add_argument("--max_nodata_share", type=float, default=tiles.DEFAULT_MAX_NODATA_SHARE)
    g.add_argument("--max_image_pixels", type=int, default=rasters.DEFAULT_MAX_IMAGE_PIXELS,
                   help="Pillow's decompression-bomb limit for PNG/JPEG (refuses twice this); 0: no limit")


def validate(settings) -> None:
    """Checks the reading fields of `settings`. Raises ValueError naming the flag and value."""
    if settings.sar_units not in sar_values.UNITS:
        raise ValueError(f"sar_units={settings.sar_units!r}: expected one of {list(sar_values.UNITS)}")
    if settings.optical_scaling not in optical_values.SCALINGS:
        raise ValueError(f"optical_scaling={settings.optical_scaling!r}: expected one of {list(optical_values.SCALINGS)}")
    if settings.boa_add_offset != "auto":
        try:
            float(settings.boa_add_offset)
        except ValueError:
            raise ValueError(f"boa_add_offset={settings.boa_add_offset!r}: expected auto or a number (-1000, 0)") from None
    if settings.tile is not None and settings.tile < settings.min_size:
        raise ValueError(f"tile={settings.tile}: expected >= min_size={settings.min_size}")
    if settings.stride is not None and (settings.tile is None or settings.stride < 1):
        raise ValueError(f"stride={settings.stride}: expected >= 1, with --tile")
    if not 0 <= settings.max_nodata_share <= 1:
        raise ValueError(f"max_nodata_share={settings.max_nodata_share}: expected in [0, 1]")
    if len(set(settings.polarisations)) != len(settings.polarisations):
        raise ValueError(f"polarisations={settings.polarisations!r}: names repeat")


def settings_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields set by :func:`add_arguments`."""
    return {k: getattr(args, k) for k in ("sar_units", "db_range", "polarisations", "optical_bands", "optical_scaling",
                                          "boa_add_offset", "optical_max_reflectance", "tile", "stride", "nodata",
                                          "max_nodata_share", "max_image_pixels")}
