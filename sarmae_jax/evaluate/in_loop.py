"""Evaluators that the trainer runs inside its loop (`config.evals`): k-NN, linear probe, reconstruction.

`config.evals` is a ConfigDict of named evaluators, each made by `evaluator_config(kind)`:
  kind         "knn" | "linear_probe" | "reconstruction"
  every_steps  evaluate after every N-th step (0: never periodically)
  at_end       evaluate after the last step too
  dataset      a `datasets.default_config()` section; `path=""` means the run's own dataset (the embedded
               synthetic scenes of the smoke run, whose train and test splits carry labels)
  split, split_seed, seed   the labelled subset of the train split and its draw, as `sarmae-eval`
               defines them: indices `splits.select(split, labels, split_seed + seed)`, probe seed `seed`
  pooling, batch_size       the frozen features (`encoder.embed_fn`, the one definition `sarmae-eval` uses)
  knn, linear_probe, reconstruction   the protocol's own settings (`sarmae-eval`'s sections)

Results go to the run's metrics (metrics.jsonl and TensorBoard) as `eval/<name>/<metric>` at the
evaluated step: k-NN and probe `top1` (percent, test split); reconstruction `psnr_L<looks>`,
`ssim_L<looks>`, `enl_L<looks>` (of the prediction) and `psnr_masked_L<looks>`; the cost as
`eval/<name>/seconds`, `eval/seconds` (all evaluators of the step) and `eval/share_of_run` (evaluation
time / wall time since the loop started). Reconstruction also writes `eval/<name>/step_NNNNNNN.png`
(one fixed held-out batch, clean | speckled | visible | prediction per speckle level).

Multi-host: the labelled images are read by every process; each feeds the rows its devices hold
(`sharding.process_batch_rows`) and the features come back replicated, so every process scores the
same numbers and only process 0 writes. Preemption: an evaluation that a SIGTERM interrupts is
discarded (nothing logged), the loop saves that step and stops; the resumed run redoes it first
(`redo_interrupted`), so each evaluated step is logged once.

`training/loop.py` cannot import this package (imports run training -> evaluate); the trainer command
passes `build` to `train_and_evaluate(..., evaluators=build)`.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from sarmae_jax.evaluate import datasets, knn, linear_probe, reconstruction, splits
from sarmae_jax.evaluate import encoder as encoder_lib
from sarmae_jax.runtime import paths, sharding
from sarmae_jax.training import metrics, metrics_file

log = logging.getLogger("sarmae_jax")

KINDS = ("knn", "linear_probe", "reconstruction")
HEADLINE = {"knn": "top1", "linear_probe": "top1", "reconstruction": "psnr_L{looks:g}"}


def evaluator_config(kind: str, **overrides: Any) -> ml_collections.ConfigDict:
    """One entry of `config.evals` with the defaults of `kind`; `overrides` set top-level keys."""
    c = ml_collections.ConfigDict()
    c.kind = kind
    c.every_steps = 0
    c.at_end = True
    c.dataset = datasets.default_config()
    c.dataset.kind = "records"
    c.dataset.path = ""  # "": the run's own dataset
    c.split = "all"  # all | shots:N | fraction:x of the train split
    c.split_seed = 0
    c.seed = 0
    c.pooling = "gap"
    c.batch_size = 128
    c.knn = ml_collections.ConfigDict(dict(k=20, temperature=0.07))
    c.linear_probe = linear_probe.default_config()
    c.linear_probe.epochs = 30  # seconds on the smoke's features; the standalone protocol runs 100
    c.reconstruction = reconstruction.default_config()
    c.reconstruction.num_images = 64
    c.reconstruction.looks = (1.0, 4.0)
    for key, value in overrides.items():
        c[key] = value
    return c


class Labelled(NamedTuple):
    train_images: np.ndarray  # [n, S, S, 1] the selected subset
    train_labels: np.ndarray
    test: datasets.LabelledImages


def _fail(name: str, path: str, message: str):
    raise ValueError(f"config.evals.{name}: {path}: {message}")


def load_labelled(name: str, cfg, image_size: int, run_data: str, workdir) -> tuple[Any, Labelled]:
    """Read and check the evaluator's labelled set (ValueError naming the evaluator and the path)."""
    dataset = ml_collections.ConfigDict(cfg.dataset.to_dict())
    dataset.path = dataset.path or run_data
    path = dataset.path
    if dataset.kind not in datasets.KINDS:
        raise ValueError(f"config.evals.{name}.dataset.kind={dataset.kind!r}: expected one of {datasets.KINDS}")
    if dataset.kind != "synthetic" and not os.path.isdir(path):
        _fail(name, path, "the labelled set does not exist (expected a directory)")
    try:
        train = datasets.load_split(dataset, dataset.train_split, image_size, workdir=str(workdir))
        test = datasets.load_split(dataset, dataset.test_split, image_size, workdir=str(workdir))
    except (ValueError, FileNotFoundError, OSError) as e:
        _fail(name, path, f"cannot read its labelled splits ({e})")
    for split, data in ((dataset.train_split, train), (dataset.test_split, test)):
        if not len(data.labels):
            _fail(name, path, f"split {split!r} is empty")
    if test.class_names != train.class_names:
        _fail(name, path, f"split {dataset.test_split!r} has classes {test.class_names}, split "
                          f"{dataset.train_split!r} {train.class_names}")
    counts = np.bincount(test.labels, minlength=len(test.class_names))
    missing = [c for c, n in zip(test.class_names, counts) if n == 0]
    if missing:
        _fail(name, path, f"split {dataset.test_split!r} has no images of classes {missing}")
    try:
        idx = splits.select(cfg.split, train.labels, cfg.split_seed + cfg.seed, train.class_names)
    except ValueError as e:
        _fail(name, path, str(e))
    return dataset, Labelled(train.images[idx], train.labels[idx], test)


