"""TFDS builder `sar_image_folder`: classification sets laid out as ImageFolder ``Train/<class>/``
and ``Val/<class>/`` (how MSTAR, FUSAR-Ship and SAR-ACD are distributed) -> array_record shards.

Images are read by the converter's reader and SAR units (data_pipelines/rasters.py,
sar_values.py through raster_examples.sar_values_of): PNG/JPEG as before (scaled intensity, one
channel), GeoTIFF chips in their true dtype, float32 dB chips in the dB domain with the converter's
``db_range``, multi-band or per-polarisation (``<chip>_VV.tif`` + ``<chip>_VH.tif``) chips as
channels in ``polarisations`` order. They are resized (plain resize, aspect not kept: the released
fine-tuning recipe) by the rules of data_pipelines/images.py and stored as uint8 ``[S, S, C]``. The
build's ``sar_units`` entry (the converter's schema, data_pipelines/sar_units.py) is kept in the
dataset's TFDS metadata (``metadata.json``) and read back by :func:`read_sar_units`, so an evaluation
sees the same units as a pre-training on converted shards with the same flags. Class names are the sorted
subfolder names of ``Train/``; ``Val/`` must not hold other classes. Splits: ``train`` and
``val`` (`split_of_folder` maps a folder name such as ``Val`` to its split).

`build_image_folder` builds once: it reuses a complete build whose source fingerprint (the
folder, its files' names, sizes and modification times, the builder version and config)
matches, and rebuilds in place otherwise.

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
import hashlib
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import example_proto, images, raster_examples, raster_plan, sar_units, sar_values
from data_pipelines.tfds.base import LocalBuilder

SOURCE_FILE = "source.json"  # the fingerprint of what a build was made from, in its dataset directory
SPLIT_FOLDERS = {"train": ("Train", "train"), "val": ("Val", "val", "Validation", "validation")}


def split_of_folder(folder: str) -> str:
    """The builder's split read from the folder named `folder` ("Train" -> "train", "Val" -> "val").

    Raises:
      ValueError: a folder the builder does not read (naming the ones it does).
    """
    for split, names in SPLIT_FOLDERS.items():
        if folder in names:
            return split
    raise ValueError(f"split {folder!r}: the image-folder builder reads only the folders "
                     + "; ".join(f"{'/'.join(names)} -> split {split!r}" for split, names in SPLIT_FOLDERS.items()))


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
    image_size: int = 224
    intensity_rule: str = "percentile"
    min_size: int = 16
    # The converter's reading flags of the same names (data_pipelines/raster_plan.py).
    sar_units: str = "auto"
    polarisations: tuple = ()
    db_range: tuple = sar_values.DEFAULT_DB_RANGE
    nodata: float | None = None
    max_nodata_share: float = 0.1


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
        c = self.builder_config
        self._parts = {}  # first polarisation file -> the chip's files in polarisation order
        for split, files in self._files.items():
            grouped, seen = [], set()
            for path, label in files:
                group = raster_plan.polarisation_group(path, c.polarisations)
                if group is not None:
                    if group[0] in seen:
                        continue
                    seen.add(group[0])
                    missing = [p for p in group[1] if not os.path.isfile(p)]
                    if missing:
                        raise ValueError(f"{missing[0]}: missing polarisation file of {os.path.basename(group[0])} "
                                         f"(polarisations {','.join(c.polarisations)})")
                    path = group[1][0]
                    self._parts[path] = group[1]
                grouped.append((path, label))
            self._files[split] = grouped
        train = [self._parts.get(p, (p,)) for p, _ in self._files["train"]]
        try:
            decision = raster_plan.decide_domain(train, c)
        except images.BadImage as e:
            raise ValueError(f"{self._root}: cannot decide the SAR units: {e}") from None
        self._sar_units = sar_units.validate(
            {"domain": decision["domain"], "channels": list(c.polarisations or ("SAR",)), **decision,
             **({"db_range": list(c.db_range)} if decision["domain"] == "db" else {})}, self._root)
        self.info.metadata["sar_units"] = self._sar_units  # info was made by the base __init__, before this

    def source_fingerprint(self) -> dict:
        """What this build is made from: the folder, the builder version and config, and a digest
        of every image's (path, bytes, mtime in ns) -- JSON-serialisable, compared for equality."""
        digest = hashlib.sha256()
        for split, files in sorted(self._files.items()):
            for path, label in files:
                st = os.stat(path)
                digest.update(f"{split}\0{os.path.relpath(path, self._root)}\0{label}\0{st.st_size}\0"
                              f"{st.st_mtime_ns}\n".encode())
        return json.loads(json.dumps({"root": self._root, "version": str(self.version),
                "config": {k: getattr(self.builder_config, k) for k in (
                    "image_size", "intensity_rule", "min_size", "sar_units", "polarisations", "db_range", "nodata",
                    "max_nodata_share")},
                "class_names": self._class_names,
                "num_files": {split: len(files) for split, files in sorted(self._files.items())},
                "files_sha256": digest.hexdigest()}))  # as read back from JSON (tuples -> lists)

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        channels = len(self.builder_config.polarisations) or 1
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__.split("\n\n")[0],
            metadata=tfds.core.MetadataDict(),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(s, s, channels), dtype=np.uint8, encoding="bytes"),
                "label": tfds.features.ClassLabel(names=self._class_names),
                "source": tfds.features.Text(),
                "original_size": tfds.features.Tensor(shape=(2,), dtype=np.int64),
            }),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(files) for split, files in self._files.items()}

    def _generate_examples(self, files):
        c = self.builder_config
        domain = self._sar_units["domain"]
        for path, label in files:
            try:
                stored, valid, raster, info = raster_examples.sar_values_of(path, self._parts.get(path, ()), c, domain,
                                                                            c.min_size)
            except images.BadImage as e:
                raise ValueError(str(e).replace("\t", ": ", 1)) from None
            share = 1.0 - float(valid.mean())
            if share > c.max_nodata_share:
                raise ValueError(f"{path}: no-data share {share:.2f} (NaN/Inf, nodata value or zeros in a linear "
                                 f"product) above max_nodata_share {c.max_nodata_share}")
            pixels = images.quantise(images.resize_intensity(stored, (c.image_size, c.image_size)), np.uint8)
            if info["color_averaged"]:
                raise ValueError(f"{path}: mismatched channels: 3 distinct colour channels, expected single-channel "
                                 "SAR (grayscale, or grayscale saved as RGB) like the rest of the dataset")
            yield os.path.relpath(path, self._root), {
                "image": pixels, "label": label, "source": os.path.relpath(path, self._root),
                "original_size": np.asarray(stored.shape[:2], np.int64)}


