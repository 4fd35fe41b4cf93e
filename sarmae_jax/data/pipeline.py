"""Grain input pipeline: ArrayRecord shards -> process-local NumPy batches for the train step.

Pipeline (Grain dataset API)::

    global batch position i (the iterator state)
      -> batch_sampling.BatchSampler: the record indices of this process's rows of global batch i;
         per pool (paired / unpaired, or one pool for the natural mix) all records, permuted
         anew each epoch from (seed, pool, epoch), pools interleaved at exactly `paired_share`
         -- vectorised, a pure function of (seed, i), whatever the number of processes
      -> per batch: read + decode all its records into preallocated arrays (zero-copy proto
         parse, one np.frombuffer per image), skip budget for corrupt records, then resize or
         random-resized-crop + flip on the host (one generator per global row) -> iterator

Each process reads only its `rows` of every global batch: those its devices hold in the batch
sharding (`sharding.process_batch_rows`), in the order `jax.make_array_from_process_local_data`
expects. Every step is an index transformation over a `MapDataset` until the final
`to_iter_dataset`, so the iterator's state is a single global position (`TrainIterator`):
`get_state()` / `set_state()` restore exactly the batches an uninterrupted run would yield, with or
without worker processes, and on any number of processes (a run saved by 2 processes and resumed by
4 reads the same global batches). Decoding a whole
batch in one call (instead of one Grain element per record, then stacking) is what makes the
pipeline fast: Grain's per-element overhead and TFDS's per-record decoder cost more than reading
the pixels (docs/data.md has the profile and the numbers).

Batches follow the contract in docs/architecture.md:
  sar [b, H, W, 1] uint8|uint16, optical [b, H, W, 3] uint8 (zeros where unpaired),
  is_paired [b] bool, label [b] int32 (-1 = no label); plus teacher_tokens [b, N, Dt] float16
  when the dataset stores precomputed teacher features (zeros where unpaired).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import flags

from data_pipelines import normalization, records, shard_io, synthetic
from sarmae_jax.data import batch_sampling, host_transforms
from sarmae_jax.runtime import paths

BATCH_KEYS = ("sar", "optical", "is_paired", "label")
AUGMENTATIONS = ("none", "random_resized_crop")
log = logging.getLogger(__name__)
_ENDLESS = 2**62  # batches


def default_config() -> ml_collections.ConfigDict:
    """The `data` section of a training config; every key is documented here."""
    cfg = ml_collections.ConfigDict()
    # Dataset directory (a records.py dataset) on a local or FUSE-mounted file system (ArrayRecord
    # reads files by path: a bucket is mounted with Cloud Storage FUSE, not given as gs://). None: the
    # trainer generates the synthetic set (data_pipelines.synthetic.ensure_synthetic_dataset) into
    # <workdir>/data, or, when the workdir is a gs:// bucket, into this host's cache directory
    # ($SARMAE_CACHE_DIR, else ~/.cache/sarmae_jax)/synthetic/<digest>, and fills this in.
    cfg.path = ml_collections.FieldReference(None, field_type=str)
    cfg.split = "train"
    # Parameters of the synthetic set used when path is None.
    cfg.synthetic = ml_collections.ConfigDict(synthetic.DEFAULTS)
    # Share of paired examples in every stretch of the stream. A number p: paired and unpaired
    # pools are repeated separately and interleaved at exactly p; an epoch is num_paired / p
    # examples (the released recipe: 0.7, while SAR-1M's natural share is ~0.75). Requires both
    # pools to be non-empty unless p is 0 or 1 (a plain SAR folder has no pairs: use 0 or None).
    # None: the dataset's natural mix, each example once per epoch.
    cfg.paired_share = ml_collections.FieldReference(0.7, field_type=float)
    # Output image size (square, pixels). None: the stored size. Otherwise images are resized on
    # the host (plain resize, aspect not kept: the released recipe) or cropped (augment below).
    # prepare() sets it to the model's input size when None.
    cfg.image_size = ml_collections.FieldReference(None, field_type=int)
    # "none": plain resize to image_size (released recipe: no augmentation).
    # "random_resized_crop": per example a box of crop_scale of the area and crop_ratio aspect,
    # resized to image_size, the same box for SAR and optical (they are aligned; SARC compares
    # them patch by patch). Store images larger than the model input (e.g. 256) for this.
    cfg.augment = "none"
    cfg.crop_scale = (0.2, 1.0)
    cfg.crop_ratio = (3 / 4, 4 / 3)
    # Horizontal flip with probability 0.5 (only with random_resized_crop; SAR geometry has a
    # look direction, so flips are not obviously label-preserving -- off by default).
    cfg.flip = False
    # Corrupt records (unreadable or undecodable) each decoding process may skip with a logged,
    # counted warning; the slot is filled with a copy of another example of the same batch so
    # shapes stay static. 0: the first corrupt record raises CorruptRecordError naming the
    # shard and record index (the default: a corrupt shard usually means a broken copy).
    cfg.max_corrupt_records = 0
    # Grain worker processes for decoding; 0 decodes in the training process (enough for the
    # synthetic set: decoding is a memcpy per image).
    cfg.num_workers = 0
    # Batches each worker prepares ahead (only with num_workers > 0).
    cfg.worker_buffer_size = 2
    # Threads that decode and batch in the background of each process (Grain ReadOptions), and
    # batches they keep ready. One thread overlaps input with the train step; more threads fight
    # over the GIL (measured on 2 cores: 5.3k samples/s with 1 thread, 3.3k with 2, 3.6k with 16).
    cfg.read_threads = 1
    cfg.prefetch_batches = 2
    return cfg


def validate_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the key, its value and what is allowed."""
    def fail(key, value, allowed):
        raise ValueError(f"config.data.{key}={value!r}: expected {allowed}")

    if cfg.path is not None and not isinstance(cfg.path, str):
        fail("path", cfg.path, "a dataset directory or None")
    if cfg.path is not None:
        paths.require_local(cfg.path, "config.data.path", "the Grain pipeline")
    if not isinstance(cfg.split, str) or not cfg.split:
        fail("split", cfg.split, "a split name such as 'train' or 'test'")
    if cfg.paired_share is not None and not 0.0 <= cfg.paired_share <= 1.0:
        fail("paired_share", cfg.paired_share, "None (natural mix) or a number in [0, 1]")
    if cfg.image_size is not None and (not isinstance(cfg.image_size, int) or cfg.image_size < 8):
        fail("image_size", cfg.image_size, "None (stored size) or an int >= 8")
    if cfg.augment not in AUGMENTATIONS:
        fail("augment", cfg.augment, f"one of {AUGMENTATIONS}")
    lo, hi = cfg.crop_scale
    if not 0 < lo <= hi <= 1:
        fail("crop_scale", cfg.crop_scale, "(lo, hi) with 0 < lo <= hi <= 1")
    lo, hi = cfg.crop_ratio
    if not 0 < lo <= hi:
        fail("crop_ratio", cfg.crop_ratio, "(lo, hi) with 0 < lo <= hi")
    if cfg.flip and cfg.augment == "none":
        fail("flip", cfg.flip, "False unless augment='random_resized_crop'")
    if not isinstance(cfg.max_corrupt_records, int) or cfg.max_corrupt_records < 0:
        fail("max_corrupt_records", cfg.max_corrupt_records, "an int >= 0")
    if not isinstance(cfg.num_workers, int) or cfg.num_workers < 0:
        fail("num_workers", cfg.num_workers, "an int >= 0 (0 = decode in-process)")
    if not isinstance(cfg.worker_buffer_size, int) or cfg.worker_buffer_size < 1:
        fail("worker_buffer_size", cfg.worker_buffer_size, "an int >= 1")
    if not isinstance(cfg.read_threads, int) or cfg.read_threads < 0:
        fail("read_threads", cfg.read_threads, "an int >= 0 (0 = read in the caller's thread)")
    if not isinstance(cfg.prefetch_batches, int) or cfg.prefetch_batches < 0:
        fail("prefetch_batches", cfg.prefetch_batches, "an int >= 0")
    syn = cfg.synthetic
    for key, ok, allowed in (
        ("num_examples", syn.num_examples >= 1, ">= 1"),
        ("num_test_examples", syn.num_test_examples >= 0, ">= 0"),
        ("image_size", syn.image_size >= 8, ">= 8"),
        ("paired_fraction", 0.0 <= syn.paired_fraction <= 1.0, "in [0, 1]"),
        ("examples_per_shard", syn.examples_per_shard >= 1, ">= 1"),
        ("sar_dtype", syn.sar_dtype in records.SAR_DTYPES, f"one of {sorted(records.SAR_DTYPES)}"),
    ):
        if not ok:
            fail(f"synthetic.{key}", syn[key], allowed)


