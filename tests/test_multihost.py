"""Many hosts on one machine: 2 processes x 2 CPU devices over gloo on loopback give the same losses as
1 process with 4 devices; a run saved by 2 processes resumes on 1 and on 4 with the same global batches;
the launchers' dry runs print the commands they would run."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from sarmae_jax.data import pipeline
from sarmae_jax.runtime import distributed
from sarmae_jax.training import loop
from tests.tiny_train_config import get_config

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


def _elastic(num_processes, devices, workdir, data, stop_at, record):
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), str(num_processes), str(devices),
         sys.executable, os.path.join(ROOT, "tests", "scripts", "elastic_resume.py"), str(workdir), data, "6",
         str(stop_at), str(record)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    reports = [json.load(open(f"{record}.{p}.json")) for p in range(num_processes)]
    assert {(r["processes"], r["devices"]) for r in reports} == {(num_processes, 4)}
    batches = {}  # global batch position -> the fingerprint of each of its rows, from all processes
    for r in reports:
        for position, rows in r["seen"].items():
            batches.setdefault(int(position), {}).update({int(k): v for k, v in rows.items()})
    losses = {l["step"]: l["loss"] for l in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))}
    return {p: [rows[i] for i in range(len(rows))] for p, rows in batches.items()}, losses, reports[0]["result"]


def _straight_run(workdir, data):
    """The uninterrupted run, in this process (one device): its global batches and per-step losses."""
    c = get_config()
    c.data.path, c.train.num_steps, c.train.log_every, c.train.checkpoint_every = data, 6, 1, 1000
    loop.train_and_evaluate(c, str(workdir))
    losses = {l["step"]: l["loss"] for l in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))}
    prepared = pipeline.prepare(c.data, c.model, str(workdir))
    stream = pipeline.make_train_iterator(prepared, global_batch_size=c.train.batch_size, seed=c.seed)
    batches = {p: [hashlib.sha1(img.tobytes()).hexdigest() for img in next(stream)["sar"]] for p in range(6)}
    return batches, losses


def test_a_run_saved_by_two_processes_resumes_on_one_and_on_four_with_the_same_examples(tmp_path, tiny_dataset):
    straight, straight_losses = _straight_run(tmp_path / "straight", tiny_dataset)
    saved, _, stopped = _elastic(2, 2, tmp_path / "saved", tiny_dataset, 3, tmp_path / "saved")
    assert stopped["preempted_at_step"] == 3.0 and sorted(saved) == [0, 1, 2]
    assert all(len(set(straight[p])) == 8 for p in straight)
    for p in saved:
        assert saved[p] == straight[p]
    for processes, devices in ((1, 4), (4, 1)):
        workdir = tmp_path / f"resumed_on_{processes}"
        shutil.copytree(tmp_path / "saved", workdir)
        resumed, losses, _ = _elastic(processes, devices, workdir, tiny_dataset, 0, tmp_path / f"resumed_on_{processes}")
        assert sorted(resumed) == [3, 4, 5]  # it continued at global batch 3, not from the start
        for p in resumed:
            assert resumed[p] == straight[p], (processes, p)
        np.testing.assert_allclose([losses[s] for s in (4, 5, 6)], [straight_losses[s] for s in (4, 5, 6)], rtol=1e-5)
