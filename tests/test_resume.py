"""Exact resume: a run killed with SIGKILL, resumed, stopped with SIGTERM and resumed again ends with
parameters bitwise identical to an uninterrupted run with the same seed (data order included: the Grain
iterator's position is in the checkpoint). Each run is a separate Python process, as on a cluster."""
import json
import os
import subprocess
import sys

import jax
import numpy as np

from sarmae_jax.training import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(workdir, data, *signal_at):
    # The test session's compilation cache: the four processes compile the step once between them.
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    return subprocess.run([sys.executable, os.path.join(ROOT, "tests", "scripts", "train_with_signal.py"),
                           str(workdir), data, *map(str, signal_at)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def _result(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sigkill_and_sigterm_then_resume_is_bitwise_identical(tmp_path, tiny_dataset):
    straight = _result(_train(tmp_path / "straight", tiny_dataset))
    assert "preempted_at_step" not in straight

    interrupted = tmp_path / "interrupted"
    killed = _train(interrupted, tiny_dataset, "KILL", 5)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not os.path.exists(interrupted / "export")
    steps_after_kill = checkpoint.Checkpoints(str(interrupted), keep=3).all_steps()
    assert steps_after_kill and max(steps_after_kill) <= 5  # resumes from what was complete when killed

    stopped = _result(_train(interrupted, tiny_dataset, "TERM", 7))  # exit 0: saved at the step boundary
    assert stopped["preempted_at_step"] == 7.0
    assert 7 in checkpoint.Checkpoints(str(interrupted), keep=3).all_steps()
    assert not os.path.exists(interrupted / "export")

    finished = _result(_train(interrupted, tiny_dataset))
    assert "preempted_at_step" not in finished
    a, _ = checkpoint.load_export(str(tmp_path / "straight" / "export"))
    b, _ = checkpoint.load_export(str(interrupted / "export"))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    # The whole train state too (Adam moments, step and skip counters), from the two final checkpoints.
    final = [checkpoint.Checkpoints(str(d), keep=3).restore_latest(None, None) for d in (tmp_path / "straight", interrupted)]
    assert final[0][0] == final[1][0] == 8
    jax.tree.map(np.testing.assert_array_equal, final[0][1], final[1][1])
    lines = [json.loads(l) for l in open(interrupted / "metrics.jsonl")]
    assert lines[-1]["step"] == 8