def _require_path(cfg) -> str:
    if cfg.path is None:
        raise ValueError("config.data.path is None: generate the synthetic set first "
                         "(data_pipelines.synthetic.ensure_synthetic_dataset) and set the path")
    return cfg.path


def dataset_info(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """What the trainer needs to know before building the model, read from the manifest."""
    path = _require_path(cfg)
    manifest = records.read_manifest(path)
    entry = records.split_entry(manifest, cfg.split, path)
    spec = records.RecordSpec.from_json(manifest["features"])
    return {
        "path": path,
        "split": cfg.split,
        "image_size": (cfg.image_size, cfg.image_size) if cfg.image_size else spec.image_size,
        "stored_image_size": spec.image_size,
        "sar_dtype": spec.sar_dtype,
        "num_examples": entry["num_examples"],
        "num_paired": entry["num_paired"],
        "epoch_size": epoch_size(entry["num_examples"], entry["num_paired"], cfg.paired_share),
        "teacher": None if spec.teacher_tokens is None else {"name": spec.teacher_name,
                                                             "tokens": spec.teacher_tokens},
        "class_names": list(manifest["class_names"]),
        "num_classes": len(manifest["class_names"]),
        "normalization": normalization.read(manifest, f"{path}/{records.MANIFEST_FILENAME}"),
        "resize_rule": manifest["resize_rule"],
        "splits": sorted(manifest["splits"]),
    }


def epoch_size(num_examples: int, num_paired: int, paired_share: float | None) -> int:
    """Examples per epoch: all of them for the natural mix; otherwise the epoch is defined by the
    paired pool (released recipe: num_paired / 0.7, the unpaired pool cycling to fill the rest)."""
    if paired_share is None:
        return num_examples
    if paired_share == 0:
        return num_examples - num_paired
    return max(1, round(num_paired / paired_share))


def synthetic_cache_dir(cfg: ml_collections.ConfigDict) -> str:
    """This host's directory for the synthetic set of `cfg.synthetic` (a digest of its parameters)."""
    digest = hashlib.sha256(json.dumps(cfg.synthetic.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    return paths.local_cache_dir("synthetic", digest)


def prepare(cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict,
            workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The trainer's data config: a copy of `cfg` with `path` filled in and `image_size` set to the
    model's input size when None (so a dataset stored at 256 is resized or cropped to 224 on the host).

    With path None the synthetic set is generated (or reused) in <workdir>/data; for a gs:// workdir in
    `synthetic_cache_dir(cfg)` on this host instead, under a lock shared by this host's processes.
    """
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    if cfg.path is None:
        if paths.is_gcs(workdir):
            out = synthetic_cache_dir(cfg)
            with paths.host_lock(out):
                synthetic.ensure_synthetic_dataset(out, **cfg.synthetic.to_dict())
            log.info("synthetic dataset in this host's cache %s (ArrayRecord cannot read %s)", out, workdir)
        else:
            out = os.path.join(workdir, "data")
            synthetic.ensure_synthetic_dataset(out, **cfg.synthetic.to_dict())
        cfg.path = out
    if cfg.image_size is None:
        cfg.image_size = int(model_cfg.image_size)
    validate_config(cfg)
    return cfg


class _SampleBatch(grain.transforms.Map):
    """Global batch position i -> (i, record indices of this process's rows of batch i)."""

    def __init__(self, sampler: batch_sampling.BatchSampler):
        self._sampler = sampler

    def map(self, position: int) -> tuple[int, np.ndarray]:
        return int(position), self._sampler(int(position))


class _DecodeBatch(grain.transforms.Map):
    """(global batch position, record indices [b]) -> a batch (dict of NumPy arrays).

    Reads and decodes all records of the batch in one call, applies the skip budget for corrupt
    records, then the host resize / crop. Augmentation randomness is seeded by (seed, batch
    position, global row), so resumed iterators, worker processes and any process count draw the
    same box for the same example.
    """

    def __init__(self, source: shard_io.ShardedRecordSource, cfg: ml_collections.ConfigDict, seed: int,
                 rows: np.ndarray):
        self._source = source
        self._size = (cfg.image_size, cfg.image_size) if cfg.image_size else source.spec.image_size
        self._augment = cfg.augment
        self._crop_scale, self._crop_ratio, self._flip = tuple(cfg.crop_scale), tuple(cfg.crop_ratio), cfg.flip
        self._max_corrupt = cfg.max_corrupt_records
        self._seed = seed
        self._rows = rows
        self.num_corrupt = 0  # skipped so far by this process (not part of the iterator state)

    def map(self, element: tuple[int, np.ndarray]) -> dict[str, np.ndarray]:
        position, indices = element
        batch, errors = self._source.read_batch(indices)
        if errors:
            self._skip(batch, errors)
        if self._augment == "random_resized_crop":
            rngs = [np.random.default_rng([self._seed, 0x5A5, position, int(row)]) for row in self._rows]
            return host_transforms.crop_flip_batch(batch, self._size, rngs, scale=self._crop_scale,
                                                   ratio=self._crop_ratio, flip=self._flip)
        return host_transforms.resize_batch(batch, self._size)

    def _skip(self, batch: dict[str, np.ndarray], errors: list[tuple[int, records.CorruptRecordError]]) -> None:
        self.num_corrupt += len(errors)
        row, first = errors[0]
        if self.num_corrupt > self._max_corrupt:
            raise records.CorruptRecordError(
                f"{first} [{self.num_corrupt} corrupt records in this process, config.data.max_corrupt_records="
                f"{self._max_corrupt}]") from first
        bad = {r for r, _ in errors}
        good = [r for r in range(len(batch["is_paired"])) if r not in bad]
        if not good:
            raise records.CorruptRecordError(f"{first} [every record of the batch is corrupt]") from first
        for k, (r, e) in enumerate(errors):
            log.warning("skipping corrupt record (%d of at most %d): %s", self.num_corrupt - len(errors) + k + 1,
                        self._max_corrupt, e)
            donor = good[k % len(good)]
            for key in batch:
                batch[key][r] = batch[key][donor]


def make_dataset(cfg: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                 rows: np.ndarray | None = None, start: int = 0) -> grain.IterDataset:
    """The pipeline as a Grain IterDataset of process-local batches from global batch `start` on.

    `rows`: the rows of every global batch this process reads (increasing; default all of them:
    one process). See the module docstring.
    """
    validate_config(cfg)
    source = shard_io.ShardedRecordSource(_require_path(cfg), cfg.split)
    sampler = batch_sampling.BatchSampler(len(source), source.num_paired, cfg.paired_share,
                                          batch_size=global_batch_size, seed=seed, rows=rows)
    if source.spec.teacher_tokens is not None and (cfg.augment != "none" or (
            cfg.image_size and (cfg.image_size, cfg.image_size) != source.spec.image_size)):
        raise ValueError(f"dataset {source.data_dir} stores teacher_tokens computed at {source.spec.image_size}: "
                         f"config.data.image_size={cfg.image_size} / augment={cfg.augment!r} would change the "
                         "geometry they describe; use the stored size and augment='none'")
    # Element k of this (practically endless) MapDataset is global batch start + k.
    batches = (grain.MapDataset.range(start, _ENDLESS).map(_SampleBatch(sampler))
               .map(_DecodeBatch(source, cfg, seed, sampler.rows)))
    dataset = batches.to_iter_dataset(grain.ReadOptions(
        num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch_batches if cfg.read_threads else 0))
    if cfg.num_workers > 0:
        # Grain's worker processes read absl flags; outside an absl app (tests, notebooks) they
        # are unparsed, so take Grain's flag defaults instead of failing in the first worker.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(
            num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer_size))
    return dataset


STREAM_STATE_VERSION = 2  # 1 (implicit): Grain's own per-process state, {"next_index": i}, streams split by process


def stream_state(position: int, global_batch_size: int) -> dict[str, int]:
    """The saved state of the global stream at batch `position` (batches of `global_batch_size` rows): the one
    place its format and version are written (`TrainIterator.get_state`, legacy checkpoints' conversion)."""
    return {"version": STREAM_STATE_VERSION, "position": int(position), "global_batch_size": int(global_batch_size)}


class TrainIterator:
    """Endless iterator of this process's rows of the global batches; its state is the global position.

    `get_state()` -> {"version": 2, "position": i, "global_batch_size": B}: the same on every process,
    so it is saved once (checkpoint.py) and restored by any number of processes. `set_state` rebuilds
    the Grain pipeline at that position (worker processes included).
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                 rows: np.ndarray | None = None):
        self._cfg, self._seed, self.global_batch_size = cfg, seed, global_batch_size
        self.rows = rows
        self.position = 0
        self._iterator = iter(make_dataset(cfg, global_batch_size=global_batch_size, seed=seed, rows=rows))

    def __iter__(self) -> "TrainIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        self.position += 1
        return batch

    def get_state(self) -> dict[str, int]:
        return stream_state(self.position, self.global_batch_size)

    def set_state(self, state: dict[str, Any], source: str = "the iterator state") -> None:
        """Continue at the state's global position. `source` names where the state came from, for errors."""
        if not isinstance(state, dict) or state.get("version") != STREAM_STATE_VERSION:
            raise ValueError(f"{source}: {state!r} is not a version-{STREAM_STATE_VERSION} data stream state "
                             f"({{'version': {STREAM_STATE_VERSION}, 'position': ..., 'global_batch_size': ...}})")
        if state["global_batch_size"] != self.global_batch_size:
            raise ValueError(f"{source}: saved with global batch size {state['global_batch_size']}, resumed with "
                             f"{self.global_batch_size}: its position counts batches of the saved size; resume with "
                             f"--config.train.batch_size={state['global_batch_size']}")
        position = int(state["position"])
        if position < 0:
            raise ValueError(f"{source}: position {position} is negative")
        self._iterator = iter(make_dataset(self._cfg, global_batch_size=self.global_batch_size, seed=self._seed,
                                           rows=self.rows, start=position))
        self.position = position


def make_train_iterator(cfg: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                        rows: np.ndarray | None = None) -> TrainIterator:
    """Infinite iterator of this process's `rows` of every global batch (dict of NumPy arrays, see the
    module docstring); `rows=None` reads whole global batches (one process)."""
    return TrainIterator(cfg, global_batch_size=global_batch_size, seed=seed, rows=rows)