def build_image_folder(root: str, *, data_dir: str, name: str | None = None, image_size: int = 224,
                       sar_units: str = "auto", polarisations: tuple = (),
                       db_range: tuple = sar_values.DEFAULT_DB_RANGE) -> str:
    """Builds `root` (Train/, Val/) into `data_dir`; returns the dataset directory
    (``<data_dir>/<name>/<image_size>/1.0.0``; `name` defaults to the folder's name).

    Built once: a complete earlier build is reused when its source fingerprint (``SOURCE_FILE``:
    the folder, every image's path, size and modification time, and the builder version and
    config) matches, and rebuilt in place otherwise -- TFDS alone would reuse any build at that
    path, however much the folder changed since.
    """
    reading = dict(sar_units=sar_units, polarisations=tuple(polarisations), db_range=tuple(db_range))
    if str(image_size) not in {c.name for c in SarImageFolder.BUILDER_CONFIGS} or reading != dict(
            sar_units="auto", polarisations=(), db_range=sar_values.DEFAULT_DB_RANGE):
        config = ImageFolderConfig(name=str(image_size), image_size=image_size, **reading)
    else:
        config = str(image_size)
    name = name or os.path.basename(os.path.abspath(root)).lower()
    builder = _named_builder(name)(root=root, config=config, data_dir=data_dir)
    dataset_dir = os.fspath(builder.data_dir)
    fingerprint = builder.source_fingerprint()
    stamp = os.path.join(dataset_dir, SOURCE_FILE)
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == fingerprint:
                return dataset_dir
    # No stamp: never built, or built from other files or settings, or interrupted after TFDS
    # finished but before the stamp was written. In every case the data there cannot be trusted.
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # overwrites the dataset (nothing is downloaded)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    with open(stamp + ".tmp", "w") as f:
        json.dump(fingerprint, f, indent=1)
    os.replace(stamp + ".tmp", stamp)
    return dataset_dir


def _named_builder(name: str):
    """A SarImageFolder subclass named `name` (TFDS names the dataset directory after the
    builder), created once per name."""
    cls_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_")) or "SarImageFolder"
    if cls_name not in _NAMED:
        # skip_registration: per-dataset names must not collide in TFDS's global registry.
        _NAMED[cls_name] = type(cls_name, (SarImageFolder,), {"__module__": __name__}, skip_registration=True)
    return _NAMED[cls_name]


_NAMED: dict[str, type] = {}


def read_sar_units(dataset_dir: str) -> dict:
    """The build's ``sar_units`` entry (data_pipelines/sar_units.py); the legacy single-channel
    intensity for builds made before the entry existed."""
    builder = tfds.builder_from_directory(dataset_dir)
    entry = (builder.info.metadata or {}).get("sar_units")
    channels = builder.info.features["image"].shape[-1]
    return sar_units.read({"features": {"sar": {"shape": [0, 0, channels]}}} | ({"sar_units": entry} if entry else {}),
                          dataset_dir)


def load_classification_split(dataset_dir: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A built classification split, whole, in memory.

    Returns:
      images: [N, S, S, C] uint8 (value / 255 = the stored value in [0, 1] of the build's sar_units).
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
