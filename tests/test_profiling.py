"""`train.profile`: a jax.profiler trace of the chosen steps lands in <workdir>/profile, and tracing changes
nothing the run computes."""
import glob
import gzip
import json
import logging
import os

import jax
import numpy as np

from sarmae_jax.training import checkpoint, loop, profiling
from tests.conftest import six_step_config


def test_profile_writes_a_trace_of_the_chosen_steps_and_leaves_the_results_unchanged(tmp_path, tiny_dataset,
                                                                                      six_step_run, caplog):
    c = six_step_config(tiny_dataset)
    c.train.profile = (2, 2)
    with caplog.at_level(logging.INFO, logger="sarmae_jax"):
        loop.train_and_evaluate(c, str(tmp_path))
    runs = glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*"))
    assert len(runs) == 1  # one trace, of steps 2-3
    xplane = glob.glob(os.path.join(runs[0], "*.xplane.pb"))
    perfetto = glob.glob(os.path.join(runs[0], "*.trace.json.gz"))
    assert xplane and os.path.getsize(xplane[0]) > 1000 and perfetto and os.path.getsize(perfetto[0]) > 100
    assert traced_steps(perfetto[0]) == [2, 3]  # the steps asked for, each in its StepTraceAnnotation
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"profiling steps 2-3 into {tmp_path / 'profile'}" in m for m in messages)
    assert any(f"wrote a profiler trace to {tmp_path / 'profile'}" in m for m in messages)
    assert not os.path.exists(os.path.join(six_step_run, "profile"))  # the default (0, 0) traces nothing

    losses = [[l["loss"] for l in map(json.loads, open(os.path.join(d, "metrics.jsonl")))] for d in (six_step_run, tmp_path)]
    assert len(losses[0]) == 6 and losses[0] == losses[1]
    a, _ = checkpoint.load_export(os.path.join(six_step_run, "export"))
    b, _ = checkpoint.load_export(str(tmp_path / "export"))
    jax.tree.map(np.testing.assert_array_equal, a, b)


def traced_steps(perfetto_file: str) -> list[int]:
    """The step numbers of the `StepTraceAnnotation("train", step_num=...)` events in a Perfetto trace."""
    events = json.load(gzip.open(perfetto_file))["traceEvents"]
    return sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == "train" and "step_num" in e.get("args", {}))


def _run_profiler(profiler, steps=5):
    step_fn = jax.jit(lambda x: (x @ x.T).sum())
    for step in range(1, steps + 1):
        profiler.maybe_start(step)
        out = step_fn(jax.numpy.ones((32, 32)))
        profiler.maybe_stop(step, out)
    profiler.stop(out)


def test_only_process_0_traces_unless_all_processes_are_asked_for(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)  # as process 1 of a many-host run
    _run_profiler(profiling.StepProfiler((2, 2), str(tmp_path / "default"), start_step=0))
    assert not os.path.exists(tmp_path / "default" / "profile")  # process 1 writes nothing by default

    profiler = profiling.StepProfiler((2, 2), str(tmp_path / "all"), start_step=0, all_processes=True)
    assert profiler.directory == str(tmp_path / "all" / "profile" / "process_1")
    _run_profiler(profiler)
    perfetto = glob.glob(str(tmp_path / "all" / "profile" / "process_1" / "plugins" / "profile" / "*" / "*.trace.json.gz"))
    assert len(perfetto) == 1 and traced_steps(perfetto[0]) == [2, 3]
    assert os.listdir(tmp_path / "all" / "profile") == ["process_1"]


def test_a_trace_of_a_bucket_run_lands_on_the_bucket(gcs, gcs_dir, tmp_path, monkeypatch):
    """The profiler writes on this host's disk and the files are uploaded to <workdir>/profile on the bucket."""
    from etils import epath

    monkeypatch.setenv("SARMAE_CACHE_DIR", str(tmp_path / "cache"))
    profiler = profiling.StepProfiler((1, 1), gcs_dir, start_step=0)
    profiler.maybe_start(1)
    out = jax.jit(lambda x: (x @ x.T).sum())(jax.numpy.ones((64, 64)))
    profiler.maybe_stop(1, out)
    uploaded = [p for p in epath.Path(gcs_dir, "profile", "plugins", "profile").glob("*/*") if p.is_file()]
    names = sorted(p.name for p in uploaded)
    assert any(n.endswith(".xplane.pb") for n in names) and any(n.endswith(".trace.json.gz") for n in names), names
    assert all(p.stat().length > 0 for p in uploaded)
    assert not os.listdir(tmp_path / "cache" / "profile")  # the staging directory is removed
