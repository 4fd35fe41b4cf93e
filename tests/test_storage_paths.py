"""User paths, local or gs:// (sarmae_jax.runtime.paths) and metrics.jsonl across resumes
(sarmae_jax.training.metrics_file), against the Cloud Storage emulator on loopback."""
import json
import os
import time

import pytest
from etils import epath

from sarmae_jax import config as config_lib
from sarmae_jax.runtime import paths
from sarmae_jax.training import metrics_file
from tests import gcs_emulator


def test_resolve_keeps_uris_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(paths.resolve("gs://my-bucket/run/", "--workdir")) == "gs://my-bucket/run"
    assert str(paths.resolve("runs/smoke", "--workdir")) == str(tmp_path / "runs" / "smoke")
    for bad, says in (("gs:/my-bucket/run", "gs://BUCKET/PATH"), ("gs://My_Bucket/run", "not a Cloud Storage bucket"),
                      ("gs://ab/run", "not a Cloud Storage bucket"), ("s3://bucket/run", "only Cloud Storage")):
        with pytest.raises(ValueError, match=f"--workdir={bad!r}: .*{says}"):
            paths.resolve(bad, "--workdir")
    with pytest.raises(ValueError, match="config.data.path='gs://b-1/x': .*Cloud Storage FUSE"):
        paths.require_local("gs://b-1/x", "config.data.path", "the Grain pipeline")
    assert not os.path.exists(tmp_path / "gs:")


def test_data_on_a_bucket_fails_in_config_validation_with_the_way_to_read_it(tiny):
    tiny.data.path = "gs://sarmae-data/sar1m"
    with pytest.raises(ValueError, match=r"config.data.path='gs://sarmae-data/sar1m': the Grain pipeline reads local "
                       r"files only .*gcsfuse --implicit-dirs BUCKET /mnt/BUCKET"):
        config_lib.validate(tiny)


def test_write_probe_local(tmp_path):
    paths.check_writable(epath.Path(tmp_path / "new" / "run"), "--workdir")
    assert os.listdir(tmp_path / "new" / "run") == []  # created, probe removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(paths.StorageAccessError, match=f"--workdir={tmp_path}/file/run: cannot write there"):
        paths.check_writable(epath.Path(tmp_path / "file" / "run"), "--workdir")


def test_write_probe_on_buckets(gcs, gcs_dir):
    t0 = time.monotonic()
    paths.check_writable(epath.Path(gcs_dir), "--workdir")
    assert not epath.Path(gcs_dir).exists()  # the probe objects of both clients are gone
    with pytest.raises(paths.StorageAccessError, match=r"--workdir=gs://sarmae-readonly/run: cannot write there "
                       r"through gcsfs: the credentials may not write objects in bucket 'sarmae-readonly'.*Forbidden"):
        paths.check_writable(epath.Path("gs://sarmae-readonly/run"), "--workdir")
    with pytest.raises(paths.StorageAccessError, match="bucket 'no-such-bucket' does not exist"):
        paths.check_writable(epath.Path("gs://no-such-bucket/run"), "--workdir")
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("client, variable", [("gcsfs", "STORAGE_EMULATOR_HOST"),
                                              ("tensorstore", "TENSORSTORE_GCS_HTTP_URL")])
def test_write_probe_unreachable_endpoint_fails_at_once(gcs, monkeypatch, client, variable):
    dead = f"http://127.0.0.1:{gcs_emulator.free_port()}"
    monkeypatch.setenv(variable, dead)  # the other client still reaches the emulator
    t0 = time.monotonic()
    with pytest.raises(paths.StorageAccessError, match=f"--workdir=gs://sarmae-test/x: cannot reach the Cloud Storage "
                       f"endpoint {dead} used by {client} \\({variable}\\): ConnectionRefusedError"):
        paths.check_writable(epath.Path("gs://sarmae-test/x"), "--workdir")
    assert time.monotonic() - t0 < 5


