"""Orbax checkpoints: train state + input-iterator state (+ run metadata), and params-only exports.

Layout of a work directory:
    checkpoints/<step>/state       sharded train state (restorable onto any mesh)
    checkpoints/<step>/data_iter   Grain iterator state, one file per process
    checkpoints/<step>/metadata    JSON: config, normalisation, model description
    export/params, export/metadata.json, export/README.md   params only (+ model card), for evaluation and
                                   conversion (CPU-restorable)
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from data_pipelines import normalization
from sarmae_jax.convert import model_card  # plain Python: no torch

log = logging.getLogger("sarmae_jax")

EXPORT_VERSION = 1


def run_metadata(config: ml_collections.ConfigDict, **extra) -> dict[str, Any]:
    """What a checkpoint must carry so that nothing downstream guesses: config and normalisation."""
    return {
        "format": "sarmae_jax",
        "version": EXPORT_VERSION,
        normalization.KEY: normalization.NORMALIZATION,
        "config": json.loads(config.to_json_best_effort()),
        **extra,
    }


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the ones written before it are intact and restorable."""


class Checkpoints:
    """The run's Orbax CheckpointManager: async saves of train state + iterator state + metadata.

    Keeps the last `keep` checkpoints plus every one whose step is a multiple of `keep_period`.
    Saves are asynchronous: `save` returns once the arrays are copied off the devices, the files are
    written in the background. A write that fails (disk full, directory not writable) surfaces at
    the next `save` or at `wait` as a `CheckpointSaveError` naming the step; Orbax writes into a
    temporary directory and renames it only when complete, so the failed step never appears and the
    previous checkpoints stay restorable.
    """

    def __init__(self, workdir: str, *, keep: int, keep_period: int | None = None, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_period or None, enable_async_checkpointing=async_save, create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data_iter", "metadata"))
        self._pending: int | None = None  # step of the save still being written in the background

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iter, metadata: dict) -> None:
        """Start writing checkpoint `step` (all processes call this; Orbax coordinates the writers)."""
        self.wait()  # Orbax waits for the previous save anyway; waiting here names its step if it failed
        args = {"state": ocp.args.StandardSave(state), "metadata": ocp.args.JsonSave(metadata)}
        if data_iter is not None:
            args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        with self._failure_names(step):
            self.manager.save(step, args=ocp.args.Composite(**args), force=True)
        self._pending = step

    def wait(self) -> None:
        """Block until the background write is complete; raise `CheckpointSaveError` if it failed."""
        step, self._pending = self._pending, None
        if step is None:
            return
        with self._failure_names(step):
            self.manager.wait_until_finished()
            if step not in self.manager.all_steps():
                raise RuntimeError("Orbax did not finalise it (see the log above for the cause)")

    @contextlib.contextmanager
    def _failure_names(self, step: int):
        try:
            yield
        except Exception as e:  # any write error: the cause is chained, the message says what is safe
            good = [s for s in self._complete_steps() if s != step]
            previous = f"the previous checkpoint (step {max(good)}) is intact" if good else "no earlier checkpoint exists"
            raise CheckpointSaveError(
                f"saving checkpoint step {step} to {self.directory} failed: {type(e).__name__}: {e}. "
                f"Nothing of step {step} was kept; {previous}. Check free space and write permission."
            ) from e

    def _complete_steps(self) -> list[int]:
        # Read the directory again (local or gs://): a failed save may leave the manager's list stale.
        # Orbax names a finished step by its number; unfinished ones carry a temporary suffix.
        try:
            return [int(p.name) for p in epath.Path(self.directory).iterdir() if p.name.isdigit()]
        except OSError:
            return []

    def restore_latest(self, abstract_state: Any, data_iter) -> tuple[int, Any] | None:
        """Restore the newest complete checkpoint onto the shardings in `abstract_state`.

        `abstract_state`: a tree of `jax.ShapeDtypeStruct` with `.sharding` (the *current* mesh, which
        may differ from the one that saved it: other device count, other axis sizes). `data_iter` is
        restored in place. Returns `(step, state)`, or None when there is no checkpoint.
        """
        step = self.manager.latest_step()
        if step is None:
            return None
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        return step, restored["state"]

    def close(self) -> None:
        self.wait()
        self.manager.close()


def export_params(directory: str, params: Any, metadata: dict) -> str:
    """Params-only export: `directory/params` (Orbax) + `directory/metadata.json` + `directory/README.md` (the model
    card). Returns the directory."""
    directory = os.path.abspath(directory)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(directory, "params"), params, force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        with open(os.path.join(directory, "metadata.json"), "w") as f:
            json.dump(metadata, f, indent=2)
        model_card.write(directory, metadata, "params")
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
