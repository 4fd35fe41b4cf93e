"""The synthetic SAR scene generator: determinism, labels, pairing, reuse, CLI."""

import json
import os

import numpy as np
import pytest

from data_pipelines import records, shard_io, synthetic, synthetic_scenes
from sarmae_jax.data import pipeline
from sarmae_jax.training import dry_run
from tests.conftest import tiny_config

SMALL = dict(num_examples=96, num_test_examples=32, image_size=32, paired_fraction=0.75, seed=3,
             examples_per_shard=40)


def _shard_bytes(out_dir):
    return {f: open(os.path.join(out_dir, f), "rb").read() for f in sorted(os.listdir(out_dir))
            if ".array_record-" in f}


def test_same_seed_bitwise_identical_different_seed_different(tmp_path):
    a, b, c = (str(tmp_path / name) for name in "abc")
    manifest_a = synthetic.write_synthetic_dataset(a, **SMALL)
    synthetic.write_synthetic_dataset(b, **SMALL)
    synthetic.write_synthetic_dataset(c, **{**SMALL, "seed": 4})
    assert _shard_bytes(a) == _shard_bytes(b)
    assert open(os.path.join(a, "manifest.json")).read() == open(os.path.join(b, "manifest.json")).read()
    shas_a = [s["sha256"] for s in manifest_a["splits"]["train"]["shards"]]
    shas_c = [s["sha256"] for s in records.read_manifest(c)["splits"]["train"]["shards"]]
    assert not set(shas_a) & set(shas_c)


def test_splits_counts_pairing_and_contents(tmp_path):
    manifest = synthetic.write_synthetic_dataset(str(tmp_path), **SMALL)
    assert manifest["class_names"] == list(synthetic.CLASS_NAMES)
    assert manifest["splits"]["train"]["num_paired"] == 72  # round(0.75 * 96)
    assert manifest["splits"]["test"]["num_paired"] == 24
    assert [s["num_examples"] for s in manifest["splits"]["train"]["shards"]] == [32, 32, 32]
    train = list(shard_io.ShardedRecordSource(str(tmp_path), "train"))
    test = list(shard_io.ShardedRecordSource(str(tmp_path), "test"))
    for i, ex in enumerate(train):
        assert ex["sar"].shape == (32, 32, 1) and ex["sar"].dtype == np.uint8
        assert bool(ex["is_paired"]) == (i < 72)
        assert ex["optical"].any() == bool(ex["is_paired"])
        assert 0 <= ex["label"] < len(synthetic.CLASS_NAMES)
    # Held-out split: different scenes, not a copy of train.
    assert not any(np.array_equal(test[0]["sar"], ex["sar"]) for ex in train)


def test_scenes_clean_intensity_classes_and_not_readable_from_mean():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 200)
    sar, optical = synthetic_scenes.generate_scenes(rng, labels, 48)
    assert sar.shape == (1000, 48, 48) and sar.dtype == np.float32
    assert sar.min() >= 0 and sar.max() <= 1
    assert optical.shape == (1000, 48, 48, 3) and optical.dtype == np.uint8
    flat = sar.reshape(1000, -1)

    def nearest_class_mean_accuracy(features):
        train, test = np.arange(1000) % 2 == 0, np.arange(1000) % 2 == 1
        means = np.stack([features[train & (labels == c)].mean(0) for c in range(5)])
        scale = features[train].std(0) + 1e-6
        dist = (((features[test][:, None] - means[None]) / scale) ** 2).sum(-1)
        return (dist.argmin(1) == labels[test]).mean()

    mean_only = nearest_class_mean_accuracy(flat.mean(1, keepdims=True))
    # Gain-invariant histogram shape (quantiles over the median) carries the class.
    quantiles = np.quantile(flat, [0.1, 0.25, 0.5, 0.75, 0.9, 0.99], axis=1).T
    shape = np.log(quantiles / (np.median(flat, 1, keepdims=True) + 1e-3) + 1e-3)
    structure = nearest_class_mean_accuracy(shape)
    assert mean_only < 0.45, mean_only  # chance is 0.2
    assert structure > mean_only + 0.2, (structure, mean_only)


def test_ensure_reuses_matching_and_regenerates_otherwise(tmp_path):
    out = str(tmp_path / "data")
    synthetic.ensure_synthetic_dataset(out, **SMALL)
    shard = os.path.join(out, records.read_manifest(out)["splits"]["train"]["shards"][0]["file"])
    stamp = os.stat(shard).st_mtime_ns
    synthetic.ensure_synthetic_dataset(out, **SMALL)
    assert os.stat(shard).st_mtime_ns == stamp  # reused
    manifest = synthetic.ensure_synthetic_dataset(out, **{**SMALL, "paired_fraction": 0.5})
    assert manifest["splits"]["train"]["num_paired"] == 48  # regenerated
    os.remove(shard.replace("00000-of", "00001-of"))  # incomplete -> regenerated
    manifest = synthetic.ensure_synthetic_dataset(out, **{**SMALL, "paired_fraction": 0.5})
    shard_io.verify_shards(out, "train")


def test_bad_parameters_name_key():
    with pytest.raises(ValueError, match=r"paired_fraction=1.5, expected in \[0, 1\]"):
        synthetic.write_synthetic_dataset("/nonexistent", **{**SMALL, "paired_fraction": 1.5})


def test_cli_writes_dataset_and_preview(tmp_path, capsys):
    out, png = str(tmp_path / "d"), str(tmp_path / "p.png")
    synthetic.main(["--out", out, "--num_examples", "20", "--num_test_examples", "0", "--image_size", "16",
                    "--preview", png])
    assert "train: 20 examples (15 paired)" in capsys.readouterr().out
    assert json.load(open(os.path.join(out, "manifest.json")))["generator"]["image_size"] == 16
    assert os.path.getsize(png) > 0


def test_dry_run_counts_the_paired_scenes_the_generator_writes(tmp_path):
    """One rule for the paired count: 0.35 x 10 = 3.5 scenes rounds to 4 (a floor gave the dry run 3)."""
    manifest = synthetic.write_synthetic_dataset(str(tmp_path), **{
        **SMALL, "num_examples": 10, "num_test_examples": 2, "paired_fraction": 0.35, "examples_per_shard": 10})
    written = manifest["splits"]["train"]["num_paired"]
    c = tiny_config()
    c.data.path = None
    c.data.synthetic.update(num_examples=10, paired_fraction=0.35)
    c.data.paired_share = 0.5
    _, epoch, _ = dry_run.data_spec(c)
    assert epoch == pipeline.epoch_size(10, written, 0.5) == 8
    assert written == synthetic.num_paired(10, 0.35) == 4
