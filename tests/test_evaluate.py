"""The whole evaluation on a tiny synthetic dataset, from a params-only export to results.json/.md."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sarmae_jax.evaluate import config as config_lib
from sarmae_jax.evaluate import pipeline
from tests.conftest import write_tiny_export


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    return write_tiny_export(str(tmp_path_factory.mktemp("export")))


def tiny_eval_config(tmp_path, export_dir: str):
    c = config_lib.default_config()
    c.checkpoint = export_dir
    c.dataset.path = os.path.join(str(tmp_path), "synthetic")
    c.dataset.synthetic.update(num_examples=120, num_test_examples=40, image_size=32, examples_per_shard=64)
    c.dataset.val_split = "holdout:0.2"
    c.splits = ("shots:8", "fraction:0.5")
    c.linear_probe.update(epochs=10, seeds=(0, 1))
    c.knn.update(k=5, seeds=(0, 1))
    c.finetune.update(epochs=2, warmup_epochs=1, batch_size=16, seeds=(0,))
    c.reconstruction.update(looks=(1.0, 4.0), num_images=16, batch_size=16, window=4, figure_images=2)
    return c


def test_whole_evaluation_on_tiny_synthetic_dataset(tmp_path, tiny_export):
    cfg = tiny_eval_config(tmp_path, tiny_export)
    workdir = str(tmp_path / "eval")
    results = pipeline.run(cfg, workdir)

    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert saved["encoder"] == tiny_export and not saved["random_init"]
    rows = {(r["protocol"].split(" ")[0], r["split"]): r for r in saved["classification"]}
    assert set(rows) == {(p, s) for p in ("linear_probe", "knn", "finetune") for s in ("shots:8", "fraction:0.5")}
    assert rows[("linear_probe", "shots:8")]["num_train"] == 5 * 8
    for row in rows.values():
        s = row["summary"]["test_last"]
        assert 0.0 <= s["mean"] <= 100.0 and s["n"] == len(row["seeds"])
    # With a validation split, trained protocols also report test accuracy at the best validation epoch.
    ft = rows[("finetune", "fraction:0.5")]["runs"][0]
    assert len(ft["curves"]["test"]) == 2 and 1 <= ft["best_val_epoch"] <= 2
    assert ft["test_at_best_val"] == pytest.approx(100 * ft["curves"]["test"][ft["best_val_epoch"] - 1])
    assert "test_at_best_val" in rows[("linear_probe", "shots:8")]["summary"]

    rec = saved["reconstruction"]
    assert [lv["looks"] for lv in rec["levels"]] == [1.0, 4.0]
    assert rec["flat_windows"] > 0
    # More looks = weaker speckle: the speckled input is closer to the clean image and flatter.
    assert rec["levels"][1]["psnr_noisy"] > rec["levels"][0]["psnr_noisy"]
    assert rec["levels"][1]["enl_noisy"] > rec["levels"][0]["enl_noisy"]
    assert os.path.getsize(os.path.join(workdir, "reconstruction.png")) > 0

    md = open(os.path.join(workdir, "results.md")).read()
    assert "| finetune | 50% |" in md and "test (best val epoch)" in md and "PSNR" in md
    assert results["num_test"] == 40

    # Features are cached on disk: a second run reads them back instead of recomputing.
    cached = sorted(os.listdir(os.path.join(workdir, "features")))
    assert len(cached) == 3  # train, test, holdout validation
    cfg.protocols = ("knn",)
    again = pipeline.run(cfg, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "features"))) == cached
    knn_again = {r["split"]: r["summary"]["test_last"]["mean"] for r in again["classification"]}
    assert knn_again["shots:8"] == pytest.approx(rows[("knn", "shots:8")]["summary"]["test_last"]["mean"])


def test_random_init_baseline_is_labelled_and_differs(tmp_path, tiny_export):
    cfg = tiny_eval_config(tmp_path, tiny_export)
    cfg.protocols = ("knn", "reconstruction")
    cfg.random_init, cfg.random_init_seed = True, 3
    results = pipeline.run(cfg, str(tmp_path / "random"))
    assert results["random_init"] and results["encoder"].startswith("random-init (seed 3)")
    assert results["reconstruction"] is None and "random-init" in results["reconstruction_skipped"]
    assert "random-init" in open(tmp_path / "random" / "results.md").read()


def test_image_folder_dataset_end_to_end(tmp_path, tiny_export):
    """A released-protocol config on an ImageFolder set of another image size: built by the TFDS
    image-folder builder at the model's 32 into <workdir>/datasets."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("Train", 12), ("Val", 6)):
        for label, name in enumerate(("bright", "dark")):
            os.makedirs(tmp_path / "set" / split / name)
            for i in range(n):
                level = 180 if label == 0 else 40
                pixels = np.clip(rng.normal(level, 20, (48, 40)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "set" / split / name / f"{i}.png")
    cfg = config_lib.released_protocol(str(tmp_path / "set"), ("shots:4", "all"))
    cfg.checkpoint = tiny_export
    cfg.protocols = ("linear_probe", "knn")
    cfg.linear_probe.update(epochs=20, seeds=(0,))
    cfg.knn.update(k=3, seeds=(0,))
    results = pipeline.run(cfg, str(tmp_path / "eval"))
    assert results["class_names"] == ["bright", "dark"] and results["num_test"] == 12
    assert os.path.isfile(tmp_path / "eval" / "datasets" / "set" / "32" / "1.0.0" / "source.json")
    acc = {(r["protocol"].split(" ")[0], r["split"]): r["summary"]["test_last"]["mean"] for r in results["classification"]}
    # Brightness separates the classes even through a random encoder.
    assert acc[("linear_probe", "all")] == 100.0 and acc[("knn", "all")] >= 90.0


@pytest.mark.parametrize("name", ["synthetic", "fusar_ship", "mstar", "sar_acd"])
def test_eval_configs_validate(name):
    import importlib

    cfg = importlib.import_module(f"configs.eval.{name}").get_config()
    config_lib.validate(cfg)
    assert cfg.finetune.epochs == 30 and cfg.finetune.layer_decay == 0.75 and len(cfg.finetune.seeds) == 5
