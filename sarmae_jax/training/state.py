"""The train state and the one builder of a train step's parts.

`build(config, mesh, total_steps=..., steps_per_epoch=...)` makes everything a run, the dry run, the
benchmarks and the tests need to compile the step: modules, schedule, optimiser, the abstract state
with its shardings, and the jitted step. Nothing here reads weights or data.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sarmae_jax.models import sarmae
from sarmae_jax.runtime import sharding
from sarmae_jax.training import dataset_config, optim
from sarmae_jax.training.step import make_train_step


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of updates attempted (skipped ones included)
    params: Any
    opt_state: Any
    skipped: jax.Array  # int32 scalar: updates skipped so far because the loss or gradient was not finite
    skipped_in_a_row: jax.Array  # int32 scalar: consecutive skipped updates up to now


def init_train_state(modules: sarmae.Modules, tx: optax.GradientTransformation, config, key: jax.Array) -> TrainState:
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
        opt_state=sharding.optimizer_shardings(tx, abstract_params, param_shardings, mesh,
                                               shard_over_data=bool(config.optim.get("shard_over_data", True))),
        skipped=scalar, skipped_in_a_row=scalar,
    )
    abstract = jax.eval_shape(lambda k: init_train_state(modules, tx, config, k), jax.random.key(0))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return abstract, shardings


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


@dataclasses.dataclass(frozen=True)
class TrainParts:
    """What compiling and running the train step needs, built once from a config and a mesh."""

    config: Any
    mesh: jax.sharding.Mesh
    modules: sarmae.Modules
    schedule: optax.Schedule
    tx: optax.GradientTransformation
    abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
    shardings: TrainState
    total_steps: int
    steps_per_epoch: int

    def init_state(self, key: jax.Array) -> TrainState:
        """A fresh state, initialised directly into its shardings."""
        with jax.set_mesh(self.mesh):
            init = jax.jit(functools.partial(init_train_state, self.modules, self.tx, self.config),
                           out_shardings=self.shardings)
            return init(key)

    def step_fn(self) -> Callable:
        """The pure train step `(state, batch, teacher_params) -> (state, metrics)`, not yet jitted."""
        return make_train_step(self.modules, self.tx, self.config, self.schedule,
                               batch_shards=self.mesh.shape["data"] * self.mesh.shape["fsdp"])

    def jit_step(self) -> Callable:
        """The train step jitted for the mesh: state donated, shardings explicit (state, batch over
        data x fsdp, teacher replicated). Training and the dry run compile this same program."""
        return jax.jit(
            self.step_fn(),
            in_shardings=(self.shardings, sharding.batch_sharding(self.mesh), sharding.replicated(self.mesh)),
            out_shardings=(self.shardings, sharding.replicated(self.mesh)),
            donate_argnums=(0,),
        )

    def abstract_batch(self, sar_dtype: str = "uint8") -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes, dtypes and shardings of one global batch (the batch contract of docs/architecture.md)."""
        b, s = self.config.train.batch_size, self.config.model.image_size
        spec = sharding.batch_sharding(self.mesh)
        return {
            "sar": jax.ShapeDtypeStruct((b, s, s, dataset_config.data_channels(self.config)), np.dtype(sar_dtype),
                                        sharding=spec),
            "optical": jax.ShapeDtypeStruct((b, s, s, 3), np.uint8, sharding=spec),
            "is_paired": jax.ShapeDtypeStruct((b,), np.bool_, sharding=spec),
        }

    def abstract_teacher_params(self):
        """The frozen teacher's parameter shapes (replicated); None without SARC. No weights are read."""
        teacher = self.modules.teacher
        if teacher is None:
            return None
        s = self.config.model.image_size
        shapes = jax.eval_shape(lambda: nn.unbox(teacher.init(jax.random.key(0), jnp.zeros((1, s, s, 3)))["params"]))
        replicated = sharding.replicated(self.mesh)
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), shapes)


def run_length(config, epoch_size: int) -> tuple[int, int]:
    """(total steps, steps per epoch) from `train.num_steps` or `train.num_epochs`; `epoch_size` in examples."""
    steps_per_epoch = max(epoch_size // config.train.batch_size, 1)
    if config.train.num_steps is not None:
        return int(config.train.num_steps), steps_per_epoch
    return int(math.ceil(config.train.num_epochs * steps_per_epoch)), steps_per_epoch


def build(config, mesh: jax.sharding.Mesh, *, epoch_size: int) -> TrainParts:
    """Modules, warm-up + cosine schedule over the run's length, AdamW, and the state's shardings on `mesh`.

    `epoch_size`: examples per epoch of the dataset (`pipeline.dataset_info(...)["epoch_size"]`), which
    turns `train.num_epochs` and `optim.warmup_epochs` into steps.
    """
    check_batch_split(config, mesh)
    total_steps, steps_per_epoch = run_length(config, epoch_size)
    modules = sarmae.build(config)
    schedule = optim.make_schedule(config.optim, global_batch=config.train.batch_size, total_steps=total_steps,
                                   steps_per_epoch=steps_per_epoch)
    tx = optim.make_optimizer(config.optim, schedule)
    abstract_state, shardings = state_shardings(modules, tx, config, mesh)
    return TrainParts(config, mesh, modules, schedule, tx, abstract_state, shardings, total_steps, steps_per_epoch)
