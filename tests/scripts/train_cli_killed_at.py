"""The `sarmae-train` command line, SIGKILLed right after step N is dispatched (as a preempted VM dies):

    python tests/scripts/train_cli_killed_at.py N [sarmae-train flags ...]

Whatever checkpoint was being written then is lost. Running `python -m sarmae_jax.main` with the same flags
afterwards resumes the run.
"""
import os
import signal
import sys

from sarmae_jax import main
from sarmae_jax.training import loop

if __name__ == "__main__":
    kill_at = int(sys.argv.pop(1))
    train_and_evaluate = loop.train_and_evaluate

    def killed_at_step(config, workdir, on_step=None, **kwargs):
        return train_and_evaluate(config, workdir, **kwargs,
                                  on_step=lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == kill_at else None)

    loop.train_and_evaluate = killed_at_step
    main.run()
