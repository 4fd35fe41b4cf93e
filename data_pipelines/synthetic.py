"""The embedded default dataset of sarmae-jax: synthetic SAR scenes (`synthetic_scenes.py`) written as
record shards, or as an ImageFolder classification tree.

A configurable share of scenes (default 0.75) is paired with its optical rendering. The randomness
of chunk `c` of split `s` comes from ``np.random.default_rng([seed, split_id, c])``, so the files are
bitwise identical for the same parameters (`DEFAULTS`, overridable per key).

CLI::

    python -m data_pipelines.synthetic --out /tmp/synthetic_sar --num_examples 4096 \
        --num_test_examples 1024 --image_size 64 --preview /tmp/synthetic_sar/preview.png
    python -m data_pipelines.synthetic --image_folder /tmp/synthetic_folder --num_examples 500 \
        --num_test_examples 100      # Train/<class>/*.png, Val/<class>/*.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from PIL import Image

from data_pipelines import images, records, shard_io
from data_pipelines.synthetic_scenes import CLASS_NAMES, generate_scenes

DATASET_NAME = "synthetic_sar"
GENERATOR_VERSION = 1
_CHUNK = 256  # scenes rendered per vectorised call; part of the determinism contract.
# The parameters that determine the files (the trainer's `data.synthetic` config starts from these).
DEFAULTS = dict(num_examples=2048, num_test_examples=512, image_size=64, paired_fraction=0.75, seed=0,
                examples_per_shard=1024, sar_dtype="uint8")


def _split_id(split: str) -> int:
    return zlib.crc32(split.encode())  # stable across runs (unlike hash())


def num_paired(num_examples: int, paired_fraction: float) -> int:
    """How many of a split's `num_examples` scenes are paired: round(paired_fraction * n), the one rule
    (the generator and the dry run's epoch size both use it)."""
    return int(round(paired_fraction * num_examples))


def split_examples(split: str, *, num_examples: int, image_size: int, paired_fraction: float, seed: int,
                   sar_dtype: str = "uint8") -> Iterator[dict[str, Any]]:
    """Yields the records of one split, paired examples first (the record-format rule).

    The first `num_paired(n, paired_fraction)` scene ids are paired; labels are drawn uniformly per
    scene, so class and pairing are independent.
    """
    spec = records.RecordSpec((image_size, image_size), sar_dtype)
    paired = num_paired(num_examples, paired_fraction)
    labels = np.random.default_rng([seed, _split_id(split), 2**31]).integers(0, len(CLASS_NAMES), num_examples)
    for chunk, start in enumerate(range(0, num_examples, _CHUNK)):
        stop = min(start + _CHUNK, num_examples)
        rng = np.random.default_rng([seed, _split_id(split), chunk])
        sar, optical = generate_scenes(rng, labels[start:stop], image_size)
        sar = images.quantise(sar, records.SAR_DTYPES[sar_dtype])
        for i in range(stop - start):
            scene_id = start + i
            yield records.make_example(
                spec, sar=sar[i], optical=optical[i] if scene_id < paired else None,
                label=int(labels[scene_id]), source=f"synthetic:{split}/{scene_id:07d}")


def generator_params(**overrides) -> dict[str, Any]:
    """Everything that determines the files (`DEFAULTS` with `overrides`); stored in the manifest to decide reuse."""
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"synthetic dataset: unknown parameters {unknown}; expected keys of {sorted(DEFAULTS)}")
    return {"version": GENERATOR_VERSION, **DEFAULTS, **overrides}


def _validate(params: Mapping[str, Any]) -> None:
    checks = {
        "num_examples": params["num_examples"] >= 1,
        "num_test_examples": params["num_test_examples"] >= 0,
        "image_size": params["image_size"] >= 8,
        "paired_fraction": 0.0 <= params["paired_fraction"] <= 1.0,
        "examples_per_shard": params["examples_per_shard"] >= 1,
        "sar_dtype": params["sar_dtype"] in records.SAR_DTYPES,
    }
    allowed = {"num_examples": ">= 1", "num_test_examples": ">= 0", "image_size": ">= 8",
               "paired_fraction": "in [0, 1]", "examples_per_shard": ">= 1",
               "sar_dtype": f"one of {sorted(records.SAR_DTYPES)}"}
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"synthetic dataset: {key}={params[key]!r}, expected {allowed[key]}")


def write_synthetic_dataset(out_dir: str, **overrides) -> dict[str, Any]:
    """Writes splits 'train' (num_examples) and 'test' (num_test_examples, if > 0) with manifest;
    `overrides` replace keys of `DEFAULTS`.

    Replaces whatever `out_dir` held. Returns the manifest.
    """
    params = generator_params(**overrides)
    _validate(params)
    num_examples, num_test_examples = params["num_examples"], params["num_test_examples"]
    image_size, paired_fraction, seed = params["image_size"], params["paired_fraction"], params["seed"]
    examples_per_shard, sar_dtype = params["examples_per_shard"], params["sar_dtype"]
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    spec = records.RecordSpec((image_size, image_size), sar_dtype)
    sizes = {"train": num_examples, "test": num_test_examples}
    splits = {}
    for split, n in sizes.items():
        if n == 0:
            continue
        examples = split_examples(split, num_examples=n, image_size=image_size, paired_fraction=paired_fraction,
                                  seed=seed, sar_dtype=sar_dtype)
        splits[split] = shard_io.write_split(out_dir, split, examples, spec=spec, num_examples=n,
                                            examples_per_shard=examples_per_shard, dataset_name=DATASET_NAME)
    return records.write_dataset_metadata(
        out_dir, dataset_name=DATASET_NAME, spec=spec, splits=splits, class_names=CLASS_NAMES,
        resize_rule=f"none: rendered at {image_size}x{image_size}",
        description="Synthetic clean SAR scenes with paired optical renderings (sarmae-jax).",
        extra={"generator": params})


