"""Multi-controller start-up: one code path for one host and many.

`jax.distributed.initialize()` is called when the process was launched as part of a cluster (TPU
pod, SLURM, or an explicit coordinator given by environment); a plain single-process run needs nothing.
"""
from __future__ import annotations

import logging
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

log = logging.getLogger("sarmae_jax")

_COORDINATOR_ENV = "SARMAE_COORDINATOR"  # host:port of process 0
_NUM_PROCESSES_ENV = "SARMAE_NUM_PROCESSES"
_PROCESS_ID_ENV = "SARMAE_PROCESS_ID"


def launched_in_cluster() -> bool:
    if os.environ.get(_COORDINATOR_ENV):
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    # TPU VM pods set these for every worker.
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES")) and "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def maybe_initialize() -> None:
    if jax.distributed.is_initialized() if hasattr(jax.distributed, "is_initialized") else False:
        return
    if not launched_in_cluster():
        return
    kwargs = {}
    if os.environ.get(_COORDINATOR_ENV):
        kwargs = dict(
            coordinator_address=os.environ[_COORDINATOR_ENV],
            num_processes=int(os.environ[_NUM_PROCESSES_ENV]),
            process_id=int(os.environ[_PROCESS_ID_ENV]),
        )
        if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
            # CPU multi-process (tests, local launcher): collectives over gloo.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


class PreemptionWatch:
    """Tells the training loop to stop at the next step boundary on SIGTERM or a JAX preemption notice.

    One process: a SIGTERM handler sets a flag; the step in flight finishes, the loop saves and returns.
    Several processes: the processes must agree on the step at which all of them save, so the notice
    goes through JAX's preemption service (started by `jax.distributed.initialize`, which listens for
    SIGTERM on every host): `reached_preemption_sync_point(step)` turns True at the same step everywhere.
    Ctrl-C (SIGINT) in one process is a stop request like SIGTERM, with one line on stderr saying so; a
    second Ctrl-C exits at once (exit code 130, nothing saved). Several processes keep Python's SIGINT
    (a launcher interrupts them all; the preemption service hears SIGTERM only).
    Use as a context manager; the previous handlers are put back on exit.
    """

    def __init__(self):
        self.signalled = False
        self.reason = ""  # "SIGTERM" | "SIGINT" | "" (a JAX preemption notice)
        self._previous: dict[int, object] = {}
        self._service_missing_logged = False

    def __enter__(self) -> "PreemptionWatch":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _on_sigterm(self, signum, frame) -> None:
        self.signalled = True  # nothing else here: a signal handler must not block or log
        self.reason = self.reason or "SIGTERM"

    def _on_sigint(self, signum, frame) -> None:
        # os.write and os._exit only: they are safe inside a signal handler (logging and print are not).
        if self.signalled:
            os.write(2, b"\nsecond Ctrl-C: exiting at once, without saving\n")
            os._exit(130)
        self.signalled, self.reason = True, "SIGINT"
        os.write(2, b"\nCtrl-C: saving a checkpoint at the end of this step, then stopping "
                    b"(Ctrl-C again to exit at once without saving)\n")

    def should_stop(self, step: int) -> bool:
        """Call after every step on every process (the multi-host protocol needs each step)."""
        if self.signalled:
            return True
        if jax.process_count() > 1:
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError as e:
                # No preemption service (jax_enable_preemption_service=False): this run cannot hear a
                # notice. Say so once, loudly, rather than on every step or not at all.
                if not self._service_missing_logged:
                    log.warning("step %d: JAX's preemption service is not available (%s): this run will not "
                                "save a checkpoint on a preemption notice", step, e)
                    self._service_missing_logged = True
                return False
        return False
