"""Orbax checkpoints: train state + input-iterator state (+ run metadata), and params-only exports.

Directories are local paths or gs:// URIs (etils.epath; Orbax writes arrays through tensorstore). Layout of a
work directory:
    checkpoints/<step>/state       sharded train state (restorable onto any mesh)
    checkpoints/<step>/data_stream the data stream's global position (JSON, written once: the same for every
                                   process, so any number of processes resumes it; pipeline.TrainIterator)
    checkpoints/<step>/metadata    JSON: config, normalisation, model description
    export/params, export/metadata.json, export/README.md   params only (+ model card), for evaluation and
                                   conversion (CPU-restorable)

Checkpoints written before the stream became global hold `checkpoints/<step>/data_iter/process_<p>-of-<P>.json`
(Grain's per-process state of per-process streams): their position is read, and the run continues the
global stream from there, with a warning that the examples from there on follow the global order.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from data_pipelines import normalization
from sarmae_jax.convert import model_card  # plain Python: no torch
from sarmae_jax.data import pipeline
from sarmae_jax.runtime import paths

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


class IncompatibleCheckpointError(ValueError):
    """The directory's latest checkpoint was written by a run whose train state differs from this one's."""


class Checkpoints:
    """The run's Orbax CheckpointManager: async saves of train state + iterator state + metadata.

    Keeps the last `keep` checkpoints plus every one whose step is a multiple of `keep_period`.
    Saves are asynchronous: `save` returns once the arrays are copied off the devices, the files are
    written in the background. A write that fails (disk full, directory not writable) surfaces at
    the next `save` or at `wait` as a `CheckpointSaveError` naming the step. A step counts only once
    complete: locally Orbax writes into a temporary directory and renames it; on a bucket (no renames)
    it writes in place and adds `commit_success.txt` last. So a failed or killed save never appears as a
    step, and the previous checkpoints stay restorable.
    """

    def __init__(self, workdir: str | os.PathLike, *, keep: int, keep_period: int | None = None,
                 async_save: bool = True):
        self.directory = paths.as_path(workdir) / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_period or None, enable_async_checkpointing=async_save, create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data_stream", "metadata"))
        self._pending: int | None = None  # step of the save still being written in the background

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iter, metadata: dict) -> None:
        """Start writing checkpoint `step` (all processes call this; Orbax coordinates the writers)."""
        self.wait()  # Orbax waits for the previous save anyway; waiting here names its step if it failed
        args = {"state": ocp.args.StandardSave(state), "metadata": ocp.args.JsonSave(metadata)}
        if data_iter is not None:
            args["data_stream"] = ocp.args.JsonSave(data_iter.get_state())
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
            previous = self._what_is_left(step)
            raise CheckpointSaveError(
                f"saving checkpoint step {step} to {self.directory} failed: {type(e).__name__}: {e}. "
                f"Nothing of step {step} was kept; {previous}. Check free space and write permission."
            ) from e

    def _what_is_left(self, failed_step: int) -> str:
        """Which earlier checkpoint a failed save left intact, read from the directory again (local or gs://:
        a failed save may leave the manager's list stale; Orbax lists finalised steps only). A directory that
        is not there holds none; a listing that fails says so, rather than claim there is none."""
        try:
            good = [s for s in ocp.utils.checkpoint_steps(self.directory) if s != failed_step]
        except FileNotFoundError:
            good = []
        except OSError as e:
            return (f"whether an earlier checkpoint is intact is unknown (listing {self.directory} failed: "
                    f"{type(e).__name__}: {e})")
        return f"the previous checkpoint (step {max(good)}) is intact" if good else "no earlier checkpoint exists"

    def restore_latest(self, abstract_state: Any, data_iter, metadata: dict | None = None) -> tuple[int, Any] | None:
        """Restore the newest complete checkpoint onto the shardings in `abstract_state`.

        `abstract_state`: a tree of `jax.ShapeDtypeStruct` with `.sharding` (the *current* mesh, which
        may differ from the one that saved it: other device count, other axis sizes). `data_iter` is
        restored in place. Returns `(step, state)`, or None when there is no checkpoint.
        Raises IncompatibleCheckpointError, naming the step and every differing array (and, given this
        run's `metadata`, the config keys that differ), when the checkpoint holds another model's state.
        """
        step = self.manager.latest_step()
        if step is None:
            return None
        step_dir = self.directory / str(step)
        if abstract_state is not None:
            self._check_compatible(step, abstract_state, metadata)
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        stream = data_iter is not None and (step_dir / "data_stream").exists()
        if data_iter is not None:
            args["data_stream" if stream else "metadata"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        if stream:
            data_iter.set_state(dict(restored["data_stream"]), source=str(step_dir / "data_stream"))
        elif data_iter is not None:  # written before the stream became global
            saved_batch = restored["metadata"]["config"]["train"]["batch_size"]
            data_iter.set_state(legacy_stream_state(step_dir / "data_iter", saved_batch),
                                source=str(step_dir / "data_iter"))
        return step, restored["state"]

    def _check_compatible(self, step: int, abstract_state: Any, metadata: dict | None) -> None:
        # The handler reads the item's own array metadata (the checkpointer would look for step-level files).
        saved_tree = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
        saved_tree = getattr(saved_tree, "tree", saved_tree)
        saved = {m.name: (tuple(m.shape), np.dtype(m.dtype)) for m in jax.tree.leaves(saved_tree)}
        wanted = {array_name(path): (tuple(leaf.shape), np.dtype(leaf.dtype))
                  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
        problems = state_differences(saved, wanted)
        if not problems:
            return
        lines = [f"{self.directory} holds checkpoint step {step} of another run: its train state differs from this "
                 f"config's ({len(problems)} arrays):"] + [f"  {p}" for p in problems[:12]]
        if len(problems) > 12:
            lines.append(f"  ... and {len(problems) - 12} more")
        if metadata is not None:
            saved_meta = self.manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"]
            changed = config_differences(saved_meta.get("config", {}), metadata.get("config", {}))
            if changed:
                lines.append("config keys that differ (checkpoint -> this run):")
                lines += [f"  {c}" for c in changed[:12]]
        lines.append("Use another --workdir for this config, or delete that directory to start over.")
        raise IncompatibleCheckpointError("\n".join(lines))

    def close(self) -> None:
        self.wait()
        self.manager.close()


def legacy_stream_state(directory: os.PathLike, global_batch_size: int) -> dict[str, int]:
    """The stream state of a checkpoint written before the stream became global (`global_batch_size`: the
    saved run's, from its metadata).

    Such a checkpoint holds Grain's state of each process's own stream, `process_<p>-of-<P>.json` =
    {"next_index": i}: i batches were drawn by every process, which is global position i. Raises
    ValueError naming the file when there is none, or when the files disagree or hold another format.
    """
    files = sorted(directory.glob("process_*-of-*.json")) if directory.exists() else []
    if not files:
        raise ValueError(f"{directory.parent}: no data stream state (neither data_stream nor "
                         "data_iter/process_*-of-*.json); this is not a checkpoint of sarmae_jax training")
    positions = {}
    for f in files:
        state = json.loads(f.read_text())
        if not isinstance(state, dict) or set(state) != {"next_index"}:
            raise ValueError(f"{f}: {state!r} is not the Grain state this trainer used to write ({{'next_index': i}}; "
                             "one written with data.num_workers > 0 holds per-worker states and cannot be resumed "
                             "on the global stream): resume that run with the version of sarmae_jax that wrote it")
        positions[f.name] = int(state["next_index"])
    if len(set(positions.values())) != 1:
        raise ValueError(f"{directory}: the processes' positions disagree ({positions}); expected one step count")
    position = next(iter(positions.values()))
    log.warning("%s: iterator state of the earlier per-process format (%d file(s)); continuing the global data "
                "stream at batch %d: from here on the examples follow the global order (a function of the position "
                "alone), not the per-process streams the run that wrote it drew from", directory, len(files), position)
    return pipeline.stream_state(position, global_batch_size)


def array_name(path) -> str:
    """Orbax's name of the array at a pytree path (`params.encoder.blocks.0.mlp.fc1.kernel`)."""
    return ".".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def state_differences(saved: dict[str, tuple], wanted: dict[str, tuple]) -> list[str]:
    """Arrays missing from, extra in, or shaped or typed differently in a checkpoint: one line each, the
    parameters first (the optimizer's moments repeat their differences)."""
    def line(name):
        if name not in saved:
            return f"{name}: not in the checkpoint (this run: {wanted[name][0]} {wanted[name][1]})"
        if name not in wanted:
            return f"{name}: only in the checkpoint ({saved[name][0]} {saved[name][1]})"
        return f"{name}: checkpoint {saved[name][0]} {saved[name][1]}, this run {wanted[name][0]} {wanted[name][1]}"

    differing = [n for n in set(saved) | set(wanted) if saved.get(n) != wanted.get(n)]
    return [line(n) for n in sorted(differing, key=lambda n: (not n.startswith("params."), n))]


def config_differences(saved: dict, current: dict, prefix: str = "config.") -> list[str]:
    """`config.model.size: 'base' -> 'large'` for every key whose value differs (nested sections walked)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def export_params(directory: str | os.PathLike, params: Any, metadata: dict) -> str:
    """Params-only export: `directory/params` (Orbax) + `directory/metadata.json` + `directory/README.md` (the model
    card), local or gs://. All processes call it (each writes its shards); process 0 writes the metadata and the
    card. Returns the directory."""
    directory = paths.as_path(directory)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "params", params, force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        paths.write_atomic(directory / "metadata.json", json.dumps(metadata, indent=2).encode())
        model_card.write(str(directory), metadata, "params")
    return str(directory)


def load_export(directory: str | os.PathLike, device: jax.Device | None = None) -> tuple[Any, dict]:
    """Restore a params-only export (local or gs://) onto one device (CPU by default), whatever mesh saved it."""
    directory = paths.as_path(directory)
    meta_path = directory / "metadata.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory}: not a sarmae_jax export (no metadata.json)")
    metadata = json.loads(meta_path.read_text())
    device = device or jax.devices("cpu")[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    checkpointer = ocp.StandardCheckpointer()
    tree = checkpointer.metadata(directory / "params")
    tree = getattr(tree, "item_metadata", tree)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)
    params = checkpointer.restore(directory / "params", target)
    return params, metadata
