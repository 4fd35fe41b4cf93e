"""SARMAE pre-training: config -> mesh -> data -> model -> state -> jitted step -> loop -> checkpoint.

`train_and_evaluate(config, workdir)` reads top to bottom in numbered sections; helpers named
`maybe_*` keep the loop flat. The math lives in `objective.py`; this file is orchestration.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sarmae_jax import (checkpoint, compiler_options, config as config_lib, data, distributed, flops, metrics, objective,
                        optim, preprocess, sharding)
from sarmae_jax.models import mae, sarmae, teachers, vit

log = logging.getLogger("sarmae_jax")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of updates attempted (skipped ones included)
    params: Any
    opt_state: Any
    skipped: jax.Array  # int32 scalar: updates skipped so far because the loss or gradient was not finite
    skipped_in_a_row: jax.Array  # int32 scalar: consecutive skipped updates up to now


# ------------------------------------------------------------------------------------------ step
def step_keys(seed: int, step: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(speckle, masking, drop-path) keys for `step`: a run is reproducible from its config alone."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    k_noise, k_mask, k_drop = jax.random.split(key, 3)
    return k_noise, k_mask, k_drop


def micro_batches(tree: Any, num: int) -> Any:
    """`[B, ...]` leaves -> `[num, B / num, ...]`, micro-batch j holding rows j, j + num, j + 2 num, ...

    Strided, not contiguous: with the batch split over devices along its first axis, every micro-batch
    then keeps an equal share on every device (a contiguous slice would sit on a few devices only).
    """
    def split(x):
        return jnp.swapaxes(x.reshape(x.shape[0] // num, num, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, tree)


def weighted_loss(aux: dict[str, jax.Array], mae_share: jax.Array, align_share: jax.Array, config) -> jax.Array:
    """A micro-batch's part of the full-batch loss.

    The MAE term is a mean over masked patches and the alignment term a mean over paired samples, so a
    micro-batch's means count `mae_share` (its masked patches / the batch's) and `align_share` (its
    paired samples / the batch's); the parts then sum to the full-batch loss, and so do their gradients.
    With one micro-batch both shares are 1 (or the alignment term is 0) and this is `aux["loss"]`.
    """
    loss = config.loss.mae_weight * aux["loss_mae"] * mae_share
    if "loss_align" in aux:
        loss = loss + config.sarc.weight * aux["loss_align"] * align_share
    return loss


def make_train_step(modules: sarmae.Modules, tx: optax.GradientTransformation, config, schedule):
    """`(state, batch, teacher_params) -> (state, metrics)`; pure, to be jitted with shardings.

    Activation sharding annotations in the model are resolved by `config.mesh.rules` at trace time.
    With `train.grad_accum_steps = A > 1` the batch runs as A micro-batches in a `lax.scan`; speckle and
    masks are drawn for the whole batch first and sliced, so the update equals the full-batch one up
    to float rounding (drop-path, off for MAE pre-training, draws per micro-batch instead).
    """
    # The update hands the clip its gradient norm (`global_norm=`); a transformation that takes no
    # extra arguments is wrapped to ignore it.
    tx = optax.with_extra_args_support(tx)
    uses_drop_path = config.model.drop_path_rate > 0
    rules = sharding.rules_from_config(config.mesh.rules)
    accum = config.train.grad_accum_steps
    m = config.model
    num_patches = (m.image_size // m.patch_size) ** 2

    def train_step(state: TrainState, batch: dict[str, jax.Array], teacher_params: Any):
        with nn.logical_axis_rules(rules):
            return _train_step(state, batch, teacher_params)

    def micro_loss(params, teacher_params, micro, shares, drop_key):
        inputs, masking, is_paired = micro
        loss, aux = objective.forward(params, teacher_params, inputs, is_paired, None, modules, config,
                                      drop_key=drop_key, masking=masking)
        aux = {k: v for k, v in aux.items() if k not in ("pred", "mask")}
        return weighted_loss(aux, *shares, config), aux

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def loss_and_grads(params, teacher_params, inputs, masking, is_paired, k_drop):
        drop = k_drop if uses_drop_path else None
        total_masked = jnp.sum(masking.mask)
        total_paired = jnp.sum(is_paired.astype(jnp.float32))
        if accum == 1:
            shares = (jnp.ones(()), jnp.ones(()))
            (loss, aux), grads = grad_fn(params, teacher_params, (inputs, masking, is_paired), shares, drop)
            return loss, aux, grads

        def body(carry, xs):
            grads_sum, loss_sum, terms_sum = carry
            index, micro = xs
            _, micro_masking, micro_paired = micro
            shares = (jnp.sum(micro_masking.mask) / total_masked,
                      jnp.sum(micro_paired.astype(jnp.float32)) / jnp.maximum(total_paired, 1.0))
            drop_key = jax.random.fold_in(drop, index) if drop is not None else None
            (loss, aux), grads = grad_fn(params, teacher_params, micro, shares, drop_key)
            terms = {"loss_mae": aux["loss_mae"] * shares[0]}
            if "loss_align" in aux:
                terms["loss_align"] = aux["loss_align"] * shares[1]
            return (jax.tree.map(jnp.add, grads_sum, grads), loss_sum + loss,
                    jax.tree.map(jnp.add, terms_sum, terms)), aux

        zeros = jax.tree.map(jnp.zeros_like, params)
        terms0 = {"loss_mae": jnp.zeros(())}
        if modules.anchor_head is not None:
            terms0["loss_align"] = jnp.zeros(())
        xs = (jnp.arange(accum), micro_batches((inputs, masking, is_paired), accum))
        (grads, loss, terms), per_micro = jax.lax.scan(body, (zeros, jnp.zeros(()), terms0), xs)
        aux = jax.tree.map(lambda v: jnp.mean(v, axis=0), per_micro)  # other diagnostics: micro-batch means
        aux.update(terms, loss=loss)
        if "paired_fraction" in aux:
            aux["paired_fraction"] = total_paired / is_paired.shape[0]
        return loss, aux, grads

    def _train_step(state: TrainState, batch: dict[str, jax.Array], teacher_params: Any):
        k_noise, k_mask, k_drop = step_keys(config.seed, state.step)
        inputs = objective.prepare_inputs(batch, k_noise, config)
        masking = mae.random_masking(k_mask, batch["sar"].shape[0], num_patches, m.mask_ratio)
        loss, aux, grads = loss_and_grads(state.params, teacher_params, inputs, masking, batch["is_paired"], k_drop)
        grad_norm = optax.tree.norm(grads)
        # A non-finite loss or gradient must not poison the parameters: keep the old state, count it.
        # A `cond`, not a per-leaf `where`: the update runs only when it is kept, and a `where` would
        # read and write params and moments once more (+60% optimizer time on CPU, memory-bound).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply_update(operands):
            params, opt_state, grads, grad_norm = operands
            # The clip (optim.clip_by_global_norm) reuses this norm rather than reading the gradients again.
            updates, opt_state = tx.update(grads, opt_state, params, global_norm=grad_norm)
            return optax.apply_updates(params, updates), opt_state

        new_params, new_opt_state = jax.lax.cond(
            finite, apply_update, lambda operands: operands[:2], (state.params, state.opt_state, grads, grad_norm))
        new_state = TrainState(
            step=state.step + 1,
            params=new_params,
            opt_state=new_opt_state,
            skipped=state.skipped + (~finite).astype(jnp.int32),
            skipped_in_a_row=jnp.where(finite, 0, state.skipped_in_a_row + 1),
        )
        out = dict(aux)
        out.update(grad_norm=grad_norm, lr=schedule(state.step), step_finite=finite.astype(jnp.float32),
                   skipped_in_a_row=new_state.skipped_in_a_row,
                   speckled_fraction=jnp.mean(inputs["speckled"].astype(jnp.float32)))
        return new_state, out

    return train_step


PICTURE_COLUMNS = ("clean", "speckled input", "visible to encoder", "reconstruction", "reconstruction + visible")


def make_visualize(modules: sarmae.Modules, config):
    """`(params, batch, step) -> tuple of [B, H, W, 1] images in [0, 1]`, one per `PICTURE_COLUMNS` entry:
    what the step at `step` saw and made.

    Same keys as the train step, so the picture shows that step's speckle and mask.
    """
    m = config.model

    def visualize(params, batch, step):
        k_noise, k_mask, _ = step_keys(config.seed, step)
        inputs = objective.prepare_inputs(batch, k_noise, config)
        b = inputs["noisy"].shape[0]
        n = (m.image_size // m.patch_size) ** 2
        masking = mae.random_masking(k_mask, b, n, m.mask_ratio)
        latent = modules.encoder.apply({"params": params["encoder"]}, inputs["noisy"], masking.ids_keep)
        pred = modules.decoder.apply({"params": params["decoder"]}, latent, masking.ids_restore)
        pixels = m.patch_size**2 * m.in_channels
        masked = vit.unpatchify(jnp.repeat(masking.mask[:, :, None], pixels, axis=2), m.patch_size, m.in_channels)
        masked = masked[..., :1]  # [B, H, W, 1], 1 where the patch was hidden
        noisy = preprocess.denormalize_sar(inputs["noisy"])
        recon = preprocess.denormalize_sar(vit.unpatchify(pred, m.patch_size, m.in_channels))
        return (  # a tuple: pytrees sort dict keys, and the column order matters to a reader
            preprocess.denormalize_sar(inputs["clean"]),
            noisy,
            noisy * (1 - masked) + 0.5 * masked,  # hidden patches grey
            recon,
            recon * masked + noisy * (1 - masked),
        )

    return visualize


# ------------------------------------------------------------------------------- state building
def init_train_state(modules, tx, config, key) -> TrainState:
    params = nn.unbox(sarmae.init_params(modules, config, key))
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=tx.init(params), skipped=zero, skipped_in_a_row=zero)


def state_shardings(modules, tx, config, mesh) -> tuple[TrainState, TrainState]:
    """(abstract state, shardings): parameters by logical-axis rules, Adam moments like their parameters."""
    rules = sharding.rules_from_config(config.mesh.rules)
    boxed = jax.eval_shape(functools.partial(sarmae.init_params, modules, config), jax.random.key(0))
    param_shardings = sharding.logical_shardings(boxed, mesh, rules)
    abstract_params = nn.unbox(boxed)
    scalar = sharding.replicated(mesh)
    shardings = TrainState(
        step=scalar, params=param_shardings,
        opt_state=sharding.optimizer_shardings(tx, abstract_params, param_shardings, mesh),
        skipped=scalar, skipped_in_a_row=scalar,
    )
    abstract = jax.eval_shape(lambda k: init_train_state(modules, tx, config, k), jax.random.key(0))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return abstract, shardings


def jit_train_step(modules, tx, config, schedule, mesh, shardings: TrainState):
    """The train step jitted for `mesh`: state donated, shardings explicit (state, batch over data x fsdp,
    teacher replicated); on CPUs the matmul library of `config.train.cpu_gemm` (compiler_options.py). Used by
    training and by the dry run, so both compile the same program."""
    return jax.jit(
        make_train_step(modules, tx, config, schedule),
        in_shardings=(shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
        out_shardings=(shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
        compiler_options=compiler_options.for_devices(mesh.devices.flat, config.train.cpu_gemm),
    )


def abstract_batch(config, mesh, sar_dtype: str = "uint8") -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes, dtypes and shardings of one global batch (the batch contract of docs/architecture.md)."""
    b, s = config.train.batch_size, config.model.image_size
    spec = sharding.batch_sharding(mesh)
    return {
        "sar": jax.ShapeDtypeStruct((b, s, s, 1), np.dtype(sar_dtype), sharding=spec),
        "optical": jax.ShapeDtypeStruct((b, s, s, 3), np.uint8, sharding=spec),
        "is_paired": jax.ShapeDtypeStruct((b,), np.bool_, sharding=spec),
    }


def abstract_teacher_params(modules, config, mesh):
    """The frozen teacher's parameter shapes (replicated); None without SARC. No weights are read."""
    if modules.teacher is None:
        return None
    s = config.model.image_size
    shapes = jax.eval_shape(lambda: nn.unbox(modules.teacher.init(jax.random.key(0), jnp.zeros((1, s, s, 3)))["params"]))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding.replicated(mesh)), shapes)