def validate(name: str, cfg, config) -> None:
    """Keys of one evaluator (ValueError naming `config.evals.<name>.<key>`)."""
    key = f"config.evals.{name}"
    if not isinstance(cfg, ml_collections.ConfigDict) or "kind" not in cfg:
        raise ValueError(f"{key}: expected an evaluator section (in_loop.evaluator_config(kind)), got {cfg!r}")
    if cfg.kind not in KINDS:
        raise ValueError(f"{key}.kind={cfg.kind!r}: expected one of {KINDS}")
    if not (isinstance(cfg.every_steps, int) and cfg.every_steps >= 0):
        raise ValueError(f"{key}.every_steps={cfg.every_steps!r}: expected a non-negative integer (0: only at_end)")
    if not cfg.every_steps and not cfg.at_end:
        raise ValueError(f"{key}: every_steps=0 and at_end=False: it would never run")
    if cfg.pooling not in ("gap", "cls"):
        raise ValueError(f"{key}.pooling={cfg.pooling!r}: expected 'gap' or 'cls'")
    if cfg.kind == "reconstruction" and not (cfg.dataset.kind == "synthetic"
                                             or (not cfg.dataset.path and config.data.path is None)):
        raise ValueError(f"{key}: reconstruction needs known clean images: dataset.kind='synthetic', or "
                         "dataset.path='' on a run over the embedded synthetic set (data.path=None)")


