"""The Grain input pipeline: batch contract, exact resume, process sharding, mixing, errors."""

import hashlib
import os

import numpy as np
import pytest
from array_record.python import array_record_module

from data_pipelines import records, synthetic
from sarmae_jax import data


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.write_synthetic_dataset(out, num_examples=64, num_test_examples=16, image_size=16,
                                      paired_fraction=0.75, seed=0, examples_per_shard=24)
    return out


def _cfg(path, **overrides):
    cfg = data.default_config()
    cfg.path = path
    cfg.update(overrides)
    return cfg


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_batch_contract(dataset_dir):
    it = data.make_train_iterator(_cfg(dataset_dir), global_batch_size=8, seed=0)
    for batch in _take(it, 10):
        assert set(batch) == set(data.BATCH_KEYS)
        assert batch["sar"].shape == (8, 16, 16, 1) and batch["sar"].dtype == np.uint8
        assert batch["optical"].shape == (8, 16, 16, 3) and batch["optical"].dtype == np.uint8
        assert batch["is_paired"].shape == (8,) and batch["is_paired"].dtype == np.bool_
        assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
        assert not batch["optical"][~batch["is_paired"]].any()
        assert batch["optical"][batch["is_paired"]].reshape(batch["is_paired"].sum(), -1).any(1).all()
        assert ((batch["label"] >= 0) & (batch["label"] < 5)).all()


def test_dataset_info(dataset_dir):
    info = data.dataset_info(_cfg(dataset_dir, split="test"))
    assert info["image_size"] == (16, 16) and info["sar_dtype"] == "uint8"
    assert info["num_examples"] == 16 and info["num_paired"] == 12
    assert info["class_names"] == list(synthetic.CLASS_NAMES) and info["splits"] == ["test", "train"]


@pytest.mark.parametrize("paired_share", [None, 0.7])
def test_resume_yields_exactly_the_uninterrupted_batches(dataset_dir, paired_share):
    cfg = _cfg(dataset_dir, paired_share=paired_share)
    reference = _take(data.make_train_iterator(cfg, global_batch_size=8, seed=5), 14)  # crosses epochs
    interrupted = data.make_train_iterator(cfg, global_batch_size=8, seed=5)
    _take(interrupted, 6)
    state = interrupted.get_state()
    resumed = data.make_train_iterator(cfg, global_batch_size=8, seed=5)
    resumed.set_state(state)
    for want, got in zip(reference[6:], _take(resumed, 8)):
        for key in data.BATCH_KEYS:
            np.testing.assert_array_equal(want[key], got[key])
    other_seed = next(data.make_train_iterator(cfg, global_batch_size=8, seed=6))
    assert not np.array_equal(other_seed["sar"], reference[0]["sar"])


def _fingerprints(batches):
    return [hashlib.sha1(img.tobytes()).hexdigest() for b in batches for img in b["sar"]]


def test_process_shards_disjoint_and_covering(dataset_dir):
    cfg = _cfg(dataset_dir, paired_share=None)
    everything = {hashlib.sha1(ex["sar"].tobytes()).hexdigest()
                  for ex in records.ShardedRecordSource(dataset_dir, "train")}
    assert len(everything) == 64
    # 64 records, 2 processes, local batch 4: one epoch = 8 batches per process.
    per_process = [set(_fingerprints(_take(data.make_train_iterator(
        cfg, global_batch_size=8, seed=0, process_index=p, process_count=2), 8))) for p in range(2)]
    assert all(len(s) == 32 for s in per_process)  # each record once per epoch
    assert not per_process[0] & per_process[1]
    assert per_process[0] | per_process[1] == everything


def test_paired_share(dataset_dir):
    for share in (0.7, 0.5, 1.0):
        it = data.make_train_iterator(_cfg(dataset_dir, paired_share=share), global_batch_size=10, seed=1)
        paired = np.concatenate([b["is_paired"] for b in _take(it, 20)])
        assert abs(paired.mean() - share) <= 0.02, (share, paired.mean())


def test_worker_processes_give_the_same_batches(dataset_dir):
    cfg = _cfg(dataset_dir)
    in_process = _take(data.make_train_iterator(cfg, global_batch_size=8, seed=2), 3)
    with_workers = _take(data.make_train_iterator(_cfg(dataset_dir, num_workers=1), global_batch_size=8, seed=2), 3)
    for want, got in zip(in_process, with_workers):
        np.testing.assert_array_equal(want["sar"], got["sar"])


def test_corrupt_record_error_names_shard_and_index(tmp_path, dataset_dir):
    import shutil
    broken = str(tmp_path / "broken")
    shutil.copytree(dataset_dir, broken)
    source = records.ShardedRecordSource(broken, "train")
    shard = records.read_manifest(broken)["splits"]["train"]["shards"][2]
    originals = [source[i].data for i in range(64) if source.locate(i)[0] == 2]
    writer = array_record_module.ArrayRecordWriter(os.path.join(broken, shard["file"]), records.DEFAULT_WRITER_OPTIONS)
    for local, payload in enumerate(originals):
        writer.write(b"not a record" if local == 5 else payload)
    writer.close()
    it = data.make_train_iterator(_cfg(broken), global_batch_size=8, seed=0)
    with pytest.raises(records.CorruptRecordError, match=rf"{shard['file']}, record 5: cannot decode"):
        _take(it, 8)


@pytest.mark.parametrize("key,value,message", [
    ("paired_share", 1.5, r"config.data.paired_share=1.5: expected None \(natural mix\) or a number in \[0, 1\]"),
    ("num_workers", -1, r"config.data.num_workers=-1: expected an int >= 0"),
    ("synthetic.image_size", 4, r"config.data.synthetic.image_size=4: expected >= 8"),
])
def test_validate_config_names_key_value_and_allowed(key, value, message):
    cfg = data.default_config()
    if "." in key:
        cfg.synthetic[key.split(".")[1]] = value
    else:
        cfg[key] = value
    with pytest.raises(ValueError, match=message):
        data.validate_config(cfg)


def test_bad_arguments(dataset_dir):
    with pytest.raises(ValueError, match="global_batch_size=7: expected a positive multiple of process_count=2"):
        data.make_train_iterator(_cfg(dataset_dir), global_batch_size=7, seed=0, process_count=2)
    with pytest.raises(ValueError, match="config.data.path is None"):
        data.make_train_iterator(data.default_config(), global_batch_size=8, seed=0)
    with pytest.raises(ValueError, match="no unpaired examples"):
        cfg = _cfg(dataset_dir, paired_share=0.5)
        synthetic.write_synthetic_dataset(cfg.path + "_allpaired", num_examples=8, num_test_examples=0,
                                          image_size=16, paired_fraction=1.0, seed=0, examples_per_shard=8)
        cfg.path = cfg.path + "_allpaired"
        data.make_train_iterator(cfg, global_batch_size=4, seed=0)
