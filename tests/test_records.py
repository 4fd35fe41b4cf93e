"""The record format: round trip, manifest, TFDS compatibility, errors naming shard and record."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from data_pipelines import records, shard_io

SPEC = records.RecordSpec((8, 6), "uint16")


def _examples(n, num_paired, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        paired = i < num_paired
        yield records.make_example(
            SPEC, sar=rng.integers(0, 65535, (8, 6, 1), dtype=np.uint16),
            optical=rng.integers(0, 255, (8, 6, 3), dtype=np.uint8) if paired else None,
            label=i % 3 if i % 4 else -1, source=f"dir/img_{i}.tif", original_size=(100 + i, 50), bit_depth=16)


def _write(out_dir, n=10, num_paired=4, per_shard=3, **kw):
    entry = shard_io.write_split(str(out_dir), "train", _examples(n, num_paired), spec=SPEC, num_examples=n,
                                examples_per_shard=per_shard, dataset_name="toy", **kw)
    return records.write_dataset_metadata(str(out_dir), dataset_name="toy", spec=SPEC, splits={"train": entry},
                                          class_names=["a", "b", "c"], resize_rule="bilinear to 8x6")


def test_balanced_shard_sizes():
    assert shard_io.balanced_shard_sizes(10, 3) == [3, 3, 2, 2]
    assert shard_io.balanced_shard_sizes(6, 3) == [3, 3]
    assert shard_io.balanced_shard_sizes(1, 100) == [1]
    with pytest.raises(ValueError, match="examples_per_shard=0"):
        shard_io.balanced_shard_sizes(10, 0)


def test_round_trip_and_manifest(tmp_path):
    manifest = _write(tmp_path)
    split = manifest["splits"]["train"]
    assert split["num_examples"] == 10 and split["num_paired"] == 4
    assert [s["num_examples"] for s in split["shards"]] == [3, 3, 2, 2]
    assert [s["num_paired"] for s in split["shards"]] == [3, 1, 0, 0]
    assert manifest["features"]["sar"] == {"shape": [8, 6, 1], "dtype": "uint16"}
    assert manifest["class_names"] == ["a", "b", "c"] and manifest["resize_rule"] == "bilinear to 8x6"
    shard_io.verify_shards(str(tmp_path), "train")

    source = shard_io.ShardedRecordSource(str(tmp_path), "train")
    assert len(source) == 10 and source.num_paired == 4
    for i, want in enumerate(_examples(10, 4)):
        got = source.example(i)
        np.testing.assert_array_equal(got["sar"], want["sar"])
        assert got["sar"].dtype == np.uint16
        np.testing.assert_array_equal(got["optical"], want["optical"])
        assert bool(got["is_paired"]) == (i < 4)
        assert int(got["label"]) == want["label"]
        assert got["source"].decode() == f"dir/img_{i}.tif"
        assert tuple(got["original_size"]) == (100 + i, 50) and int(got["bit_depth"]) == 16
    assert not source.example(7)["optical"].any()  # unpaired -> zeros


def test_shards_readable_through_tfds_data_source(tmp_path):
    _write(tmp_path)
    tfds_source = tfds.builder_from_directory(str(tmp_path)).as_data_source("train")
    ours = shard_io.ShardedRecordSource(str(tmp_path), "train")
    assert len(tfds_source) == len(ours)
    for i in (0, 5, 9):
        np.testing.assert_array_equal(tfds_source[i]["sar"], ours.example(i)["sar"])


def test_writer_rejects_paired_after_unpaired_and_bad_shapes(tmp_path):
    examples = list(_examples(4, 4))
    examples[1]["is_paired"] = False
    with pytest.raises(ValueError, match="paired example 'dir/img_2.tif' after an unpaired one"):
        shard_io.write_split(str(tmp_path), "train", examples, spec=SPEC, num_examples=4, examples_per_shard=4,
                            dataset_name="toy")
    with pytest.raises(ValueError, match=r"example 'x.png': sar has shape \(8, 6, 1\) dtype uint8"):
        records.make_example(SPEC, sar=np.zeros((8, 6), np.uint8), optical=None, source="x.png")
    with pytest.raises(ValueError, match="fewer examples than num_examples=5"):
        shard_io.write_split(str(tmp_path), "train", _examples(4, 0), spec=SPEC, num_examples=5,
                            examples_per_shard=4, dataset_name="toy")


def test_undecodable_record_names_shard_and_index(tmp_path):
    manifest = _write(tmp_path)
    shard = manifest["splits"]["train"]["shards"][1]
    path = os.path.join(tmp_path, shard["file"])
    # Rewrite shard 1 with a garbage second record (what a buggy writer or a bad copy leaves).
    good = shard_io.ShardedRecordSource(str(tmp_path), "train")
    originals = [good[i].data for i in range(3, 6)]
    writer = array_record_module.ArrayRecordWriter(path, records.DEFAULT_WRITER_OPTIONS)
    for local, data in enumerate(originals):
        writer.write(b"\x0a\xff\xff garbage" if local == 1 else data)
    writer.close()
    source = shard_io.ShardedRecordSource(str(tmp_path), "train")
    source.example(3)
    with pytest.raises(records.CorruptRecordError, match=rf"shard .*{shard['file']}, record 1: cannot decode"):
        source.example(4)
    with pytest.raises(ValueError, match="sha256 differs"):
        shard_io.verify_shards(str(tmp_path), "train")


def test_damaged_shard_bytes_name_shard_and_index(tmp_path):
    manifest = _write(tmp_path, writer_options="group_size:1,uncompressed")
    shard = manifest["splits"]["train"]["shards"][0]
    path = os.path.join(tmp_path, shard["file"])
    with open(path, "r+b") as f:  # overwrite the middle of the file: record payloads, checksummed by riegeli
        size = os.path.getsize(path)
        f.seek(size // 2)
        f.write(b"\x00" * 64)
    source = shard_io.ShardedRecordSource(str(tmp_path), "train")
    with pytest.raises(records.CorruptRecordError, match=rf"shard .*{shard['file']}, record \d"):
        for i in range(3):
            source.example(i)


def test_missing_manifest_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest"):
        shard_io.ShardedRecordSource(str(tmp_path), "train")
    _write(tmp_path)
    with pytest.raises(ValueError, match=r"no split 'validation'; available: \['train'\]"):
        shard_io.ShardedRecordSource(str(tmp_path), "validation")


def test_a_multichannel_spec_round_trips_through_the_manifest_json():
    spec = records.RecordSpec((4, 5), "uint16", sar_channels=2)
    assert spec.to_json()["sar"]["shape"] == [4, 5, 2]
    assert records.RecordSpec.from_json(spec.to_json()) == spec
    ex = records.make_example(spec, sar=np.zeros((4, 5, 2), np.uint16), optical=None, source="x")
    assert ex["sar"].shape == (4, 5, 2)
    with pytest.raises(ValueError, match=r"expected \(4, 5, 2\) uint16"):
        records.make_example(spec, sar=np.zeros((4, 5), np.uint16), optical=None, source="x")
