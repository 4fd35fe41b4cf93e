"""Issue 20: no command deletes or overwrites what it did not write; every refusal is one clear line.

Each test reproduces one of the issue's cases; each failed on the code before the ownership mechanism."""
from __future__ import annotations

import json
import logging
import os

import pytest

from data_pipelines import ownership, synthetic

SMALL = dict(num_examples=16, num_test_examples=8, image_size=16, examples_per_shard=8)


def _user_dataset(path):
    os.makedirs(path)
    open(os.path.join(path, "notes.txt"), "w").write("my notes")
    open(os.path.join(path, "manifest.json"), "w").write(json.dumps({"dataset_name": "mine"}))


# ----------------------------------------------------------------------------- the mechanism
def test_claim_new_resume_refuse_and_atomic_replace(tmp_path):
    out = str(tmp_path / "out")
    c = ownership.claim(out, tool="t", kind="k", identity={"a": 1}, resumable=True)
    assert c.state == "new" and ownership.read_marker(out)["kind"] == "k"
    open(os.path.join(out, "old.txt"), "w").write("old")
    c.commit()
    assert ownership.claim(out, tool="t", kind="k", identity={"a": 1}, resumable=True).state == "resume"
    with pytest.raises(ownership.OutputError, match=r"holds an earlier k .*--overwrite"):
        ownership.claim(out, tool="t", kind="k", identity={"a": 2}, resumable=True)
    os.makedirs(tmp_path / "o2")
    ownership.write_marker(str(tmp_path / "o2"), tool="t2", kind="other")
    with pytest.raises(ownership.OutputError, match=r"holds a other output of t2"):
        ownership.claim(str(tmp_path / "o2"), tool="t", kind="k")
    c = ownership.claim(out, tool="t", kind="k", identity={"a": 2}, overwrite=True)
    assert c.state == "replace" and c.target != out
    assert os.path.exists(os.path.join(out, "old.txt"))  # untouched until the swap
    open(os.path.join(c.target, "new.txt"), "w").write("new")
    c.commit()
    assert sorted(os.listdir(out)) == [ownership.MARKER, "new.txt"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith("out~")]


def test_an_identity_with_tuples_resumes(tmp_path):
    # Settings dataclasses hold tuples; the marker holds JSON lists: the same identity must still match.
    out = str(tmp_path / "o")
    identity = {"input": "/x", "settings": {"polarisations": ("VV", "VH"), "size": 16}}
    ownership.claim(out, tool="t", kind="k", identity=identity, resumable=True)
    open(os.path.join(out, "shard"), "w").write("1")
    assert ownership.claim(out, tool="t", kind="k", identity=identity, resumable=True).state == "resume"


def test_an_output_holding_only_its_marker_is_claimed_afresh(tmp_path):
    # A run that failed before writing anything (a precompute with an unreadable teacher file) leaves the
    # marker alone: the corrected rerun, of another identity, needs no --overwrite.
    out = str(tmp_path / "tokens")
    ownership.claim(out, tool="t", kind="k", identity="teacher-a")
    c = ownership.claim(out, tool="t", kind="k", identity="teacher-b")
    assert c.state == "new" and c.target == out and ownership.read_marker(out)["identity"] == "teacher-b"
    with pytest.raises(ownership.OutputError, match="holds a k output of t"):  # another kind's: still refused
        ownership.claim(out, tool="t2", kind="k2")


def test_claim_refuses_foreign_content_naming_it(tmp_path):
    _user_dataset(tmp_path / "mine")
    with pytest.raises(ownership.OutputError, match=r"holds files this command did not write \(manifest.json, notes.txt\)"):
        ownership.claim(str(tmp_path / "mine"), tool="t", kind="k", overwrite=True)
    assert sorted(os.listdir(tmp_path / "mine")) == ["manifest.json", "notes.txt"]


