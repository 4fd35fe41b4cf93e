"""The Grain input pipeline: batch contract, exact resume, process rows of the global stream, mixing, errors."""

import hashlib
import os

import numpy as np
import pytest
from array_record.python import array_record_module

from data_pipelines import example_proto, records, shard_io, synthetic
from sarmae_jax.data import batch_sampling, pipeline


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.write_synthetic_dataset(out, num_examples=64, num_test_examples=16, image_size=16,
                                      paired_fraction=0.75, seed=0, examples_per_shard=24)
    return out


def _cfg(path, **overrides):
    cfg = pipeline.default_config()
    cfg.path = path
    cfg.update(overrides)
    return cfg


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _restored_after(cfg, consumed, *, global_batch_size, seed):
    """A fresh iterator restored from the state of one that yielded `consumed` batches."""
    interrupted = pipeline.make_train_iterator(cfg, global_batch_size=global_batch_size, seed=seed)
    _take(interrupted, consumed)
    resumed = pipeline.make_train_iterator(cfg, global_batch_size=global_batch_size, seed=seed)
    resumed.set_state(interrupted.get_state())
    return resumed


def test_batch_contract(dataset_dir):
    it = pipeline.make_train_iterator(_cfg(dataset_dir), global_batch_size=8, seed=0)
    for batch in _take(it, 10):
        assert set(batch) == set(pipeline.BATCH_KEYS)
        assert batch["sar"].shape == (8, 16, 16, 1) and batch["sar"].dtype == np.uint8
        assert batch["optical"].shape == (8, 16, 16, 3) and batch["optical"].dtype == np.uint8
        assert batch["is_paired"].shape == (8,) and batch["is_paired"].dtype == np.bool_
        assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
        assert not batch["optical"][~batch["is_paired"]].any()
        assert batch["optical"][batch["is_paired"]].reshape(batch["is_paired"].sum(), -1).any(1).all()
        assert ((batch["label"] >= 0) & (batch["label"] < 5)).all()


def test_dataset_info(dataset_dir):
    info = pipeline.dataset_info(_cfg(dataset_dir, split="test"))
    assert info["image_size"] == (16, 16) and info["sar_dtype"] == "uint8"
    assert info["num_examples"] == 16 and info["num_paired"] == 12
    assert info["class_names"] == list(synthetic.CLASS_NAMES) and info["splits"] == ["test", "train"]


@pytest.mark.parametrize("paired_share", [None, 0.7])
def test_resume_yields_exactly_the_uninterrupted_batches(dataset_dir, paired_share):
    cfg = _cfg(dataset_dir, paired_share=paired_share)
    reference = _take(pipeline.make_train_iterator(cfg, global_batch_size=8, seed=5), 14)  # crosses epochs
    resumed = _restored_after(cfg, 6, global_batch_size=8, seed=5)
    for want, got in zip(reference[6:], _take(resumed, 8)):
        for key in pipeline.BATCH_KEYS:
            np.testing.assert_array_equal(want[key], got[key])
    other_seed = next(pipeline.make_train_iterator(cfg, global_batch_size=8, seed=6))
    assert not np.array_equal(other_seed["sar"], reference[0]["sar"])


def _fingerprints(batches):
    return [hashlib.sha1(img.tobytes()).hexdigest() for b in batches for img in b["sar"]]


def test_process_shards_disjoint_and_covering(dataset_dir):
    cfg = _cfg(dataset_dir, paired_share=None)
    everything = {hashlib.sha1(ex["sar"].tobytes()).hexdigest()
                  for ex in shard_io.ShardedRecordSource(dataset_dir, "train")}
    assert len(everything) == 64
    # 64 records, 2 processes, local batch 4: one epoch = 8 batches per process.
    per_process = [set(_fingerprints(_take(pipeline.make_train_iterator(
        cfg, global_batch_size=8, seed=0, rows=_contiguous_rows(8, p, 2)), 8))) for p in range(2)]
    assert all(len(s) == 32 for s in per_process)  # each record once per epoch
    assert not per_process[0] & per_process[1]
    assert per_process[0] | per_process[1] == everything


def test_paired_share(dataset_dir):
    for share in (0.7, 0.5, 1.0):
        it = pipeline.make_train_iterator(_cfg(dataset_dir, paired_share=share), global_batch_size=10, seed=1)
        paired = np.concatenate([b["is_paired"] for b in _take(it, 20)])
        assert abs(paired.mean() - share) <= 0.02, (share, paired.mean())


