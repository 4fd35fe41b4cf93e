"""The layout plan (`--plan`) and multi-slice meshes (`--num_slices`): candidates, the analytic model, the
compile-and-rank loop (a stand-in compiler), two slices compiled by the TPU compiler on v5e:2x2, and the launcher."""
import os
import platform
import subprocess
import sys

import jax
import numpy as np
import pytest

from sarmae_jax.runtime import sharding, tpu_topology
from sarmae_jax.training import layout_plan, tpu_plan
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = platform.system() == "Linux" and platform.machine() == "x86_64" and tpu_topology.compiler_available()


def _tiny():
    c = tiny_config()
    c.train.batch_size, c.train.num_steps, c.train.num_epochs = 32, None, 2.0
    c.data.synthetic.num_examples = 320
    return c


def test_candidates_span_the_factorisations_remats_accums_and_teachers():
    c = _tiny()
    cands = layout_plan.candidates(c, 4)
    meshes = {(x.data, x.fsdp, x.tensor) for x in cands}
    # mini: 4 heads, decoder 2, teacher 4 -> tensor 1 or 2
    assert meshes == {(4, 1, 1), (2, 2, 1), (1, 4, 1), (2, 1, 2), (1, 2, 2)}
    assert {x.remat for x in cands} == set(layout_plan.REMATS) and {x.accum for x in cands} == {1, 2, 4}
    assert {x.live_teacher for x in cands} == {True, False}
    assert all(32 % (x.data * x.fsdp * x.accum) == 0 for x in cands)
    two = layout_plan.candidates(c, 4, slices=2)
    assert {(x.data, x.slices) for x in two} >= {(8, 2), (2, 2)}


def test_the_analytic_model_orders_what_it_should():
    c = _tiny()
    chip = tpu_topology.CHIPS["v5e"]
    est = {(x.data, x.fsdp, x.remat, x.accum, x.live_teacher): layout_plan.estimate(c, x, chip, 20)
           for x in layout_plan.candidates(c, 4) if x.tensor == 1}
    # fsdp shards the state; ZeRO-1 the moments; remat and micro-batches cut activations; remat costs compute
    assert est[(1, 4, "none", 1, True)]["memory_bytes"] < est[(4, 1, "none", 1, True)]["memory_bytes"]
    assert est[(4, 1, "full", 1, True)]["memory_bytes"] < est[(4, 1, "none", 1, True)]["memory_bytes"]
    assert est[(4, 1, "none", 2, True)]["memory_bytes"] < est[(4, 1, "none", 1, True)]["memory_bytes"]
    assert est[(4, 1, "full", 1, True)]["compute_s"] > est[(4, 1, "none", 1, True)]["compute_s"]
    assert est[(4, 1, "none", 1, False)]["compute_s"] < est[(4, 1, "none", 1, True)]["compute_s"]
    dp = est[(4, 1, "none", 1, True)]
    assert dp["collective_s"]["data"] > 0 and dp["collective_s"]["fsdp"] == 0 == dp["collective_s"]["tensor"]
    assert est[(1, 4, "none", 1, True)]["collective_s"]["fsdp"] > 0
    assert dp["no_overlap_s"] == max(dp["compute_s"], dp["hbm_s"]) + sum(dp["collective_s"].values())
    assert dp["full_overlap_s"] == max(dp["compute_s"], dp["hbm_s"], sum(dp["collective_s"].values()))
    assert dp["chip_hours"] == pytest.approx(20 * dp["no_overlap_s"] / 3600 * 4)


def test_search_compiles_the_best_few_of_each_teacher_mode_and_prints_the_winner_as_overrides(tmp_path):
    compiled = []

    def fake_compile(cfg, name, live, slices):
        compiled.append((cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, cfg.model.remat, cfg.train.grad_accum_steps, live))
        fits = len(compiled) != 1  # the analytic favourite does not fit: the next one wins
        return {"fits": fits, "memory": {"argument": 1, "output": 0, "alias": 0, "temp": 1, "generated_code": 0,
                                         "peak_live": 2}, "compiler_flops_per_chip": 1.0, "bytes_accessed_per_chip": 9e12,
                "hbm_traffic_per_chip": 1.0, "collectives": {"bytes": {"all-reduce": 1}}}

    config = _tiny()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 2, 2  # a layout the estimate does not favour
    config.model.remat = "full"
    result = layout_plan.search(config, "v5e:2x2", compile_best=2, compile_fn=fake_compile)
    # two different layouts per teacher mode (not two remat policies of one), and the config's own layout
    assert len(compiled) == 5 and sorted(c[-1] for c in compiled) == [False, False, True, True, True]
    for live in (True, False):
        assert len({c[:3] for c in compiled if c[-1] == live and c[3] != "full"}) == 2
    assert (1, 2, 2, "full", 1, True) in compiled
    own = [r for r in result["rows"] if r.get("config_layout")]
    assert len(own) == 1 and own[0]["candidate"].mesh_text == "data=1 fsdp=2 tensor=2" and own[0]["compiled"]
    assert "(the config's layout)" in layout_plan.format_search(result)
    compiled.clear()
    assert result["steps"] == 20  # 2 epochs x 320 examples / 32
    assert result["best"] is result["ranked"][0] and len(result["ranked"]) == 4
    # The bound takes the program's traffic, not the cost analysis's whole-operand bytes (9 TB here).
    assert all(r["hbm_s"] < 1.0 for r in result["ranked"])
    text = layout_plan.format_search(result)
    best = result["best"]["candidate"]
    assert f"winning layout: --config.mesh.data={best.data} --config.mesh.fsdp={best.fsdp}" in text
    assert "compiled: does not fit" in text and "pruned: memory" not in text.split("winning")[1]
    assert f"{best.mesh_text:<26}" in text
    # The recipe's chip-hours at a dataset's epoch size, and the whole search as JSON.
    big = layout_plan.search(_tiny(), "v5e:2x2", compile_best=0, epoch_size=32_000, compile_fn=fake_compile)
    assert big["steps"] == 2000 and big["rows"][0]["chip_hours"] == pytest.approx(
        2000 * big["rows"][0]["no_overlap_s"] / 3600 * 4)
    layout_plan.write_json(result, str(tmp_path / "plan.json"))
    doc = __import__("json").load(open(tmp_path / "plan.json"))
    assert doc["best_overrides"] == best.overrides() and len(doc["rows"]) == len(result["rows"])
    assert doc["rows"][0]["mesh"] == result["rows"][0]["candidate"].mesh_text
    with pytest.raises(ValueError, match="the file exists"):  # a file that appeared meanwhile is not replaced
        layout_plan.write_json(big, str(tmp_path / "plan.json"))
    assert __import__("json").load(open(tmp_path / "plan.json"))["best_overrides"] == best.overrides()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


