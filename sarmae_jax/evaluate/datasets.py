"""Labelled SAR images for evaluation: one function, `load_split`, over every supported layout.

`load_split(dataset_cfg, split, image_size) -> LabelledImages` with
  images:      `[N, S, S, 1]` uint8 or uint16 (value / dtype max = intensity in [0, 1]), resized to
               the model's input size S (plain bilinear resize, aspect ratio not kept, as released);
  labels:      `[N]` int32 in [0, num_classes);
  class_names: tuple of str, index = label.

Kinds (`dataset_cfg.kind`):
  "synthetic"     the embedded default: `data_pipelines.synthetic` scenes (5 classes), generated into
                  `dataset_cfg.path` on first use (reused when the generator parameters match).
  "records"       any `data_pipelines.records` dataset directory with labels (`label` >= 0).
  "image_folder"  `<path>/<Split>/<class>/*.png|jpg|jpeg|tif|tiff|bmp` (MSTAR, FUSAR-Ship, SAR-ACD as
                  distributed: `Train/`, `Val/`). Read here with Pillow; this reader is the adapter to
                  replace by the TFDS image-folder builder of `data_pipelines/tfds/` once it lands (same
                  return contract, so nothing else changes).

Everything is held in memory: the classification sets of the protocol are a few thousand images.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import ml_collections
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
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
    c.train_split = "train"  # the labelled pool the N-shot / x% subsets are drawn from
    c.test_split = "test"  # reported numbers; never used for any choice
    # Validation: "" (none), a split name of the dataset, or "holdout:<fraction>" to set aside a
    # stratified share of the train split (drawn from the split seed, excluded from the pool).
    c.val_split = ""
    # Generator parameters of kind "synthetic" (see data_pipelines.synthetic).
    c.synthetic = ml_collections.ConfigDict(dict(
        num_examples=2048, num_test_examples=512, image_size=64, paired_fraction=0.75, seed=0,
        examples_per_shard=1024, sar_dtype="uint8"))
    return c


def load_split(dataset_cfg: ml_collections.ConfigDict, split: str, image_size: int) -> LabelledImages:
    """Images `[N, image_size, image_size, 1]`, labels `[N]` int32 and class names of one split."""
    kind = dataset_cfg.kind
    if kind == "synthetic":
        from data_pipelines import synthetic

        synthetic.ensure_synthetic_dataset(dataset_cfg.path, **dataset_cfg.synthetic.to_dict())
        data = _read_records(dataset_cfg.path, split)
    elif kind == "records":
        data = _read_records(dataset_cfg.path, split)
    elif kind == "image_folder":
        data = read_image_folder(os.path.join(dataset_cfg.path, split), image_size)
    else:
        raise ValueError(f"dataset.kind={kind!r}: expected one of {KINDS}")
    return LabelledImages(resize(data.images, image_size), data.labels, data.class_names)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """`[N, H, W, 1]` integer pixels -> `[N, size, size, 1]`, same dtype (bilinear; no-op when equal)."""
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([_resize_one(im[..., 0], size)[..., None] for im in images])


def _resize_one(image: np.ndarray, size: int) -> np.ndarray:
    # Pillow's mode "F" resizes any bit depth without clipping to 8 bits.
    out = Image.fromarray(image.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR)
    top = np.iinfo(image.dtype).max
    return np.clip(np.rint(np.asarray(out)), 0, top).astype(image.dtype)


def _read_records(data_dir: str, split: str) -> LabelledImages:
    from data_pipelines import records

    source = records.ShardedRecordSource(data_dir, split)
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


# ----------------------------------------------------------------------------------- image folder
def read_image_folder(split_dir: str, image_size: int) -> LabelledImages:
    """`split_dir/<class>/<image>`: classes sorted by name (torchvision ImageFolder order), every
    image resized to `image_size` as it is read (files of one set often differ in size).

    Every image is single-channel SAR; colour files whose channels are equal (grey saved as RGB or
    RGBA) are accepted, true colour is an error naming the file. 8-bit stays uint8, 16-bit uint16.
    """
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"image folder split {split_dir} does not exist")
    class_names = tuple(sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d))))
    if not class_names:
        raise ValueError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<images>)")
    images, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(split_dir, name)
        files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise ValueError(f"class folder {class_dir} holds no images (extensions {IMAGE_EXTENSIONS})")
        for f in files:
            images.append(resize(read_sar_image(os.path.join(class_dir, f))[None], image_size)[0])
            labels.append(label)
    dtypes = {im.dtype for im in images}
    if len(dtypes) > 1:  # mixed bit depths: promote 8-bit to 16-bit so value / dtype max is kept
        images = [im.astype(np.uint16) * 257 if im.dtype == np.uint8 else im for im in images]
    return LabelledImages(np.stack(images), np.asarray(labels, np.int32), class_names)


def read_sar_image(path: str) -> np.ndarray:
    """One SAR image file -> `[H, W, 1]` uint8 or uint16."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            array = np.asarray(im)
    except OSError as e:
        raise ValueError(f"{path}: unreadable image ({e})") from e
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        if array.min() < 0 or array.max() > 65535:
            raise ValueError(f"{path}: 32-bit integer pixels outside [0, 65535]")
        return array.astype(np.uint16)[..., None]
    if mode == "L":
        return array[..., None]
    if mode in ("RGB", "RGBA", "LA"):
        colour = array[..., :1] if mode == "LA" else array[..., :3]
        if mode in ("RGBA", "LA") and array[..., -1].min() < 255:
            raise ValueError(f"{path}: mode {mode} with transparent pixels; SAR images have no alpha")
        if colour.shape[-1] == 3 and not (np.array_equal(colour[..., 0], colour[..., 1])
                                          and np.array_equal(colour[..., 0], colour[..., 2])):
            raise ValueError(f"{path}: {colour.shape[-1]} distinct colour channels (mode {mode}); "
                             f"expected single-channel SAR (grayscale, or RGB with equal channels)")
        return np.ascontiguousarray(colour[..., :1])
    raise ValueError(f"{path}: unsupported image mode {mode!r}; expected L, I;16, or grey RGB/RGBA")
