"""SARMAE pre-training: config -> mesh -> data -> model -> state -> jitted step -> loop -> checkpoint.

`train_and_evaluate(config, workdir)` reads top to bottom in numbered sections; helpers named
`maybe_*` keep the loop flat. The math lives in `objective.py` and `step.py`, the parts of the step
in `state.py`; this file is orchestration.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from sarmae_jax import config as config_lib
from sarmae_jax.convert import teacher_weights
from sarmae_jax.data import pipeline
from sarmae_jax.models import param_trees, teachers
from sarmae_jax.runtime import compilation_cache, distributed, paths, sharding
from sarmae_jax.training import checkpoint, dataset_config, flops, metrics, profiling, resume
from sarmae_jax.training import state as state_lib
from sarmae_jax.training import step as step_lib

log = logging.getLogger("sarmae_jax")


def maybe_init_from(params: dict, path: str) -> dict:
    """Replace whole parts (`encoder`, `decoder`, `anchor_head`) by those of a params-only export.

    Each part present in the export must match the model exactly (names and shapes); parts the export
    lacks keep their fresh initialisation, and the log says which is which.
    """
    if not path:
        return params
    loaded, _ = checkpoint.load_export(paths.resolve(path, "config.train.init_from"))
    unknown = sorted(set(loaded) - set(params))
    if unknown:
        raise ValueError(f"{path}: parts {unknown} are not in this model (model parts: {sorted(params)})")
    out = dict(params)
    for part, value in loaded.items():
        param_trees.check_tree_matches(value, params[part], what=f"{path} part {part!r}")
        out[part] = jax.tree.map(lambda new, old: jax.device_put(jnp.asarray(new, old.dtype), old.sharding), value, params[part])
    log.info("initialised %s from %s; fresh: %s", sorted(loaded), path, sorted(set(params) - set(loaded)) or "none")
    return out


def resolve_paths(config, workdir) -> epath.Path:
    """The run directory as an `epath.Path` (local or gs://); the config's other path keys are checked too, so
    that a malformed one fails here, naming its key, rather than when it is read."""
    if config.train.init_from:
        paths.resolve(config.train.init_from, "config.train.init_from")
    teacher = config.sarc.teacher.checkpoint
    if config.sarc.enabled and teacher and teacher != teachers.RANDOM_INIT:
        paths.resolve(teacher, "config.sarc.teacher.checkpoint")
    return paths.resolve(workdir, "--workdir")


# ------------------------------------------------------------------------------------------ data
def prepare_data(config, workdir: epath.Path) -> tuple[ml_collections.ConfigDict, dict]:
    """The data config with a dataset path (`pipeline.prepare`), and the dataset's facts.

    With `data.path=None` the embedded synthetic SAR set is generated (or reused when one with the same
    parameters is there). A local workdir holds it in `workdir/data`, written by process 0 while the
    others wait, then read by all. With a bucket workdir it goes to this host's disk
    (`pipeline.synthetic_cache_dir`; ArrayRecord reads local files only): every process prepares it, so
    every host has its copy; processes of one host take turns through a file lock.
    """
    if config.data.path is None and paths.is_gcs(workdir):
        data_cfg = pipeline.prepare(config.data, config.model, str(workdir))
        return data_cfg, pipeline.dataset_info(data_cfg)
    if metrics.is_main_process():
        data_cfg = pipeline.prepare(config.data, config.model, str(workdir))
    _sync_processes("synthetic dataset")
    if not metrics.is_main_process():
        data_cfg = pipeline.prepare(config.data, config.model, str(workdir))
    return data_cfg, pipeline.dataset_info(data_cfg)


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------------------------ loop helpers
class MetricWindow:
    """Step metrics stay on device until a log step (no host sync per step), then are averaged and written.

    Step time covers everything between log steps, data waiting included: it is what a user pays.
    Throughput: images/s (global and per device), model TFLOP/s per device (analytic FLOPs, flops.py)
    and MFU = that / the device's dense bf16 peak (`flops.PEAK_TFLOPS`, or train.peak_tflops_per_device).
    """

    def __init__(self, config, writer, progress, flops_per_step: float, teacher_flops_per_step: float = 0.0):
        self.every = config.train.log_every
        self.max_in_a_row = config.train.max_consecutive_skips
        self.images_per_step = config.train.batch_size
        self.flops_per_step = flops_per_step
        self.teacher_flops_per_step = teacher_flops_per_step  # part of flops_per_step; MFU without it too
        self.num_devices = jax.device_count()
        kind = jax.devices()[0].device_kind
        self.peak_tflops = flops.peak_tflops_per_device(kind, config.train.peak_tflops_per_device)
        if self.peak_tflops is None:
            log.info("no peak TFLOP/s known for device kind %r: MFU is not logged (set "
                     "config.train.peak_tflops_per_device to get it)", kind)
        self.writer, self.progress = writer, progress
        self.pending: list[dict[str, jax.Array]] = []
        self.last: dict[str, float] = {}
        self.restart_timer()

    def restart_timer(self) -> None:
        self.pending.clear()
        self.t_start = time.perf_counter()
        self.untimed = 0

    def exclude_from_timing(self) -> None:
        """The steps so far (the first one, which compiled) keep their metrics but not their time."""
        self.t_start = time.perf_counter()
        self.untimed = len(self.pending)

    def add(self, step_metrics: dict[str, jax.Array]) -> None:
        self.pending.append(step_metrics)

    def throughput(self, seconds_per_step: float) -> dict[str, float]:
        tflops = self.flops_per_step / seconds_per_step / self.num_devices / 1e12
        out = {
            "step_time": seconds_per_step,
            "images_per_sec": self.images_per_step / seconds_per_step,
            "images_per_sec_per_device": self.images_per_step / seconds_per_step / self.num_devices,
            "tflops_per_device": tflops,
        }
        if self.peak_tflops:
            out["mfu"] = tflops / self.peak_tflops
            out["mfu_without_teacher"] = out["mfu"] * (1 - self.teacher_flops_per_step / self.flops_per_step)
        return out

    def maybe_write(self, step: int, force: bool = False) -> None:
        if not self.pending or not (force or step % self.every == 0):
            return
        fetched = jax.device_get(self.pending)
        timed = len(fetched) - self.untimed
        missed = max(int(m.get("teacher_rows_missed", 0)) for m in fetched)
        if missed:  # the batch broke the exact paired share that training/paired_rows.py relies on
            raise ValueError(f"steps {step - len(fetched) + 1}-{step}: {missed} paired row(s) of a batch fell outside "
                             "the rows the teacher runs on (training/paired_rows.py); the batches do not hold "
                             "config.data.paired_share exactly")
        skipped = sum(1 for m in fetched if not m["step_finite"])
        if skipped:
            log.warning("steps %d-%d: %d update(s) skipped for a non-finite loss or gradient",
                        step - len(fetched) + 1, step, skipped)
        # Every step's streak counts, not only the log step's: a streak may end between two log steps.
        worst = max(range(len(fetched)), key=lambda i: int(fetched[i]["skipped_in_a_row"]))
        in_a_row = int(fetched[worst]["skipped_in_a_row"])
        if in_a_row >= self.max_in_a_row:
            at = step - len(fetched) + 1 + worst
            raise FloatingPointError(
                f"{in_a_row} consecutive steps up to step {at} had a non-finite loss or gradient (loss there "
                f"{float(fetched[worst]['loss'])}); stopping (train.max_consecutive_skips={self.max_in_a_row}). "
                "Lower optim.lr or check the data.")
        means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        means["steps_skipped"] = float(skipped)
        if timed > 0:  # a window holding only the compiling step has no throughput to report
            means.update(self.throughput((time.perf_counter() - self.t_start) / timed))
        self.writer.write(step, means)
        shown = {k: means[k] for k in ("loss", "loss_mae", "loss_align") if k in means}
        if timed > 0:
            shown.update({"s/step": means["step_time"], "img/s": means["images_per_sec"]})
        if "mfu" in means:
            shown["MFU"] = f"{means['mfu']:.1%}"
        self.progress.update(step, shown)
        self.last = means
        self.restart_timer()


def maybe_write_images(step, config, params, batch, visualize, writer, workdir, force=False):
    """Every process computes the pictures (they span all devices), process 0 writes them."""
    if not (force or step % config.train.image_every == 0):
        return
    n = min(8, batch["sar"].shape[0])
    pictures = jax.device_get(visualize(params, batch, jnp.asarray(step - 1, jnp.int32)))
    if not metrics.is_main_process():
        return
    columns = {name: np.asarray(v)[:n] for name, v in zip(step_lib.PICTURE_COLUMNS, pictures)}
    grid = metrics.image_grid(columns)
    path = workdir / "images" / f"step_{step:07d}.png"
    metrics.save_png(path, grid, description=" | ".join(columns))
    writer.write_image(step, "reconstructions", grid)
    log.info("wrote %s (columns: %s)", path, " | ".join(columns))


def maybe_save(checkpoints: checkpoint.Checkpoints, step, state, data_iter, meta, config, writer,
               force=False) -> None:
    """Checkpoint every `train.checkpoint_every` steps; the metrics logged so far are made durable first
    (a resume from this step keeps them, and logs the later ones again)."""
    if force or step % config.train.checkpoint_every == 0:
        writer.flush()
        checkpoints.save(step, state, data_iter, meta)


STEP_FIELDS = ("sar", "optical", "is_paired", "teacher_tokens")  # what the step reads of a batch


def global_batch(local: dict[str, np.ndarray], batch_sharding) -> dict[str, jax.Array]:
    """This process's rows -> one global array per field, split over data x fsdp.

    `teacher_tokens` travel only when the dataset stores precomputed teacher features.
    """
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(local[k]))
            for k in STEP_FIELDS if k in local}


def stored_teacher_tokens(info: dict, config) -> bool:
    """Whether the dataset's precomputed teacher tokens replace the live teacher; they must be that teacher's."""
    stored = info.get("teacher")
    if stored is None or not config.sarc.enabled:
        return False
    wanted = teachers.teacher_identity(config.sarc.teacher)
    if stored["name"] != wanted:
        raise ValueError(f"dataset {info['path']} stores teacher tokens of {stored['name']!r}, but config.sarc.teacher "
                         f"describes {wanted!r}: precompute them for this teacher, or point data.path at the images")
    return True


# ------------------------------------------------------------------------------------------ main
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       on_step: Callable[[int], None] | None = None, evaluators: Callable | None = None, *,
                       resume_accept: tuple[str, ...] = (), resume_from_intact: bool = False) -> dict[str, float]:
    """Pre-train from `config`, writing metrics, images and checkpoints to `workdir`. Returns final metrics.

    `workdir`: a local directory or a gs://BUCKET/PATH URI; process 0 writes metrics, TensorBoard events,
    images, metadata and the export, every process its own checkpoint shards. A write probe fails
    within seconds, before anything is compiled, if the directory cannot be written.
    Stops early, after saving a checkpoint, on SIGTERM or a JAX preemption notice (the returned
    metrics then hold `preempted_at_step`); a later call with the same workdir resumes exactly.
    `on_step(step)` is called after each step is dispatched (profiling hooks, tests). A resume that changes
    the config (other than `resume.FREE_KEYS`) needs its keys in `resume_accept`; `resume_from_intact` resumes
    past a damaged latest checkpoint (training/resume.py).
    `evaluators`: `sarmae_jax.evaluate.in_loop.build`, which runs `config.evals` (the trainer command passes
    it; this package cannot import evaluate). Required when `config.evals` is not empty.
    """
    # 1. Validate the config: every mistake a config can make fails here, before any compilation.
    config_lib.validate(config)
    workdir = resolve_paths(config, workdir)
    paths.check_writable(workdir, "--workdir")
    compilation_cache.enable(config.train.compilation_cache_dir)
    main = metrics.is_main_process()
    if main:  # a directory holding anything but a run is refused, naming what is there
        resume.claim_workdir(str(workdir), config.data.path)

    # 2. Mesh.
    mesh = sharding.make_mesh(config.mesh)
    state_lib.check_batch_split(config, mesh)
    log.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), jax.device_count(), jax.process_count())

    # 3. Data: global batch i is a function of (seed, i) alone; each process reads the rows its devices
    #    hold, so any number of processes resumes the same stream. Batches become global arrays.
    data_cfg, info = prepare_data(config, workdir)
    config = dataset_config.resolve(config, info)  # model.in_channels and data.sar_units from the manifest
    if config.evals and evaluators is None:
        raise ValueError(f"config.evals names {sorted(config.evals)}: pass evaluators=sarmae_jax.evaluate.in_loop.build "
                         "(sarmae-train does)")
    # In-loop evaluators: their labelled sets are read and checked now, before anything compiles.
    evals = evaluators(config, mesh, workdir, data_cfg.path) if evaluators is not None else None
    batch_sharding = sharding.batch_sharding(mesh)
    data_iter = pipeline.make_train_iterator(
        data_cfg, global_batch_size=config.train.batch_size, seed=config.seed,
        rows=sharding.process_batch_rows(batch_sharding, config.train.batch_size),
    )

    # 4. Model, optimiser and state shardings (the same builder as the dry run); the frozen teacher.
    parts = state_lib.build(config, mesh, epoch_size=info["epoch_size"])
    total_steps = parts.total_steps
    log.info("data %s: %d examples (%d paired), epoch %d examples = %d steps; training %d steps",
             data_cfg.path, info["num_examples"], info["num_paired"], info["epoch_size"], parts.steps_per_epoch,
             total_steps)
    teacher_params = None
    use_stored_tokens = stored_teacher_tokens(info, config)
    if use_stored_tokens:
        log.info("SARC teacher tokens come from the dataset (%s): the teacher is not run", info["teacher"]["name"])
    elif parts.modules.teacher is not None:
        teacher_params = teacher_weights.load_teacher_params(config.sarc.teacher, parts.modules.teacher,
                                                             config.model.image_size, seed=config.seed + 1)
        teacher_params = jax.device_put(teacher_params, sharding.replicated(mesh))

    # 5. State: restore the latest checkpoint (onto this mesh, whatever mesh saved it), else initialise.
    checkpoints = checkpoint.Checkpoints(workdir, keep=config.train.keep_checkpoints,
                                         keep_period=config.train.keep_period)
    meta = checkpoint.run_metadata(config, dataset=info, total_steps=total_steps)
    restored = resume.restore(checkpoints, parts.abstract_state, data_iter, meta, accept=resume_accept,
                              take_intact=resume_from_intact, workdir=str(workdir))
    if restored is not None:
        start_step, state, meta = restored
        log.info("resumed from step %d%s", start_step, "".join(
            f"; changed at step {h['step']}: {', '.join(h['changes'])}" for h in meta.get(resume.KEY, [])
            if h["step"] == start_step))
    else:
        state = parts.init_state(jax.random.key(config.seed))
        state = state.replace(params=maybe_init_from(state.params, config.train.init_from))
        start_step = 0
    log.info("parameters: %s trainable", f"{param_trees.count_params(state.params):,}")

    # 6. Compile the step: state donated, shardings explicit.
    train_step = parts.jit_step()
    # Replicated output: every process can fetch the pictures of a batch spread over all hosts.
    visualize = jax.jit(step_lib.make_visualize(parts.modules, config), out_shardings=sharding.replicated(mesh))

    # 7. Loop. A preemption notice ends it at a step boundary, with a checkpoint of that step.
    writer = metrics.MetricWriter(workdir, enabled=main, resume_step=start_step)
    progress = metrics.Progress(total_steps, start_step, enabled=main)
    step_flops, teacher_flops = flops.train_step_flops(config, mesh.shape["data"] * mesh.shape["fsdp"],
                                                       live_teacher=not use_stored_tokens)
    window = MetricWindow(config, writer, progress, step_flops, teacher_flops)
    preempted_at = None
    cache_events = compilation_cache.CacheEvents()  # the train step's compile: from the cache or not
    profiler = profiling.StepProfiler(config.train.profile, workdir, start_step, config.train.profile_all_processes)
    if evals is not None:
        evals.redo_interrupted(start_step, total_steps, state.params, writer, progress)
    with distributed.PreemptionWatch() as preemption:
        for step in range(start_step + 1, total_steps + 1):
            profiler.maybe_start(step)
            local = next(data_iter)
            if not use_stored_tokens:
                local.pop("teacher_tokens", None)
            batch = global_batch(local, batch_sharding)
            with jax.set_mesh(mesh), cache_events:
                state, step_metrics = train_step(state, batch, teacher_params)
            window.add(step_metrics)
            profiler.maybe_stop(step, step_metrics)
            if on_step is not None:
                on_step(step)
            if step == start_step + 1:  # the first step compiled: time the others without it
                jax.block_until_ready(step_metrics)
                log.info("first step (compilation included) took %.1f s: %s", time.perf_counter() - window.t_start,
                         cache_events.describe())
                window.exclude_from_timing()
            last = step == total_steps
            if preemption.should_stop(step) and not last:
                preempted_at = step
            window.maybe_write(step, force=last or preempted_at is not None)
            if evals is not None and preempted_at is None and evals.maybe_evaluate(
                    step, total_steps, state.params, writer, progress, preemption, window):
                preempted_at = step  # a notice came during the evaluation: save this step, redo it on resume
            with jax.set_mesh(mesh):
                maybe_write_images(step, config, state.params, batch, visualize, writer, workdir, force=last)
            maybe_save(checkpoints, step, state, data_iter, meta, config, writer,
                       force=last or preempted_at is not None)
            if preempted_at is not None:
                log.warning("%s: saved step %d of %d and stopping; rerun the same command to resume",
                            preemption.reason or "preemption notice", step, total_steps)
                break

    # 8. Finish: wait for the last checkpoint; a complete run exports params for evaluation and conversion.
    profiler.stop(state)
    checkpoints.close()
    progress.close()
    if preempted_at is None:
        export_dir = checkpoint.export_params(workdir / "export", state.params, meta)
        log.info("done: %d steps; params exported to %s", total_steps, export_dir)
    writer.close()
    return dict(window.last, **({"preempted_at_step": float(preempted_at)} if preempted_at is not None else {}))
