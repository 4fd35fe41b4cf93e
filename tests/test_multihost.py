"""Many hosts on one machine: 2 processes x 2 CPU devices over gloo on loopback give the same losses as
1 process with 4 devices (and an in-loop k-NN equal to sarmae-eval's on the export); a run saved by 2
processes resumes on 1 and on 4 with the same global batches and losses; the launchers' dry runs print the
commands they would run."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils

from sarmae_jax.data import pipeline
from sarmae_jax.evaluate import config as eval_config
from sarmae_jax.evaluate import pipeline as eval_pipeline
from sarmae_jax.runtime import distributed
from tests.conftest import six_step_config

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


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_dataset, tiny_labelled):
    """2 processes x 2 devices: the step's losses, then a 2-step run that checkpoints its last step."""
    workdir = tmp_path_factory.mktemp("two_processes") / "run"
    result, log = _launch(2, 2, workdir, tiny_dataset, "--labelled", tiny_labelled)
    return result, log, workdir


def test_two_processes_match_one_process(tmp_path, tiny_dataset, tiny_labelled, two_process_run):
    multi, log, workdir = two_process_run
    single, _ = _launch(1, 4, tmp_path / "single", tiny_dataset, "--losses_only")
    assert (multi["processes"], multi["devices"]) == (2, 4) and (single["processes"], single["devices"]) == (1, 4)
    np.testing.assert_allclose(multi["losses"], single["losses"], rtol=1e-5)
    assert np.isfinite(multi["trained_loss"])
    assert "[1] {" not in log  # only process 0 reports
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
    lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    assert [l["step"] for l in lines] == [2, 2]  # one writer, not one per process: training, then evaluation
    # The k-NN of the 4 devices of 2 processes is that of sarmae-eval on the export (one device, same split).
    e = eval_config.default_config()
    e.checkpoint, e.dataset.kind, e.dataset.path = str(workdir / "export"), "records", tiny_labelled
    e.splits, e.protocols, e.knn.seeds = ("all",), ("knn",), (0,)
    standalone = eval_pipeline.run(e, str(tmp_path / "eval"))["classification"][0]["runs"][0]["test_last"]
    assert abs(lines[1]["eval/knn/top1"] - standalone) <= 0.5, (lines[1], standalone)


def test_each_process_writes_its_own_profiler_trace(two_process_run):
    """train.profile_all_processes: each process's trace whole in its own folder (a shared folder lost one
    process's files, or crashed JAX's Perfetto writer)."""
    from tests.test_profiling import traced_steps

    _, log, workdir = two_process_run
    assert sorted(os.listdir(workdir / "profile")) == ["process_0", "process_1"]
    for process in (0, 1):
        runs = list((workdir / "profile" / f"process_{process}" / "plugins" / "profile").iterdir())
        assert len(runs) == 1, runs
        assert len(list(runs[0].glob("*.xplane.pb"))) == 1
        perfetto = list(runs[0].glob("*.trace.json.gz"))
        assert len(perfetto) == 1 and traced_steps(str(perfetto[0])) == [2]


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


def _resume(num_processes, devices, workdir, data, record):
    """Resume the run in `workdir` on `num_processes` x `devices`; the global batches it drew, its losses."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), str(num_processes), str(devices),
         sys.executable, os.path.join(ROOT, "tests", "scripts", "elastic_resume.py"), str(workdir), data, str(record)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    reports = [json.load(open(f"{record}.{p}.json")) for p in range(num_processes)]
    assert {(r["processes"], r["devices"]) for r in reports} == {(num_processes, 4)}
    batches = {}  # global batch position -> the fingerprint of each of its rows, from all processes
    for r in reports:
        for position, rows in r["seen"].items():
            batches.setdefault(int(position), {}).update({int(k): v for k, v in rows.items()})
    losses = {l["step"]: l["loss"] for l in map(json.loads, open(os.path.join(workdir, "metrics.jsonl"))) if "loss" in l}
    return {p: [rows[i] for i in range(len(rows))] for p, rows in batches.items()}, losses


def test_a_run_saved_by_two_processes_resumes_on_one_and_on_four_with_the_same_examples(
        tmp_path, tiny_dataset, two_process_run, six_step_run):
    """The 2-process run saved step 2 (its warm-up steps: the same learning rates as a 6-step run's); resumed to
    step 6 by 1 process x 4 devices and by 4 processes x 1 device, it draws the global batches of an uninterrupted
    run and its losses follow that run's."""
    saved = two_process_run[2]
    c = six_step_config(tiny_dataset)
    stream = pipeline.make_train_iterator(pipeline.prepare(c.data, c.model, str(tmp_path)),
                                          global_batch_size=c.train.batch_size, seed=c.seed)
    straight = {p: [hashlib.sha1(img.tobytes()).hexdigest() for img in next(stream)["sar"]] for p in range(6)}
    straight_losses = {l["step"]: l["loss"] for l in map(json.loads, open(os.path.join(six_step_run, "metrics.jsonl")))}
    assert all(len(set(rows)) == 8 for rows in straight.values())
    for processes, devices in ((1, 4), (4, 1)):
        workdir = tmp_path / f"resumed_on_{processes}"
        shutil.copytree(saved, workdir)
        resumed, losses = _resume(processes, devices, workdir, tiny_dataset, tmp_path / f"record_{processes}")
        assert sorted(resumed) == [2, 3, 4, 5]  # it continued at global batch 2, not from the start
        for p in resumed:
            assert resumed[p] == straight[p], (processes, p)
        print(f"resumed on {processes} x {devices}: global batches 2-5 identical to the uninterrupted run's; losses "
              f"of steps 3-6 {[losses[s] for s in (3, 4, 5, 6)]} vs {[straight_losses[s] for s in (3, 4, 5, 6)]}")
        np.testing.assert_allclose([losses[s] for s in (3, 4, 5, 6)], [straight_losses[s] for s in (3, 4, 5, 6)],
                                   rtol=1e-5)
