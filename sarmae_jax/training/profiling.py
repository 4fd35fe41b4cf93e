"""`train.profile = (first step, number of steps)`: a `jax.profiler` trace of those train steps.

Process 0 traces, into `<workdir>/profile/plugins/profile/<time>/` (`<host>.xplane.pb`, plus a
`<host>.trace.json.gz` for Perfetto), the layout TensorBoard's profile plugin reads:

    tensorboard --logdir <workdir>/profile        # Profile tab (pip install tensorboard-plugin-profile)
    # or open the .trace.json.gz at https://ui.perfetto.dev

`train.profile_all_processes = True`: every process traces, process i into `<workdir>/profile/process_<i>/`
(then `tensorboard --logdir <workdir>/profile/process_<i>`). One folder per process because JAX names the
files by host inside a folder stamped to the second, and its writer unpacks exactly one trace per folder:
processes sharing a host and a folder overwrite each other's files, or crash writing the Perfetto file.

Each traced step runs inside `jax.profiler.StepTraceAnnotation("train", step_num=step)`, so the profile
plugin's step view and the trace name the steps. Steps are the loop's 1-based step numbers; a run resumed past
part of the range traces what is left of it. The trace ends after the last traced step's outputs are ready,
so it holds that step's device work.

For a `gs://` run directory the profiler writes into a directory on this host's disk
(`paths.local_cache_dir("profile", ...)`) and each process then uploads its own files to
`<workdir>/profile/...` through the same client as the rest of the run's files (the profiler's own Cloud
Storage writer would need its own credentials and endpoint).
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from typing import Any

import jax

from sarmae_jax.runtime import paths

log = logging.getLogger("sarmae_jax")


class StepProfiler:
    """Starts the trace before step `first` and stops it after step `first + n - 1` (see the module docstring)."""

    def __init__(self, profile: tuple[int, int], workdir: str, start_step: int, all_processes: bool = False):
        first, count = profile  # checked by config.validate
        self.first = max(first, start_step + 1)
        self.last = first + count - 1
        process = jax.process_index()
        self.enabled = all_processes or process == 0
        self.directory = os.path.join(os.fspath(workdir), "profile")
        if all_processes:
            self.directory = os.path.join(self.directory, f"process_{process}")
        # Where the profiler itself writes: the run directory, or a staging directory when that is a bucket.
        self._staging = (paths.local_cache_dir("profile", f"{uuid.uuid4().hex}-process{process}")
                         if paths.is_gcs(workdir) and self.enabled else None)
        self.active = False
        self._annotation: jax.profiler.StepTraceAnnotation | None = None

    def maybe_start(self, step: int) -> None:
        """Call before step `step` is fetched and dispatched: starts the trace at the first traced step, and
        opens that step's `StepTraceAnnotation` (closed by `maybe_stop`) on every traced step."""
        if not self.enabled:
            return
        if step == self.first and step <= self.last:
            jax.profiler.start_trace(self._staging or self.directory, create_perfetto_trace=True)
            self.active = True
            log.info("profiling steps %d-%d into %s", self.first, self.last, self.directory)
        if self.active:
            self._annotation = jax.profiler.StepTraceAnnotation("train", step_num=step)
            self._annotation.__enter__()

    def maybe_stop(self, step: int, outputs: Any) -> None:
        """Call after step `step` is dispatched: closes its annotation, and ends the trace after the last step."""
        self._close_annotation()
        if self.active and step == self.last:
            self.stop(outputs)

    def _close_annotation(self) -> None:
        if self._annotation is not None:
            self._annotation.__exit__(None, None, None)
            self._annotation = None

    def stop(self, outputs: Any = None) -> None:
        """End the trace (also when the loop ends early, e.g. on a preemption notice)."""
        self._close_annotation()
        if not self.active:
            return
        jax.block_until_ready(outputs)
        jax.profiler.stop_trace()
        self.active = False
        if self._staging is not None:
            self._upload()
        log.info("wrote a profiler trace to %s (tensorboard --logdir %s, or the .trace.json.gz in Perfetto)",
                 self.directory, self.directory)

    def _upload(self) -> None:
        """Copy this process's staged trace files to the bucket (same relative paths), then drop the staging."""
        destination = paths.as_path(self.directory)
        for root, _, files in os.walk(self._staging):
            for name in files:
                local = os.path.join(root, name)
                target = destination / os.path.relpath(local, self._staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(local, "rb") as f:
                    target.write_bytes(f.read())
        shutil.rmtree(self._staging, ignore_errors=True)
