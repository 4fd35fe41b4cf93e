"""Labelled SAR images for evaluation: one function, `load_split`, over every supported layout.

`load_split(dataset_cfg, split, image_size) -> LabelledImages` with
  images:      `[N, S, S, C]` uint8 or uint16 (value / dtype max = the stored value in [0, 1] of the
               dataset's `sar_units`; C its channels, 1 for single-polarisation sets), resized to
               the model's input size S by the resize rule of `data_pipelines/images.py` (bilinear,
               antialiased, aspect ratio not kept, as released);
  labels:      `[N]` int32 in [0, num_classes);
  class_names: tuple of str, index = label.
  sar_units:   the dataset's `sar_units` entry (data_pipelines/sar_units.py: stored domain, channel
               names, dB range), read from the records' manifest or the image-folder build: the same
               entry a pre-training on converted shards records, so a set of float32 dB chips is
               read in the dB domain with the converter's dB range, as it trains.

Kinds (`dataset_cfg.kind`):
  "synthetic"     the embedded default: `data_pipelines.synthetic` scenes (5 classes), generated into
                  `dataset_cfg.path` on first use (reused when the generator parameters match).
  "records"       any `data_pipelines.records` dataset directory with labels (`label` >= 0).
  "image_folder"  `<path>/Train/<class>/*` and `<path>/Val/<class>/*` (MSTAR, FUSAR-Ship, SAR-ACD as
                  distributed), through the TFDS builder `data_pipelines/tfds/image_folder.py`: built
                  once, at the model's input size, into `dataset_cfg.build_dir` (default
                  `<workdir>/datasets`), reused while the folder and settings are unchanged. Split
                  names are the folder names (`Train`, `Val`; lower case also accepted). Reading
                  (GeoTIFF through tifffile, PNG/JPEG as before), SAR units (`dataset_cfg.sar_units`,
                  `db_range`), channels (`polarisations`) and resize are the converter's rules
                  (`data_pipelines/raster_examples.py`); images are stored as uint8.

Everything is held in memory: the classification sets of the protocol are a few thousand images.
"""
from __future__ import annotations

import logging
import os
from typing import NamedTuple

import ml_collections
import numpy as np

from data_pipelines import images as image_rules
from data_pipelines import sar_units, shard_io, synthetic
from data_pipelines.tfds import image_folder
from sarmae_jax.runtime import paths

log = logging.getLogger("sarmae_jax")

KINDS = ("synthetic", "records", "image_folder")


class LabelledImages(NamedTuple):
    images: np.ndarray  # [N, S, S, C] uint8 | uint16
    labels: np.ndarray  # [N] int32
    class_names: tuple[str, ...]
    sar_units: dict | None = None  # the dataset's sar_units entry (None: not known, e.g. a subset made by hand)


def default_config() -> ml_collections.ConfigDict:
    """The `dataset` section of an evaluation config."""
    c = ml_collections.ConfigDict()
    c.kind = "synthetic"  # synthetic | records | image_folder
    c.path = "/tmp/sarmae_eval/synthetic"  # dataset directory (synthetic: where it is generated)
    # Kind "image_folder": where the TFDS builder writes its build of `path` ("": <workdir>/datasets, or
    # with a gs:// workdir this host's cache directory $SARMAE_CACHE_DIR or ~/.cache/sarmae_jax/datasets).
    # Built on first use at the model's input size and reused while the folder's files and the
    # builder settings are unchanged (rebuilt otherwise). Point the evaluations of several
    # checkpoints at one directory (e.g. /data/tfds) to build a dataset once for all of them.
    c.build_dir = ""
    # Split names: "train"/"test" for synthetic and records; the folder names "Train"/"Val" for image_folder.
    c.train_split = "train"  # the labelled pool the N-shot / x% subsets are drawn from
    c.test_split = "test"  # reported numbers; never used for any choice
    # Validation: "" (none), a split name of the dataset, or "holdout:<fraction>" to set aside a
    # stratified share of the train split (drawn from the split seed, excluded from the pool).
    c.val_split = ""
    # Kind "image_folder": the converter's reading flags (docs/data.md): what the SAR pixels hold
    # (auto | intensity | amplitude | db), the dB range mapped to [0, 1] (as the pre-training data's
    # manifest records it) and the polarisations stored as channels ("" one channel; "VV,VH").
    c.sar_units = "auto"
    c.db_range = (-35.0, 10.0)
    c.polarisations = ""
    # Generator parameters of kind "synthetic" (see data_pipelines.synthetic).
    c.synthetic = ml_collections.ConfigDict(synthetic.DEFAULTS)
    return c


