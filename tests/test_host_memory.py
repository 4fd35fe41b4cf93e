"""glibc malloc settings for XLA:CPU (sarmae_jax/host_memory.py): a step's scratch buffer keeps its pages."""
import json
import os
import platform
import subprocess
import sys

import pytest

from sarmae_jax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc mallopt calls")


def _scratch_faults(mode: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", SARMAE_HOST_MALLOC=mode)
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "scripts", "scratch_faults.py")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


@glibc_only
def test_scratch_buffer_is_reused_instead_of_refaulted():
    """64 MiB of scratch per call: 16,384 fresh pages per call with glibc's defaults, none once tuned."""
    default, tuned = _scratch_faults("system"), _scratch_faults("")
    assert not default["tuned"] and tuned["tuned"]
    assert default["faults"] > 8000, default
    assert tuned["faults"] < 500, tuned


@glibc_only
def test_tuned_only_when_jax_runs_on_the_cpu(monkeypatch):
    monkeypatch.delenv(host_memory.ENV, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_memory.should_tune()
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert not host_memory.should_tune()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv(host_memory.ENV, "system")
    assert not host_memory.should_tune()
