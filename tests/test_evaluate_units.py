"""Units of sarmae_jax.evaluate: splits, linear probe, k-NN, layer-wise lr decay, metrics, bad input."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import smoke
from data_pipelines.tfds import image_folder
from sarmae_jax.evaluate import config as config_lib
from sarmae_jax.evaluate import datasets
from sarmae_jax.evaluate import encoder as encoder_lib
from sarmae_jax.evaluate import finetune, knn, linear_probe, reconstruction, report, splits
from sarmae_jax.models import sarmae
from tests.conftest import write_tiny_export

CLASSES = ("a", "b", "c")


def labels_with_counts(*counts):
    return np.concatenate([np.full(n, c, np.int32) for c, n in enumerate(counts)])


# ---------------------------------------------------------------------------------------- splits
def test_splits_are_deterministic_stratified_and_seed_dependent():
    labels = np.random.default_rng(0).permutation(labels_with_counts(50, 60, 70))
    a = splits.select("shots:10", labels, 3, CLASSES)
    assert np.array_equal(a, splits.select("shots:10", labels, 3, CLASSES))
    assert not np.array_equal(a, splits.select("shots:10", labels, 4, CLASSES))
    assert np.bincount(labels[a]).tolist() == [10, 10, 10] and len(np.unique(a)) == 30
    f = splits.select("fraction:0.3", labels, 0, CLASSES)
    assert np.bincount(labels[f]).tolist() == [15, 18, 21]
    assert len(splits.select("all", labels, 0, CLASSES)) == 180
    pool, val = splits.holdout(labels, 0.1, 0, CLASSES)
    assert len(np.intersect1d(pool, val)) == 0 and len(pool) + len(val) == 180
    # A class's draw depends only on that class: appending a class leaves the others' draws unchanged.
    more = np.concatenate([labels, np.full(40, 3, np.int32)])
    b = splits.select("shots:10", more, 3, CLASSES + ("d",))
    assert np.array_equal(b[:30], a)


def test_bad_split_specs_name_the_problem():
    labels = labels_with_counts(50, 8, 70)
    with pytest.raises(ValueError, match=r"40-shot split.*'b' has 8"):
        splits.select("shots:40", labels, 0, CLASSES)
    with pytest.raises(ValueError, match="fraction=1.5"):
        splits.select("fraction:1.5", labels, 0, CLASSES)
    with pytest.raises(ValueError, match="expected 'all'"):
        splits.select("percent:30", labels, 0, CLASSES)


# --------------------------------------------------------------------------- probe and neighbours
def separable_features(n_per_class: int, seed: int):
    """Classes on well-separated random directions in 32-D, plus noise and a large-scale nuisance dimension."""
    centres = np.random.default_rng(123).normal(size=(4, 32)) * 3  # the same classes in every draw
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n_per_class).astype(np.int32)
    x = centres[y] + rng.normal(size=(len(y), 32))
    x[:, 0] = rng.normal(size=len(y)) * 1000  # an uninformative, huge dimension: standardisation must cope
    return x.astype(np.float32), y


def test_linear_probe_is_near_perfect_on_separable_features_and_reports_best_val():
    x, y = separable_features(100, 0)
    xt, yt = separable_features(50, 1)
    xv, yv = separable_features(20, 2)
    cfg = linear_probe.default_config()
    cfg.epochs = 30
    out = linear_probe.evaluate(x, y, (xt, yt), (xv, yv), num_classes=4, cfg=cfg, seed=0)
    assert out["test_last"] >= 99.0
    assert out["epochs"] == 30 and 1 <= out["best_val_epoch"] <= 30


def test_linear_probe_is_at_chance_on_random_labels():
    x, _ = separable_features(100, 0)
    y = np.random.default_rng(5).integers(0, 4, len(x)).astype(np.int32)
    xt, _ = separable_features(50, 1)
    yt = np.random.default_rng(6).integers(0, 4, len(xt)).astype(np.int32)
    cfg = linear_probe.default_config()
    cfg.epochs = 20
    assert linear_probe.evaluate(x, y, (xt, yt), None, num_classes=4, cfg=cfg, seed=0)["test_last"] < 45.0


def test_knn_votes_are_temperature_weighted():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], np.float32)
    labels = np.array([0, 0, 1], np.int32)
    query = np.array([[0.2, 1.0]], np.float32)  # nearest: class 1 (one vote), then two class-0 votes
    assert knn.knn_accuracy(train, labels, query, np.array([1]), k=1, temperature=0.07, num_classes=2) == 1.0
    # k=3: two farther class-0 neighbours outvote one close class-1 neighbour when T is large...
    assert knn.knn_accuracy(train, labels, query, np.array([0]), k=3, temperature=100.0, num_classes=2) == 1.0
    # ...but a sharp temperature lets the closest neighbour win.
    assert knn.knn_accuracy(train, labels, query, np.array([1]), k=3, temperature=0.05, num_classes=2) == 1.0
    x, y = separable_features(50, 0)
    xt, yt = separable_features(20, 1)
    assert knn.knn_accuracy(x[:, 1:], y, xt[:, 1:], yt, k=20, temperature=0.07, num_classes=4) >= 0.98


# ------------------------------------------------------------------------------ fine-tuning parts
@pytest.mark.parametrize("scan", [True, False])
def test_layer_wise_lr_scales_follow_layer_index(scan):
    m = smoke.get_config().model
    m.scan_layers = scan
    model = finetune.Classifier(sarmae.build_encoder(m), 5)
    params = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 64, 64, 3)))["params"], jax.random.key(0))
    import flax.linen as nn

    scales = finetune.lr_scales(nn.unbox(params), depth=4, decay=0.5)
    assert float(scales["head"]["kernel"]) == 1.0 and float(scales["fc_norm"]["scale"]) == 1.0
    assert float(scales["encoder"]["norm"]["scale"]) == 1.0
    assert float(scales["encoder"]["patch_embed"]["proj"]["kernel"]) == 0.5**5
    assert float(scales["encoder"]["cls_token"]) == 0.5**5
    if scan:
        qkv = scales["encoder"]["stack"]["blocks"]["attn"]["qkv"]["kernel"]
        assert qkv.shape == (4, 1, 1, 1, 1)
        np.testing.assert_allclose(qkv.ravel(), [0.5**4, 0.5**3, 0.5**2, 0.5])
    else:
        for i in range(4):
            assert float(scales["encoder"]["stack"][f"blocks_{i}"]["mlp"]["fc1"]["kernel"]) == 0.5 ** (4 - i)


def test_summarise_curves_selects_on_validation_only():
    out = report.summarise_curves({"val": [0.5, 0.9, 0.7], "test": [0.4, 0.6, 0.95]})
    assert out["test_last"] == pytest.approx(95.0)
    assert out["best_val_epoch"] == 2 and out["test_at_best_val"] == pytest.approx(60.0)


# ------------------------------------------------------------------------------------- metrics
def test_psnr_ssim_and_flat_window_enl():
    rng = np.random.default_rng(0)
    clean = jnp.asarray(rng.uniform(0.2, 0.8, (2, 32, 32, 1)), jnp.float32)
    assert np.all(np.asarray(reconstruction.ssim(clean, clean)) > 0.999)
    noisy = clean + 0.1 * jnp.asarray(rng.normal(size=clean.shape), jnp.float32)
    np.testing.assert_allclose(np.asarray(reconstruction.psnr(noisy, clean)), 20.0, atol=0.3)
    assert np.all(np.asarray(reconstruction.ssim(noisy, clean)) < 0.9)
    flat_clean = np.full((4, 32, 32, 1), 0.3, np.float32)
    flat = reconstruction.flat_windows(flat_clean, 8, 0.05)
    assert flat.shape == (4, 4, 4) and flat.all()
    speckled = flat_clean * rng.gamma(4.0, 1 / 4.0, flat_clean.shape)
    assert reconstruction.mean_enl(speckled, flat, 8) == pytest.approx(4.0, rel=0.15)


# ----------------------------------------------------------------------------------- bad input
def save(path, array, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode).save(path)


def image_folder_config(root):
    cfg = datasets.default_config()
    cfg.kind, cfg.path = "image_folder", str(root)
    return cfg


def test_image_folder_is_built_once_by_the_tfds_builder_and_read_by_folder_name(tmp_path, monkeypatch):
    root = tmp_path / "set"
    save(str(root / "Train/ship/a.png"), np.full((20, 30), 100, np.uint8))
    save(str(root / "Train/ship/b.png"), np.repeat(np.full((20, 30, 1), 50, np.uint8), 3, -1))  # grey as RGB
    ramp = (np.arange(16 * 16, dtype=np.uint16) * 7).reshape(16, 16)
    save(str(root / "Train/tank/c.png"), ramp)  # 16-bit: the percentile rule stretches it to [0, 1]
    save(str(root / "Val/tank/d.png"), np.full((32, 32), 30, np.uint8))
    cfg, workdir = image_folder_config(root), str(tmp_path / "eval")
    train = datasets.load_split(cfg, "Train", 32, workdir=workdir)
    # (The builder stores examples in TFDS's key-hash order, the same on every build.)
    assert train.class_names == ("ship", "tank") and sorted(train.labels.tolist()) == [0, 0, 1]
    assert train.images.shape == (3, 32, 32, 1) and train.images.dtype == np.uint8
    ships, tank = train.images[train.labels == 0], train.images[train.labels == 1][0]
    assert sorted(ships[:, 5, 5, 0].tolist()) == [50, 100] and tank.min() == 0 and tank.max() == 255
    val = datasets.load_split(cfg, "Val", 32, workdir=workdir)
    assert val.class_names == train.class_names and val.labels.tolist() == [1] and val.images[0, 0, 0, 0] == 30
    assert os.path.isdir(os.path.join(workdir, "datasets", "set", "32", "1.0.0"))  # default build_dir

    # Built once: while the folder is unchanged the build is reused (the builder is not run again) ...
    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt an unchanged folder")

    with monkeypatch.context() as m:
        m.setattr(image_folder.SarImageFolder, "download_and_prepare", no_rebuild)
        np.testing.assert_array_equal(datasets.load_split(cfg, "train", 32, workdir=workdir).images, train.images)
    # ... and a changed folder is rebuilt in place, not read stale.
    save(str(root / "Train/tank/e.png"), np.full((32, 32), 200, np.uint8))
    assert sorted(datasets.load_split(cfg, "Train", 32, workdir=workdir).labels.tolist()) == [0, 0, 1, 1]
    # Another input size is another build; dataset.build_dir moves the builds out of the workdir.
    cfg.build_dir = str(tmp_path / "shared")
    assert datasets.load_split(cfg, "Train", 16, workdir=workdir).images.shape == (4, 16, 16, 1)
    assert os.path.isdir(tmp_path / "shared" / "set" / "16" / "1.0.0")


def test_image_folder_bad_input_errors_name_the_folder_or_file(tmp_path):
    root = tmp_path / "set"
    cfg, workdir = image_folder_config(root), str(tmp_path / "eval")
    save(str(root / "Train/ship/a.png"), np.zeros((16, 16), np.uint8))
    os.makedirs(root / "Train/empty")
    with pytest.raises(ValueError, match=r"Train/empty: empty class folder"):
        datasets.load_split(cfg, "Train", 16, workdir=workdir)
    os.rmdir(root / "Train/empty")
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 0] = 200
    save(str(root / "Train/ship/rgb.png"), colour)
    with pytest.raises(ValueError, match=r"ship/rgb.png: mismatched channels: 3 distinct colour channels"):
        datasets.load_split(cfg, "Train", 16, workdir=workdir)
    os.remove(root / "Train/ship/rgb.png")
    with pytest.raises(ValueError, match=r"set: no Val/.* folder for split 'Val'"):
        datasets.load_split(cfg, "Val", 16, workdir=workdir)
    with pytest.raises(ValueError, match=r"split 'Test': the image-folder builder reads only the folders Train"):
        datasets.load_split(cfg, "Test", 16, workdir=workdir)
    # A config naming a split the builder does not have fails before any work.
    released = config_lib.released_protocol(str(root), ("all",))
    config_lib.validate(released)
    released.dataset.test_split = "Test"
    with pytest.raises(ValueError, match=r"config.dataset.test_split='Test': split 'Test'"):
        config_lib.validate(released)


def test_records_resize_follows_the_image_rules():
    # A horizontal 16-bit ramp, halved: bilinear (antialiased) keeps a linear ramp linear, sampled
    # at the output pixel centres (input x = 2j + 0.5); dtype and range are kept.
    ramp = np.tile((np.arange(16, dtype=np.float64) + 0.5) * 4000, (16, 1)).astype(np.uint16)
    out = datasets.resize(ramp[None, ..., None], 8)
    assert out.shape == (1, 8, 8, 1) and out.dtype == np.uint16
    np.testing.assert_allclose(out[0, 4, 1:7, 0], (2 * np.arange(1, 7) + 1) * 4000, rtol=0.002)
    same = np.zeros((2, 8, 8, 1), np.uint8)
    assert datasets.resize(same, 8) is same


def test_model_input_with_wrong_channels_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"SAR images have 2 channels \(shape \(2, 8, 8, 2\)\).*takes 3"):
        encoder_lib.normalised_inputs(jnp.zeros((2, 8, 8, 2), jnp.uint8), 3)
    # An encoder pre-trained on grey (repeated to 3 channels) is not fed 3-channel pictures.
    encoder = encoder_lib.load(write_tiny_export(str(tmp_path / "export")))
    encoder_lib.check_data_channels(encoder, np.zeros((2, 8, 8, 1), np.uint8), "grey")
    with pytest.raises(ValueError, match=r"rgb: SAR images have 3 channel\(s\).*pre-trained on 1 \(SAR\)"):
        encoder_lib.check_data_channels(encoder, np.zeros((2, 8, 8, 3), np.uint8), "rgb")


def test_checkpoint_of_another_model_size_is_an_error(tmp_path):
    path = write_tiny_export(str(tmp_path / "export"), size="mini")
    with pytest.raises(ValueError, match=r"ViT 'mini' \(width 128, depth 4\).*expects 'small'"):
        encoder_lib.load(path, expected_size="small")
    # An export whose weights do not match its own config (e.g. metadata edited, or weights of a
    # different model saved under it) fails strictly, naming the parameter and both shapes.
    import json

    meta_path = os.path.join(path, "metadata.json")
    meta = json.load(open(meta_path))
    meta["config"]["model"]["size"] = "tiny"
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(ValueError, match=r"(?s)metadata says ViT 'tiny'\) does not match the model:.*cls_token has \(1, 1, 128\), model expects \(1, 1, 192\)"):
        encoder_lib.load(path)
