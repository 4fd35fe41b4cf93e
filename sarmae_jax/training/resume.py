"""Resuming a run: the checkpoint to resume from (a damaged latest one is named, never deleted), and whether
the config may differ from the checkpoint's.

Damage: a latest checkpoint that cannot be read (files missing or truncated) fails with one message naming the
step, what could not be read, and the previous step; with `sarmae-train --resume_from_intact` the run moves
the damaged step out of Orbax's reach, to `<workdir>/damaged_checkpoints/<step>` (kept for inspection), and
resumes from the newest step that restores.

Run directory: a workdir is new, or holds a run (`claim_workdir`): a directory holding anything else is refused
before any work, naming what is there.

Changes: a resume that changes the run, and the record of accepted changes (in the checkpoint metadata,
the export's metadata and its model card).

A resumed run compares the config saved with the latest checkpoint with its own. Keys of `FREE_KEYS` (logging,
checkpoint cadence, profiling, input-pipeline workers, the mesh and how the same step is computed) may change.
Any other difference -- data, model, objective, optimiser, schedule, batch, seed -- is refused by
`check`, naming the keys, unless `sarmae-train --resume_accept=KEY,...` (or `all`) accepts them. An accepted
change is appended to the metadata's `resume_changes` list as {"step": resumed step, "changes": [...]}, which
every later checkpoint and the export carry forward, and which the model card lists.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from data_pipelines import ownership
from sarmae_jax import config as config_lib
from sarmae_jax.runtime import paths
from sarmae_jax.training import checkpoint

log = logging.getLogger("sarmae_jax")
DAMAGED_DIR = "damaged_checkpoints"

# Keys (dotted, under `config.`) whose change does not change what is trained; a prefix covers its section.
FREE_KEYS = (
    "train.log_every", "train.image_every", "train.checkpoint_every", "train.keep_checkpoints", "train.keep_period",
    "train.profile", "train.profile_all_processes", "train.peak_tflops_per_device", "train.max_consecutive_skips", "train.init_from",
    "train.grad_accum_steps",  # the update equals the full-batch one (training/step.py)
    "data.num_workers", "data.worker_buffer_size", "data.read_threads", "data.prefetch_batches",
    "data.max_corrupt_records",
    "model.remat", "model.scan_unroll", "model.attention_impl",  # how a step is computed, not what
    "mesh", "optim.shard_over_data",  # checkpoints restore onto any mesh and layout
    "train.nonfinite_guard", "train.compilation_cache_dir",
    "evals",  # evaluators read the parameters, never change them
)
KEY = "resume_changes"


RUN_KIND = "training run"
# What a run writes into its workdir (loop.py, metrics.py, profiling.py, checkpoint.py): a marker-less directory
# holding only these is a run of an earlier version.
RUN_NAMES = ("checkpoints", "metrics.jsonl", "tensorboard", "images", "export", "data", "profile", DAMAGED_DIR)


def claim_workdir(workdir: str, data_path: str | None) -> None:
    """Refuses (ownership.OutputError) a workdir holding anything but a run's files (and the run's own dataset when
    `data_path` lies inside it); marks a new one. Called by process 0 only (the others read what it wrote)."""
    inside = None
    if data_path and not paths.is_gcs(workdir):
        rel = os.path.relpath(os.path.abspath(data_path), os.path.abspath(workdir))
        inside = None if rel.startswith("..") else rel.split(os.sep)[0]

    def legacy(path: str) -> bool:
        names = set(ownership.entries(path)) - {inside}
        return bool(names) and names <= set(RUN_NAMES) or not names

    ownership.claim(str(workdir), tool="sarmae-train", kind=RUN_KIND, resumable=True, legacy=legacy, flag="--workdir")


class ResumeChangeError(ValueError):
    """A resumed run's config differs from its checkpoint's in keys that change the run."""


class DamagedCheckpointError(ValueError):
    """The latest checkpoint cannot be read; the message names the step, the damage and the previous step."""


def _damage(error: BaseException) -> str:
    """The first line of the deepest cause (Orbax and TensorStore wrap the missing file several times)."""
    seen = error
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__
    text = next((line.strip() for line in str(seen).splitlines() if line.strip()), type(seen).__name__)
    return f"{type(seen).__name__}: {text[:300]}"


def restore(checkpoints: checkpoint.Checkpoints, abstract_state: Any, data_iter, meta: dict[str, Any], *,
            accept: Iterable[str] = (), take_intact: bool = False, workdir: str = ""
            ) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, this run's metadata with the resume history) from the newest readable checkpoint, or None.

    Raises:
      DamagedCheckpointError: the latest step cannot be read and not `take_intact`.
      ResumeChangeError: the config changes the run in keys `accept` does not list.
      checkpoint.IncompatibleCheckpointError: the checkpoint holds another model's state.
    """
    steps = sorted(checkpoints.all_steps(), reverse=True)
    for i, step in enumerate(steps):
        try:
            saved_meta = checkpoints.saved_metadata(step)
            if abstract_state is not None:  # another model's state: its own message, naming the arrays
                checkpoints.check_compatible(step, abstract_state, meta)
        except checkpoint.IncompatibleCheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 -- any read failure of this step is damage, said below
            saved_meta, error = None, e
        if saved_meta is not None:
            resumed_meta = check(saved_meta, meta, step, accept)  # before the state is read: fails fast
            try:
                restored = checkpoints.restore_latest(abstract_state, data_iter, meta, step=step)
                return restored[0], restored[1], resumed_meta
            except checkpoint.IncompatibleCheckpointError:
                raise
            except Exception as e:  # noqa: BLE001
                error = e
        previous = f"the previous step is {steps[i + 1]}" if i + 1 < len(steps) else "there is no earlier step"
        where = f"{checkpoints.directory}/{step}"
        if not take_intact:
            raise DamagedCheckpointError(
                f"checkpoint step {step} ({where}) is damaged: {_damage(error)}; {previous}. Rerun with "
                "--resume_from_intact to resume from the newest intact step (the damaged one is moved to "
                f"{DAMAGED_DIR}/, not deleted), or restore the files of step {step}") from error
        _set_aside(checkpoints, step, workdir, _damage(error))
    return None


