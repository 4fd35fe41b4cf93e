"""Orbax checkpoints: train state + input-iterator state (+ run metadata), and params-only exports.

Layout of a work directory:
    checkpoints/<step>/state       sharded train state (restorable onto any mesh)
    checkpoints/<step>/data_iter   Grain iterator state, one file per process
    checkpoints/<step>/metadata    JSON: config, normalisation, model description
    export/params, export/metadata.json   params only, for evaluation and conversion (CPU-restorable)
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from sarmae_jax import preprocess

log = logging.getLogger("sarmae_jax")

EXPORT_VERSION = 1


def run_metadata(config: ml_collections.ConfigDict, **extra) -> dict[str, Any]:
    """What a checkpoint must carry so that nothing downstream guesses: config and normalisation."""
    return {
        "format": "sarmae_jax",
        "version": EXPORT_VERSION,
        "normalization": preprocess.NORMALIZATION,
        "config": json.loads(config.to_json_best_effort()),
        **extra,
    }


def make_manager(workdir: str, *, keep: int, save_interval_steps: int = 1, keep_period: int | None = None,
                 async_save: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_period, save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save, create=True,
    )
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")), options=options,
        item_names=("state", "data_iter", "metadata"),
    )


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter, metadata: dict, *, force: bool = False) -> bool:
    args = {"state": ocp.args.StandardSave(state), "metadata": ocp.args.JsonSave(metadata)}
    if data_iter is not None:
        args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    return manager.save(step, args=ocp.args.Composite(**args), force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iter) -> tuple[int, Any] | None:
    """Restore the newest complete checkpoint onto the shardings in `abstract_state`.

    `abstract_state`: a tree of `jax.ShapeDtypeStruct` with `.sharding` (the *current* mesh, which may
    differ from the one that saved it). `data_iter` is restored in place. Returns `(step, state)` or None.
    """
    step = manager.latest_step()
    if step is None:
        return None
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
        args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    return step, restored["state"]


def export_params(directory: str, params: Any, metadata: dict) -> str:
    """Params-only export: `directory/params` (Orbax) + `directory/metadata.json`. Returns the directory."""
    directory = os.path.abspath(directory)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(directory, "params"), params, force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        with open(os.path.join(directory, "metadata.json"), "w") as f:
            json.dump(metadata, f, indent=2)
    return directory


def load_export(directory: str, device: jax.Device | None = None) -> tuple[Any, dict]:
    """Restore a params-only export onto one device (CPU by default), whatever mesh saved it."""
    directory = os.path.abspath(directory)
    meta_path = os.path.join(directory, "metadata.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{directory}: not a sarmae_jax export (no metadata.json)")
    with open(meta_path) as f:
        metadata = json.load(f)
    device = device or jax.devices("cpu")[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    checkpointer = ocp.StandardCheckpointer()
    tree = checkpointer.metadata(os.path.join(directory, "params"))
    tree = getattr(tree, "item_metadata", tree)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)
    params = checkpointer.restore(os.path.join(directory, "params"), target)
    return params, metadata
