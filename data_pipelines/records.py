"""THE record format of sarmae-jax: one example per ArrayRecord record, serialised with TFDS.

A dataset is one directory that is at the same time

* a sarmae dataset: ``manifest.json`` (feature spec, counts, per-shard checksums, class
  names, normalisation and resize rules) next to the shards, and
* a TFDS dataset directory: ``dataset_info.json`` + ``features.json`` written by
  ``tfds.folder_dataset.write_metadata``, so ``tfds.builder_from_directory(dir)
  .as_data_source(split)`` reads the very same shards (no TensorFlow needed).

Shard files follow the TFDS naming rule ``{dataset}-{split}.array_record-{i:05d}-of-{n:05d}``.

Each record is ``features.serialize_example(example)`` of the FeaturesDict built by
:func:`make_features`:

=================  ===================  ==================================================
key                spec                 meaning
=================  ===================  ==================================================
``sar``            [H, W, C] uint8/16   clean SAR; value / dtype max in [0, 1] in the stored domain of the
                                        manifest's ``sar_units`` (C polarisation channels, 1 by default)
``optical``        [H, W, 3] uint8      paired optical RGB; all zeros when unpaired
``is_paired``      bool                 whether ``optical`` holds a real image
``label``          int64                class index, -1 when the dataset has no labels
``source``         text                 the original file (or generator id) of the example
``original_size``  [2] int64            (height, width) before resizing to [H, W]
``bit_depth``      int64                bit depth of the original SAR pixels
=================  ===================  ==================================================

Image tensors use ``encoding='bytes'`` (raw buffer, no per-element proto packing): decoding a
paired 224x224 record is ~30x faster than with TFDS's default tensor encoding. All images of a
dataset share one size [H, W] (the converter resizes), so shapes are static in the spec.
Unpaired examples store a zero optical image of full size rather than an empty one: TFDS cannot
round-trip a (0, 0, 3) bytes tensor, and a fixed shape keeps batches static; ArrayRecord's
per-record compression makes the zeros nearly free on disk.

Within a split, paired examples come first (global indices ``[0, num_paired)``), unpaired after
them. The writer enforces this; the input pipeline uses it to mix paired and unpaired examples
at a chosen share without reading any record.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import normalization

FORMAT_NAME = "sarmae-records"
FORMAT_VERSION = 1
MANIFEST_FILENAME = "manifest.json"
# group_size:1 keeps every record independently addressable (random access costs one record
# decode, not one chunk); zstd compresses the zero optical images of unpaired examples away.
DEFAULT_WRITER_OPTIONS = "group_size:1,zstd:1"
SAR_DTYPES = {"uint8": np.uint8, "uint16": np.uint16}


class CorruptRecordError(ValueError):
    """A record that cannot be read or decoded; names the shard file and the record index."""


@dataclasses.dataclass(frozen=True)
class RecordSpec:
    """Static shape and dtype of every example of one dataset.

    Attributes:
      image_size: (height, width) in pixels of both `sar` and `optical`.
      sar_dtype: "uint8" or "uint16".
      sar_channels: SAR channels per pixel (polarisations, in the order the manifest's
        ``sar_units["channels"]`` names them); 1 for single-polarisation data.
    """

    image_size: tuple[int, int]
    sar_dtype: str = "uint8"
    # Optional precomputed teacher features of the optical image: (tokens, dim) float16 per
    # record, zeros when unpaired, and the teacher that made them (checked by the trainer).
    teacher_tokens: tuple[int, int] | None = None
    teacher_name: str | None = None
    sar_channels: int = 1

    def __post_init__(self):
        h, w = self.image_size
        if h < 1 or w < 1:
            raise ValueError(f"RecordSpec.image_size={self.image_size!r}: expected two positive ints")
        if not isinstance(self.sar_channels, (int, np.integer)) or self.sar_channels < 1:
            raise ValueError(f"RecordSpec.sar_channels={self.sar_channels!r}: expected a positive int")
        object.__setattr__(self, "sar_channels", int(self.sar_channels))
        if self.sar_dtype not in SAR_DTYPES:
            raise ValueError(f"RecordSpec.sar_dtype={self.sar_dtype!r}: expected one of {sorted(SAR_DTYPES)}")
        object.__setattr__(self, "image_size", (int(h), int(w)))
        if (self.teacher_tokens is None) != (self.teacher_name is None):
            raise ValueError(f"RecordSpec: teacher_tokens={self.teacher_tokens!r} and teacher_name="
                             f"{self.teacher_name!r}: give both or neither")
        if self.teacher_tokens is not None:
            n, d = self.teacher_tokens
            if n < 1 or d < 1:
                raise ValueError(f"RecordSpec.teacher_tokens={self.teacher_tokens!r}: expected (tokens, dim) >= 1")
            object.__setattr__(self, "teacher_tokens", (int(n), int(d)))

    @property
    def sar_bit_depth(self) -> int:
        return np.iinfo(SAR_DTYPES[self.sar_dtype]).bits

    def to_json(self) -> dict[str, Any]:
        h, w = self.image_size
        teacher = {} if self.teacher_tokens is None else {"teacher_tokens": {
            "shape": list(self.teacher_tokens), "dtype": "float16", "teacher": self.teacher_name}}
        return teacher | {
            "image_size": [h, w],
            "sar": {"shape": [h, w, self.sar_channels], "dtype": self.sar_dtype},
            "optical": {"shape": [h, w, 3], "dtype": "uint8"},
            "is_paired": {"shape": [], "dtype": "bool"},
            "label": {"shape": [], "dtype": "int64"},
            "source": {"shape": [], "dtype": "text"},
            "original_size": {"shape": [2], "dtype": "int64"},
            "bit_depth": {"shape": [], "dtype": "int64"},
        }

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> "RecordSpec":
        teacher = spec.get("teacher_tokens")
        return cls(image_size=tuple(spec["image_size"]), sar_dtype=spec["sar"]["dtype"],
                   sar_channels=int(spec["sar"].get("shape", [0, 0, 1])[-1]),
                   teacher_tokens=tuple(teacher["shape"]) if teacher else None,
                   teacher_name=teacher["teacher"] if teacher else None)


def make_features(spec: RecordSpec) -> tfds.features.FeaturesDict:
    """The TFDS FeaturesDict that (de)serialises one record of a dataset with `spec`."""
    h, w = spec.image_size
    teacher = {} if spec.teacher_tokens is None else {
        "teacher_tokens": tfds.features.Tensor(shape=spec.teacher_tokens, dtype=np.float16, encoding="bytes")}
    return tfds.features.FeaturesDict(teacher | {
        "sar": tfds.features.Tensor(shape=(h, w, spec.sar_channels), dtype=SAR_DTYPES[spec.sar_dtype], encoding="bytes"),
        "optical": tfds.features.Tensor(shape=(h, w, 3), dtype=np.uint8, encoding="bytes"),
        "is_paired": tfds.features.Scalar(dtype=np.bool_),
        "label": tfds.features.Scalar(dtype=np.int64),
        "source": tfds.features.Text(),
        "original_size": tfds.features.Tensor(shape=(2,), dtype=np.int64),
        "bit_depth": tfds.features.Scalar(dtype=np.int64),
    })


def make_example(
    spec: RecordSpec,
    *,
    sar: np.ndarray,
    optical: np.ndarray | None,
    label: int = -1,
    source: str,
    original_size: tuple[int, int] | None = None,
    bit_depth: int | None = None,
    teacher_tokens: np.ndarray | None = None,
) -> dict[str, Any]:
    """Validates one example against `spec` and returns it in record form.

    Args:
      sar: [H, W, spec.sar_channels] (or [H, W] when it is 1) of `spec.sar_dtype`.
      optical: [H, W, 3] uint8, or None for an unpaired example (stored as zeros).
      label: class index, -1 for none.
      source: the original file (or generator id).
      original_size: (height, width) before resizing; defaults to `spec.image_size`.
      bit_depth: of the original SAR pixels; defaults to the bits of `spec.sar_dtype`.
      teacher_tokens: [tokens, dim] float16 teacher features of `optical`, required iff the spec
        has them (ignored and stored as zeros for an unpaired example).
    """
    h, w = spec.image_size
    c = spec.sar_channels
    sar = np.asarray(sar)
    if sar.ndim == 2:
        sar = sar[..., None]
    if sar.shape != (h, w, c) or sar.dtype != SAR_DTYPES[spec.sar_dtype]:
        raise ValueError(f"example {source!r}: sar has shape {sar.shape} dtype {sar.dtype}, "
                         f"expected ({h}, {w}, {c}) {spec.sar_dtype}")
    if optical is None:
        optical = np.zeros((h, w, 3), np.uint8)
        is_paired = False
    else:
        optical = np.asarray(optical)
        if optical.shape != (h, w, 3) or optical.dtype != np.uint8:
            raise ValueError(f"example {source!r}: optical has shape {optical.shape} dtype {optical.dtype}, "
                             f"expected ({h}, {w}, 3) uint8")
        is_paired = True
    teacher = {}
    if spec.teacher_tokens is not None:
        if is_paired:
            if teacher_tokens is None:
                raise ValueError(f"example {source!r}: the spec has teacher_tokens {spec.teacher_tokens}; none given")
            teacher_tokens = np.asarray(teacher_tokens)
            if teacher_tokens.shape != spec.teacher_tokens or teacher_tokens.dtype != np.float16:
                raise ValueError(f"example {source!r}: teacher_tokens has shape {teacher_tokens.shape} dtype "
                                 f"{teacher_tokens.dtype}, expected {spec.teacher_tokens} float16")
        else:
            teacher_tokens = np.zeros(spec.teacher_tokens, np.float16)
        teacher = {"teacher_tokens": teacher_tokens}
    elif teacher_tokens is not None:
        raise ValueError(f"example {source!r}: teacher_tokens given but the spec has none")
    return teacher | {
        "sar": sar,
        "optical": optical,
        "is_paired": is_paired,
        "label": int(label),
        "source": source,
        "original_size": np.asarray(original_size or (h, w), np.int64),
        "bit_depth": int(bit_depth or spec.sar_bit_depth),
    }


def write_dataset_metadata(
    out_dir: str,
    *,
    dataset_name: str,
    spec: RecordSpec,
    splits: Mapping[str, Mapping[str, Any]],
    class_names: Sequence[str],
    resize_rule: str,
    writer_options: str = DEFAULT_WRITER_OPTIONS,
    description: str = "",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes the TFDS metadata and then ``manifest.json`` (last, atomically: its presence marks
    a complete dataset). Returns the manifest."""
    features = make_features(spec)
    split_infos = [
        tfds.core.SplitInfo(
            name=split,
            shard_lengths=[s["num_examples"] for s in entry["shards"]],
            num_bytes=sum(s["num_bytes"] for s in entry["shards"]),
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=tfds.core.Path(out_dir), dataset_name=dataset_name, split=split,
                filetype_suffix="array_record", template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"),
        )
        for split, entry in splits.items()
    ]
    # check_data=False: TFDS's check reads through tf.data, and TensorFlow is never a dependency.
    tfds.folder_dataset.write_metadata(data_dir=out_dir, features=features, split_infos=split_infos,
                                       check_data=False, description=description)
    return write_manifest(out_dir, dataset_name=dataset_name, spec=spec, splits=splits, class_names=class_names,
                          resize_rule=resize_rule, writer_options=writer_options, extra=extra)


