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
    Use as a context manager; the previous SIGTERM handler is put back on exit.
    """

    def __init__(self):
        self.signalled = False
        self._previous = None
        self._service_missing_logged = False

    def __enter__(self) -> "PreemptionWatch":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        self.signalled = True  # nothing else here: a signal handler must not block or log

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
