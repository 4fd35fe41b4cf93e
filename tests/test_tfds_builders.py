"""TFDS builders: sar1m (readable by tfds.data_source and by the training pipeline) and the
ImageFolder classification builder (round trip, load_classification_split, bad layouts)."""

import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_pipelines import shard_io, synthetic
from data_pipelines.tfds import build_image_folder, build_sar1m, load_classification_split
from tests.conftest import make_sar1m_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("folder") / "mstar_like")
    synthetic.write_image_folder(root, num_train=15, num_val=10, image_size=24, seed=3)
    return root


def test_synthetic_image_folder_layout(folder):
    assert sorted(os.listdir(folder)) == [".sarmae_output.json", "Train", "Val"]  # + the generator's ownership marker
    assert sorted(os.listdir(os.path.join(folder, "Train"))) == sorted(synthetic.CLASS_NAMES)
    assert sum(len(files) for _, _, files in os.walk(os.path.join(folder, "Val"))) == 10
    image = Image.open(os.path.join(folder, "Train", "harbour", "000000.png"))
    assert image.mode == "L" and image.size == (24, 24)


def test_image_folder_round_trip(folder, tmp_path):
    dataset_dir = build_image_folder(folder, data_dir=str(tmp_path), image_size=24)
    assert dataset_dir.startswith(str(tmp_path / "mstar_like"))
    images, labels, class_names = load_classification_split(dataset_dir, "train")
    assert images.shape == (15, 24, 24, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and class_names == sorted(synthetic.CLASS_NAMES)
    assert np.bincount(labels, minlength=5).tolist() == [3] * 5
    # Every stored image equals its PNG (same size: no resize; 8-bit: value / 255).
    source = tfds.builder_from_directory(dataset_dir).as_data_source("train")
    for i in range(len(source)):
        ex = source[i]
        path = os.path.join(folder, ex["source"].decode())
        np.testing.assert_array_equal(images[i, ..., 0], np.asarray(Image.open(path)))
        assert class_names[labels[i]] == os.path.basename(os.path.dirname(path))
        assert labels[i] == ex["label"]
    val_images, val_labels, _ = load_classification_split(dataset_dir, "val")
    assert val_images.shape == (10, 24, 24, 1) and len(val_labels) == 10
    with pytest.raises(ValueError, match=r"no split 'test'; available: \['train', 'val'\]"):
        load_classification_split(dataset_dir, "test")


def test_image_folder_resizes_16bit(tmp_path):
    root = str(tmp_path / "sixteen")
    synthetic.write_image_folder(root, num_train=5, num_val=0, image_size=40, seed=0, bit_depth=16)
    shutil.rmtree(os.path.join(root, "Val"))
    dataset_dir = build_image_folder(root, data_dir=str(tmp_path / "tfds"), image_size=32)
    images, labels, _ = load_classification_split(dataset_dir, "train")
    assert images.shape == (5, 32, 32, 1) and images.max() == 255  # 16-bit stretched by the percentile rule


@pytest.mark.parametrize("breakage,message", [
    ("empty_class", r"Train/urban: empty class folder"),
    ("unknown_val_class", r"Val: classes \['tanks'\] are not in .*Train"),
    ("no_train", r"no Train/ folder"),
    ("color_image", r"harbour/000000.png: mismatched channels: 3 distinct colour channels"),
    ("unreadable", r"harbour/000000.png: unreadable image"),
])
def test_image_folder_bad_layouts(folder, tmp_path, breakage, message):
    root = str(tmp_path / "broken")
    shutil.copytree(folder, root)
    first = os.path.join(root, "Train", "harbour", "000000.png")
    if breakage == "empty_class":
        for f in os.listdir(os.path.join(root, "Train", "urban")):
            os.remove(os.path.join(root, "Train", "urban", f))
    elif breakage == "unknown_val_class":
        os.makedirs(os.path.join(root, "Val", "tanks"))
    elif breakage == "no_train":
        shutil.rmtree(os.path.join(root, "Train"))
    elif breakage == "color_image":
        gray = np.asarray(Image.open(first))
        Image.fromarray(np.dstack([gray, gray // 2, 255 - gray])).save(first)
    elif breakage == "unreadable":
        open(first, "wb").write(b"\x89PNG not really")
    with pytest.raises(ValueError, match=message):
        build_image_folder(root, data_dir=str(tmp_path / "tfds"), image_size=24)


def test_sar1m_builder_readable_by_tfds_and_the_pipeline(tmp_path):
    root = str(tmp_path / "sar1m")
    make_sar1m_folder(root)
    dataset_dir = build_sar1m(root, data_dir=str(tmp_path / "tfds"), image_size=224)
    tfds_source = tfds.data_source("sar1m/224", data_dir=str(tmp_path / "tfds"), split="train")
    assert [bool(tfds_source[i]["is_paired"]) for i in range(len(tfds_source))] == [True] * 3 + [False] * 5
    ours = shard_io.ShardedRecordSource(dataset_dir, "train")
    assert len(ours) == 8 and ours.num_paired == 3
    batch, errors = ours.read_batch(range(8))
    assert not errors and batch["sar"].shape == (8, 224, 224, 1)
    for i in range(8):
        np.testing.assert_array_equal(batch["sar"][i], tfds_source[i]["sar"])
        np.testing.assert_array_equal(batch["optical"][i], tfds_source[i]["optical"])
