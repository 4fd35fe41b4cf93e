"""Train the tiny config and, optionally, send this very process a signal right after step N is dispatched:

    python tests/scripts/train_with_signal.py WORKDIR DATA_PATH [KILL|TERM STEP]

A real signal, delivered mid-run: SIGKILL ends the process on the spot (whatever checkpoint was being
written is lost); SIGTERM must make the trainer save at the step boundary and return normally (exit 0).
Prints the returned metrics as JSON.
"""
import json
import os
import signal
import sys

from sarmae_jax.training import loop, metrics
from tests.tiny_train_config import get_config

if __name__ == "__main__":
    metrics.setup_logging()
    workdir, data_path = sys.argv[1:3]
    on_step = None
    if len(sys.argv) > 3:
        signum, at_step = getattr(signal, "SIG" + sys.argv[3]), int(sys.argv[4])
        on_step = lambda step: os.kill(os.getpid(), signum) if step == at_step else None
    c = get_config()
    c.data.path = data_path
    print(json.dumps(loop.train_and_evaluate(c, workdir, on_step=on_step)))