def _set_aside(checkpoints: checkpoint.Checkpoints, step: int, workdir: str, damage: str) -> None:
    """Moves damaged step `step` to <workdir>/damaged_checkpoints/<step> (never deletes it)."""
    source = str(checkpoints.directory / str(step))
    if paths.is_gcs(source):
        raise DamagedCheckpointError(f"checkpoint step {step} ({source}) is damaged: {damage}; a bucket has no "
                                     f"rename: move it out of {checkpoints.directory} yourself, then rerun")
    target = os.path.join(str(workdir), DAMAGED_DIR, str(step))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
        target = f"{target}-{len(os.listdir(os.path.dirname(target)))}"
    os.rename(source, target)
    checkpoints.manager.reload()
    log.warning("checkpoint step %d is damaged (%s): moved to %s; trying the previous step", step, damage, target)


def _free(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in FREE_KEYS)


_MISSING = object()


def _lookup(tree: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def changed_keys(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(dotted key, "old -> new") of every config key that differs and is not free. A key the checkpoint's
    config lacks (added to the code since it was written) is no change when this run keeps its default."""
    defaults = json.loads(config_lib.default_config().to_json_best_effort())
    out = []
    for line in checkpoint.config_differences(saved, current, prefix=""):
        key, change = line.split(": ", 1)
        if _free(key):
            continue
        added = _lookup(saved, key) is _MISSING and _lookup(defaults, key) is not _MISSING
        if added and _lookup(current, key) == _lookup(defaults, key):
            continue
        out.append((key, change))
    return out


def parse_accept(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """`--resume_accept` value -> keys ('optim.lr,data.path' or a list; 'all'; a leading 'config.' optional)."""
    if not value:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(k.strip().removeprefix("config.") for k in items if k.strip())


def check(saved_meta: Mapping[str, Any], meta: dict[str, Any], step: int, accept: Iterable[str] = ()) -> dict[str, Any]:
    """`meta` (this run's metadata) with the saved history and, if this resume changes the run, the accepted
    change at `step` appended. Raises ResumeChangeError naming the keys that changed and were not accepted."""
    accept = tuple(accept)
    changes = changed_keys(saved_meta.get("config", {}), meta.get("config", {}))
    refused = [(k, c) for k, c in changes if "all" not in accept
               and not any(k == a or k.startswith(a + ".") for a in accept)]
    if refused:
        shown = "; ".join(f"{k}: {c}" for k, c in refused[:6]) + (f" and {len(refused) - 6} more" if len(refused) > 6 else "")
        keys = ",".join(k for k, _ in refused)
        raise ResumeChangeError(
            f"resuming from step {step} with a changed run: {shown}. Pass --resume_accept={keys} to continue "
            "with the change (it is recorded in the metadata and the model card), or use another --workdir")
    history = list(saved_meta.get(KEY, []))
    if changes:
        history.append({"step": int(step), "changes": [f"{k}: {c}" for k, c in changes]})
    out = dict(meta)
    if history:
        out[KEY] = history
    return out

