"""Run directories, exports and evaluations on gs:// buckets, against the Cloud Storage emulator on loopback.

Each training run is the `sarmae-train` command line in its own process, started in an empty folder that must
stay empty (no local `gs:` folder), as a user on a TPU VM would start it.
"""
import json
import os
import re
import shlex
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from tensorboardX.proto import event_pb2

from sarmae_jax.convert import cli, teacher_weights
from sarmae_jax.evaluate import config as eval_config
from sarmae_jax.evaluate import pipeline
from sarmae_jax.models import teachers
from sarmae_jax.training import checkpoint, loop, metrics_file, teacher_tokens
from tests import gcs_emulator, tiny_train_config
from tests.conftest import build_parts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "tiny_train_config.py")
TRAIN = [sys.executable, "-m", "sarmae_jax.main", "--config", CONFIG]
KILLED_AT = [sys.executable, os.path.join(ROOT, "tests", "scripts", "train_cli_killed_at.py")]


def _env(tmp_path, **changes) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", SARMAE_CACHE_DIR=str(tmp_path / "host_cache"),
               JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    env.update(changes)
    return {k: v for k, v in env.items() if v is not None}


def _run(cmd, cwd, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _events(directory: epath.Path) -> list:
    """TensorBoard events of every event file in `directory`, oldest file first (TFRecord framing)."""
    out = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            out.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
            offset += 12 + length + 4
    return out


def _shown_scalar_steps(events, tag: str) -> list[int]:
    """Steps TensorBoard shows for `tag`: a session start at step s purges the earlier events of steps >= s."""
    steps = []
    for e in events:
        if e.HasField("session_log") and e.session_log.status == e.session_log.START:
            steps = [s for s in steps if s < e.step]
        steps += [e.step for v in e.summary.value if v.tag == tag]
    return steps


def test_bucket_run_killed_after_first_checkpoint_resumes_to_the_local_result(gcs, gcs_dir, tmp_path):
    run = f"{gcs_dir}/run"
    flags = ["--workdir", run]
    env = _env(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    local = subprocess.Popen(TRAIN + ["--workdir", str(tmp_path / "local")], cwd=cwd, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    killed = _run(KILLED_AT + ["5"] + TRAIN[3:] + flags, cwd, env)
    assert killed.returncode == -9, killed.stderr[-3000:]
    committed = ocp.utils.checkpoint_steps(f"{run}/checkpoints")
    assert 2 in committed and max(committed) <= 4, committed  # killed after its first checkpoint
    assert not epath.Path(run, "export").exists()

    t0 = time.monotonic()
    resumed = _run(TRAIN + flags, cwd, env)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {max(committed)}" in resumed.stderr, resumed.stderr[-3000:]
    out, err = local.communicate(timeout=300)
    assert local.returncode == 0, err[-3000:]
    print(f"resumed run: {time.monotonic() - t0:.1f} s")

    # The final train state (parameters, Adam moments, counters) and the export equal the local run's, bit for bit.
    on_bucket = checkpoint.Checkpoints(run, keep=3).restore_latest(None, None)
    on_disk = checkpoint.Checkpoints(str(tmp_path / "local"), keep=3).restore_latest(None, None)
    assert on_bucket[0] == on_disk[0] == 8
    jax.tree.map(np.testing.assert_array_equal, on_bucket[1], on_disk[1])
    exported, meta = checkpoint.load_export(f"{run}/export")
    jax.tree.map(np.testing.assert_array_equal, exported, checkpoint.load_export(str(tmp_path / "local" / "export"))[0])
    assert meta["total_steps"] == 8

    # Every logged step once, in metrics.jsonl and in what TensorBoard shows; the image grid is there.
    assert [r["step"] for r in metrics_file.read(epath.Path(run, "metrics.jsonl"))] == [2, 4, 6, 8]
    events = _events(epath.Path(run, "tensorboard"))
    assert len(list(epath.Path(run, "tensorboard").iterdir())) == 2  # one event file per process
    assert sorted(_shown_scalar_steps(events, "loss")) == [2, 4, 6, 8]
    assert epath.Path(run, "images", "step_0000008.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The synthetic set went to the host cache (the readers cannot read a bucket), not to the bucket.
    assert os.listdir(tmp_path / "host_cache" / "synthetic")
    assert not epath.Path(run, "data").exists()
    assert os.listdir(cwd) == [] and not os.path.exists(os.path.join(ROOT, "gs:"))


def _tiny_state_and_metadata(**model_changes):
    """A freshly initialised train state of the subprocess runs' tiny config (model keys changed as given), built by
    the trainer's builder, and its run metadata."""
    c = tiny_train_config.get_config()
    c.model.update(model_changes)
    parts = build_parts(c, total_steps=c.train.num_steps, steps_per_epoch=c.train.num_steps)
    return c, parts.init_state(jax.random.key(0)), checkpoint.run_metadata(c)


def test_export_import_and_evaluation_on_a_bucket(gcs, gcs_dir, tmp_path):
    c, state, meta = _tiny_state_and_metadata()
    export = checkpoint.export_params(f"{gcs_dir}/export", state.params, meta)
    assert export == f"{gcs_dir}/export"
    # sarmae-export reads the bucket's export and writes a bucket file; sarmae-import reads that and writes an export.
    released = f"{gcs_dir}/torch/sarmae_pretrain.pth"
    assert cli.export_main([export, released, "--format", "sarmae-pretrain"]) == 0
    assert epath.Path(f"{released}.README.md").read_text().startswith("# sarmae_pretrain.pth")  # its model card
    assert epath.Path(export, "README.md").exists()
    imported = f"{gcs_dir}/imported"
    d = c.model.decoder
    assert cli.import_main([released, imported, "--size", c.model.size, "--image-size", str(c.model.image_size),
                            "--decoder-width", str(d.width), "--decoder-depth", str(d.depth),
                            "--decoder-heads", str(d.num_heads)]) == 0
    back, back_meta = checkpoint.load_export(imported)
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, state.params))
    assert back_meta["source"] == released and back_meta["imported_parts"] == ["anchor_head", "decoder", "encoder"]

    # The trainer's other inputs from the bucket: train.init_from (an export) and the SARC teacher's weights (kind
    # "vit" reads timm files, such as sarmae-export's).
    _, fresh, _ = _tiny_state_and_metadata()
    fresh_params = jax.tree.map(lambda x: x + 1, fresh.params)
    jax.tree.map(np.testing.assert_array_equal, loop.maybe_init_from(fresh_params, export), state.params)
    timm = f"{gcs_dir}/torch/encoder.safetensors"
    assert cli.export_main([export, timm, "--format", "timm"]) == 0
    teacher_cfg = c.sarc.teacher.copy_and_resolve_references()
    teacher_cfg.update(kind="vit", size=c.model.size, checkpoint=timm)
    module, _ = teachers.build_teacher(teacher_cfg)
    teacher = teacher_weights.load_teacher_params(teacher_cfg, module, c.model.image_size)
    np.testing.assert_array_equal(teacher["encoder"]["patch_embed"]["proj"]["kernel"],
                                  state.params["encoder"]["patch_embed"]["proj"]["kernel"])

    # sarmae-eval: the bucket's export in, results, figure and feature cache out to the bucket.
    cfg = eval_config.default_config()
    cfg.checkpoint = export
    cfg.dataset.path = str(tmp_path / "synthetic")
    cfg.dataset.synthetic.update(num_examples=60, num_test_examples=20, image_size=32, examples_per_shard=64)
    cfg.protocols = ("knn", "reconstruction")
    cfg.splits = ("shots:4",)
    cfg.knn.update(k=3, seeds=(0,))
    cfg.reconstruction.update(looks=(1.0,), num_images=8, batch_size=8, window=4, figure_images=1)
    results = pipeline.run(cfg, f"{gcs_dir}/eval")
    saved = json.loads(epath.Path(gcs_dir, "eval", "results.json").read_text())
    assert saved["encoder"] == export and saved["classification"][0]["protocol"].startswith("knn")
    assert saved["classification"][0]["summary"] == results["classification"][0]["summary"]
    assert epath.Path(gcs_dir, "eval", "results.md").read_text().startswith(f"# Evaluation of `{export}`")
    assert saved["reconstruction"]["figure"] == f"{gcs_dir}/eval/reconstruction.png"
    assert epath.Path(gcs_dir, "eval", "reconstruction.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list(epath.Path(gcs_dir, "eval", "features").iterdir())) == 2  # train and test features
    assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_bad_bucket_paths_fail_at_start_up_naming_the_path(gcs, gcs_dir, tmp_path):
    foreign = f"{gcs_dir}/foreign"  # holds a checkpoint of another model (a wider decoder)
    _, state, meta = _tiny_state_and_metadata(decoder={"width": 64, "depth": 1, "num_heads": 2})
    saved = checkpoint.Checkpoints(foreign, keep=1)
    saved.save(3, state, None, meta)
    saved.close()
    locked = gcs_emulator.Emulator("sarmae-private", require_auth=True)  # answers 401 to anonymous callers
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    no_credentials = dict(locked.env, FSSPEC_GS_TOKEN=None, GOOGLE_AUTH_TOKEN_FOR_TESTING=None,
                          GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "no-such-adc.json"),
                          CLOUDSDK_CONFIG=str(tmp_path / "no-gcloud"))
    cases = {  # name: (flags, environment changes, what stderr must say)
        "read-only": (["--workdir", "gs://sarmae-readonly/run"], {},
                      "--workdir=gs://sarmae-readonly/run: cannot write there through gcsfs: the credentials may not "
                      "write objects in bucket 'sarmae-readonly'"),
        "no credentials": (["--workdir", "gs://sarmae-private/run"], no_credentials,
                           "--workdir=gs://sarmae-private/run: cannot write there through gcsfs: the request carried no "
                           "valid credentials"),
        "incompatible": (["--workdir", foreign], {},
                         f"{foreign}/checkpoints holds checkpoint step 3 of another run: its train state differs"),
    }
    try:
        started = {}
        for name, (flags, changes, _) in cases.items():  # at once; output to files (a full pipe would block)
            err = open(tmp_path / f"{name}.err", "w+")
            started[name] = (time.monotonic(), err, subprocess.Popen(TRAIN + flags, cwd=cwd, env=_env(tmp_path, **changes),
                                                                     stdout=subprocess.DEVNULL, stderr=err))
        ended, deadline = {}, time.monotonic() + 180
        while len(ended) < len(started) and time.monotonic() < deadline:  # each one's own time
            for name, (_, _, proc) in started.items():
                if name not in ended and proc.poll() is not None:
                    ended[name] = time.monotonic()
            time.sleep(0.05)
        errors = {}
        for name, (t0, err, proc) in started.items():
            assert name in ended, f"{name}: still running after 180 s"
            err.seek(0)
            errors[name] = err.read()
            assert proc.returncode != 0 and cases[name][2] in errors[name], (name, errors[name][-3000:])
            assert "first step (compilation included)" not in errors[name], name
            if name != "incompatible":
                assert " I mesh " not in errors[name], name  # the write probe runs before anything else
            print(f"{name}: failed after {ended[name] - t0:.1f} s")
            assert ended[name] - t0 < 60, name  # three at once on two cores; alone each takes about 6 s
    finally:
        locked.close()
        for _, err, proc in started.values():
            if proc.poll() is None:
                proc.kill()
            err.close()
    assert "google.auth.default: DefaultCredentialsError" in errors["no credentials"]
    incompatible = errors["incompatible"]
    assert "params.decoder.embed.kernel: checkpoint (128, 64) float32, this run (128, 32) float32" in incompatible
    assert "config.model.decoder.width: 64 -> 32" in incompatible
    assert os.listdir(cwd) == []


def _documented_train_commands() -> dict[str, list[str]]:
    """The sarmae-train flags of every command the recipes' docstrings and launch/tpu_pod.sh show a user."""
    commands = {}
    for name in ("sarmae_vit_b16", "sarmae_vit_l16"):
        text = open(os.path.join(ROOT, "configs", f"{name}.py")).read()
        line = re.search(r"^\s*sarmae-train (.*?[^\\])$", text.replace("\\\n", " "), re.M).group(1)
        commands[f"configs/{name}.py"] = shlex.split(line)
    usage = open(os.path.join(ROOT, "launch", "tpu_pod.sh")).read()
    example, = [line for line in re.findall(r"^#\s+launch/tpu_pod.sh (.*?[^\\])$", re.sub(r"\\\n#\s*", " ", usage), re.M)
                if "TPU_NAME" not in line]  # the example, not the usage line
    printed = _run(["bash", os.path.join(ROOT, "launch", "tpu_pod.sh"), "--dry_run", *shlex.split(example)], ROOT,
                   dict(os.environ))
    assert printed.returncode == 0, printed.stderr
    remote = shlex.split(shlex.split(printed.stdout)[-1].split("&&", 1)[1])  # the --command="cd ... && ..." part
    assert remote[:3] == ["python", "-m", "sarmae_jax.main"], remote
    commands["launch/tpu_pod.sh"] = remote[3:]
    return commands


def test_documented_commands_pass_the_trainers_start_up_checks(tmp_path):
    """The commands of the recipes and the TPU launcher, as written: flags the trainer defines, a valid config, a gs://
    run directory, weights on gs:// and the dataset on a FUSE mount."""
    commands = _documented_train_commands()
    assert all("--workdir" in flags for flags in commands.values())
    procs = {name: subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "scripts", "check_train_command.py"),
                                     *flags], cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, flags in commands.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (name, commands[name], err[-3000:])
        workdir = commands[name][commands[name].index("--workdir") + 1]
        assert out.strip().splitlines()[-1] == workdir and workdir.startswith("gs://"), (name, out)


def test_precomputed_teacher_tokens_go_to_a_bucket_manifest_last(gcs, gcs_dir, tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setenv("SARMAE_CACHE_DIR", str(tmp_path / "host_cache"))
    uploaded = []  # the bucket objects in the order the upload opens them

    class RecordingTarget:
        def __init__(self, target):
            self.target = target

        def __truediv__(self, name):
            uploaded.append(name)
            return self.target / name

    upload = teacher_tokens.upload_tree
    monkeypatch.setattr(teacher_tokens, "upload_tree",
                        lambda local, target, last: upload(local, RecordingTarget(target), last))
    c = tiny_train_config.get_config()
    out = f"{gcs_dir}/with_tokens"
    manifest = teacher_tokens.precompute(tiny_dataset, out, c.sarc.teacher, batch_size=16, splits=["test"])
    shards = [shard["file"] for shard in manifest["splits"]["test"]["shards"]]
    assert uploaded[-1] == "manifest.json" and set(shards) <= set(uploaded[:-1]), uploaded  # a reader never sees a
    # manifest whose shards are not all there
    assert manifest["features"]["teacher_tokens"]["teacher"] == teachers.teacher_identity(c.sarc.teacher)
    assert json.loads(epath.Path(out, "manifest.json").read_text()) == manifest
    for shard in manifest["splits"]["test"]["shards"]:
        assert epath.Path(out, shard["file"]).stat().length == shard["num_bytes"]
    assert os.listdir(tmp_path / "host_cache" / "staging") == []  # the staging copy is gone
