"""`train.profile = (first step, number of steps)`: a `jax.profiler` trace of those train steps.

The trace goes to `<workdir>/profile/plugins/profile/<time>/` (one `<host>.xplane.pb` per process, plus a
`<host>.trace.json.gz` for Perfetto), the layout TensorBoard's profile plugin reads:

    tensorboard --logdir <workdir>/profile        # Profile tab (pip install tensorboard-plugin-profile)
    # or open the .trace.json.gz at https://ui.perfetto.dev

Steps are the loop's 1-based step numbers; a run resumed past part of the range traces what is left of it.
The trace ends after the last traced step's outputs are ready, so it holds that step's device work.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax

log = logging.getLogger("sarmae_jax")


class StepProfiler:
    """Starts the trace before step `first` and stops it after step `first + n - 1` (see the module docstring)."""

    def __init__(self, profile: tuple[int, int], workdir: str, start_step: int):
        first, count = profile  # checked by config.validate
        self.first = max(first, start_step + 1)
        self.last = first + count - 1
        self.directory = os.path.join(workdir, "profile")
        self.active = False

    def maybe_start(self, step: int) -> None:
        if step == self.first and step <= self.last:
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
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
        log.info("wrote a profiler trace to %s (tensorboard --logdir %s, or the .trace.json.gz in Perfetto)",
                 self.directory, self.directory)