def test_worker_processes_give_the_same_batches(dataset_dir):
    cfg = _cfg(dataset_dir)
    in_process = _take(pipeline.make_train_iterator(cfg, global_batch_size=8, seed=2), 3)
    with_workers = _take(pipeline.make_train_iterator(_cfg(dataset_dir, num_workers=1), global_batch_size=8, seed=2), 3)
    for want, got in zip(in_process, with_workers):
        np.testing.assert_array_equal(want["sar"], got["sar"])


def test_corrupt_record_error_names_shard_and_index(tmp_path, dataset_dir):
    import shutil
    broken = str(tmp_path / "broken")
    shutil.copytree(dataset_dir, broken)
    source = shard_io.ShardedRecordSource(broken, "train")
    shard = records.read_manifest(broken)["splits"]["train"]["shards"][2]
    originals = [source[i].data for i in range(64) if source.locate(i)[0] == 2]
    writer = array_record_module.ArrayRecordWriter(os.path.join(broken, shard["file"]), records.DEFAULT_WRITER_OPTIONS)
    for local, payload in enumerate(originals):
        writer.write(b"not a record" if local == 5 else payload)
    writer.close()
    it = pipeline.make_train_iterator(_cfg(broken), global_batch_size=8, seed=0)
    with pytest.raises(records.CorruptRecordError, match=rf"{shard['file']}, record 5: cannot decode"):
        _take(it, 8)


@pytest.mark.parametrize("key,value,message", [
    ("paired_share", 1.5, r"config.data.paired_share=1.5: expected None \(natural mix\) or a number in \[0, 1\]"),
    ("num_workers", -1, r"config.data.num_workers=-1: expected an int >= 0"),
    ("synthetic.image_size", 4, r"config.data.synthetic.image_size=4: expected >= 8"),
])
def test_validate_config_names_key_value_and_allowed(key, value, message):
    cfg = pipeline.default_config()
    if "." in key:
        cfg.synthetic[key.split(".")[1]] = value
    else:
        cfg[key] = value
    with pytest.raises(ValueError, match=message):
        pipeline.validate_config(cfg)


def _contiguous_rows(global_batch_size: int, process_index: int, process_count: int) -> np.ndarray:
    """Rows [p B / P, (p + 1) B / P) of a global batch of B: process p's share when its devices hold consecutive
    blocks of the batch (what `sharding.process_batch_rows` gives on a mesh of consecutive devices)."""
    per = global_batch_size // process_count
    return np.arange(process_index * per, (process_index + 1) * per, dtype=np.int64)


def test_bad_arguments(dataset_dir):
    with pytest.raises(ValueError, match=r"rows=\[3, 2\]: expected increasing row indices in \[0, global batch size 8\)"):
        pipeline.make_train_iterator(_cfg(dataset_dir), global_batch_size=8, seed=0, rows=[3, 2])
    with pytest.raises(ValueError, match="config.data.path is None"):
        pipeline.make_train_iterator(pipeline.default_config(), global_batch_size=8, seed=0)
    with pytest.raises(ValueError, match="no unpaired examples"):
        cfg = _cfg(dataset_dir, paired_share=0.5)
        synthetic.write_synthetic_dataset(cfg.path + "_allpaired", num_examples=8, num_test_examples=0,
                                          image_size=16, paired_fraction=1.0, seed=0, examples_per_shard=8)
        cfg.path = cfg.path + "_allpaired"
        pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0)


# ----------------------------------------------------------------------------- issue 3 additions


def test_default_paired_share_is_exact_per_batch(dataset_dir):
    assert pipeline.default_config().paired_share == 0.7
    it = pipeline.make_train_iterator(_cfg(dataset_dir), global_batch_size=10, seed=0)
    assert [int(b["is_paired"].sum()) for b in _take(it, 6)] == [7] * 6  # 0.7 x 10, exactly, every batch


def test_sampler_interleave_and_pools():
    sampler = batch_sampling.BatchSampler(100, 30, 0.3, batch_size=7, seed=0)
    stream = np.concatenate([sampler(i) for i in range(40)])
    paired = stream < 30
    prefix = np.cumsum(paired)
    k = np.arange(1, len(stream) + 1)
    assert (np.abs(prefix - 0.3 * k) <= 1).all()  # every prefix within one example of the share
    # Each epoch of a pool is a permutation of all its records; epochs differ.
    first, second = stream[paired][:30], stream[paired][30:60]
    assert sorted(first) == sorted(second) == list(range(30)) and not np.array_equal(first, second)
    assert sorted(stream[~paired][:70]) == list(range(30, 100))
    np.testing.assert_array_equal(sampler(17), batch_sampling.BatchSampler(
        100, 30, 0.3, batch_size=7, seed=0)(17))  # pure in the position
    # A process's rows are those rows of the global batch, whichever other rows exist.
    mine = batch_sampling.BatchSampler(100, 30, 0.3, batch_size=7, seed=0, rows=[1, 4, 5])
    for i in (0, 9, 33):
        np.testing.assert_array_equal(mine(i), sampler(i)[[1, 4, 5]])


