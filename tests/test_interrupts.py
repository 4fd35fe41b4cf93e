"""Issue 20: Ctrl-C stops sarmae-train like SIGTERM (saved at the step boundary, one line); a second Ctrl-C exits
at once. A run resumed with a changed config is refused naming the keys unless accepted, and accepted changes are
recorded. A damaged latest checkpoint is named, and the newest intact step is offered or (when asked) taken."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from sarmae_jax.training import checkpoint, loop
from tests.conftest import six_step_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ctrl_c_saves_at_the_step_boundary_and_stops(tmp_path, tiny_dataset, capfd):
    workdir = str(tmp_path / "run")

    def interrupt(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    final = loop.train_and_evaluate(six_step_config(tiny_dataset), workdir, on_step=interrupt)
    assert final["preempted_at_step"] == 3.0
    assert 3 in checkpoint.Checkpoints(workdir, keep=3).all_steps()
    assert not os.path.exists(os.path.join(workdir, "export"))
    err = capfd.readouterr().err
    assert "Ctrl-C: saving a checkpoint at the end of this step, then stopping" in err
    assert "KeyboardInterrupt" not in err
    # Python's own Ctrl-C is back after the run.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_second_ctrl_c_exits_at_once(tmp_path):
    script = ("import os, signal, time\n"
              "from sarmae_jax.runtime import distributed\n"
              "with distributed.PreemptionWatch() as watch:\n"
              "    os.kill(os.getpid(), signal.SIGINT)\n"
              "    assert watch.should_stop(1) and watch.reason == 'SIGINT'\n"
              "    os.kill(os.getpid(), signal.SIGINT)\n"
              "    time.sleep(30)\n"
              "print('not reached')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "second Ctrl-C: exiting at once" in proc.stderr and "not reached" not in proc.stdout
    assert "Traceback" not in proc.stderr
