"""TFDS builder `sar_image_folder`: classification sets laid out as ImageFolder ``Train/<class>/``
and ``Val/<class>/`` (how MSTAR, FUSAR-Ship and SAR-ACD are distributed) -> array_record shards.

Images are decoded, scaled to [0, 1] intensity, reduced to one channel and resized (plain
resize, aspect not kept: the released fine-tuning recipe) by the rules of
data_pipelines/images.py, and stored as uint8 ``[S, S, 1]``. Class names are the sorted
subfolder names of ``Train/``; ``Val/`` must not hold other classes.

Errors, each naming the folder or file: no ``Train/``, a class folder without images, a ``Val/``
class unknown to ``Train/``, an unreadable image, and mismatched channels (a colour image in a
dataset of single-channel SAR: averaging it silently would feed the model a different kind of
input than the rest).

For the evaluation code::

    from data_pipelines.tfds import build_image_folder, load_classification_split
    dataset_dir = build_image_folder("/data/MSTAR", data_dir="/data/tfds", name="mstar", image_size=224)
    images, labels, class_names = load_classification_split(dataset_dir, "train")   # and "val"
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import example_proto, images
from data_pipelines.tfds.base import LocalBuilder

SPLIT_FOLDERS = {"train": ("Train", "train"), "val": ("Val", "val", "Validation", "validation")}


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
    image_size: int = 224
    intensity_rule: str = "percentile"
    min_size: int = 16


def scan_image_folder(root: str) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Lists ``root/Train`` and ``root/Val``: (class_names, {split: [(path, label)]}).

    Raises:
      ValueError: no Train/ folder, an empty class folder, or a Val/ class not in Train/.
    """
    folders = {}
    for split, names in SPLIT_FOLDERS.items():
        found = [os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))]
        if found:
            folders[split] = found[0]
    if "train" not in folders:
        raise ValueError(f"{root}: no Train/ folder (expected Train/<class>/ and Val/<class>/ subfolders)")
    class_names = sorted(d for d in os.listdir(folders["train"]) if os.path.isdir(os.path.join(folders["train"], d)))
    if not class_names:
        raise ValueError(f"{folders['train']}: no class subfolders")
    files = {}
    for split, folder in folders.items():
        classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
        unknown = sorted(set(classes) - set(class_names))
        if unknown:
            raise ValueError(f"{folder}: classes {unknown} are not in {folders['train']} (classes {class_names})")
        files[split] = []
        for cls in classes:
            class_dir = os.path.join(folder, cls)
            paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(class_dir) for f in fs
                           if f.lower().endswith(images.IMAGE_EXTENSIONS))
            if not paths:
                raise ValueError(f"{class_dir}: empty class folder (no {', '.join(images.IMAGE_EXTENSIONS)} files)")
            files[split] += [(p, class_names.index(cls)) for p in paths]
    return class_names, files


class SarImageFolder(LocalBuilder):
    """A SAR classification set from ImageFolder Train/ and Val/ trees (manual_dir)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [ImageFolderConfig(name="224", image_size=224), ImageFolderConfig(name="128", image_size=128)]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Place the dataset's Train/<class>/ and Val/<class>/ folders in --manual_dir."

    def __init__(self, *, root: str, file_format: str = "array_record", **kwargs):
        self._root = os.path.abspath(root)
        self._class_names, self._files = scan_image_folder(self._root)
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(s, s, 1), dtype=np.uint8, encoding="bytes"),
                "label": tfds.features.ClassLabel(names=self._class_names),
                "source": tfds.features.Text(),
                "original_size": tfds.features.Tensor(shape=(2,), dtype=np.int64),
            }),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(files) for split, files in self._files.items()}

    def _generate_examples(self, files):
        c = self.builder_config
        for path, label in files:
            try:
                pixels, info = images.load_sar(path, size=(c.image_size, c.image_size), dtype=np.uint8,
                                               min_size=c.min_size, rule=c.intensity_rule)
            except images.BadImage as e:
                raise ValueError(f"{path}: {e}") from None
            if info["color_averaged"]:
                raise ValueError(f"{path}: mismatched channels: 3 distinct colour channels, expected single-channel "
                                 "SAR (grayscale, or grayscale saved as RGB) like the rest of the dataset")
            yield os.path.relpath(path, self._root), {
                "image": pixels, "label": label, "source": os.path.relpath(path, self._root),
                "original_size": np.asarray(info["original_size"], np.int64)}


def build_image_folder(root: str, *, data_dir: str, name: str | None = None, image_size: int = 224) -> str:
    """Builds `root` (Train/, Val/) into `data_dir`; returns the dataset directory
    (``<data_dir>/<name>/<image_size>/1.0.0``; `name` defaults to the folder's name)."""
    if str(image_size) not in {c.name for c in SarImageFolder.BUILDER_CONFIGS}:
        config = ImageFolderConfig(name=str(image_size), image_size=image_size)
    else:
        config = str(image_size)
    name = name or os.path.basename(os.path.abspath(root)).lower()
    builder = _named_builder(name)(root=root, config=config, data_dir=data_dir)
    builder.download_and_prepare()
    return os.fspath(builder.data_dir)


def _named_builder(name: str):
    """A SarImageFolder subclass named `name` (TFDS names the dataset directory after the
    builder), created once per name."""
    cls_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_")) or "SarImageFolder"
    if cls_name not in _NAMED:
        # skip_registration: per-dataset names must not collide in TFDS's global registry.
        _NAMED[cls_name] = type(cls_name, (SarImageFolder,), {"__module__": __name__}, skip_registration=True)
    return _NAMED[cls_name]


_NAMED: dict[str, type] = {}


def load_classification_split(dataset_dir: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A built classification split, whole, in memory.

    Returns:
      images: [N, S, S, 1] uint8 (value / 255 = intensity in [0, 1]).
      labels: [N] int32 class indices into class_names.
      class_names: list of str (sorted Train/ subfolder names).
    Raises:
      ValueError: no such split (names the available ones).
    """
    builder = tfds.builder_from_directory(dataset_dir)
    if split not in builder.info.splits:
        raise ValueError(f"{dataset_dir}: no split {split!r}; available: {sorted(builder.info.splits)}")
    source = builder.as_data_source(split)
    shape = builder.info.features["image"].shape
    class_names = list(builder.info.features["label"].names)
    n = len(source)
    out = np.zeros((n, *shape), np.uint8)
    labels = np.zeros((n,), np.int32)
    # Read the raw records and parse them with the zero-copy parser: ~10x faster than the
    # TFDS per-example decoder for a few thousand images.
    raw = source.data_source
    for i in range(n):
        parsed = example_proto.parse_example(raw[i], frozenset(("image", "label")))
        out[i] = np.frombuffer(parsed["image"][0], np.uint8).reshape(shape)
        labels[i] = parsed["label"][0]
    return out, labels, class_names