def test_processes_together_read_each_paired_record_once_per_epoch(dataset_dir):
    cfg = _cfg(dataset_dir, paired_share=0.7)
    source = shard_io.ShardedRecordSource(dataset_dir, "train")
    fingerprint = lambda img: hashlib.sha1(img.tobytes()).hexdigest()  # noqa: E731
    paired_all = {fingerprint(source.example(i)["sar"]) for i in range(source.num_paired)}
    per_process = [_take(pipeline.make_train_iterator(cfg, global_batch_size=8, seed=0,
                                                      rows=_contiguous_rows(8, p, 2)), 9) for p in range(2)]
    # The global stream, in order: batch i is process 0's rows then process 1's.
    stream = [fingerprint(img) for b0, b1 in zip(*per_process) for b in (b0, b1)
              for img, paired in zip(b["sar"], b["is_paired"]) if paired]
    assert len(stream) == 50  # floor(72 x 0.7): the 48 paired records, then the next epoch begins
    assert len(set(stream[:48])) == 48 and set(stream[:48]) == paired_all


def _aligned_dataset(out, *, n=12, num_paired=8, size=16, teacher=None):
    """Optical channel 0 == SAR for paired records, so geometric transforms can be checked."""
    spec = records.RecordSpec((size, size), "uint8", teacher_tokens=teacher and (4, 6), teacher_name=teacher)
    rng = np.random.default_rng(0)

    def examples():
        for i in range(n):
            sar = rng.integers(0, 255, (size, size, 1), dtype=np.uint8)
            optical = np.concatenate([sar, sar // 2, 255 - sar], -1) if i < num_paired else None
            tokens = np.full((4, 6), i, np.float16) if teacher and i < num_paired else None
            yield records.make_example(spec, sar=sar, optical=optical, label=i, source=f"x{i}", teacher_tokens=tokens)

    entry = shard_io.write_split(out, "train", examples(), spec=spec, num_examples=n, examples_per_shard=5,
                                dataset_name="aligned")
    records.write_dataset_metadata(out, dataset_name="aligned", spec=spec, splits={"train": entry}, class_names=[],
                                   resize_rule="none")
    return shard_io.ShardedRecordSource(out, "train")


def test_plain_resize_and_aligned_random_resized_crop(tmp_path):
    from PIL import Image

    source = _aligned_dataset(str(tmp_path))
    cfg = _cfg(str(tmp_path), image_size=8, paired_share=None)
    for batch in _take(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0), 3):
        assert batch["sar"].shape == (4, 8, 8, 1) and batch["optical"].shape == (4, 8, 8, 3)
        for img, label in zip(batch["sar"], batch["label"]):
            want = np.asarray(Image.fromarray(source.example(int(label))["sar"][..., 0]).resize((8, 8), Image.BILINEAR))
            np.testing.assert_array_equal(img[..., 0], want)
    crop = _cfg(str(tmp_path), image_size=12, paired_share=0.5, augment="random_resized_crop", flip=True)
    reference = _take(pipeline.make_train_iterator(crop, global_batch_size=4, seed=1), 6)
    flipped = 0
    for batch in reference:
        assert batch["sar"].shape == (4, 12, 12, 1)
        paired = batch["is_paired"]
        np.testing.assert_array_equal(batch["optical"][paired][..., 0], batch["sar"][paired][..., 0])  # same box
        assert not batch["optical"][~paired].any()
    # Boxes are drawn before flips, so without flips the same boxes give each image or its mirror.
    no_flip = _cfg(str(tmp_path), image_size=12, paired_share=0.5, augment="random_resized_crop")
    unflipped = _take(pipeline.make_train_iterator(no_flip, global_batch_size=4, seed=1), 6)
    for want, got in zip(reference, unflipped):
        for a, b in zip(want["sar"], got["sar"]):
            mirrored = np.array_equal(a, b[:, ::-1])
            assert np.array_equal(a, b) or mirrored
            flipped += mirrored and not np.array_equal(a, b)
    assert 4 <= flipped <= 20  # of 24, p = 0.5
    resumed = _restored_after(crop, 3, global_batch_size=4, seed=1)
    for want, got in zip(reference[3:], _take(resumed, 3)):
        np.testing.assert_array_equal(want["sar"], got["sar"])  # same boxes after a restore
    plain = _take(pipeline.make_train_iterator(_cfg(str(tmp_path), image_size=12, paired_share=0.5),
                                           global_batch_size=4, seed=1), 1)[0]
    np.testing.assert_array_equal(plain["label"], reference[0]["label"])  # same records, different geometry
    assert not np.array_equal(plain["sar"], reference[0]["sar"])


def test_teacher_tokens_travel_with_the_batch(tmp_path):
    _aligned_dataset(str(tmp_path), teacher="dinov3_vitb16")
    info = pipeline.dataset_info(_cfg(str(tmp_path)))
    assert info["teacher"] == {"name": "dinov3_vitb16", "tokens": (4, 6)}
    batch = next(pipeline.make_train_iterator(_cfg(str(tmp_path), paired_share=None), global_batch_size=12, seed=0))
    assert batch["teacher_tokens"].shape == (12, 4, 6) and batch["teacher_tokens"].dtype == np.float16
    for tokens, label, paired in zip(batch["teacher_tokens"], batch["label"], batch["is_paired"]):
        assert (tokens == (label if paired else 0)).all()
    with pytest.raises(ValueError, match="stores teacher_tokens computed at \\(16, 16\\)"):
        pipeline.make_train_iterator(_cfg(str(tmp_path), image_size=8), global_batch_size=4, seed=0)


def _corrupt(dataset_dir, out, bad_locals, shard_index=2):
    import shutil
    shutil.copytree(dataset_dir, out)
    source = shard_io.ShardedRecordSource(out, "train")
    shard = records.read_manifest(out)["splits"]["train"]["shards"][shard_index]
    originals = [source[i].data for i in range(len(source)) if source.locate(i)[0] == shard_index]
    writer = array_record_module.ArrayRecordWriter(os.path.join(out, shard["file"]), records.DEFAULT_WRITER_OPTIONS)
    for local, payload in enumerate(originals):
        writer.write(payload[: len(payload) // 3] if local in bad_locals else payload)
    writer.close()
    return shard["file"]


def test_skip_budget_counts_and_then_fails(tmp_path, dataset_dir, caplog):
    name = _corrupt(dataset_dir, str(tmp_path / "broken"), bad_locals={1, 7})
    cfg = _cfg(str(tmp_path / "broken"), paired_share=None, max_corrupt_records=2)
    batches = _take(pipeline.make_train_iterator(cfg, global_batch_size=8, seed=0), 8)  # one epoch: both seen
    assert all(b["sar"].shape == (8, 16, 16, 1) for b in batches)
    warnings = [r.getMessage() for r in caplog.records if "skipping corrupt record" in r.getMessage()]
    assert len(warnings) == 2 and {f"{name}, record 1: cannot decode" in w or f"{name}, record 7: cannot decode" in w
                                   for w in warnings} == {True}
    cfg.max_corrupt_records = 1
    with pytest.raises(records.CorruptRecordError, match=rf"{name}, record [17]: cannot decode .*\[2 corrupt records in "
                       r"this process, config.data.max_corrupt_records=1\]"):
        _take(pipeline.make_train_iterator(cfg, global_batch_size=8, seed=0), 8)


def test_example_proto_matches_the_tfds_decoder():
    import tensorflow_datasets as tfds

    features = tfds.features.FeaturesDict({
        "pixels": tfds.features.Tensor(shape=(3, 2), dtype=np.uint16, encoding="bytes"),
        "floats": tfds.features.Tensor(shape=(3,), dtype=np.float32),
        "ints": tfds.features.Tensor(shape=(3,), dtype=np.int64),
        "text": tfds.features.Text(), "flag": tfds.features.Scalar(dtype=np.bool_)})
    example = {"pixels": np.arange(6, dtype=np.uint16).reshape(3, 2) * 1000, "floats": np.array([0.5, -2, 3e9], np.float32),
               "ints": np.array([-1, 2**40, 0]), "text": "ünïcode", "flag": True}
    data_bytes = features.serialize_example(example)
    parsed = example_proto.parse_example(data_bytes)
    np.testing.assert_array_equal(np.frombuffer(parsed["pixels"][0], "<u2").reshape(3, 2), example["pixels"])
    np.testing.assert_array_equal(parsed["floats"], example["floats"])
    assert parsed["ints"] == [-1, 2**40, 0] and parsed["flag"] == [1]
    assert bytes(parsed["text"][0]).decode() == "ünïcode"
    assert set(example_proto.parse_example(data_bytes, frozenset({"flag"}))) == {"flag"}
    with pytest.raises(example_proto.ProtoError):
        example_proto.parse_example(data_bytes[:-5])


def test_prepare_fills_path_and_model_size(tmp_path):
    import ml_collections

    cfg = pipeline.default_config()
    cfg.synthetic.update(num_examples=16, num_test_examples=0, image_size=16, examples_per_shard=16)
    prepared = pipeline.prepare(cfg, ml_collections.ConfigDict({"image_size": 8}), str(tmp_path))
    assert prepared.path == str(tmp_path / "data") and prepared.image_size == 8 and cfg.path is None
    info = pipeline.dataset_info(prepared)
    assert info["image_size"] == (8, 8) and info["stored_image_size"] == (16, 16)
    assert info["epoch_size"] == round(12 / 0.7)  # num_paired / paired_share, as released
    batch = next(pipeline.make_train_iterator(prepared, global_batch_size=4, seed=0))
    assert batch["sar"].shape == (4, 8, 8, 1)


# ------------------------------------------------------------------- the global stream on P processes
_LAYOUTS = {  # rows of a global batch of 8 read by each process
    1: [None],
    2: [_contiguous_rows(8, p, 2) for p in range(2)],
    4: [_contiguous_rows(8, p, 4) for p in range(4)],
    "interleaved": [np.array([0, 1, 4, 5]), np.array([2, 3, 6, 7])],  # a TPU pod mesh's order (test_tpu_plan)
}


def _global_batches(cfg, rows_per_process, n, state=None):
    """n global batches assembled from every process's rows (each process from `state`, if given)."""
    iterators = [pipeline.make_train_iterator(cfg, global_batch_size=8, seed=3, rows=rows) for rows in rows_per_process]
    if state is not None:
        for it in iterators:
            it.set_state(state)
    out = []
    for _ in range(n):
        parts = [(rows if rows is not None else np.arange(8), next(it)) for rows, it in zip(rows_per_process, iterators)]
        batch = {k: np.zeros((8, *parts[0][1][k].shape[1:]), parts[0][1][k].dtype) for k in parts[0][1]}
        for rows, local in parts:
            for k in batch:
                batch[k][rows] = local[k]
        out.append(batch)
    return out, iterators[0].get_state()


def test_global_batches_are_the_same_on_any_number_of_processes(tmp_path):
    _aligned_dataset(str(tmp_path), n=24, num_paired=16)
    cfg = _cfg(str(tmp_path), image_size=12, paired_share=0.5, augment="random_resized_crop", flip=True)
    reference, _ = _global_batches(cfg, _LAYOUTS[1], 5)  # crosses an epoch of both pools
    for layout, rows in _LAYOUTS.items():
        got, _ = _global_batches(cfg, rows, 5)
        for want, batch in zip(reference, got):
            for key in pipeline.BATCH_KEYS:
                np.testing.assert_array_equal(want[key], batch[key], err_msg=f"{layout} processes, {key}")


def test_a_stream_saved_by_two_processes_resumes_on_one_and_on_four(tmp_path):
    _aligned_dataset(str(tmp_path), n=24, num_paired=16)
    cfg = _cfg(str(tmp_path), image_size=12, paired_share=0.5, augment="random_resized_crop")
    straight, _ = _global_batches(cfg, _LAYOUTS[1], 7)
    _, state = _global_batches(cfg, _LAYOUTS[2], 3)
    assert state == {"version": 2, "position": 3, "global_batch_size": 8}
    for layout in (1, 4, "interleaved"):
        resumed, _ = _global_batches(cfg, _LAYOUTS[layout], 4, state=state)
        for want, got in zip(straight[3:], resumed):
            np.testing.assert_array_equal(want["sar"], got["sar"])
            np.testing.assert_array_equal(want["label"], got["label"])


def test_stream_state_errors_name_what_was_found(dataset_dir):
    it = pipeline.make_train_iterator(_cfg(dataset_dir), global_batch_size=8, seed=0)
    with pytest.raises(ValueError, match=r"ckpt/7/data_stream: \{'next_index': 3\} is not a version-2 data stream state"):
        it.set_state({"next_index": 3}, source="ckpt/7/data_stream")
    with pytest.raises(ValueError, match=r"saved with global batch size 16, resumed with 8: .* resume with "
                                         r"--config.train.batch_size=16"):
        it.set_state({"version": 2, "position": 3, "global_batch_size": 16})