def write_manifest(out_dir: str, *, dataset_name: str, spec: RecordSpec, splits: Mapping[str, Mapping[str, Any]],
                   class_names: Sequence[str], resize_rule: str, writer_options: str = DEFAULT_WRITER_OPTIONS,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Writes ``manifest.json`` alone (atomically), for directories whose TFDS metadata already
    exists (the TFDS builders). Returns the manifest."""
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "dataset_name": dataset_name,
        "features": spec.to_json(),
        "class_names": list(class_names),
        normalization.KEY: normalization.NORMALIZATION,
        "resize_rule": resize_rule,
        "writer_options": writer_options,
        "splits": {split: dict(entry) for split, entry in splits.items()},
        **(extra or {}),
    }
    tmp = os.path.join(out_dir, MANIFEST_FILENAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(out_dir, MANIFEST_FILENAME))
    return manifest


def read_manifest(data_dir: str) -> dict[str, Any]:
    """Reads and checks ``manifest.json`` of a dataset directory."""
    path = os.path.join(data_dir, MANIFEST_FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no manifest; not a (complete) {FORMAT_NAME} dataset directory")
    with open(path) as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: malformed JSON ({e})") from None
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}, "
                         f"expected {FORMAT_NAME!r} version {FORMAT_VERSION}")
    return manifest


def split_entry(manifest: Mapping[str, Any], split: str, data_dir: str = "") -> Mapping[str, Any]:
    splits = manifest["splits"]
    if split not in splits:
        raise ValueError(f"dataset {data_dir!r}: no split {split!r}; available: {sorted(splits)}")
    return splits[split]


