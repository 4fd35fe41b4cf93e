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


def _six_step_workdir(tmp_path, tiny_dataset, stop_at=None):
    """A tiny run stopped (SIGTERM) at `stop_at` after saving, or run to its end (6 steps, checkpoints 2, 4, 6)."""
    workdir = str(tmp_path / "run")
    c = six_step_config(tiny_dataset)
    c.train.checkpoint_every = 2

    def stop(step):
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    loop.train_and_evaluate(c, workdir, on_step=stop)
    return c, workdir


def test_case8_resume_with_another_lr_or_data_is_refused_unless_accepted_and_then_recorded(tmp_path, tiny_dataset):
    import json

    import pytest

    from sarmae_jax.training import resume

    c, workdir = _six_step_workdir(tmp_path, tiny_dataset, stop_at=4)
    changed = c.copy_and_resolve_references()
    changed.optim.lr = 0.5
    changed.train.log_every = 3  # free: no refusal for it
    with pytest.raises(resume.ResumeChangeError, match=r"resuming from step 4 with a changed run: optim.lr: .* -> 0.5"
                       r"\. Pass --resume_accept=optim.lr") as info:
        loop.train_and_evaluate(changed, workdir)
    assert "log_every" not in str(info.value)
    loop.train_and_evaluate(changed, workdir, resume_accept=resume.parse_accept("config.optim.lr"))
    meta = json.load(open(os.path.join(workdir, "export", "metadata.json")))
    assert meta["resume_changes"] == [{"step": 4, "changes": ["optim.lr: 0.001 -> 0.5"]}]
    card = open(os.path.join(workdir, "export", "README.md")).read()
    assert "Resumed at step 4 with a changed config" in card and "optim.lr: 0.001 -> 0.5" in card


def test_case10_damaged_latest_checkpoint_is_named_and_the_intact_one_taken_on_request(tmp_path, tiny_dataset):
    import shutil

    import pytest

    from sarmae_jax.training import resume

    c, workdir = _six_step_workdir(tmp_path, tiny_dataset)
    damaged = os.path.join(workdir, "checkpoints", "6", "state", "ocdbt.process_0")
    shutil.rmtree(damaged)
    c.train.num_steps = 8
    with pytest.raises(resume.DamagedCheckpointError) as info:
        loop.train_and_evaluate(c, workdir, resume_accept=("train.num_steps",))
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "checkpoint step 6" in message and "is damaged" in message and "the previous step is 4" in message
    assert "--resume_from_intact" in message
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "6", "state"))  # untouched
    final = loop.train_and_evaluate(c, workdir, resume_accept=("train.num_steps",), resume_from_intact=True)
    assert "preempted_at_step" not in final
    assert os.path.isdir(os.path.join(workdir, resume.DAMAGED_DIR, "6", "state"))  # moved aside, not deleted
    assert 8 in checkpoint.Checkpoints(workdir, keep=3).all_steps()


def test_keys_added_to_the_code_since_the_checkpoint_are_no_change_at_their_default():
    import json

    from sarmae_jax import config as config_lib
    from sarmae_jax.training import resume

    current = json.loads(config_lib.default_config().to_json_best_effort())
    saved = json.loads(json.dumps(current))
    del saved["train"]["profile_all_processes"], saved["optim"]["min_lr"]  # written before these keys existed
    assert resume.changed_keys(saved, current) == []
    current["optim"]["min_lr"] = 1e-6  # not the default: a change the user made
    current["train"]["profile_all_processes"] = True  # profiling: free
    assert resume.changed_keys(saved, current) == [("optim.min_lr", "'<absent>' -> 1e-06")]