def test_claim_refuses_output_equal_to_or_inside_input(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    with pytest.raises(ownership.OutputError, match="is the input --data"):
        ownership.claim(str(d) + "/", tool="t", kind="k", inputs={"--data": str(d)})
    with pytest.raises(ownership.OutputError, match="lies inside the input --data"):
        ownership.claim(str(d / "tokens"), tool="t", kind="k", inputs={"--data": str(d)}, nested=True)
    with pytest.raises(ownership.OutputError, match="lies around the input --data"):
        ownership.claim(str(tmp_path), tool="t", kind="k", inputs={"--data": str(d)}, nested=True)


# ----------------------------------------------------------------------------- case 2 and 3: synthetic sets
def test_case2_synthetic_dataset_refuses_the_users_data_directory(tmp_path):
    mine = tmp_path / "W" / "data"
    _user_dataset(mine)
    with pytest.raises(ownership.OutputError, match="notes.txt"):
        synthetic.ensure_synthetic_dataset(str(mine), **SMALL)
    assert sorted(os.listdir(mine)) == ["manifest.json", "notes.txt"]


def test_case3_synthetic_image_folder_refuses_a_real_image_folder(tmp_path):
    folder = tmp_path / "MyImageFolder"
    for split in ("Train", "Val"):
        (folder / split / "ship").mkdir(parents=True)
    (folder / "README").write_text("mine")
    with pytest.raises(ownership.OutputError, match=r"README, Train, Val"):
        synthetic.ensure_synthetic_dataset(str(folder), **SMALL)
    with pytest.raises(ownership.OutputError, match=r"README, Train, Val"):
        synthetic.write_image_folder(str(folder), num_train=5, num_val=5, image_size=16)
    assert sorted(os.listdir(folder)) == ["README", "Train", "Val"]


def test_synthetic_set_is_reused_or_replaced_only_when_it_is_one(tmp_path):
    out = str(tmp_path / "syn")
    synthetic.ensure_synthetic_dataset(out, **SMALL)
    shard = [f for f in os.listdir(out) if ".array_record" in f][0]
    mtime = os.path.getmtime(os.path.join(out, shard))
    synthetic.ensure_synthetic_dataset(out, **SMALL)  # reused
    assert os.path.getmtime(os.path.join(out, shard)) == mtime
    manifest = synthetic.ensure_synthetic_dataset(out, **{**SMALL, "seed": 5})  # its own cache: regenerated
    assert manifest["generator"]["seed"] == 5
    # A set written before markers existed is still recognised as the generator's own.
    os.remove(os.path.join(out, ownership.MARKER))
    assert synthetic.ensure_synthetic_dataset(out, **{**SMALL, "seed": 5})["generator"]["seed"] == 5


# ----------------------------------------------------------------------------- case 4: sarmae-import
def test_case4_import_refuses_an_existing_export_unless_overwrite(tmp_path, capsys):
    from sarmae_jax.convert import cli
    from sarmae_jax.training import checkpoint
    from tests import test_convert

    src = str(tmp_path / "other.pth")
    test_convert._fake_released_checkpoint(src)
    out = str(tmp_path / "export")
    args = ["--size", "tiny", "--image-size", str(test_convert.IMAGE), "--decoder-width", "32",
            "--decoder-depth", "1", "--decoder-heads", "4"]
    assert cli.import_main([src, out] + args) == 0
    meta_before = open(os.path.join(out, "metadata.json")).read()
    with pytest.raises(SystemExit) as exit_info:
        cli.import_main([src, out] + args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds an earlier params-only export" in err and "--overwrite" in err
    assert open(os.path.join(out, "metadata.json")).read() == meta_before
    # A trained export written before markers existed (metadata.json + params/) is recognised, and still refused.
    os.remove(os.path.join(out, ownership.MARKER))
    with pytest.raises(SystemExit):
        cli.import_main([src, out] + args)
    assert cli.import_main([src, out, "--overwrite"] + args) == 0
    params, meta = checkpoint.load_export(out)
    assert meta["source"] == src and not [p for p in os.listdir(tmp_path) if p.startswith("export~")]
    # A directory holding anything else is refused even with --overwrite.
    _user_dataset(tmp_path / "mine")
    with pytest.raises(SystemExit):
        cli.import_main([src, str(tmp_path / "mine"), "--overwrite"] + args)
    assert "notes.txt" in capsys.readouterr().err


def test_export_refuses_an_existing_file_unless_overwrite_and_its_own_input(tmp_path):
    from sarmae_jax.convert import cli
    from tests.conftest import write_tiny_export

    export = write_tiny_export(str(tmp_path / "export"))
    out = str(tmp_path / "enc.safetensors")
    open(out, "w").write("someone's file")
    with pytest.raises(ownership.OutputError, match="enc.safetensors exists; pass --overwrite"):
        cli.run_export(export, out, "timm")
    assert open(out).read() == "someone's file"
    assert cli.run_export(export, out, "timm", overwrite=True) == out
    with pytest.raises(ownership.OutputError, match="is the input export_dir"):
        cli.run_export(export, export, "hf-vit")


# ----------------------------------------------------------------------------- case 1: sarmae-precompute-teacher
def test_case1_precompute_refuses_its_own_input_before_any_work(tmp_path, capsys):
    from sarmae_jax.training import teacher_tokens

    data = str(tmp_path / "D")
    synthetic.write_synthetic_dataset(data, **SMALL)
    before = {f: open(os.path.join(data, f), "rb").read() for f in os.listdir(data)}
    common = ["--kind", "vit", "--size", "mini", "--patch_size", "8", "--checkpoint", "random-init"]
    for out, said in ((data, "is the input --data"), (os.path.join(data, "tokens"), "lies inside the input --data"),
                      (str(tmp_path), "lies around the input --data")):
        with pytest.raises(SystemExit) as exit_info:
            teacher_tokens.main(["--data", data, "--out", out] + common)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and said in err, err
    assert {f: open(os.path.join(data, f), "rb").read() for f in os.listdir(data)} == before


# ----------------------------------------------------------------------------- cases 5, 6, 7, 12, 13a: sarmae-convert-sar1m
def _tiles(root, n=4, seed=0):
    import numpy as np

    from tests.conftest import save_image
    rng = np.random.default_rng(seed)
    for i in range(n):
        save_image(f"{root}/img{i}.png", rng.integers(0, 255, (24, 24), dtype=np.uint8))


def _convert(argv, capsys):
    from data_pipelines import sar1m
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        sar1m.main(argv + ["--image_size", "16", "--workers", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) <= 2, err
    return err


def test_case5_convert_of_another_input_into_an_output_is_refused(tmp_path, capsys, caplog):
    from data_pipelines import records, sar1m
    a, b, out = (str(tmp_path / n) for n in ("A", "B", "O"))
    _tiles(a)
    _tiles(b, seed=1)
    sar1m.main(["--input", a, "--output", out, "--image_size", "16", "--workers", "1"])
    before = open(os.path.join(out, "manifest.json")).read()
    caplog.set_level(logging.INFO, logger="data_pipelines")
    caplog.clear()
    err = _convert(["--input", b, "--output", out], capsys)
    assert "SAR units" not in caplog.text  # refused before any image was read
    assert "holds an earlier sar1m conversion" in err and a in err and "--overwrite" in err
    assert open(os.path.join(out, "manifest.json")).read() == before
    sar1m.main(["--input", b, "--output", out, "--image_size", "16", "--workers", "1", "--overwrite"])
    assert "SAR units" in caplog.text  # (what a run that reads the images logs)
    manifest = records.read_manifest(out)
    assert manifest["converter"]["input"] == b
    on_disk = sorted(f for f in os.listdir(out) if ".array_record" in f and not f.endswith(".json"))
    assert on_disk == sorted(s["file"] for s in manifest["splits"]["train"]["shards"])  # none of A's left
    assert "is the input --input" in _convert(["--input", a, "--output", a], capsys)


def test_case6_a_corrupted_kept_shard_is_rewritten_and_the_manifest_describes_the_disk(tmp_path, caplog):
    from data_pipelines import records, sar1m, shard_io
    root, out = str(tmp_path / "in"), str(tmp_path / "out")
    _tiles(root, n=6)
    manifest = sar1m.convert(root, out, settings=sar1m.Settings(image_size=16), examples_per_shard=2, progress=False)
    shard = os.path.join(out, manifest["splits"]["train"]["shards"][0]["file"])
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    open(shard, "wb").write(bytes(data))
    again = sar1m.convert(root, out, settings=sar1m.Settings(image_size=16), examples_per_shard=2, progress=False)
    assert again["converter"]["counts"]["kept_from_earlier_run"] == 2
    assert f"{shard}: sha256 " in caplog.text and "changed since it was written, writing it again" in caplog.text
    for entry in again["splits"]["train"]["shards"]:
        assert shard_io.file_sha256(os.path.join(out, entry["file"])) == entry["sha256"]
    shard_io.verify_shards(out, "train")
    assert len(shard_io.ShardedRecordSource(out, "train")) == 6


def test_case7_and_13a_opt_without_paired_json_fails_saying_what_was_found(tmp_path, capsys):
    from tests.conftest import save_image
    import numpy as np
    root = str(tmp_path / "sar1m")
    _tiles(os.path.join(root, "SAR"))
    save_image(f"{root}/OPT/o1.png", np.zeros((24, 24, 3), np.uint8))
    with open(f"{root}/unpaired.json", "w") as f:
        json.dump(["img0.png", "img1.png"], f)
    err = _convert(["--input", root, "--output", str(tmp_path / "out")], capsys)
    assert "has OPT/ but no paired.json" in err and "unpaired.json: 2 entries" in err
    assert not os.path.exists(tmp_path / "out")
    # 13a: no usable samples says what the pairing lists hold.
    os.rename(f"{root}/OPT", f"{tmp_path}/OPT_moved")
    with open(f"{root}/unpaired.json", "w") as f:
        json.dump([], f)
    err = _convert(["--input", root, "--output", str(tmp_path / "out")], capsys)
    assert "no usable samples" in err and "paired.json: absent; unpaired.json: 0 entries" in err


def test_case12_convert_into_another_kind_of_dataset_is_refused_untouched(tmp_path, capsys):
    root, out = str(tmp_path / "in"), str(tmp_path / "syn")
    _tiles(root)
    synthetic.write_synthetic_dataset(out, **SMALL)
    before = sorted(os.listdir(out))
    err = _convert(["--input", root, "--output", out], capsys)
    assert "holds a synthetic records dataset output of data_pipelines.synthetic" in err
    assert sorted(os.listdir(out)) == before


# ----------------------------------------------------------------------------- case 2 and 3 through the commands
def test_case2_train_refuses_a_workdir_holding_the_users_data(tmp_path, tiny_dataset):
    from sarmae_jax.training import loop
    from tests.conftest import six_step_config

    workdir = tmp_path / "W"
    _user_dataset(workdir / "data")
    c = six_step_config(tiny_dataset)
    c.data.path = None  # the synthetic set would go to W/data
    with pytest.raises(ownership.OutputError, match=r"synthetic dataset directory .*/W/data holds files this command "
                       r"did not write \(manifest.json, notes.txt\)"):
        loop.train_and_evaluate(c, str(workdir))
    (workdir / "notes.txt").write_text("mine")  # a workdir holding other things is refused too
    with pytest.raises(ownership.OutputError, match=r"--workdir .*/W holds files this command did not write "
                       r"\(data, notes.txt\)"):
        loop.train_and_evaluate(c, str(workdir))
    assert sorted(os.listdir(workdir / "data")) == ["manifest.json", "notes.txt"]


def test_case3_eval_with_synthetic_kind_on_a_real_image_folder_refuses_it(tmp_path):
    from sarmae_jax.evaluate import config as eval_config
    from sarmae_jax.evaluate import pipeline
    from tests.conftest import write_tiny_export

    folder = tmp_path / "MyImageFolder"
    for split in ("Train", "Val"):
        (folder / split / "ship").mkdir(parents=True)
    (folder / "mine.txt").write_text("mine")
    cfg = eval_config.default_config() if hasattr(eval_config, "default_config") else None
    import importlib.util
    spec = importlib.util.spec_from_file_location("synthetic_eval", "configs/eval/synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.checkpoint = write_tiny_export(str(tmp_path / "export"))
    cfg.dataset.path = str(folder)
    with pytest.raises(ownership.OutputError, match=r"Train, Val, mine.txt"):
        pipeline.run(cfg, str(tmp_path / "eval"))
    assert sorted(os.listdir(folder)) == ["Train", "Val", "mine.txt"]
    with pytest.raises(ownership.OutputError, match="lies inside the input --checkpoint"):
        pipeline.run(cfg, os.path.join(cfg.checkpoint, "eval"))
