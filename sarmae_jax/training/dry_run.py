"""`sarmae-train --dry_run`: compile the train step for the configured mesh, ahead of time, and report
per-device memory and FLOPs, without initialising parameters, loading weights or reading data.

Everything is abstract: the state, the batch and the frozen teacher are `jax.ShapeDtypeStruct`s with
their shardings, so `jax.jit(step).lower(...).compile()` produces the very program a run would execute
(same mesh, rules, dtype, remat, micro-batching) and XLA's own memory and cost analyses of it. A config
that would not fit, or not shard, fails here on a laptop with fake devices instead of on a booked pod:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 sarmae-train --config configs/sarmae_vit_b16.py \
        --config.sarc.teacher.checkpoint=random-init --config.train.batch_size=64 --dry_run
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from data_pipelines import synthetic as synthetic_set
from sarmae_jax import config as config_lib
from sarmae_jax.data import pipeline
from sarmae_jax.models import param_trees, patches
from sarmae_jax.models.teachers import RANDOM_INIT
from sarmae_jax.runtime import sharding
from sarmae_jax.training import flops, loop
from sarmae_jax.training import state as state_lib

GiB = 1024**3


def data_spec(config) -> tuple[str, int, bool]:
    """(SAR pixel dtype, examples per epoch, whether the dataset's stored teacher tokens replace the teacher)
    from the dataset's manifest only, or the synthetic set's config."""
    if config.data.path is None:
        synthetic = config.data.synthetic
        paired = synthetic_set.num_paired(synthetic.num_examples, synthetic.paired_fraction)
        return synthetic.sar_dtype, pipeline.epoch_size(synthetic.num_examples, paired, config.data.paired_share), False
    info = pipeline.dataset_info(config.data)
    return info["sar_dtype"], info["epoch_size"], loop.stored_teacher_tokens(info, config)


@dataclasses.dataclass
class LoweredStep:
    """The train step lowered for a mesh, with the abstract arguments it was lowered for."""

    lowered: Any  # jax.stages.Lowered
    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    abstract_state: Any  # TrainState of ShapeDtypeStructs carrying their shardings
    abstract_batch: dict[str, jax.ShapeDtypeStruct]
    abstract_teacher: Any  # the frozen teacher's parameters; None with precomputed tokens or without SARC
    teacher_tokens: bool  # the batch carries precomputed teacher tokens instead


def without_teacher_weights(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A dry run reads no weights: a config without a teacher checkpoint compiles as with one."""
    if not config.sarc.enabled or config.sarc.teacher.checkpoint:
        return config
    out = ml_collections.ConfigDict(config.to_dict())
    out.sarc.teacher.checkpoint = RANDOM_INIT
    return out


def lower_train_step(config: ml_collections.ConfigDict, devices=None, *,
                     teacher_tokens: bool | None = None) -> LoweredStep:
    """Lower the train step for `config.mesh` over `devices` (default: all), from abstract shapes only.

    `teacher_tokens`: None follows the dataset (its stored teacher tokens replace the live teacher, as in a
    run); True puts `teacher_tokens [B, N, Dt] float16` in the batch and runs no teacher; False runs it.
    """
    config = without_teacher_weights(config)
    config_lib.validate(config)
    mesh = sharding.make_mesh(config.mesh, devices)
    sar_dtype, epoch_size, stored = data_spec(config)
    teacher_tokens = bool(config.sarc.enabled and (stored if teacher_tokens is None else teacher_tokens))
    parts = state_lib.build(config, mesh, epoch_size=epoch_size)
    batch = parts.abstract_batch(sar_dtype)
    teacher = None
    if teacher_tokens:
        n = patches.num_patches(config.model.image_size, config.model.patch_size)
        batch["teacher_tokens"] = jax.ShapeDtypeStruct((config.train.batch_size, n, parts.modules.teacher_width),
                                                       np.float16, sharding=sharding.batch_sharding(mesh))
    else:
        teacher = parts.abstract_teacher_params()
    with jax.set_mesh(mesh):
        lowered = parts.jit_step().lower(parts.abstract_state, batch, teacher)
    return LoweredStep(lowered, config, mesh, parts.abstract_state, batch, teacher, teacher_tokens)


def compile_train_step(config: ml_collections.ConfigDict, devices=None) -> dict[str, Any]:
    """Lower and compile the train step for `config.mesh` over `devices` (default: all). Returns a report:
    mesh, batch split, compile seconds, XLA memory analysis (bytes per device) and FLOPs (analytic and XLA's)."""
    step = lower_train_step(config, devices)
    config, mesh, abstract_state = step.config, step.mesh, step.abstract_state
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = step.lowered.compile()
    compile_s = time.perf_counter() - start

    num_devices = mesh.devices.size
    device = mesh.devices.flat[0]
    analytic = flops.train_step_flops_per_image(config, live_teacher=not step.teacher_tokens) * config.train.batch_size
    report: dict[str, Any] = {
        "mesh": dict(mesh.shape),
        "device_kind": device.device_kind,
        "num_devices": num_devices,
        "global_batch": config.train.batch_size,
        "grad_accum_steps": config.train.grad_accum_steps,
        "examples_per_device_per_micro_batch": config.train.batch_size // config.train.grad_accum_steps
        // (mesh.shape["data"] * mesh.shape["fsdp"]),
        "dtype": config.model.dtype,
        "remat": config.model.remat,
        "parameters": param_trees.count_params(abstract_state.params),
        "compile_seconds": compile_s,
        "analytic_flops_per_step": analytic,
        "analytic_flops_per_device": analytic / num_devices,
        "xla_flops_per_device": _xla_flops(compiled),
        "memory": _memory(compiled),
        "device_memory_bytes": _device_memory(device),
    }
    peak = flops.peak_tflops_per_device(device.device_kind, config.train.peak_tflops_per_device)
    if peak:
        # The fastest this step could run: all of the device's peak on the analytic FLOPs.
        report["min_step_seconds_at_peak"] = analytic / num_devices / (peak * 1e12)
    return report


def _xla_flops(compiled) -> float | None:
    costs = compiled.cost_analysis()
    if isinstance(costs, (list, tuple)):  # older JAX: one dict per computation
        costs = costs[0] if costs else None
    value = (costs or {}).get("flops")
    return float(value) if value is not None and value >= 0 else None


def _memory(compiled) -> dict[str, int] | None:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes")
    out = {f.replace("_size_in_bytes", ""): int(getattr(analysis, f)) for f in fields}
    # Donated state aliases its output: count it once. Live at the peak: inputs, new outputs, temporaries.
    out["peak_estimate"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def _device_memory(device) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - CPU and some plugins have no memory stats
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def format_report(r: dict[str, Any]) -> str:
    """Human-readable lines for the console."""
    gib = lambda b: f"{b / GiB:.2f} GiB"
    lines = [
        f"dry run: mesh {r['mesh']} over {r['num_devices']} x {r['device_kind']}; global batch {r['global_batch']} "
        f"in {r['grad_accum_steps']} micro-batch(es), {r['examples_per_device_per_micro_batch']} examples per device "
        f"per micro-batch; compute {r['dtype']}, remat {r['remat']}; {r['parameters']:,} trainable parameters",
        f"compiled in {r['compile_seconds']:.1f} s",
    ]
    mem = r["memory"]
    if mem is None:
        lines.append("memory: this backend gives no memory analysis")
    else:
        lines.append(
            f"memory per device (XLA): arguments {gib(mem['argument'])} (donated {gib(mem['alias'])}), "
            f"outputs {gib(mem['output'])}, temporaries {gib(mem['temp'])}, code {gib(mem['generated_code'])}; "
            f"peak about {gib(mem['peak_estimate'])}")
        if r["device_memory_bytes"]:
            fits = mem["peak_estimate"] <= r["device_memory_bytes"]
            lines.append(f"device memory {gib(r['device_memory_bytes'])}: "
                         + ("fits" if fits else "DOES NOT FIT - lower the batch, add remat, fsdp or micro-batches"))
    xla = r["xla_flops_per_device"]
    lines.append(
        f"FLOPs per step: analytic {_si(r['analytic_flops_per_step'])} ({_si(r['analytic_flops_per_device'])} per "
        "device); XLA cost analysis " + (f"{_si(xla)} per device" if xla is not None else "not available"))
    if "min_step_seconds_at_peak" in r:
        lines.append(f"at the device's peak this step would take at least {r['min_step_seconds_at_peak'] * 1e3:.1f} ms")
    return "\n".join(lines)


def _si(flop: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if flop >= scale:
            return f"{flop / scale:.2f} {unit}"
    return f"{flop / 1e6:.2f} MFLOP"
