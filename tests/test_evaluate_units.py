"""Units of sarmae_jax.evaluate: splits, linear probe, k-NN, layer-wise lr decay, metrics, bad input."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from sarmae_jax.evaluate import datasets, finetune, knn, linear_probe, reconstruction, report, splits
from sarmae_jax.evaluate import encoder as encoder_lib
from sarmae_jax.models import sarmae

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
    from configs import smoke

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


def test_image_folder_reads_grey_and_16_bit_and_resizes(tmp_path):
    save(str(tmp_path / "Train/ship/a.png"), np.full((20, 30), 100, np.uint8))
    save(str(tmp_path / "Train/ship/b.png"), np.repeat(np.full((20, 30, 1), 50, np.uint8), 3, -1))  # grey as RGB
    save(str(tmp_path / "Train/tank/c.png"), np.full((16, 16), 1000, np.uint16))  # 16-bit
    cfg = datasets.default_config()
    cfg.kind, cfg.path = "image_folder", str(tmp_path)
    data = datasets.load_split(cfg, "Train", 32)
    assert data.class_names == ("ship", "tank") and data.labels.tolist() == [0, 0, 1]
    assert data.images.shape == (3, 32, 32, 1) and data.images.dtype == np.uint16
    assert data.images[0, 5, 5, 0] == 100 * 257 and data.images[2, 5, 5, 0] == 1000


def test_image_folder_errors_name_the_folder_or_file(tmp_path):
    cfg = datasets.default_config()
    cfg.kind, cfg.path = "image_folder", str(tmp_path)
    save(str(tmp_path / "Train/ship/a.png"), np.zeros((8, 8), np.uint8))
    os.makedirs(tmp_path / "Train/empty")
    with pytest.raises(ValueError, match=r"class folder .*Train/empty holds no images"):
        datasets.load_split(cfg, "Train", 16)
    os.rmdir(tmp_path / "Train/empty")
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 200
    save(str(tmp_path / "Train/ship/rgb.png"), colour)
    with pytest.raises(ValueError, match=r"rgb.png: 3 distinct colour channels"):
        datasets.load_split(cfg, "Train", 16)
    with pytest.raises(FileNotFoundError, match="Val"):
        datasets.load_split(cfg, "Val", 16)


def test_model_input_with_wrong_channels_is_an_error():
    with pytest.raises(ValueError, match=r"1 channel.*got shape \(2, 8, 8, 3\)"):
        encoder_lib.normalised_inputs(jnp.zeros((2, 8, 8, 3), jnp.uint8), 3)


def test_checkpoint_of_another_model_size_is_an_error(tmp_path):
    from tests.test_evaluate import write_tiny_export

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