def load_split(dataset_cfg: ml_collections.ConfigDict, split: str, image_size: int, *, workdir: str) -> LabelledImages:
    """Images `[N, image_size, image_size, 1]`, labels `[N]` int32 and class names of one split.

    `workdir` is the evaluation's output directory, the default home of image-folder builds; when it is a
    gs:// bucket they go to this host's cache directory instead (`paths.local_cache_dir("datasets")`),
    since ArrayRecord reads local files only.
    """
    kind = dataset_cfg.kind
    if kind == "image_folder":
        build_dir = dataset_cfg.build_dir or (paths.local_cache_dir("datasets") if paths.is_gcs(workdir)
                                              else os.path.join(workdir, "datasets"))
        return _read_image_folder(dataset_cfg, split, image_size, build_dir)
    if kind == "synthetic":
        synthetic.ensure_synthetic_dataset(dataset_cfg.path, **dataset_cfg.synthetic.to_dict())
    elif kind != "records":
        raise ValueError(f"dataset.kind={kind!r}: expected one of {KINDS}")
    data = _read_records(dataset_cfg.path, split)
    return LabelledImages(resize(data.images, image_size), data.labels, data.class_names, data.sar_units)


def image_folder_split(folder: str) -> str:
    """The image-folder builder's split for an eval split name ("Train" -> "train", "Val" -> "val").

    Raises:
      ValueError: a name the builder has no split for (naming the folders it reads).
    """
    return image_folder.split_of_folder(folder)


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """`[N, H, W, C]` uint8|uint16 -> `[N, size, size, C]`, same dtype, by the resize rule of
    `data_pipelines/images.py` (the one the builders use); a no-op when the size already matches."""
    if pixels.shape[1:3] == (size, size):
        return pixels
    top = np.iinfo(pixels.dtype).max
    return np.stack([image_rules.quantise(image_rules.resize_intensity(p.astype(np.float32) / top, (size, size)),
                                          pixels.dtype) for p in pixels])


def _read_image_folder(dataset_cfg, split: str, image_size: int, build_dir: str) -> LabelledImages:
    path = dataset_cfg.path
    builder_split = image_folder_split(split)
    polarisations = tuple(p.strip() for p in dataset_cfg.get("polarisations", "").split(",") if p.strip())
    dataset_dir = image_folder.build_image_folder(
        path, data_dir=build_dir, image_size=image_size, sar_units=dataset_cfg.get("sar_units", "auto"),
        polarisations=polarisations, db_range=tuple(dataset_cfg.get("db_range", (-35.0, 10.0))))
    log.info("image folder %s: split %r from the build %s", path, split, dataset_dir)
    try:
        images, labels, class_names = image_folder.load_classification_split(dataset_dir, builder_split)
    except ValueError as e:  # the split's folder is absent: say which folder, not only the build's split
        folders = "/ or ".join(image_folder.SPLIT_FOLDERS[builder_split])
        raise ValueError(f"{path}: no {folders}/ folder for split {split!r} ({e})") from None
    units = image_folder.read_sar_units(dataset_dir)
    log.info("image folder %s: SAR units %s, channels %s", path, units["domain"], units["channels"])
    return LabelledImages(images, labels, tuple(class_names), units)


def _read_records(data_dir: str, split: str) -> LabelledImages:
    source = shard_io.ShardedRecordSource(data_dir, split)
    class_names = tuple(source.manifest.get("class_names") or ())
    if not class_names:
        raise ValueError(f"{data_dir}: the manifest lists no class_names; it is not a classification dataset")
    images, labels = [], []
    for i, ex in enumerate(source):
        label = int(ex["label"])
        if not 0 <= label < len(class_names):
            raise ValueError(f"{data_dir} split {split!r} record {i} ({ex['source']!r}): label {label}, "
                             f"expected 0..{len(class_names) - 1} (classes {class_names})")
        images.append(ex["sar"])
        labels.append(label)
    if not images:
        raise ValueError(f"{data_dir} split {split!r} holds no examples")
    return LabelledImages(np.stack(images), np.asarray(labels, np.int32), class_names,
                          sar_units.read(source.manifest, data_dir))
