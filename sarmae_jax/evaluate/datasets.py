"""Labelled SAR images for evaluation: one function, `load_split`, over every supported layout.

`load_split(dataset_cfg, split, image_size) -> LabelledImages` with
  images:      `[N, S, S, 1]` uint8 or uint16 (value / dtype max = intensity in [0, 1]), resized to
               the model's input size S by the resize rule of `data_pipelines/images.py` (bilinear,
               antialiased, aspect ratio not kept, as released);
  labels:      `[N]` int32 in [0, num_classes);
  class_names: tuple of str, index = label.

Kinds (`dataset_cfg.kind`):
  "synthetic"     the embedded default: `data_pipelines.synthetic` scenes (5 classes), generated into
                  `dataset_cfg.path` on first use (reused when the generator parameters match).
  "records"       any `data_pipelines.records` dataset directory with labels (`label` >= 0).
  "image_folder"  `<path>/Train/<class>/*` and `<path>/Val/<class>/*` (MSTAR, FUSAR-Ship, SAR-ACD as
                  distributed), through the TFDS builder `data_pipelines/tfds/image_folder.py`: built
                  once, at the model's input size, into `dataset_cfg.build_dir` (default
                  `<workdir>/datasets`), reused while the folder and settings are unchanged. Split
                  names are the folder names (`Train`, `Val`; lower case also accepted). Decoding,
                  intensity scaling (16-bit: the percentile rule), channel checks and resize are the
                  rules of `data_pipelines/images.py`; images are stored as uint8.

Everything is held in memory: the classification sets of the protocol are a few thousand images.
"""
from __future__ import annotations

import logging
import os
from typing import NamedTuple

import ml_collections
import numpy as np

from data_pipelines import images as image_rules
from data_pipelines import shard_io, synthetic
from data_pipelines.tfds import image_folder
from sarmae_jax.runtime import paths

log = logging.getLogger("sarmae_jax")

KINDS = ("synthetic", "records", "image_folder")


class LabelledImages(NamedTuple):
    images: np.ndarray  # [N, S, S, 1] uint8 | uint16
    labels: np.ndarray  # [N] int32
    class_names: tuple[str, ...]


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
    # Generator parameters of kind "synthetic" (see data_pipelines.synthetic).
    c.synthetic = ml_collections.ConfigDict(synthetic.DEFAULTS)
    return c


def load_split(dataset_cfg: ml_collections.ConfigDict, split: str, image_size: int, *, workdir: str) -> LabelledImages:
    """Images `[N, image_size, image_size, C]` (C: the dataset's SAR channels), labels `[N]` int32 and class names of one split.

    `workdir` is the evaluation's output directory, the default home of image-folder builds; when it is a
    gs:// bucket they go to this host's cache directory instead (`paths.local_cache_dir("datasets")`),
    since ArrayRecord reads local files only.
    """
    kind = dataset_cfg.kind
    if kind == "image_folder":
        build_dir = dataset_cfg.build_dir or (paths.local_cache_dir("datasets") if paths.is_gcs(workdir)
                                              else os.path.join(workdir, "datasets"))
        return _read_image_folder(dataset_cfg.path, split, image_size, build_dir)
    if kind == "synthetic":
        synthetic.ensure_synthetic_dataset(dataset_cfg.path, **dataset_cfg.synthetic.to_dict())
    elif kind != "records":
        raise ValueError(f"dataset.kind={kind!r}: expected one of {KINDS}")
    data = _read_records(dataset_cfg.path, split)
    return LabelledImages(resize(data.images, image_size), data.labels, data.class_names)


def image_folder_split(folder: str) -> str:
    """The image-folder builder's split for an eval split name ("Train" -> "train", "Val" -> "val").

    Raises:
      ValueError: a name the builder has no split for (naming the folders it reads).
    """
    return image_folder.split_of_folder(folder)


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """`[N, H, W, C]` uint8|uint16 -> `[N, size, size, C]`, same dtype (each channel alone), by the resize rule of
    `data_pipelines/images.py` (the one the builders use); a no-op when the size already matches."""
    if pixels.shape[1:3] == (size, size):
        return pixels
    top = np.iinfo(pixels.dtype).max
    return np.stack([image_rules.quantise(image_rules.resize_intensity(p.astype(np.float32) / top, (size, size)),
                                          pixels.dtype) for p in pixels])


def _read_image_folder(path: str, split: str, image_size: int, build_dir: str) -> LabelledImages:
    builder_split = image_folder_split(split)
    dataset_dir = image_folder.build_image_folder(path, data_dir=build_dir, image_size=image_size)
    log.info("image folder %s: split %r from the build %s", path, split, dataset_dir)
    try:
        images, labels, class_names = image_folder.load_classification_split(dataset_dir, builder_split)
    except ValueError as e:  # the split's folder is absent: say which folder, not only the build's split
        folders = "/ or ".join(image_folder.SPLIT_FOLDERS[builder_split])
        raise ValueError(f"{path}: no {folders}/ folder for split {split!r} ({e})") from None
    return LabelledImages(images, labels, tuple(class_names))


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
    return LabelledImages(np.stack(images), np.asarray(labels, np.int32), class_names)