class Evaluators:
    """The evaluators of one run; built before the train step is compiled (`build`)."""

    def __init__(self, config, mesh, workdir, items: dict[str, tuple[Any, Labelled]]):
        self.config, self.mesh, self.workdir, self.items = config, mesh, workdir, items
        self.total_steps = None
        self.t_loop = time.perf_counter()
        self.seconds = 0.0
        self.batch_sharding = sharding.batch_sharding(mesh)
        self.replicated = sharding.replicated(mesh)
        self._embed = {}

    # ----------------------------------------------------------------------------- scheduling
    def due(self, step: int, total_steps: int) -> list[str]:
        return [name for name, (cfg, _) in self.items.items()
                if (cfg.every_steps and step % cfg.every_steps == 0) or (cfg.at_end and step == total_steps)]

    def maybe_evaluate(self, step: int, total_steps: int, params, writer, progress, preemption, window) -> bool:
        """Run the evaluators due at `step`. Returns True when a preemption notice came during them:
        nothing was logged, the caller saves `step` and stops, the resumed run redoes them."""
        names = self.due(step, total_steps)
        if not names:
            return False
        results = self.evaluate(step, names, params)
        if preemption.should_stop(step):
            log.warning("step %d: preemption notice during evaluation %s: results discarded, redone after the "
                        "resume", step, names)
            window.maybe_write(step, force=True)  # the training metrics of the steps so far are kept
            return True
        self.write(step, results, writer, progress)
        window.exclude_from_timing()  # step times exclude evaluation: it is logged on its own
        return False

    def redo_interrupted(self, start_step: int, total_steps: int, params, writer, progress) -> None:
        """After a resume from `start_step`: evaluate it if it was due and its results are not logged."""
        names = self.due(start_step, total_steps) if start_step > 0 else []
        if not names:
            return
        logged = np.zeros(len(names), np.int32)
        if metrics.is_main_process():
            path = paths.as_path(self.workdir) / "metrics.jsonl"
            records = metrics_file.read(path) if path.exists() else []
            keys = {k for r in records if r["step"] == start_step for k in r}
            logged = np.array([f"eval/{n}/seconds" in keys for n in names], np.int32)
        if jax.process_count() > 1:
            logged = np.asarray(multihost_utils.broadcast_one_to_all(logged))
        names = [n for n, done in zip(names, logged) if not done]
        if names:
            log.info("step %d: evaluation %s was interrupted before it was logged: redoing it", start_step, names)
            self.write(start_step, self.evaluate(start_step, names, params), writer, progress)

    # ------------------------------------------------------------------------------- running
    def evaluate(self, step: int, names: list[str], params) -> dict[str, float]:
        out: dict[str, float] = {}
        total = 0.0
        for name in names:
            cfg, data = self.items[name]
            t0 = time.perf_counter()
            if cfg.kind == "reconstruction":
                values = self._reconstruction(name, cfg, data, params, step)
            else:
                values = self._classification(cfg, data, params)
            seconds = time.perf_counter() - t0
            total += seconds
            out.update({f"eval/{name}/{k}": v for k, v in values.items()})
            out[f"eval/{name}/seconds"] = seconds
        self.seconds += total
        out["eval/seconds"] = total
        out["eval/share_of_run"] = self.seconds / max(time.perf_counter() - self.t_loop, 1e-9)
        return out

    def write(self, step: int, results: dict[str, float], writer, progress) -> None:
        writer.write(step, results)
        shown = {}
        for name, (cfg, _) in self.items.items():
            key = f"eval/{name}/" + HEADLINE[cfg.kind].format(looks=cfg.reconstruction.looks[0])
            if key in results:
                shown[name] = results[key]
        progress.pin(shown)
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in results.items()))

    def features(self, params, images: np.ndarray, cfg) -> np.ndarray:
        """`[N, D]` float32 features of `images [N, S, S, 1]`, each process feeding its devices' rows."""
        key = cfg.pooling
        if key not in self._embed:
            self._embed[key] = jax.jit(encoder_lib.embed_fn(self.config.model, cfg.pooling),
                                       out_shardings=self.replicated)
        shards = _batch_shards(self.mesh)
        size = -(-cfg.batch_size // shards) * shards  # a multiple of the batch's shard count
        rows = sharding.process_batch_rows(self.batch_sharding, size)
        out = []
        with jax.set_mesh(self.mesh):
            for start, stop in encoder_lib.batches(len(images), size):
                local = encoder_lib.pad_to(images[start:stop], size)[rows]
                batch = jax.make_array_from_process_local_data(self.batch_sharding, local)
                out.append(np.asarray(jax.device_get(self._embed[key](params["encoder"], batch)))[: stop - start])
        return np.concatenate(out)

    def _classification(self, cfg, data: Labelled, params) -> dict[str, float]:
        train_f = self.features(params, data.train_images, cfg)
        test_f = self.features(params, data.test.images, cfg)
        num_classes = len(data.test.class_names)
        if cfg.kind == "knn":
            acc = knn.knn_accuracy(train_f, data.train_labels, test_f, data.test.labels, k=cfg.knn.k,
                                   temperature=cfg.knn.temperature, num_classes=num_classes)
            return {"top1": 100.0 * acc}
        summary = linear_probe.evaluate(train_f, data.train_labels, (test_f, data.test.labels), None,
                                        num_classes=num_classes, cfg=cfg.linear_probe, seed=cfg.seed)
        return {"top1": summary["test_last"]}

    def _reconstruction(self, name, cfg, data: Labelled, params, step: int) -> dict[str, float]:
        with jax.set_mesh(self.mesh):  # every process holds all of it: the figure's batch is small
            whole = jax.jit(lambda p: p, out_shardings=self.replicated)(
                {"encoder": params["encoder"], "decoder": params["decoder"]})
        enc = encoder_lib.Encoder(self.config.model, whole, {"config": self.config.to_dict()}, f"step {step}")
        figure = (paths.as_path(self.workdir) / "eval" / name / f"step_{step:07d}.png"
                  if metrics.is_main_process() else None)
        result = reconstruction.evaluate(enc, data.test.images, cfg.reconstruction, figure)
        out = {}
        for level in result["levels"]:
            tag = f"L{level['looks']:g}"
            out.update({f"psnr_{tag}": level["psnr_recon"], f"psnr_masked_{tag}": level["psnr_recon_masked"],
                        f"ssim_{tag}": level["ssim_recon"], f"enl_{tag}": level["enl_recon"]})
        return out


def _batch_shards(mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES]))


def build(config, mesh, workdir, run_data: str) -> Evaluators | None:
    """Check `config.evals` and read every labelled set, before the train step is compiled.

    run_data: the run's dataset directory (what `dataset.path=""` means). None when there are no evaluators.
    """
    if not config.evals:
        return None
    items = {}
    for name, cfg in config.evals.items():
        validate(name, cfg, config)
        dataset, data = load_labelled(name, cfg, config.model.image_size, run_data, workdir)
        log.info("evaluator %s (%s): %s %s, %d train (%s) / %d test images, %d classes, every %s steps%s",
                 name, cfg.kind, dataset.kind, dataset.path, len(data.train_labels), cfg.split,
                 len(data.test.labels), len(data.test.class_names), cfg.every_steps or "-",
                 " and at the end" if cfg.at_end else "")
        items[name] = (cfg, data)
    return Evaluators(config, mesh, workdir, items)
