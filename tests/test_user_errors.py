"""Issue 20 (cases 11, 13): user errors on the absl commands are one or two lines, exit code 2, no traceback
(`--debug` / SARMAE_DEBUG=1 show it); a missing eval checkpoint is named as missing; a teacher checkpoint refused
by the unpickling allowlist never relays torch's advice to load with weights_only=False."""
from __future__ import annotations

import datetime
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(module, *args, env=None):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **(env or {})))
    return proc.returncode, proc.stderr.strip()


def _one_line(stderr):
    # absl may log a line or two of start-up noise before the message; the message itself is the last line.
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in lines if ": error: " in line]


def test_case11_a_misspelled_config_key_is_one_line_with_the_hint(tmp_path):
    args = ["--config", "tests/tiny_train_config.py", "--workdir", str(tmp_path / "w"), "--config.optim.lrr=1"]
    rc, err = _cli("sarmae_jax.main", *args)
    assert rc == 2
    assert _one_line(err) == ['sarmae-train: error: --config.optim.lrr: no such config key \'lrr\'; '
                              'Did you mean "lr" instead of "lrr"?'], err
    rc, err = _cli("sarmae_jax.main", *args, env={"SARMAE_DEBUG": "1"})
    assert rc != 0 and "Traceback" in err


def test_case11_a_validation_error_is_one_line(tmp_path):
    rc, err = _cli("sarmae_jax.main", "--config", "tests/tiny_train_config.py", "--workdir", str(tmp_path / "w"),
                   "--config.train.batch_size=-3")
    assert rc == 2
    [line] = _one_line(err)
    assert line.startswith("sarmae-train: error: ") and "batch_size" in line and "-3" in line, err
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_case13_eval_of_a_missing_checkpoint_says_it_does_not_exist(tmp_path):
    rc, err = _cli("sarmae_jax.evaluate.cli", "--config", "configs/eval/synthetic.py", "--checkpoint",
                   str(tmp_path / "does" / "not" / "exist"), "--workdir", str(tmp_path / "eval"))
    assert rc == 2
    [line] = _one_line(err)
    assert f"config.checkpoint {tmp_path}/does/not/exist does not exist" in line and "metadata.json" not in line


def test_case13_a_refused_teacher_checkpoint_never_advises_weights_only_false(tmp_path):
    torch = pytest.importorskip("torch")
    from sarmae_jax import config as config_lib
    from sarmae_jax.convert import teacher_weights

    path = tmp_path / "dinov3.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "when": datetime.date(2026, 1, 1)}, path)
    with pytest.raises(ValueError) as info:
        teacher_weights.load_teacher_checkpoint(config_lib.default_config().sarc.teacher, str(path), 32)
    message = str(info.value)
    assert "dinov3.pth: holds pickled objects of ['datetime.date']" in message
    assert "Re-running `torch.load` with `weights_only` set to `False`" not in message
    assert "pytorch.org" not in message and "torch said" not in message
    assert info.value.__cause__ is None  # torch's advice does not travel in the chain either
