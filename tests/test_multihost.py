"""Many hosts on one machine: 2 processes x 2 CPU devices over gloo on loopback give the same losses as
1 process with 4 devices; the launchers' dry runs print the commands they would run."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from sarmae_jax.runtime import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(num_processes, devices, workdir, data, *flags):
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), str(num_processes), str(devices),
         sys.executable, os.path.join(ROOT, "tests", "scripts", "multiprocess_losses.py"), str(workdir), data, *flags],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = [l[len("[0] "):] for l in out.stdout.splitlines() if l.startswith("[0] {")]
    return json.loads(lines[-1]), out.stdout


def test_two_processes_match_one_process(tmp_path, tiny_dataset):
    multi, log = _launch(2, 2, tmp_path / "multi", tiny_dataset)
    single, _ = _launch(1, 4, tmp_path / "single", tiny_dataset, "--losses_only")
    assert (multi["processes"], multi["devices"]) == (2, 4) and (single["processes"], single["devices"]) == (1, 4)
    np.testing.assert_allclose(multi["losses"], single["losses"], rtol=1e-5)
    assert np.isfinite(multi["trained_loss"])
    assert "[1] {" not in log  # only process 0 reports
    assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["2"]
    lines = [json.loads(l) for l in open(tmp_path / "multi" / "metrics.jsonl")]
    assert [l["step"] for l in lines] == [2]  # one writer, not one per process


def test_cloud_launchers_dry_run_print_their_commands():
    tpu = subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu_pod.sh"), "--dry_run", "my-pod", "us-east5-a",
                          "my-project", "--", "--config", "configs/sarmae_vit_b16.py", "--workdir", "gs://b/run"],
                         capture_output=True, text=True, timeout=60)
    assert tpu.returncode == 0, tpu.stderr
    assert "gcloud compute tpus tpu-vm ssh my-pod --zone=us-east5-a --project=my-project --worker=all" in tpu.stdout
    assert "sarmae_jax.main" in tpu.stdout and "gs://b/run" in tpu.stdout
    slurm = subprocess.run(["bash", os.path.join(ROOT, "launch", "slurm.sbatch"), "--dry_run", "--config",
                            "configs/sarmae_vit_b16.py", "--workdir", "/shared/run"],
                           capture_output=True, text=True, timeout=60)
    assert slurm.returncode == 0, slurm.stderr
    assert slurm.stdout.startswith("srun ") and "python -m sarmae_jax.main --config configs/sarmae_vit_b16.py" in slurm.stdout


def test_a_missing_preemption_service_is_logged_once(monkeypatch, caplog):
    """Several processes without JAX's preemption service: no stop, and one warning that says why."""
    def no_service(step):
        raise RuntimeError("Preemption sync manager has not been initialized")

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", no_service)
    watch = distributed.PreemptionWatch()
    with caplog.at_level("WARNING", logger="sarmae_jax"):
        assert [watch.should_stop(step) for step in (1, 2, 3)] == [False, False, False]
    warnings = [r.getMessage() for r in caplog.records if "preemption service" in r.getMessage()]
    assert len(warnings) == 1 and "step 1" in warnings[0] and "has not been initialized" in warnings[0]
