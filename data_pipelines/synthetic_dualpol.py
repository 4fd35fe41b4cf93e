"""A dual-polarisation variant of the synthetic set: VV + VH sigma0 in dB, stored as 2 uint16 channels.

For tests and smoke runs of the multi-channel path (records `sar [H, W, 2]`, manifest `sar_units`
``{"domain": "db", "channels": ["VV", "VH"], "db_range": [-35, 5]}``), shaped like the analysis-ready
Sentinel-1 copies users hold (float dB, VV about -25 to 0 dB, VH about 5 to 12 dB below it).

From each clean synthetic scene (`synthetic_scenes.generate_scenes`, intensity in [0, 1]):

* VV sigma0 = `VV_SCALE * scene` (linear), floored at -35 dB;
* VH sigma0 = VV sigma0 times a cross-polarisation ratio of `-5 - 7 * scene` dB plus a per-class
  offset (`CLASS_OFFSET_DB`): bright structures depolarise less than fields in this toy model, so
  the two channels carry different information;
* stored as `x = (dB - lo) / (hi - lo)` in uint16, clipped to the range (`DB_RANGE`).

CLI (refuses an output it did not write; an earlier set only with --overwrite)::

    python -m data_pipelines.synthetic_dualpol --out /tmp/dualpol_db --num_examples 2048 --num_test_examples 256
"""
from __future__ import annotations

import argparse
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from data_pipelines import ownership, records, sar_units, shard_io
from data_pipelines.synthetic_scenes import CLASS_NAMES, generate_scenes

KIND = "dual-pol synthetic records dataset"
DATASET_NAME = "synthetic_dualpol_db"
CHANNELS = ["VV", "VH"]
DB_RANGE = (-35.0, 5.0)
VV_SCALE = 0.5  # linear sigma0 of a scene value of 1 (-3 dB): bright urban returns
CLASS_OFFSET_DB = (0.0, -2.0, 1.0, -1.0, 2.0)  # per class of synthetic_scenes.CLASS_NAMES
_CHUNK = 256
DEFAULTS = dict(num_examples=2048, num_test_examples=256, image_size=64, paired_fraction=0.75, seed=0,
                examples_per_shard=1024)


def dual_pol_db(scene: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Clean scenes `[n, s, s]` in [0, 1] -> `[n, s, s, 2]` float32 sigma0 in dB (VV, VH)."""
    floor = 10.0 ** (DB_RANGE[0] / 10.0)
    vv_db = 10.0 * np.log10(np.maximum(VV_SCALE * scene, floor))
    offset = np.asarray(CLASS_OFFSET_DB, np.float32)[labels][:, None, None]
    vh_db = vv_db - 5.0 - 7.0 * scene + offset
    return np.stack([vv_db, vh_db], axis=-1).astype(np.float32)


def quantise_db(db: np.ndarray) -> np.ndarray:
    """dB values -> uint16 stored values `x = (dB - lo) / (hi - lo)` (clipped to `DB_RANGE`)."""
    lo, hi = DB_RANGE
    return np.round(np.clip((db - lo) / (hi - lo), 0.0, 1.0) * 65535).astype(np.uint16)


def split_examples(split: str, *, num_examples: int, image_size: int, paired_fraction: float, seed: int
                   ) -> Iterator[dict[str, Any]]:
    """The records of one split, paired first; the randomness of chunk c is `rng([seed, crc(split), c])`."""
    spec = records.RecordSpec((image_size, image_size), "uint16", sar_channels=len(CHANNELS))
    split_id = zlib.crc32(split.encode())
    num_paired = int(round(paired_fraction * num_examples))
    labels = np.random.default_rng([seed, split_id, 2**31]).integers(0, len(CLASS_NAMES), num_examples)
    for chunk, start in enumerate(range(0, num_examples, _CHUNK)):
        stop = min(start + _CHUNK, num_examples)
        scene, optical = generate_scenes(np.random.default_rng([seed, split_id, chunk]), labels[start:stop], image_size)
        sar = quantise_db(dual_pol_db(scene, labels[start:stop]))
        for i in range(stop - start):
            scene_id = start + i
            yield records.make_example(spec, sar=sar[i], optical=optical[i] if scene_id < num_paired else None,
                                       label=int(labels[scene_id]), source=f"synthetic_dualpol:{split}/{scene_id:07d}",
                                       bit_depth=32)


def write_dualpol_dataset(out_dir: str, *, overwrite: bool = False, **overrides) -> dict[str, Any]:
    """Writes splits 'train' and 'test' (if num_test_examples > 0) with their manifest. Returns the manifest.

    Refuses (`ownership.OutputError`) a directory holding anything but an earlier dual-pol set, and an earlier
    set unless `overwrite` (then it is replaced atomically, data_pipelines/ownership.py).
    """
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"dual-pol synthetic dataset: unknown parameters {unknown}; expected keys of {sorted(DEFAULTS)}")
    params = {**DEFAULTS, **overrides}
    claim = ownership.claim(out_dir, tool="data_pipelines.synthetic_dualpol", kind=KIND, identity=params,
                            overwrite=overwrite, flag="--out")
    try:
        manifest = _write(claim.target, params)
        claim.commit()
    except BaseException:
        claim.abort()
        raise
    return manifest


def _write(out_dir: str, params: dict[str, Any]) -> dict[str, Any]:
    size = params["image_size"]
    spec = records.RecordSpec((size, size), "uint16", sar_channels=len(CHANNELS))
    splits = {}
    for split, n in (("train", params["num_examples"]), ("test", params["num_test_examples"])):
        if n > 0:
            examples = split_examples(split, num_examples=n, image_size=size, paired_fraction=params["paired_fraction"],
                                      seed=params["seed"])
            splits[split] = shard_io.write_split(out_dir, split, examples, spec=spec, num_examples=n,
                                                examples_per_shard=params["examples_per_shard"],
                                                dataset_name=DATASET_NAME)
    units = {"domain": "db", "channels": list(CHANNELS), "db_range": list(DB_RANGE),
             "decision": "synthetic: sigma0 in dB by construction (data_pipelines/synthetic_dualpol.py)"}
    sar_units.validate(units, out_dir, len(CHANNELS))
    return records.write_dataset_metadata(
        out_dir, dataset_name=DATASET_NAME, spec=spec, splits=splits, class_names=CLASS_NAMES,
        resize_rule=f"none: rendered at {size}x{size}",
        description="Synthetic dual-polarisation (VV, VH) sigma0 in dB with paired optical renderings (sarmae-jax).",
        extra={sar_units.KEY: units, "generator": {"name": DATASET_NAME, **params}})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output dataset directory")
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key}", type=type(value), default=value)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = vars(parser.parse_args(argv))
    out, overwrite = args.pop("out"), args.pop("overwrite")
    try:
        manifest = write_dualpol_dataset(out, overwrite=overwrite, **args)
    except (FileExistsError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    print(f"wrote {out}: " + ", ".join(f"{s} {e['num_examples']} ({e['num_paired']} paired)"
                                       for s, e in manifest["splits"].items()))


if __name__ == "__main__":
    main()
