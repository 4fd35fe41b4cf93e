"""XLA compiler options per backend, for `jax.jit(..., compiler_options=...)`.

One choice lives here: the library that runs the matrix products when a program's devices are CPUs
(`config.train.cpu_gemm`). GPU and TPU programs never get these options.

  xla    - XLA:CPU's defaults (the default here): YNNPACK for most dots, Eigen for the rest (the
           weight-gradient contractions over the batch and some batched products).
  onednn - oneDNN, Intel's GEMM library (the one PyTorch's CPU backend uses). jaxlib carries it and
           XLA:CPU routes every dot to it, one dot per oneDNN call, with
               xla_cpu_use_onednn=True
               xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT
           An error if this jaxlib cannot (options unknown to it, or built without oneDNN, e.g. ARM).

Why opt-in (measured on this project's 2-core x86 sandbox, jax 0.10.2; README, "Train step"):
  - One ViT block's forward + backward at batch 8, oneDNN vs the default, 25 paired rounds in one
    process: decoder (197 tokens, width 512) 0.87x the time, encoder (50 tokens, width 768) 0.93x
    (0.85x and 0.87x with the fused variant below); the decoder's batched attention products
    [128, 197, 197] x [128, 197, 32] alone ran 2x faster.
  - The whole ViT-B/16 MAE+SARC step: a paired median of 0.97-0.98x over 20 rounds, within this
    machine's noise; the same losses to 5 decimals.
  - The option is experimental in XLA. The fused variant (LIBRARY_FUSION_TYPE_DOT) pulls elementwise
    producers into the oneDNN call, and for the softmax-normalised product of inference attention
    oneDNN then fails to compile its partition at run time and the process dies with SIGILL
    ("partition compile failed"). The individual-dot variant used here runs that program (tested).
  - Programs holding oneDNN calls cannot be written to JAX's persistent compilation cache in this
    jaxlib (a warning at compile time; they compile afresh in each process).
"""
from __future__ import annotations

import functools
from typing import Iterable

import jax
import jax.numpy as jnp

CPU_GEMMS = ("xla", "onednn")
ONEDNN_DOTS = {
    "xla_cpu_use_onednn": True,
    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}
_ONEDNN_MARK = "__onednn_fusion"  # the fusion kind of a dot that XLA:CPU hands to oneDNN


@functools.cache
def onednn_dots_available() -> bool:
    """Whether this jaxlib's XLA:CPU accepts `ONEDNN_DOTS` and hands a probe dot to oneDNN.

    Compiles (never runs) a 16x16 matmul for the first CPU device; cached for the process.
    """
    cpu = jax.devices("cpu")[0]
    x = jax.ShapeDtypeStruct((16, 16), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(cpu))
    try:
        text = jax.jit(jnp.matmul, compiler_options=ONEDNN_DOTS).lower(x, x).compile().as_text()
    except jax.errors.JaxRuntimeError:  # "No such compile option" / "not a valid enum value"
        return False
    return _ONEDNN_MARK in text


def for_devices(devices: Iterable[jax.Device], cpu_gemm: str = "xla") -> dict:
    """The `compiler_options` for a program that runs on `devices`, given `config.train.cpu_gemm`:
    {} unless the devices are all CPUs and `cpu_gemm` is "onednn"."""
    if cpu_gemm not in CPU_GEMMS:
        raise ValueError(f"config.train.cpu_gemm={cpu_gemm!r}: expected one of {list(CPU_GEMMS)}")
    devices = list(devices)
    if cpu_gemm == "xla" or not devices or any(d.platform != "cpu" for d in devices):
        return {}
    if not onednn_dots_available():
        raise ValueError(
            f"config.train.cpu_gemm='onednn': this jaxlib (jax {jax.__version__}) does not hand dots to oneDNN (the "
            "options are unknown to it, or it was built without oneDNN); use 'xla'")
    return dict(ONEDNN_DOTS)
