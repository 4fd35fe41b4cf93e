"""SAR-1M (or any folder of SAR images) -> a records.py dataset of balanced ArrayRecord shards.

Inputs:

* the SAR-1M layout: ``SAR/`` and ``OPT/`` folders, ``paired.json`` (a list of
  ``{"sar": path, "optical": path}``) and/or ``unpaired.json`` (a list of paths or
  ``{"sar": path}``). Paths are relative to the root, to ``SAR/`` or to ``OPT/``: a leading
  ``SAR/`` or ``OPT/`` is optional;
* a plain folder of SAR images (no pairing lists; every image file below it, unpaired).

Every raster is decoded into record examples by :mod:`data_pipelines.raster_examples` (reading,
SAR units and channels, optical bands, tiles and no-data; docs/data.md), with the dataset-wide
decisions of :mod:`data_pipelines.raster_plan` recorded in the manifest (``sar_units``,
``optical_units``, counts of what was skipped and why). Bad inputs (unreadable/truncated image, a
file named in a list that is missing, a malformed list entry, an image smaller than one patch,
mostly no-data, constant, near-black, a band count the flags do not match) are left out and listed
in ``errors.jsonl`` (file, reason); a run whose error share exceeds ``--max_error_share`` fails
before writing the manifest. A malformed JSON list fails at once.

Shards are converted in parallel processes, one shard per task, each written to a temporary
file and renamed when complete, next to a ``.done.json`` receipt; a rerun keeps every shard whose
receipt matches its planned inputs and settings (resumable), and the manifest is written last.

CLI (console script ``sarmae-convert-sar1m``)::

    sarmae-convert-sar1m --input /data/SAR-1M --output /data/sar1m_224 --workers 16
    sarmae-convert-sar1m --input /data/my_sar_tiles --output /data/my_sar --dry_run
    sarmae-convert-sar1m --input /data/s1s2 --output /data/s1s2_224 --polarisations VV,VH \
        --optical_bands B04,B03,B02 --tile 224
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from data_pipelines import (images, optical_values, raster_examples, raster_plan, rasters, records, sar_values,
                            shard_io, tiles)
from data_pipelines import sar_units as sar_units_lib

log = logging.getLogger(__name__)
DATASET_NAME = "sar1m"
CONVERTER_VERSION = 2  # 2: rasters through tifffile, SAR units, channels, tiles (records of 8/16-bit PNG unchanged)
ERROR_LOG = "errors.jsonl"
# Uncompressed records: decompressing a 200 KB paired record costs ~3x reading it, and the input
# pipeline's throughput is bound by that (docs/data.md); speckled SAR compresses poorly anyway.
DEFAULT_WRITER_OPTIONS = "group_size:1,uncompressed"


class ConversionError(RuntimeError):
    """The run as a whole cannot proceed (malformed list, too many bad inputs)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What determines the output bytes (a shard's receipt must match them to be kept)."""

    image_size: int = 224
    sar_dtype: str = "uint8"
    intensity_rule: str = "percentile"
    min_size: int = 16  # one ViT patch
    writer_options: str = DEFAULT_WRITER_OPTIONS
    # Reading rasters (data_pipelines/raster_plan.py documents each; the CLI flags of the same names).
    sar_units: str = "auto"
    db_range: tuple[float, float] = sar_values.DEFAULT_DB_RANGE
    polarisations: tuple[str, ...] = ()
    optical_bands: tuple[str, ...] = ()
    optical_scaling: str = "auto"
    boa_add_offset: str = "auto"
    optical_max_reflectance: float = optical_values.DEFAULT_MAX_REFLECTANCE
    tile: int | None = None
    stride: int | None = None
    nodata: float | None = None
    max_nodata_share: float = tiles.DEFAULT_MAX_NODATA_SHARE
    max_image_pixels: int = rasters.DEFAULT_MAX_IMAGE_PIXELS

    def validate(self) -> None:
        if self.image_size < self.min_size:
            raise ValueError(f"image_size={self.image_size}: expected >= min_size={self.min_size}")
        if self.sar_dtype not in records.SAR_DTYPES:
            raise ValueError(f"sar_dtype={self.sar_dtype!r}: expected one of {sorted(records.SAR_DTYPES)}")
        if self.intensity_rule not in images.INTENSITY_RULES:
            raise ValueError(f"intensity_rule={self.intensity_rule!r}: expected one of {sorted(images.INTENSITY_RULES)}")
        if self.min_size < 1:
            raise ValueError(f"min_size={self.min_size}: expected >= 1")
        raster_plan.validate(self)

    @property
    def spec(self) -> records.RecordSpec:
        return records.RecordSpec((self.image_size, self.image_size), self.sar_dtype,
                                  sar_channels=len(self.polarisations) or 1)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One planned example: absolute SAR path and optional optical path; `origin` names the
    list entry it came from (for error messages); `sar_parts` / `optical_parts` the
    per-polarisation / per-band files of a group (empty for one file)."""

    sar: str
    optical: str | None
    origin: str
    sar_parts: tuple[str, ...] = ()
    optical_parts: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- planning


def _load_json_list(path: str) -> list:
    with open(path) as f:
        try:
            value = json.load(f)
        except json.JSONDecodeError as e:
            raise ConversionError(f"{path}: malformed JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(value, list):
        raise ConversionError(f"{path}: expected a JSON list, got {type(value).__name__}")
    return value


def _resolve(root: str, path: str, folder: str) -> str:
    """A list path -> absolute path; a leading SAR/ or OPT/ is optional."""
    if os.path.isabs(path):
        return path
    norm = path.replace("\\", "/")
    while norm.startswith("./"):
        norm = norm[2:]
    if norm.split("/", 1)[0] in ("SAR", "OPT"):
        return os.path.join(root, norm)
    return os.path.join(root, folder, norm)


def plan_samples(root: str, polarisations: Sequence[str] = (), optical_bands: Sequence[str] = ()
                 ) -> tuple[list[Sample], list[dict[str, str]], str]:
    """Lists the samples of `root` (paired first, each group in list order).

    Returns:
      (samples, errors, layout): errors are {"file", "reason"} for list entries that are
      malformed or name missing files; layout is "sar1m" or "folder".
    Raises:
      ConversionError: a malformed JSON list, or an OPT/ folder without pairing lists.
    """
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise ConversionError(f"input {root}: not a directory")
    paired_json, unpaired_json = os.path.join(root, "paired.json"), os.path.join(root, "unpaired.json")
    errors: list[dict[str, str]] = []
    if not (os.path.exists(paired_json) or os.path.exists(unpaired_json)):
        if os.path.isdir(os.path.join(root, "OPT")):
            raise ConversionError(f"input {root}: has OPT/ but no paired.json / unpaired.json; the pairs are unknown")
        found = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                       if f.lower().endswith(images.IMAGE_EXTENSIONS))
        if not found:
            raise ConversionError(f"input {root}: no image files ({', '.join(images.IMAGE_EXTENSIONS)})")
        return raster_plan.group_polarisations([Sample(p, None, os.path.relpath(p, root)) for p in found],
                                               polarisations, errors), errors, "folder"

    samples: list[Sample] = []

    def check(path, origin):
        if not os.path.isfile(path):
            errors.append({"file": path, "reason": f"missing file named in {origin}"})
            return False
        return True

    if os.path.exists(paired_json):
        for i, entry in enumerate(_load_json_list(paired_json)):
            origin = f"paired.json[{i}]"
            if not (isinstance(entry, dict) and isinstance(entry.get("sar"), str)
                    and isinstance(entry.get("optical"), str)):
                errors.append({"file": origin, "reason": f"malformed entry {entry!r}: expected "
                               '{"sar": path, "optical": path}'})
                continue
            sar, opt = _resolve(root, entry["sar"], "SAR"), _resolve(root, entry["optical"], "OPT")
            if check(sar, origin) & check(opt, origin):
                samples.append(Sample(sar, opt, origin))
    if os.path.exists(unpaired_json):
        for i, entry in enumerate(_load_json_list(unpaired_json)):
            origin = f"unpaired.json[{i}]"
            path = entry.get("sar") if isinstance(entry, dict) else entry
            if not isinstance(path, str):
                errors.append({"file": origin, "reason": f"malformed entry {entry!r}: expected a path or "
                               '{"sar": path}'})
                continue
            sar = _resolve(root, path, "SAR")
            if check(sar, origin):
                samples.append(Sample(sar, None, origin))
    return raster_plan.group_polarisations(samples, polarisations, errors, optical_bands), errors, "sar1m"


# ----------------------------------------------------------------------------- one shard


def convert_sample(sample: Sample, settings: Settings, root: str, domain: str = "intensity") -> tuple[list, dict]:
    """One sample -> (record examples, info); raises BadImage "file\treason" (raster_examples.decode)."""
    rasters.set_max_image_pixels(settings.max_image_pixels)  # a setting of Pillow, per process
    return raster_examples.decode(sample, settings, root, domain)


def _fingerprint(samples: Sequence[Sample], settings: Settings) -> str:
    digest = hashlib.sha256(json.dumps([CONVERTER_VERSION, dataclasses.asdict(settings)]).encode())
    for s in samples:
        digest.update(f"{s.sar}\0{s.optical}\0{s.sar_parts}\0{s.optical_parts}\n".encode())
    return digest.hexdigest()


def _convert_shard(task: tuple) -> dict[str, Any]:
    """Converts (and unless dry, writes) one shard; returns its receipt."""
    path, samples, settings, root, dry_run, after_unpaired, domain = task
    errors, averaged, notes = [], 0, raster_plan.new_notes()

    def examples():
        nonlocal averaged
        for sample in samples:
            try:
                kept, info = convert_sample(sample, settings, root, domain)
            except images.BadImage as e:
                file, reason = str(e).split("\t", 1)
                errors.append({"file": file, "reason": reason})
                continue
            averaged += info["color_averaged"]
            raster_plan.add_note(notes, info)
            yield from kept

    if dry_run:
        kept = list(examples())
        entry = {"file": os.path.basename(path), "num_examples": len(kept),
                 "num_paired": sum(bool(e["is_paired"]) for e in kept)}
    else:
        tmp = path + ".tmp"
        entry = shard_io.write_shard(tmp, examples(), spec=settings.spec, writer_options=settings.writer_options,
                                    after_unpaired=after_unpaired)
        entry["file"] = os.path.basename(path)
        os.replace(tmp, path)
    receipt = {"shard": entry, "errors": errors, "color_averaged": averaged, "planned": len(samples), "notes": notes,
               "fingerprint": _fingerprint(samples, settings)}
    if not dry_run:
        with open(path + ".done.json", "w") as f:
            json.dump(receipt, f)
    return receipt


def _finished_receipt(path: str, samples: Sequence[Sample], settings: Settings) -> dict[str, Any] | None:
    """The receipt of a shard finished by an earlier run with the same inputs and settings, else None."""
    try:
        with open(path + ".done.json") as f:
            receipt = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if receipt.get("fingerprint") != _fingerprint(samples, settings):
        return None
    if not os.path.isfile(path) or os.path.getsize(path) != receipt["shard"]["num_bytes"]:
        return None
    return receipt


# ----------------------------------------------------------------------------- the run


def convert(input_dir: str, output_dir: str, *, settings: Settings = Settings(), examples_per_shard: int = 1000,
            workers: int = 1, max_error_share: float = 0.01, dry_run: bool = False,
            progress: bool = True) -> dict[str, Any]:
    """Converts `input_dir` into a dataset at `output_dir` (split "train"). Returns the manifest
    (dry run: a summary with counts and errors, nothing written).

    Raises:
      ConversionError: malformed JSON list, no images, or error share > `max_error_share`
        (then errors.jsonl is written and the manifest is not).
    """
    settings.validate()
    if not 0 <= max_error_share <= 1:
        raise ValueError(f"max_error_share={max_error_share}: expected in [0, 1]")
    root = os.path.abspath(input_dir)
    samples, errors, layout = plan_samples(root, settings.polarisations, settings.optical_bands)
    planned = len(samples) + len(errors)
    if not samples:
        raise ConversionError(f"input {root}: no usable samples ({len(errors)} errors, first: {errors[:1]})")
    rasters.set_max_image_pixels(settings.max_image_pixels)
    try:
        decision = raster_plan.decide_domain([s.sar_parts or (s.sar,) for s in samples], settings)
    except images.BadImage as e:
        raise ConversionError(f"cannot decide the SAR units: {e}") from None
    log.info("SAR units: %s (%s: %s)", decision["domain"], decision["decision"], decision["reason"])
    sizes = shard_io.balanced_shard_sizes(len(samples), examples_per_shard)
    num_paired_planned = sum(s.optical is not None for s in samples)
    if not dry_run:
        os.makedirs(output_dir, exist_ok=True)
    tasks, receipts, start = [], {}, 0
    for index, size in enumerate(sizes):
        path = os.path.join(output_dir, shard_io.shard_filename(DATASET_NAME, "train", index, len(sizes)))
        chunk = samples[start:start + size]
        receipt = None if dry_run else _finished_receipt(path, chunk, settings)
        if receipt is not None:
            receipts[index] = receipt
        else:
            tasks.append((index, (path, chunk, settings, root, dry_run, start > num_paired_planned,
                                  decision["domain"])))
        start += size
    _run_tasks(tasks, receipts, workers=workers, progress=progress,
               total=len(samples), done=sum(r["planned"] for r in receipts.values()))

    ordered = [receipts[i] for i in range(len(sizes))]
    errors += [e for r in ordered for e in r["errors"]]
    differing, skipped, tile_errors, offsets = raster_plan.merge_notes([r.get("notes") or {} for r in ordered])
    for u in differing[:20]:
        log.info("SAR units differ: %s holds %s (%s); converted to %s", u["file"], u["units"], u["reason"],
                 decision["domain"])
    shards = [r["shard"] for r in ordered]
    counts = {"planned": planned, "written": sum(s["num_examples"] for s in shards),
              "paired": sum(s["num_paired"] for s in shards), "errors": len(errors),
              "color_sar_averaged": sum(r["color_averaged"] for r in ordered), "kept_from_earlier_run": len(receipts)
              - len(tasks), "tiles_skipped_nodata": skipped["nodata"], "tiles_skipped_contrast": skipped["contrast"],
              "sar_files_units_differing": len(differing),
              "skipped_by_reason": raster_plan.count_reasons(errors + tile_errors)}
    share = len(errors) / planned
    units_entry = raster_plan.sar_units_entry(settings, decision, differing)
    if dry_run:
        return {"dry_run": True, "layout": layout, "counts": counts, "errors": errors + tile_errors,
                "sar_units": units_entry}
    for name, entries in ((ERROR_LOG, errors + tile_errors), (raster_plan.UNITS_LOG, differing)):
        with open(os.path.join(output_dir, name), "w") as f:  # (tile errors are not in the error share)
            f.writelines(json.dumps(e) + "\n" for e in entries)
    if share > max_error_share:
        raise ConversionError(f"{len(errors)} of {planned} inputs ({share:.2%}) are bad, above max_error_share="
                              f"{max_error_share:.2%}; see {os.path.join(output_dir, ERROR_LOG)}")
    # Paired-first holds across shards: samples are planned paired first and each shard keeps order.
    split = {"num_examples": counts["written"], "num_paired": counts["paired"], "shards": shards}
    h = w = settings.image_size
    return records.write_dataset_metadata(
        output_dir, dataset_name=DATASET_NAME, spec=settings.spec, splits={"train": split}, class_names=[],
        resize_rule=images.RESIZE_RULE.format(h=h, w=w), writer_options=settings.writer_options,
        description=f"SAR images converted from {root} ({layout} layout) by data_pipelines.sar1m.",
        extra={"converter": {"version": CONVERTER_VERSION, "input": root, "layout": layout,
                             "settings": dataclasses.asdict(settings),
                             "intensity_rule": images.INTENSITY_RULES[settings.intensity_rule],
                             "counts": counts, "error_log": ERROR_LOG},
               sar_units_lib.KEY: units_entry, "optical_units": raster_plan.optical_entry(settings, offsets)})


def _run_tasks(tasks, receipts, *, workers, progress, total, done):
    bar = tqdm(total=total, initial=done, unit="img", disable=not progress, desc="converting", file=sys.stderr)
    try:
        if workers <= 1 or len(tasks) <= 1:
            for index, task in tasks:
                receipts[index] = _convert_shard(task)
                bar.update(receipts[index]["planned"])
            return
        # spawn: the parent may hold threads (JAX, Grain) that fork would copy in a broken state.
        with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
            indices = [index for index, _ in tasks]
            for index, receipt in zip(indices, pool.imap(_convert_shard, [task for _, task in tasks])):
                receipts[index] = receipt
                bar.update(receipt["planned"])
    finally:
        bar.close()


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sarmae-convert-sar1m", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="SAR-1M root (SAR/, OPT/, paired.json, unpaired.json) "
                        "or a plain folder of SAR images")
    parser.add_argument("--output", required=True, help="dataset directory (created; finished shards are kept)")
    parser.add_argument("--image_size", type=int, default=224, help="stored square size (224: released recipe; "
                        "256 leaves room for random-resized crops)")
    parser.add_argument("--sar_dtype", choices=sorted(records.SAR_DTYPES), default="uint8")
    parser.add_argument("--intensity_rule", choices=sorted(images.INTENSITY_RULES), default="percentile")
    parser.add_argument("--min_size", type=int, default=16, help="smaller images are errors (one ViT patch)")
    parser.add_argument("--writer_options", default=DEFAULT_WRITER_OPTIONS)
    parser.add_argument("--examples_per_shard", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max_error_share", type=float, default=0.01)
    parser.add_argument("--dry_run", action="store_true", help="only list, decode and validate; write nothing")
    raster_plan.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = arg_parser().parse_args(argv)
    settings = Settings(image_size=args.image_size, sar_dtype=args.sar_dtype, intensity_rule=args.intensity_rule,
                        min_size=args.min_size, writer_options=args.writer_options,
                        **raster_plan.settings_kwargs(args))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = convert(args.input, args.output, settings=settings, examples_per_shard=args.examples_per_shard,
                         workers=args.workers, max_error_share=args.max_error_share, dry_run=args.dry_run)
    except (ConversionError, ValueError) as e:
        sys.exit(f"error: {e}")
    counts = result["counts"] if args.dry_run else result["converter"]["counts"]
    print(f"{counts['written']} examples ({counts['paired']} paired) of {counts['planned']} planned; "
          f"{counts['errors']} errors; {counts['color_sar_averaged']} colour SAR images averaged to one channel; "
          f"tiles skipped: {counts['tiles_skipped_nodata']} mostly no-data, {counts['tiles_skipped_contrast']} "
          f"near-black/constant")
    units = result["sar_units"]
    print(f"SAR units: {units['domain']} ({units['decision']}: {units['reason']}); channels {units['channels']}; "
          f"{units['num_files_differing']} files in other units (converted)")
    if args.dry_run:
        for e in result["errors"][:20]:
            print(f"  {e['file']}: {e['reason']}")
    else:
        print(f"-> {args.output} (errors: {os.path.join(args.output, ERROR_LOG)})")


if __name__ == "__main__":
    main()