def _records(**steps_and_loss):
    return [{"step": s, "time": 0.0, "loss": l} for s, l in steps_and_loss.items()]


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_metrics_file_resume_keeps_each_step_once(where, tmp_path, request):
    root = epath.Path(request.getfixturevalue("gcs_dir")) if where == "bucket" else epath.Path(tmp_path)
    path = root / "metrics.jsonl"
    first = metrics_file.MetricsFile(path, resume_step=0, flush_secs=3600)
    for s in (2, 4, 6):
        first.write({"step": s, "time": 0.0, "loss": float(s)})
    if where == "bucket":
        assert not path.exists()  # nothing uploaded until a flush (appending is impossible on a bucket)
    first.flush()
    first.write({"step": 8, "time": 0.0, "loss": 8.0})  # logged after the last flush: a crash loses it
    del first  # a crash: no close
    assert [r["step"] for r in metrics_file.read(path)] == ([2, 4, 6, 8] if where == "local" else [2, 4, 6])

    resumed = metrics_file.MetricsFile(path, resume_step=4)  # the checkpoint was step 4
    assert [r["step"] for r in metrics_file.read(path)] == [2, 4]
    for s in (6, 8):
        resumed.write({"step": s, "time": 1.0, "loss": -float(s)})
    resumed.close()
    records = metrics_file.read(path)
    assert [(r["step"], r["loss"]) for r in records] == [(2, 2.0), (4, 4.0), (6, -6.0), (8, -8.0)]


def test_metrics_file_torn_line_and_bad_lines(tmp_path):
    path = epath.Path(tmp_path / "metrics.jsonl")
    path.write_text(json.dumps({"step": 2, "loss": 1.0}) + "\n" + '{"step": 4, "lo')  # killed mid-write
    assert [r["step"] for r in metrics_file.read(path)] == [2]
    metrics_file.MetricsFile(path, resume_step=4).close()
    assert path.read_text() == json.dumps({"step": 2, "loss": 1.0}) + "\n"
    path.write_text('{"step": 2}\nnot json\n{"step": 4}\n')
    with pytest.raises(ValueError, match=f"{path} line 2: not a JSON object"):
        metrics_file.MetricsFile(path, resume_step=4)


def test_output_ownership_on_a_bucket(gcs_dir):
    """Issue 20 on gs://: a new output is marked, reused when resumed, refused when it holds another output
    unless --overwrite (replaced in place: a bucket has no rename), and refused when it holds anything else."""
    from data_pipelines import ownership

    out = f"{gcs_dir}/export"
    claim = ownership.claim(out, tool="t", kind="k", identity="a", resumable=True)
    assert claim.state == "new" and ownership.read_marker(out)["identity"] == "a"
    epath.Path(out, "params").write_text("p")
    assert ownership.claim(out, tool="t", kind="k", identity="a", resumable=True).state == "resume"
    with pytest.raises(ownership.OutputError, match=r"holds an earlier k \(made from a\); pass --overwrite"):
        ownership.claim(out, tool="t", kind="k", identity="b")
    replace = ownership.claim(out, tool="t", kind="k", identity="b", overwrite=True)
    assert replace.state == "replace" and replace.target == out
    replace.commit()
    assert ownership.read_marker(out)["identity"] == "b"
    mine = f"{gcs_dir}/mine"
    epath.Path(mine, "notes.txt").write_text("my notes")
    with pytest.raises(ownership.OutputError, match=r"holds files this command did not write \(notes.txt\)"):
        ownership.claim(mine, tool="t", kind="k", overwrite=True)
    with pytest.raises(ownership.OutputError, match="is the input --data"):
        ownership.claim(f"{gcs_dir}/data/", tool="t", kind="k", inputs={"--data": f"{gcs_dir}/data"})


def test_a_closed_metric_writer_on_a_bucket_uploads_nothing_more(gcs, gcs_dir, monkeypatch):
    """tensorboardX's own gs:// writer uploads again from __del__ (at exit: 120 s retries to a gone bucket)."""
    import gc

    from tensorboardX import record_writer

    from sarmae_jax.training import metrics

    writer = metrics.MetricWriter(gcs_dir, flush_secs=3600)
    writer.write(1, {"loss": 1.0})
    writer.close()
    uploads = []
    monkeypatch.setattr(record_writer.GCSRecordWriter, "flush", lambda self: uploads.append(self.path))
    del writer
    gc.collect()
    assert uploads == []
    assert [p.name for p in (paths.as_path(gcs_dir) / "tensorboard").iterdir()]  # the event file was uploaded