@pytest.mark.skipif(not TPU, reason="libtpu, the TPU compiler, is built for Linux x86_64")
def test_two_slices_compile_and_each_slice_reads_its_rows():
    devices = tpu_topology.slice_devices("v5e:2x2", num_slices=2)
    c = tiny_config()
    c.train.batch_size = 16
    mesh = sharding.make_mesh(c.mesh, devices)
    assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert [d.slice_index for d in mesh.devices.flat] == [0] * 4 + [1] * 4  # data spans the slices outermost
    # The data stream: each process (here one per slice) reads its rows of global batch i, unchanged.
    batch = sharding.batch_sharding(mesh)
    rows = [sharding.process_batch_rows(batch, 16, p) for p in (0, 1)]
    assert rows[0].tolist() == list(range(8)) and rows[1].tolist() == list(range(8, 16))
    report = tpu_plan.plan(c, "v5e:2x2", devices=devices)
    assert report["fits"] and report["num_slices"] == 2 and report["num_chips"] == 8
    assert "on v5e:2x2 x 2 slices (DCN) (8 x TPU v5 lite" in tpu_plan.format_plan(report)
    assert report["collectives"]["count"]["all-reduce"] + report["collectives"]["count"]["reduce-scatter"] > 0


def test_the_launcher_starts_every_slice_of_a_queued_resource():
    out = subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu_pod.sh"), "--dry_run", "--num_slices", "2", "qr",
                          "us-west4-a", "--", "--config", "configs/sarmae_vit_b16.py"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert [line.split()[5] for line in out] == ["qr-0", "qr-1"]
    assert all("--worker=all" in line and "sarmae_jax.main" in line for line in out)


def test_the_traffic_model_and_the_single_device_bound():
    c = _tiny()
    units, scores = layout_plan._activation_sizes(c)
    dp = layout_plan.traffic_terms(c, layout_plan.Candidate(4, 1, 1, "none", 1, True))
    tp = layout_plan.traffic_terms(c, layout_plan.Candidate(2, 1, 2, "none", 1, True))
    fs = layout_plan.traffic_terms(c, layout_plan.Candidate(1, 4, 1, "none", 1, False))
    # per chip: 8 examples on data=4; tensor=2 holds twice the examples and splits only part of their traffic
    assert dp["fitted"]["UNIT_BYTES"] == 8 * units and dp["fitted"]["SCORE_BYTES"] == 8 * scores
    share = layout_plan.TENSOR_UNSPLIT_SHARE
    assert tp["fitted"]["UNIT_BYTES"] == pytest.approx(16 * units * (0.5 + share * 0.5))
    assert tp["fitted"]["UNIT_BYTES"] > dp["fitted"]["UNIT_BYTES"]
    assert tp["fitted"]["PARAM_PASS_BYTES"] == dp["fitted"]["PARAM_PASS_BYTES"] / 2
    assert dp["fitted"]["FSDP_GATHER_BYTES"] == 0 < fs["fitted"]["FSDP_GATHER_BYTES"]
    assert fs["fitted"]["TEACHER_UNIT_BYTES"] == 0 < dp["fitted"]["TEACHER_UNIT_BYTES"]
    h200 = layout_plan.GPUS["H200"]
    c.mesh.data, c.train.batch_size = 1, 256
    bound = layout_plan.single_device_bound(c, h200)
    same = layout_plan.estimate(c, layout_plan.Candidate(1, 1, 1, "none", 1, True), h200, 1)
    assert bound["no_overlap_s"] == same["no_overlap_s"] == max(same["compute_s"], same["hbm_s"]) > 0
    assert bound["hbm_s"] == pytest.approx(layout_plan.hbm_traffic_estimate(c, same["candidate"]) / 4800e9)


@pytest.mark.skipif(not TPU, reason="libtpu, the TPU compiler, is built for Linux x86_64")
def test_the_plan_command_writes_its_json_once_and_refuses_to_overwrite_it(tmp_path):
    out = tmp_path / "plan.json"
    args = [sys.executable, "-m", "sarmae_jax.main", "--config", "tests/tiny_train_config.py", "--dry_run",
            "--topology", "v5e:2x2", "--plan", "--plan_compiles", "0", "--plan_epoch_size", "6400",
            "--plan_out", str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    first = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "layout plan for v5e:2x2:" in first.stdout and "(epoch 6,400 examples)" in first.stdout
    written = out.read_text()
    assert __import__("json").loads(written)["epoch_size"] == 6400
    assert "nothing compiled (--plan_compiles 0); the best by estimate: --config.mesh.data=" in first.stdout
    again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"--plan_out {out}: the file exists" in again.stderr and out.read_text() == written
