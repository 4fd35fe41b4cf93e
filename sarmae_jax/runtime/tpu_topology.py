"""Named TPU slices on a machine without a TPU: the chip table, and compile-only devices from libtpu.

`jax.experimental.topologies.get_topology_desc(platform="tpu", topology_name="v5e:16x16")` asks libtpu
(the optional `tpu` extra: `pip install -e ".[tpu]"`) for the devices of a slice; `jax.jit(...).lower(...)
.compile()` over a mesh of them runs the TPU compiler on the CPU host. Nothing executes: the devices are
compile-only, so memory and cost come from the compiler's analyses (training/tpu_plan.py).

A slice name is `<kind>:<chips per axis>`, e.g. `v5e:2x2`, `v5e:16x16`, `v5p:4x4x4`, `v6e:8x8`, `v4:4x4x4`.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

import logging

import jax
from jax.experimental import topologies

log = logging.getLogger("sarmae_jax")

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip of a kind, from Google Cloud's data sheets (docs.cloud.google.com/tpu/docs/<kind>)."""

    kind: str  # the name in a slice: v4 | v5e | v5p | v6e
    device_kind: str  # what `jax.Device.device_kind` says for it
    hbm_bytes: int  # HBM capacity per chip (data sheet)
    peak_bf16_tflops: float  # dense bf16 peak per chip, TFLOP/s
    hbm_gbytes_per_s: float  # HBM bandwidth per chip, GB/s (1e9 bytes)
    dims: int  # axes of a slice name: 2 (2D torus) or 3
    # libtpu's chip configuration: v4 and v5p chips hold two TensorCores that JAX drives as one device
    # ("megacore"); without it libtpu describes one device per core.
    chip_config: str = "default"


CHIPS: dict[str, Chip] = {c.kind: c for c in (
    Chip("v4", "TPU v4", 32 * GiB, 275.0, 1200.0, dims=3, chip_config="megacore"),
    Chip("v5e", "TPU v5 lite", 16 * GiB, 197.0, 819.0, dims=2),
    Chip("v5p", "TPU v5", 95 * GiB, 459.0, 2765.0, dims=3, chip_config="megacore"),
    Chip("v6e", "TPU v6 lite", 32 * GiB, 918.0, 1640.0, dims=2),
)}

_DEFAULT_HOST_BOUNDS = (2, 2, 1)  # libtpu's chips per host unless told otherwise
_SLICE = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+)+)$")
# libtpu asks the cloud metadata server and the TPU_* host variables which slice it runs on, and prints
# warnings when they are missing. On a host without TPU chips these values make that start-up silent;
# ALLOW_MULTIPLE_LIBTPU_LOAD lets two compile-only processes (a test and a plan) load libtpu at once,
# where the lockfile would otherwise refuse the second.
_QUIET_ENV = {
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_WORKER_HOSTNAMES": "localhost",
    "TPU_HOST_BOUNDS": "1,1,1",
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}
INSTALL_HINT = 'pip install -e ".[tpu]"  (adds libtpu, the TPU compiler, beside the CPU jaxlib)'


class TpuCompilerMissing(RuntimeError):
    """libtpu is not installed: no TPU slice can be described or compiled for."""


def parse_slice(name: str) -> tuple[Chip, tuple[int, ...]]:
    """'v5e:16x16' -> (the v5e chip, (16, 16)). ValueError naming the name and what is expected."""
    match = _SLICE.match(name or "")
    if not match:
        raise ValueError(f"TPU slice {name!r}: expected <kind>:<chips per axis> with kind one of {sorted(CHIPS)}, "
                         "e.g. v5e:2x2, v5e:16x16, v5p:4x4x4, v6e:8x8")
    chip = CHIPS[match.group(1)]
    shape = tuple(int(v) for v in match.group(2).split("x"))
    if len(shape) != chip.dims or min(shape) < 1:
        raise ValueError(f"TPU slice {name!r}: a {chip.kind} slice has {chip.dims} axes of at least one chip "
                         f"(e.g. {'v5p:2x2x1' if chip.dims == 3 else 'v5e:2x2'})")
    return chip, shape


def chip_for_device_kind(device_kind: str) -> Chip | None:
    for chip in CHIPS.values():
        if chip.device_kind == device_kind:
            return chip
    return None


def quiet_libtpu_start() -> None:
    """Set the host variables that keep libtpu silent, unless this host has TPU chips or they are set.

    Call before JAX initialises its backends (libtpu reads them when it loads). On a TPU VM nothing is
    changed: there the variables describe the real slice. Without libtpu installed there is nothing to quiet.

    The chip count comes from JAX's own PCI scan, `jax._src.hardware_utils`, a private module, imported here
    and nowhere else so that every entry point starts whatever a JAX upgrade does to it. If it moves, this
    function changes nothing and logs a warning: on a host without TPU chips but with libtpu installed,
    libtpu then prints its start-up warnings (metadata server, host bounds) and two compile-only processes
    (`--topology`, benchmarks/pod_plan.py, tests) cannot load libtpu at once; nothing else breaks.
    """
    if not compiler_available():
        return
    try:
        from jax._src import hardware_utils  # private: see the docstring
        num_chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    except (ImportError, AttributeError) as e:
        log.warning("cannot count this host's TPU chips (jax._src.hardware_utils: %s): libtpu's start-up is not "
                    "quieted", e)
        return
    if num_chips:
        return
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)


def compiler_available() -> bool:
    """Whether libtpu is installed (found without loading it)."""
    return importlib.util.find_spec("libtpu") is not None


def slice_devices(name: str) -> list:
    """The compile-only devices of TPU slice `name` (one per chip), in libtpu's order."""
    chip, shape = parse_slice(name)
    if not compiler_available():
        raise TpuCompilerMissing(f"compiling for TPU slice {name!r} needs the TPU compiler (libtpu), which is not "
                                 f"installed: {INSTALL_HINT}")
    quiet_libtpu_start()
    kwargs = {}
    host = _DEFAULT_HOST_BOUNDS[: len(shape)]
    if all(s <= h for s, h in zip(shape, host)) and tuple(shape) != host:
        # Smaller than one host's chips (v5e:1x1, v5p:1x1x1): the slice is one host.
        kwargs["chips_per_host_bounds"] = tuple(shape) + (1,) * (3 - len(shape))
    try:
        topology = topologies.get_topology_desc(topology_name=f"{chip.kind}:{'x'.join(map(str, shape))}",
                                                platform="tpu", chip_config_name=chip.chip_config, **kwargs)
    except jax.errors.JaxRuntimeError as e:
        raise ValueError(f"TPU slice {name!r}: libtpu cannot describe it: {e}") from e
    devices = list(topology.devices)
    expected = math.prod(shape)
    if len(devices) != expected or devices[0].device_kind != chip.device_kind:
        raise RuntimeError(f"libtpu described {name!r} as {len(devices)} x {devices[0].device_kind!r}, expected "
                           f"{expected} x {chip.device_kind!r}")
    return devices
