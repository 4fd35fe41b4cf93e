"""TFDS builder `sar1m`: SAR-1M (or a plain SAR folder) -> array_record shards in the record
format of data_pipelines/records.py, readable with ``tfds.data_source`` and by the training
pipeline (a ``manifest.json`` is written next to the TFDS metadata).

The converter (``sarmae-convert-sar1m``, data_pipelines/sar1m.py) writes the same records in
parallel processes and resumes interrupted runs; this builder is the TFDS-native way for people
whose tooling expects ``tfds build`` / ``tfds.builder(...)``. Both use the same decoding rules
(data_pipelines/raster_examples.py, with the default reading flags: auto SAR units, one channel,
no tiles) and the same planning of paired-first samples; the manifest carries the same ``sar_units``.

    from data_pipelines.tfds import build_sar1m
    dataset_dir = build_sar1m("/data/SAR-1M", data_dir="/data/tfds", image_size=224)
    source = tfds.data_source("sar1m/224", data_dir="/data/tfds", split="train")
"""

from __future__ import annotations

import dataclasses
import logging
import os

import tensorflow_datasets as tfds

from data_pipelines import images, raster_plan, records, sar1m, shard_io
from data_pipelines.tfds.base import LocalBuilder

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Sar1mConfig(tfds.core.BuilderConfig):
    image_size: int = 224
    sar_dtype: str = "uint8"
    intensity_rule: str = "percentile"


class Sar1m(LocalBuilder):
    """SAR images with optional paired optical images, resized to a fixed square size."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Record format v1 of sarmae-jax."}
    BUILDER_CONFIGS = [Sar1mConfig(name="224", image_size=224), Sar1mConfig(name="256", image_size=256),
                       Sar1mConfig(name="224_uint16", image_size=224, sar_dtype="uint16")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place SAR-1M (SAR/, OPT/, paired.json, unpaired.json) or any folder of SAR images in the manual "
        "directory (--manual_dir).")

    def __init__(self, *, file_format: str = "array_record", max_error_share: float = 0.01, **kwargs):
        self._max_error_share = max_error_share
        super().__init__(file_format=file_format, **kwargs)

    @property
    def _settings(self) -> sar1m.Settings:
        c = self.builder_config
        return sar1m.Settings(image_size=c.image_size, sar_dtype=c.sar_dtype, intensity_rule=c.intensity_rule)

    def _info(self) -> tfds.core.DatasetInfo:
        # disable_shuffling: examples keep their generated order, paired first (the record format's rule).
        return tfds.core.DatasetInfo(builder=self, features=records.make_features(self._settings.spec),
                                     disable_shuffling=True, description=__doc__.split("\n\n")[0])

    def _split_generators(self, dl_manager):
        root = os.path.abspath(os.fspath(dl_manager.manual_dir))
        samples, errors, layout = sar1m.plan_samples(root)
        self._layout, self._errors = layout, errors
        try:
            self._decision = raster_plan.decide_domain([(s.sar,) for s in samples], self._settings)
        except images.BadImage as e:
            raise sar1m.ConversionError(f"cannot decide the SAR units: {e}") from None
        self._differing = []
        return {"train": self._generate_examples(samples, root, len(samples) + len(errors))}

    def _generate_examples(self, samples, root, planned):
        self._num_paired = 0
        for key, sample in enumerate(samples):
            try:
                examples, info = sar1m.convert_sample(sample, self._settings, root, self._decision["domain"])
            except images.BadImage as e:
                file, reason = str(e).split("\t", 1)
                log.warning("left out %s: %s", file, reason)
                self._errors.append({"file": file, "reason": reason})
                continue
            if info["units"]:
                self._differing.append(info["units"])
            for example in examples:  # one without tiles
                self._num_paired += bool(example["is_paired"])
                yield key, example
        if len(self._errors) > self._max_error_share * planned:
            raise sar1m.ConversionError(f"{len(self._errors)} of {planned} inputs are bad, above max_error_share="
                                        f"{self._max_error_share:.2%}; first: {self._errors[:3]}")

    def download_and_prepare(self, *args, **kwargs):
        super().download_and_prepare(*args, **kwargs)
        if getattr(self, "_num_paired", None) is not None:  # generated now, not found from an earlier run
            write_manifest_for_tfds_dir(self.data_dir, self.name, self._settings.spec, self._num_paired,
                                        extra={"errors": self._errors, "layout": self._layout,
                                               "sar_units": raster_plan.sar_units_entry(
                                                   self._settings, self._decision, self._differing)})


def write_manifest_for_tfds_dir(data_dir: str, dataset_name: str, spec: records.RecordSpec, num_paired: int,
                                class_names=(), resize_rule: str | None = None, extra=None) -> dict:
    """manifest.json for a directory a TFDS builder prepared, so the training pipeline reads it.
    Paired examples come first, so each shard's paired count follows from the shard lengths."""
    info = tfds.builder_from_directory(data_dir).info
    splits = {}
    for name, split in info.splits.items():
        shards, start = [], 0
        for path, length in zip(split.filepaths, split.shard_lengths):
            paired = max(0, min(length, num_paired - start)) if name == "train" else 0
            shards.append({"file": os.path.basename(os.fspath(path)), "num_examples": length, "num_paired": paired,
                           "num_bytes": os.path.getsize(path), "sha256": shard_io.file_sha256(os.fspath(path))})
            start += length
        splits[name] = {"num_examples": split.num_examples, "num_paired": sum(s["num_paired"] for s in shards),
                        "shards": shards}
    h, w = spec.image_size
    return records.write_manifest(os.fspath(data_dir), dataset_name=dataset_name, spec=spec, splits=splits,
                                  class_names=class_names,
                                  resize_rule=resize_rule or images.RESIZE_RULE.format(h=h, w=w), extra=extra)


def build_sar1m(manual_dir: str, *, data_dir: str, image_size: int = 224, max_error_share: float = 0.01) -> str:
    """Builds `sar1m/<image_size>` from `manual_dir` into `data_dir`; returns the dataset directory."""
    builder = Sar1m(config=str(image_size), data_dir=data_dir, max_error_share=max_error_share)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return os.fspath(builder.data_dir)
