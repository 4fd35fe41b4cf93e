"""Device mesh and logical-axis rules: sharding declared as data, the model only names its axes.

Mesh axes:
  data   - pure data parallelism: parameters replicated, batch split.
  fsdp   - fully-sharded data parallelism: batch split AND parameters/optimizer state sharded
           along their `embed` dimension (gathered per layer by XLA).
  tensor - tensor (model) parallelism: attention heads and MLP hidden units split.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (logical axis, mesh axis or axes). Parameters first, then activations. Unlisted names replicate.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("embed", "fsdp"),
    ("decoder_embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("norm", None),
    ("layers", None),
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """Resolve the config's axis sizes (one may be -1) against the device count."""
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"config.mesh={dict(mesh_cfg)}: {num_devices} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(
            f"config.mesh={dict(mesh_cfg)}: the axes multiply to {int(np.prod(sizes))} but there are {num_devices} devices"
        )
    return tuple(sizes)


def num_slices(devices: Sequence[jax.Device]) -> int:
    """Slices (ICI islands joined by DCN) the devices span, from their `slice_index` (1 without it)."""
    return len({getattr(d, "slice_index", 0) or 0 for d in devices})


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh. Devices of several slices (multi-slice TPU, `slice_index`) make a
    hybrid mesh: `config.mesh` lays out ONE slice, and the data axis spans the slices over DCN on top
    (data = slices x mesh.data; only gradients cross DCN)."""
    devices = list(jax.devices() if devices is None else devices)
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)  # GSPMD propagation; shardings set by rules
    slices = num_slices(devices)
    if slices > 1:
        if len(devices) % slices:
            raise ValueError(f"{len(devices)} devices over {slices} slices: expected equal slices")
        shape = mesh_shape(mesh_cfg, len(devices) // slices)
        grid = mesh_utils.create_hybrid_device_mesh(shape, (slices, 1, 1), devices)
        return Mesh(grid, MESH_AXES, axis_types=auto)
    shape = mesh_shape(mesh_cfg, len(devices))
    if devices == list(jax.devices()) or all(d.platform == "tpu" for d in devices):
        # Topology-aware device order (ICI rings on TPU, NVLink islands on GPU); for a whole TPU slice of
        # compile-only devices (tpu_topology.slice_devices) the order a run on that slice gets.
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp."""
    return NamedSharding(mesh, P(BATCH_AXES))


def process_batch_rows(batch: NamedSharding, global_batch_size: int, process_index: int | None = None) -> np.ndarray:
    """The rows of a global batch `[global_batch_size, ...]` that process `process_index` (default: this
    one) must feed to `jax.make_array_from_process_local_data(batch, local)`: the rows its devices hold,
    increasing (the order in which that function lays the local rows out). Replicas share rows."""
    process = jax.process_index() if process_index is None else process_index
    rows: set[int] = set()
    for device, index in batch.devices_indices_map((global_batch_size,)).items():
        if device.process_index == process:
            rows.update(range(*index[0].indices(global_batch_size)))
    if not rows:
        raise ValueError(f"process {process} holds no device of the batch sharding over mesh {dict(batch.mesh.shape)}")
    return np.array(sorted(rows), np.int64)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def rules_from_config(rules) -> tuple[tuple[str, Any], ...]:
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def logical_shardings(boxed_abstract: Any, mesh: Mesh, rules) -> Any:
    """NamedShardings for a tree of `nn.Partitioned`-boxed shapes (from `jax.eval_shape(init)`)."""
    specs = nn.get_partition_spec(boxed_abstract)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def over_data(shape: tuple[int, ...], param: NamedSharding, mesh: Mesh) -> NamedSharding:
    """ZeRO-1: `param`'s sharding with the `data` axis added to the dimension it splits evenly (the
    largest such piece); `param`'s own where no dimension does, or `data` is already used or 1."""
    n = mesh.shape["data"]
    spec = list(param.spec) + [None] * (len(shape) - len(param.spec))
    axes = [() if s is None else (s if isinstance(s, tuple) else (s,)) for s in spec]
    if n == 1 or any("data" in a for a in axes):
        return param
    pieces = [dim // int(np.prod([mesh.shape[a] for a in a_])) for dim, a_ in zip(shape, axes)]
    fits = [i for i, (dim, a_) in enumerate(zip(shape, axes)) if dim % (int(np.prod([mesh.shape[a] for a in a_])) * n) == 0]
    if not fits:
        return param
    best = max(fits, key=lambda i: pieces[i])
    spec[best] = (*axes[best], "data")
    return NamedSharding(mesh, P(*spec))


def optimizer_shardings(tx: optax.GradientTransformation, abstract_params: Any, param_shardings: Any, mesh: Mesh,
                        shard_over_data: bool = True) -> Any:
    """Optimizer-state shardings: every parameter-shaped subtree (Adam moments) follows the parameters,
    and with `shard_over_data` is also split over the `data` axis (ZeRO-1, `over_data`): each
    data-parallel device keeps and updates its slice, and XLA gathers the updated parameters."""
    abstract_state = jax.eval_shape(tx.init, abstract_params)

    def moment(leaf, sharding):
        return over_data(tuple(leaf.shape), sharding, mesh) if shard_over_data else sharding

    return optax.tree_map_params(
        tx, moment, abstract_state, param_shardings,
        transform_non_params=lambda _: replicated(mesh),
    )
