"""glibc malloc settings that let XLA:CPU reuse its scratch memory from one step to the next.

Why. XLA:CPU allocates an executable's temporary buffer afresh for every call (1.4 GB for the ViT-B/16
train step at batch 8), from one of its worker threads. glibc serves a block that large from a
worker thread with a fresh `mmap` and gives it back with `munmap` when the call ends, so every step
touches all of it as new pages: on the 2-core benchmark machine, 350,000 page faults and 0.8 s of
kernel time per step, against fewer than 7,000 faults for the same step in PyTorch (which caches
its blocks). Element-wise loops that write new arrays pay for it most: the decoder's GELU took
16 ms per block with faults and 4.7 ms without. With these settings: no faults, the kernel's share of
the step's CPU samples falls from 10% to 0.5% and malloc's rises from 0.9% to 5.9% (one arena for all
threads); the wall-clock gain on that machine was 1.7% on average (README, Benchmarks).

What. `reuse_freed_memory()` puts every thread on glibc's main arena (`M_ARENA_MAX=1`), serves large
blocks from the heap instead of `mmap` (`M_MMAP_MAX=0`) and keeps freed memory in the process
(`M_TRIM_THRESHOLD`: a free block at the top of the heap is returned only above 2 GiB, the largest
value `mallopt` takes), so from the second step on the step's buffer comes back from the free lists
with its pages still mapped. A step whose scratch buffer exceeds 2 GiB still faults. The price: the
process keeps its peak host memory, and all threads share one malloc arena.

When. Only the host's own memory changes, so this is worth doing only where XLA:CPU is the device:
`should_tune()` is true when JAX_PLATFORMS / `jax_platforms` is "cpu", or when it is unset and no
accelerator plugin (CUDA, ROCm, TPU) is installed. It must run before JAX starts its thread pools,
i.e. before the first computation; a thread that has already allocated keeps its own arena.
`SARMAE_HOST_MALLOC=system` turns it off.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import logging
import os
import platform

log = logging.getLogger("sarmae_jax")

ENV = "SARMAE_HOST_MALLOC"  # "system": leave glibc's malloc as it is

# mallopt(3) parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_KEEP_BYTES = 2**31 - 1  # mallopt takes an int


def _requested_platforms() -> str:
    import jax

    return (os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or "").lower()


def _accelerator_plugin_installed() -> bool:
    """A PJRT plugin (jax-cuda*-plugin, jax-rocm*-plugin) or libtpu: JAX would pick an accelerator."""
    if importlib.util.find_spec("libtpu") is not None:
        return True
    return any(True for _ in importlib.metadata.entry_points(group="jax_plugins"))


def should_tune() -> bool:
    """True on Linux with glibc when JAX will run on the CPU and SARMAE_HOST_MALLOC is not "system"."""
    if os.environ.get(ENV, "").lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    platforms = _requested_platforms()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not _accelerator_plugin_installed()


def reuse_freed_memory() -> bool:
    """Apply the settings above (glibc only); returns whether every `mallopt` call was accepted."""
    libc = ctypes.CDLL("libc.so.6")
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _KEEP_BYTES))
    accepted = all(libc.mallopt(param, value) == 1 for param, value in settings)
    if not accepted:
        log.warning("glibc mallopt refused a setting; XLA:CPU will re-fault its scratch memory every step")
    return accepted


def tune_for_xla_cpu() -> bool:
    """`reuse_freed_memory()` where `should_tune()`; call first thing in a command-line entry point."""
    if not should_tune():
        return False
    return reuse_freed_memory()
