"""Multi-controller start-up: one code path for one host and many.

`jax.distributed.initialize()` is called when the process was launched as part of a cluster (TPU
pod, SLURM, or an explicit coordinator given by environment); a plain single-process run needs nothing.
"""
from __future__ import annotations

import logging
import os

import jax

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