def check_batch_split(config, mesh) -> None:
    """The global batch, and each micro-batch, must split evenly over processes and data x fsdp devices."""
    t = config.train
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = t.batch_size // t.grad_accum_steps
    if t.batch_size % jax.process_count():
        raise ValueError(f"config.train.batch_size={t.batch_size}: must be divisible by the "
                         f"{jax.process_count()} processes")
    if micro % shards:
        raise ValueError(
            f"config.train.batch_size={t.batch_size} / train.grad_accum_steps={t.grad_accum_steps} = {micro} "
            f"examples per micro-batch: must be divisible by the data x fsdp = {shards} batch shards of mesh "
            f"{dict(mesh.shape)}")


def maybe_init_from(params: dict, path: str) -> dict:
    """Replace whole parts (`encoder`, `decoder`, `anchor_head`) by those of a params-only export.

    Each part present in the export must match the model exactly (names and shapes); parts the export
    lacks keep their fresh initialisation, and the log says which is which.
    """
    if not path:
        return params
    loaded, _ = checkpoint.load_export(path)
    unknown = sorted(set(loaded) - set(params))
    if unknown:
        raise ValueError(f"{path}: parts {unknown} are not in this model (model parts: {sorted(params)})")
    out = dict(params)
    for part, value in loaded.items():
        teachers.check_tree_matches(value, params[part], what=f"{path} part {part!r}")
        out[part] = jax.tree.map(lambda new, old: jax.device_put(jnp.asarray(new, old.dtype), old.sharding), value, params[part])
    log.info("initialised %s from %s; fresh: %s", sorted(loaded), path, sorted(set(params) - set(loaded)) or "none")
    return out


