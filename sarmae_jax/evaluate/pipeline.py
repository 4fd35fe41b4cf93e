"""One evaluation run: config -> encoder -> data -> protocols -> results.json / results.md.

Sections, in order: (1) encoder, (2) data and validation split, (3) frozen features (cached),
(4) linear probe and k-NN per split and seed, (5) fine-tuning per split and seed,
(6) reconstruction, (7) report. Test labels are read only to score; nothing is chosen on them.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import ml_collections
import numpy as np

from sarmae_jax.evaluate import config as config_lib
from sarmae_jax.evaluate import datasets, finetune, knn, linear_probe, reconstruction, report, splits
from sarmae_jax.evaluate import encoder as encoder_lib
from sarmae_jax.runtime import paths

log = logging.getLogger("sarmae_jax")


def _validation(cfg, train: datasets.LabelledImages, image_size: int, workdir: str):
    """(pool indices into train, validation LabelledImages or None)."""
    spec = cfg.dataset.val_split
    if not spec:
        return np.arange(len(train.labels)), None
    if spec.startswith("holdout:"):
        pool, val_idx = splits.holdout(train.labels, float(spec.split(":", 1)[1]), cfg.split_seed, train.class_names)
        return pool, datasets.LabelledImages(train.images[val_idx], train.labels[val_idx], train.class_names,
                                                train.sar_units)
    val = datasets.load_split(cfg.dataset, spec, image_size, workdir=workdir)
    _check_same_classes(train, val, spec)
    return np.arange(len(train.labels)), val


def _check_same_classes(train, other, split: str) -> None:
    if other.class_names != train.class_names:
        raise ValueError(f"split {split!r} has classes {other.class_names}, the train split {train.class_names}")


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Evaluate `cfg.checkpoint` (an export, local or gs://) into `workdir` (local or gs://)."""
    config_lib.validate(cfg)
    workdir = paths.resolve(workdir, "--workdir")
    paths.check_writable(workdir, "--workdir", arrays=False)

    # 1. Encoder ---------------------------------------------------------------------------------
    checkpoint = str(paths.resolve(cfg.checkpoint, "config.checkpoint")) if cfg.checkpoint else ""
    enc = encoder_lib.load(checkpoint, random_init=cfg.random_init, seed=cfg.random_init_seed,
                           expected_size=cfg.model_size)
    image_size = cfg.image_size or enc.model_cfg.image_size
    if image_size != enc.model_cfg.image_size:
        model_cfg = ml_collections.ConfigDict(enc.model_cfg.to_dict())
        model_cfg.image_size = image_size  # fixed sin-cos positions: any multiple of the patch size works
        enc = enc._replace(model_cfg=model_cfg)
    log.info("encoder: %s (ViT %s, patch %d, input %d)", enc.name, enc.model_cfg.size, enc.model_cfg.patch_size, image_size)

    # 2. Data ------------------------------------------------------------------------------------
    train = datasets.load_split(cfg.dataset, cfg.dataset.train_split, image_size, workdir=workdir)
    test = datasets.load_split(cfg.dataset, cfg.dataset.test_split, image_size, workdir=workdir)
    _check_same_classes(train, test, cfg.dataset.test_split)
    pool, val = _validation(cfg, train, image_size, workdir)
    num_classes = len(train.class_names)
    results: dict[str, Any] = {
        "encoder": enc.name, "random_init": bool(cfg.random_init), "checkpoint": cfg.checkpoint,
        "model": enc.model_cfg.to_dict(), "image_size": image_size,
        "dataset": f"{cfg.dataset.kind}:{cfg.dataset.path}", "class_names": list(train.class_names),
        "test_split": cfg.dataset.test_split, "val_split": cfg.dataset.val_split,
        "num_test": int(len(test.labels)), "num_pool": int(len(pool)),
        "config": cfg.to_dict(), "classification": [],
    }
    subsets = {spec: {seed: pool[splits.select(spec, train.labels[pool], cfg.split_seed + seed, train.class_names)]
                      for seed in _all_seeds(cfg)} for spec in cfg.splits}

    # 3. Frozen features -------------------------------------------------------------------------
    probe_protocols = [p for p in ("linear_probe", "knn") if p in cfg.protocols]
    if probe_protocols:
        cache = paths.resolve(cfg.features.cache_dir, "config.features.cache_dir") if cfg.features.cache_dir \
            else workdir / "features"
        tag = f"{cfg.dataset.kind}-{os.path.basename(os.path.normpath(cfg.dataset.path))}"

        def feats(data, split):
            return encoder_lib.cached_features(enc, data.images, pooling=cfg.features.pooling,
                                               batch_size=cfg.features.batch_size, cache_dir=cache, key=f"{tag}/{split}")

        train_f, test_f = feats(train, cfg.dataset.train_split), feats(test, cfg.dataset.test_split)
        val_f = None if val is None else feats(val, cfg.dataset.val_split.replace(":", "-"))

    # 4. Linear probe and k-NN -------------------------------------------------------------------
    for spec in cfg.splits if probe_protocols else ():
        if "linear_probe" in cfg.protocols:
            runs = []
            for seed in cfg.linear_probe.seeds:
                idx = subsets[spec][seed]
                runs.append(linear_probe.evaluate(
                    train_f[idx], train.labels[idx], (test_f, test.labels),
                    None if val is None else (val_f, val.labels), num_classes=num_classes, cfg=cfg.linear_probe, seed=seed))
            _add(results, "linear_probe", spec, subsets, runs, cfg.linear_probe.seeds)
        if "knn" in cfg.protocols:
            runs = []
            for seed in cfg.knn.seeds:
                idx = subsets[spec][seed]
                acc = knn.knn_accuracy(train_f[idx], train.labels[idx], test_f, test.labels, k=cfg.knn.k,
                                       temperature=cfg.knn.temperature, num_classes=num_classes)
                runs.append({"test_last": 100.0 * acc})
            _add(results, f"knn (k={cfg.knn.k}, T={cfg.knn.temperature:g})", spec, subsets, runs, cfg.knn.seeds)

    # 5. Fine-tuning -----------------------------------------------------------------------------
    if "finetune" in cfg.protocols:
        test_data = finetune.Data(test.images, test.labels)
        val_data = None if val is None else finetune.Data(val.images, val.labels)
        for spec in cfg.splits:
            runs = []
            for seed in cfg.finetune.seeds:
                idx = subsets[spec][seed]
                t0 = time.time()
                r = finetune.evaluate(enc, finetune.Data(train.images[idx], train.labels[idx]), test_data, val_data,
                                      num_classes=num_classes, cfg=cfg.finetune, seed=seed,
                                      desc=f"fine-tune {splits.label_name(spec)} seed {seed}")
                log.info("fine-tune %s seed %d: test %.2f%% (%.0f s)", spec, seed, r["test_last"], time.time() - t0)
                runs.append(r)
            _add(results, "finetune", spec, subsets, runs, cfg.finetune.seeds)

    # 6. Reconstruction --------------------------------------------------------------------------
    if "reconstruction" in cfg.protocols:
        if cfg.random_init:
            log.warning("reconstruction skipped: a random-init baseline has no trained decoder")
            results["reconstruction"] = None
            results["reconstruction_skipped"] = "random-init encoder: no decoder"
        else:
            results["reconstruction"] = reconstruction.evaluate(
                enc, test.images, cfg.reconstruction, workdir / "reconstruction.png")

    # 7. Report ----------------------------------------------------------------------------------
    json_path, md_path = report.write(results, workdir)
    log.info("results: %s, %s", json_path, md_path)
    return results


def _all_seeds(cfg) -> list[int]:
    seeds = set()
    for name in ("linear_probe", "knn", "finetune"):
        if name in cfg.protocols:
            seeds.update(cfg[name].seeds)
    return sorted(seeds)


def _add(results, protocol: str, spec: str, subsets, runs: list[dict], seeds) -> None:
    row = {"protocol": protocol, "split": spec, "split_name": splits.label_name(spec),
           "num_train": int(len(subsets[spec][seeds[0]])), "seeds": list(seeds),
           "runs": runs, "summary": report.aggregate_seeds(runs)}
    results["classification"].append(row)
    s = row["summary"]["test_last"]
    log.info("%s %s: %s", protocol, row["split_name"], report.fmt(s))