def ensure_synthetic_dataset(out_dir: str, **kwargs) -> dict[str, Any]:
    """Reuses a complete dataset in `out_dir` generated with the same parameters (shard sizes
    checked against the manifest), otherwise (re)generates it. Returns the manifest."""
    wanted = generator_params(**kwargs)
    try:
        manifest = records.read_manifest(out_dir)
        if manifest.get("generator") == wanted:
            for split in manifest["splits"]:
                shard_io.verify_shards(out_dir, split, checksums=False)
            return manifest
    except (FileNotFoundError, ValueError):
        pass
    return write_synthetic_dataset(out_dir, **kwargs)


def write_image_folder(out_dir: str, *, num_train: int = 100, num_val: int = 50, image_size: int = 64, seed: int = 0,
                       bit_depth: int = 8) -> dict[str, int]:
    """Writes the scenes as an ImageFolder classification tree -- ``Train/<class>/<id>.png`` and
    ``Val/<class>/<id>.png``, grayscale PNG of `bit_depth` 8 or 16 -- the layout of MSTAR,
    FUSAR-Ship and SAR-ACD (input of data_pipelines/tfds/image_folder.py). Replaces `out_dir`.

    Labels cycle through the classes so every class folder is non-empty when a split has at
    least 5 images. Returns {split folder: image count}.
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth={bit_depth}: expected 8 or 16")
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    counts = {}
    for folder, n in (("Train", num_train), ("Val", num_val)):
        labels = np.arange(n) % len(CLASS_NAMES)
        for name in CLASS_NAMES:
            os.makedirs(os.path.join(out_dir, folder, name))
        for chunk, start in enumerate(range(0, n, _CHUNK)):
            rng = np.random.default_rng([seed, _split_id(folder), chunk])
            sar, _ = generate_scenes(rng, labels[start:start + _CHUNK], image_size)
            pixels = images.quantise(sar, np.uint8 if bit_depth == 8 else np.uint16)
            for i, image in enumerate(pixels):
                label = labels[start + i]
                Image.fromarray(image).save(os.path.join(out_dir, folder, CLASS_NAMES[label], f"{start + i:06d}.png"))
        counts[folder] = n
    return counts


# ----------------------------------------------------------------------------- preview and CLI


def preview_grid(data_dir: str, path: str, *, split: str = "train", count: int = 16, scale: int = 2) -> None:
    """PNG of `count` examples: per example a SAR tile above its optical tile (black if unpaired),
    spread over the split so paired and unpaired both appear."""
    source = shard_io.ShardedRecordSource(data_dir, split)
    picks = np.linspace(0, len(source) - 1, min(count, len(source))).astype(int)
    tiles = []
    for i in picks:
        ex = source.example(int(i))
        sar = ex["sar"][..., 0].astype(np.float32) / np.iinfo(ex["sar"].dtype).max
        sar = np.repeat((np.sqrt(sar) * 255).astype(np.uint8)[..., None], 3, -1)  # amplitude for display
        tiles.append(np.concatenate([sar, ex["optical"]], axis=0))
    pad = [np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles]
    grid = np.concatenate(pad, axis=1)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="dataset directory (replaced unless --reuse)")
    parser.add_argument("--image_folder", help="instead, write an ImageFolder classification tree (Train/, Val/) "
                        "of num_examples / num_test_examples PNGs here")
    parser.add_argument("--bit_depth", type=int, default=8, help="PNG bit depth of --image_folder (8 or 16)")
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key}", type=type(value), default=value)
    parser.add_argument("--reuse", action="store_true", help="keep an existing dataset with the same parameters")
    parser.add_argument("--preview", help="also write a PNG grid of SAR/optical pairs here")
    args = parser.parse_args(argv)
    if (args.out is None) == (args.image_folder is None):
        parser.error("give exactly one of --out (records) and --image_folder (PNG tree)")
    if args.image_folder:
        counts = write_image_folder(args.image_folder, num_train=args.num_examples, num_val=args.num_test_examples,
                                    image_size=args.image_size, seed=args.seed, bit_depth=args.bit_depth)
        print(f"{counts} images in {len(CLASS_NAMES)} classes -> {args.image_folder}")
        return
    params = {k: getattr(args, k) for k in DEFAULTS}
    manifest = (ensure_synthetic_dataset if args.reuse else write_synthetic_dataset)(args.out, **params)
    for split, entry in manifest["splits"].items():
        print(f"{split}: {entry['num_examples']} examples ({entry['num_paired']} paired) "
              f"in {len(entry['shards'])} shards -> {args.out}")
    if args.preview:
        preview_grid(args.out, args.preview)
        print(f"preview: {args.preview}")


if __name__ == "__main__":
    main()
