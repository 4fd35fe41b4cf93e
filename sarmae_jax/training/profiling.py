"""`train.profile = (first step, number of steps)`: a `jax.profiler` trace of those train steps.

The trace goes to `<workdir>/profile/plugins/profile/<time>/` (one `<host>.xplane.pb` per process, plus a
`<host>.trace.json.gz` for Perfetto), the layout TensorBoard's profile plugin reads:

    tensorboard --logdir <workdir>/profile        # Profile tab (pip install tensorboard-plugin-profile)
    # or open the .trace.json.gz at https://ui.perfetto.dev

Steps are the loop's 1-based step numbers; a run resumed past part of the range traces what is left of it.
The trace ends after the last traced step's outputs are ready, so it holds that step's device work.

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

    def __init__(self, profile: tuple[int, int], workdir: str, start_step: int):
        first, count = profile  # checked by config.validate
        self.first = max(first, start_step + 1)
        self.last = first + count - 1
        self.directory = os.path.join(os.fspath(workdir), "profile")
        # Where the profiler itself writes: the run directory, or a staging directory when that is a bucket.
        self._staging = (paths.local_cache_dir("profile", f"{uuid.uuid4().hex}-process{jax.process_index()}")
                         if paths.is_gcs(workdir) else None)
        self.active = False

    def maybe_start(self, step: int) -> None:
        if step == self.first and step <= self.last:
            jax.profiler.start_trace(self._staging or self.directory, create_perfetto_trace=True)
            self.active = True
            log.info("profiling steps %d-%d into %s", self.first, self.last, self.directory)

    def maybe_stop(self, step: int, outputs: Any) -> None:
        if self.active and step == self.last:
            self.stop(outputs)

    def stop(self, outputs: Any = None) -> None:
        """End the trace (also when the loop ends early, e.g. on a preemption notice)."""
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