# ------------------------------------------------------------------------------------------ data
def prepare_data(config, workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
    """The data config with a dataset path (`data.prepare`), and the dataset's facts.

    With `data.path=None` the embedded synthetic SAR set is generated into `workdir/data` by process 0
    (or reused when one with the same parameters is there); the other processes wait, then read it.
    """
    if metrics.is_main_process():
        data_cfg = data.prepare(config.data, config.model, workdir)
    _sync_processes("synthetic dataset")
    if not metrics.is_main_process():
        data_cfg = data.prepare(config.data, config.model, workdir)
    return data_cfg, data.dataset_info(data_cfg)


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------------------------ run length
def run_length(config, num_examples_per_epoch: int) -> tuple[int, int]:
    """(total steps, steps per epoch) from `train.num_steps` or `train.num_epochs`."""
    steps_per_epoch = max(num_examples_per_epoch // config.train.batch_size, 1)
    if config.train.num_steps is not None:
        return int(config.train.num_steps), steps_per_epoch
    return int(math.ceil(config.train.num_epochs * steps_per_epoch)), steps_per_epoch


# ------------------------------------------------------------------------------------ loop helpers
class MetricWindow:
    """Step metrics stay on device until a log step (no host sync per step), then are averaged and written.

    Step time covers everything between log steps, data waiting included: it is what a user pays.
    Throughput: images/s (global and per device), model TFLOP/s per device (analytic FLOPs, flops.py)
    and MFU = that / the device's dense bf16 peak (`flops.PEAK_TFLOPS`, or train.peak_tflops_per_device).
    """

    def __init__(self, config, writer, progress, flops_per_step: float):
        self.every = config.train.log_every
        self.max_in_a_row = config.train.max_consecutive_skips
        self.images_per_step = config.train.batch_size
        self.flops_per_step = flops_per_step
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
        return out

    def maybe_write(self, step: int, force: bool = False) -> None:
        if not self.pending or not (force or step % self.every == 0):
            return
        fetched = jax.device_get(self.pending)
        timed = len(fetched) - self.untimed
        skipped = sum(1 for m in fetched if not m["step_finite"])
        if skipped:
            log.warning("steps %d-%d: %d update(s) skipped for a non-finite loss or gradient",
                        step - len(fetched) + 1, step, skipped)
        in_a_row = int(fetched[-1]["skipped_in_a_row"])
        if in_a_row >= self.max_in_a_row:
            raise FloatingPointError(
                f"{in_a_row} consecutive steps up to step {step} had a non-finite loss or gradient (last loss "
                f"{float(fetched[-1]['loss'])}); stopping (train.max_consecutive_skips={self.max_in_a_row}). "
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
    columns = {name: np.asarray(v)[:n] for name, v in zip(PICTURE_COLUMNS, pictures)}
    grid = metrics.image_grid(columns)
    path = os.path.join(workdir, "images", f"step_{step:07d}.png")
    metrics.save_png(path, grid, description=" | ".join(columns))
    writer.write_image(step, "reconstructions", grid)
    log.info("wrote %s (columns: %s)", path, " | ".join(columns))


def maybe_save(checkpoints: checkpoint.Checkpoints, step, state, data_iter, meta, config, force=False) -> None:
    if force or step % config.train.checkpoint_every == 0:
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
                       on_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """Pre-train from `config`, writing metrics, images and checkpoints to `workdir`. Returns final metrics.

    Stops early, after saving a checkpoint, on SIGTERM or a JAX preemption notice (the returned
    metrics then hold `preempted_at_step`); a later call with the same workdir resumes exactly.
    `on_step(step)` is called after each step is dispatched (profiling hooks, tests).
    """
    # 1. Validate the config: every mistake a config can make fails here, before any compilation.
    config_lib.validate(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    main = metrics.is_main_process()

    # 2. Mesh.
    mesh = sharding.make_mesh(config.mesh)
    check_batch_split(config, mesh)
    log.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), jax.device_count(), jax.process_count())

    # 3. Data: each process reads its share; batches become global arrays split over data x fsdp.
    data_cfg, info = prepare_data(config, workdir)
    data_iter = data.make_train_iterator(
        data_cfg, global_batch_size=config.train.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    batch_sharding = sharding.batch_sharding(mesh)
    total_steps, steps_per_epoch = run_length(config, info["epoch_size"])
    log.info("data %s: %d examples (%d paired), epoch %d examples = %d steps; training %d steps",
             data_cfg.path, info["num_examples"], info["num_paired"], info["epoch_size"], steps_per_epoch, total_steps)

    # 4. Model, frozen teacher and optimiser.
    modules = sarmae.build(config)
    schedule = optim.make_schedule(config.optim, global_batch=config.train.batch_size, total_steps=total_steps,
                                   steps_per_epoch=steps_per_epoch)
    tx = optim.make_optimizer(config.optim, schedule)
    teacher_params = None
    use_stored_tokens = stored_teacher_tokens(info, config)
    if use_stored_tokens:
        log.info("SARC teacher tokens come from the dataset (%s): the teacher is not run", info["teacher"]["name"])
    elif modules.teacher is not None:
        teacher_params = teachers.load_teacher_params(config.sarc.teacher, modules.teacher, config.model.image_size,
                                                      seed=config.seed + 1)
        teacher_params = jax.device_put(teacher_params, sharding.replicated(mesh))

    # 5. State: restore the latest checkpoint (onto this mesh, whatever mesh saved it), else initialise.
    abstract_state, shardings = state_shardings(modules, tx, config, mesh)
    checkpoints = checkpoint.Checkpoints(workdir, keep=config.train.keep_checkpoints,
                                         keep_period=config.train.keep_period)
    restored = checkpoints.restore_latest(abstract_state, data_iter)
    if restored is not None:
        start_step, state = restored
        log.info("resumed from step %d", start_step)
    else:
        with jax.set_mesh(mesh):
            init = jax.jit(functools.partial(init_train_state, modules, tx, config), out_shardings=shardings)
            state = init(jax.random.key(config.seed))
        state = state.replace(params=maybe_init_from(state.params, config.train.init_from))
        start_step = 0
    log.info("parameters: %s trainable", f"{sarmae.count_params(state.params):,}")
    meta = checkpoint.run_metadata(config, dataset=info, total_steps=total_steps)

    # 6. Compile the step: state donated, shardings explicit.
    train_step = jit_train_step(modules, tx, config, schedule, mesh, shardings)
    # Replicated output: every process can fetch the pictures of a batch spread over all hosts.
    visualize = jax.jit(make_visualize(modules, config), out_shardings=sharding.replicated(mesh),
                        compiler_options=compiler_options.for_devices(mesh.devices.flat, config.train.cpu_gemm))

    # 7. Loop. A preemption notice ends it at a step boundary, with a checkpoint of that step.
    writer = metrics.MetricWriter(workdir, enabled=main)
    progress = metrics.Progress(total_steps, start_step, enabled=main)
    window = MetricWindow(config, writer, progress, flops.train_step_flops_per_image(config) * config.train.batch_size)
    preempted_at = None
    with distributed.PreemptionWatch() as preemption:
        for step in range(start_step + 1, total_steps + 1):
            local = next(data_iter)
            if not use_stored_tokens:
                local.pop("teacher_tokens", None)
            batch = global_batch(local, batch_sharding)
            with jax.set_mesh(mesh):
                state, step_metrics = train_step(state, batch, teacher_params)
            window.add(step_metrics)
            if on_step is not None:
                on_step(step)
            if step == start_step + 1:  # the first step compiled: time the others without it
                jax.block_until_ready(step_metrics)
                log.info("first step (compilation included) took %.1f s", time.perf_counter() - window.t_start)
                window.exclude_from_timing()
            last = step == total_steps
            if preemption.should_stop(step) and not last:
                preempted_at = step
            window.maybe_write(step, force=last or preempted_at is not None)
            with jax.set_mesh(mesh):
                maybe_write_images(step, config, state.params, batch, visualize, writer, workdir, force=last)
            maybe_save(checkpoints, step, state, data_iter, meta, config, force=last or preempted_at is not None)
            if preempted_at is not None:
                log.warning("preemption notice: saved step %d of %d and stopping; rerun the same command to "
                            "resume", step, total_steps)
                break

    # 8. Finish: wait for the last checkpoint; a complete run exports params for evaluation and conversion.
    checkpoints.close()
    progress.close()
    if preempted_at is None:
        export_dir = checkpoint.export_params(os.path.join(workdir, "export"), state.params, meta)
        log.info("done: %d steps; params exported to %s", total_steps, export_dir)
    writer.close()
    return dict(window.last, **({"preempted_at_step": float(preempted_at)} if preempted_at is not None else {}))
