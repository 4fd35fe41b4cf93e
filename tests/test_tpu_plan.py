"""A pod plan on this CPU machine: the tiny model's train step compiled by the TPU compiler (libtpu, from the
test extra) for v5e:2x2 (data parallel) and v5p:2x2x1 (fsdp over the 4 chips), and an over-sized batch."""
import os
import platform
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from sarmae_jax.runtime import sharding, tpu_topology
from sarmae_jax.training import tpu_plan
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not (platform.system() == "Linux" and platform.machine() == "x86_64"):
    pytest.skip("libtpu, the TPU compiler, is built for Linux x86_64 only", allow_module_level=True)
if not tpu_topology.compiler_available():
    raise RuntimeError(f"the TPU plan tests need libtpu: pip install -e \".[test]\" installs it ({tpu_topology.INSTALL_HINT})")


def _tiny(**mesh):
    c = tiny_config()
    c.train.batch_size = 16  # 4 per chip
    c.mesh.update(mesh)
    return c


@pytest.fixture(scope="module")
def data_parallel():
    return tpu_plan.plan(_tiny(data=-1, fsdp=1), "v5e:2x2")


@pytest.fixture(scope="module")
def fully_sharded():
    return tpu_plan.plan(_tiny(data=1, fsdp=-1), "v5p:2x2x1")


def test_slice_names_and_devices():
    assert [(len(d := tpu_topology.slice_devices(n)), d[0].device_kind) for n in ("v5e:2x2", "v5p:2x2x1", "v4:2x2x1")] == [
        (4, "TPU v5 lite"), (4, "TPU v5"), (4, "TPU v4")]  # one device per chip (v4, v5p: megacore)
    assert len({d.process_index for d in tpu_topology.slice_devices("v5e:16x16")}) == 64  # 4 chips per host
    with pytest.raises(ValueError, match=r"TPU slice 'v5e:2x2x2': a v5e slice has 2 axes"):
        tpu_topology.parse_slice("v5e:2x2x2")
    with pytest.raises(ValueError, match=r"TPU slice 'v7:4x4': expected <kind>:<chips per axis> with kind one of"):
        tpu_topology.parse_slice("v7:4x4")
    with pytest.raises(ValueError, match=r"TPU slice 'v5e:3x5': libtpu cannot describe it: .*not divisible"):
        tpu_topology.slice_devices("v5e:3x5")


def test_each_process_reads_the_rows_its_devices_hold_on_a_pod_mesh():
    """On a 4-host v5e:4x4 the topology-aware mesh gives a host non-contiguous rows of the global batch:
    the data stream must take its rows from the sharding, not a block per process."""
    devices = tpu_topology.slice_devices("v5e:4x4")
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)), devices)
    batch = sharding.batch_sharding(mesh)
    rows = [sharding.process_batch_rows(batch, 32, p) for p in range(4)]
    assert sorted(np.concatenate(rows).tolist()) == list(range(32))  # disjoint, all rows
    assert rows[0].tolist() == [0, 1, 2, 3, 12, 13, 30, 31]
    for p, mine in enumerate(rows):  # each row is held by a device of that process
        held = {r for d, idx in batch.devices_indices_map((32,)).items() if d.process_index == p
                for r in range(*idx[0].indices(32))}
        assert held == set(mine.tolist())


def test_fsdp_divides_the_per_chip_parameter_bytes(data_parallel, fully_sharded):
    assert data_parallel["fits"] and fully_sharded["fits"]
    assert data_parallel["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    assert fully_sharded["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    whole = 4 * data_parallel["parameters"]  # float32
    assert data_parallel["state_bytes"]["params"] == whole  # replicated
    # Every matrix is split over the 4 chips; norms and biases (under 1% of the bytes) stay whole. Adam's two
    # moments are split by fsdp, and under pure data parallelism by ZeRO-1 (optim.shard_over_data) too.
    for ratio in (fully_sharded["state_bytes"]["params"] / whole, fully_sharded["state_bytes"]["opt_state"] / (2 * whole),
                  data_parallel["state_bytes"]["opt_state"] / (2 * whole)):
        assert 0.25 <= ratio < 0.26, ratio


def test_the_compiled_programs_hold_the_expected_collectives(data_parallel, fully_sharded):
    grads = data_parallel["state_bytes"]["params"]
    dp = data_parallel["collectives"]
    # Every gradient summed (all-reduce, or reduce-scatter into the ZeRO-1 moments' slices); the updated
    # parameters gathered back from the slices.
    assert dp["bytes"]["all-reduce"] + dp["bytes"]["reduce-scatter"] >= grads
    assert dp["bytes"]["all-gather"] >= 0.9 * grads
    fsdp = fully_sharded["collectives"]
    assert fsdp["count"]["all-gather"] > 0 and fsdp["count"]["reduce-scatter"] > 0
    assert fsdp["bytes"]["all-gather"] >= 0.9 * grads  # each layer's weights gathered before use
    assert fsdp["bytes"]["reduce-scatter"] + fsdp["bytes"]["all-reduce"] >= 0.9 * grads  # gradients reduced
    # The 4-block scans run their bodies 4 times: per-step counts exceed the instructions in the program.
    assert fsdp["count"]["all-gather"] > fsdp["in_program"]["all-gather"]


def test_memory_cost_and_roofline_of_a_step_that_fits(data_parallel):
    r = data_parallel
    mem = r["memory"]
    allocated = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"] + mem["generated_code"]
    assert 0 < mem["peak_live"] and mem["total"] == max(allocated, mem["peak_live"]) < r["hbm_bytes"] == 16 * 2**30
    assert mem["argument"] >= sum(r["state_bytes"].values()) + r["input_bytes"]["batch"]
    assert r["compiler_flops_per_chip"] > 0 and r["bytes_accessed_per_chip"] > 0
    roof = r["roofline"]
    assert roof["step_seconds"] == max(roof["compute_seconds"], roof["hbm_seconds"]) > 0
    assert roof["images_per_second_per_chip"] == pytest.approx(4 / roof["step_seconds"])
    # The bound's bytes are the program's traffic (hlo_traffic.py), with the 4-block scans' trip counts.
    assert roof["hbm_seconds"] == pytest.approx(r["hbm_traffic_per_chip"] / 819e9) and r["hbm_traffic_per_chip"] > 0
    text = tpu_plan.format_plan(r)
    assert "TPU plan: ViT-mini/8 on v5e:2x2 (4 x TPU v5 lite, 1 host(s))" in text
    assert "fits" in text and "not measured speeds" in text and "collectives per step per chip: all-gather" in text


def test_an_oversized_batch_gets_the_out_of_memory_verdict():
    c = _tiny(data=-1, fsdp=1)
    c.train.batch_size = 4 * 32768
    r = tpu_plan.plan(c, "v5e:2x2")
    assert r["fits"] is False and "exceeds available HBM" in r["compiler_message"]
    assert r["compiler_hbm_bytes"] == int(15.75 * 2**30)
    knobs = " | ".join(r["knobs"])
    for knob in ("per-chip batch (now 32768", "--config.model.remat=dots", "--config.train.grad_accum_steps=2",
                 "mesh.fsdp (now 1)"):
        assert knob in knobs
    text = tpu_plan.format_plan(r)
    assert "DOES NOT FIT: RESOURCE_EXHAUSTED" in text and "turn one of these knobs" in text


def test_the_batch_search_brackets_the_largest_batch_that_fits(monkeypatch):
    """find_max_batch's probes on a stand-in compiler whose peak HBM is 2 GiB + 0.3 GiB per example."""
    gib = 2**30
    compiled = []

    def fake_compile(cfg, name, tokens, devices):
        b = cfg.train.batch_size // 4
        compiled.append(b)
        total = int(2 * gib + 0.3 * gib * b)
        report = {"slice": name, "batch_per_chip": b, "global_batch": cfg.train.batch_size, "compile_seconds": 1.0,
                  "state_bytes": {"params": gib, "opt_state": gib}, "input_bytes": {"batch": 0, "teacher": 0}}
        if total > 15.75 * gib:
            return dict(report, fits=False, compiler_hbm_bytes=int(15.75 * gib), compiler_message="RESOURCE_EXHAUSTED")
        return dict(report, fits=True, memory={"argument": 2 * gib, "output": gib, "alias": gib, "temp": total - 2 * gib,
                                               "generated_code": 0, "peak_live": total})

    result = tpu_plan.find_max_batch(_tiny(data=-1, fsdp=1), "v5e:2x2", compile_fn=fake_compile)
    assert result["best"]["batch_per_chip"] == 40  # 2 + 0.3 x 40 = 14 GiB fits; 48 -> 16.4 GiB does not
    assert 48 in compiled and len(compiled) <= 5 and result["multiple"] == 8
    assert "-> 40 per chip (train.batch_size=160)" in tpu_plan.format_search(result)


def test_topology_flag_says_what_to_install_without_libtpu():
    hide_libtpu = ("import importlib.util as u; find = u.find_spec; "
                   "u.find_spec = lambda name, *a: None if name == 'libtpu' else find(name, *a); "
                   "from sarmae_jax import main; main.run()")
    out = subprocess.run([sys.executable, "-c", hide_libtpu, "--config", os.path.join(ROOT, "configs", "smoke.py"),
                          "--dry_run", "--topology", "v5e:2x2"], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert out.returncode == 1
    assert "needs the TPU compiler (libtpu), which is not installed: pip install -e \".[tpu]\"" in out.stderr


def test_a_step_that_cannot_be_built_is_an_error_not_a_misfit():
    """A ValueError while building a probe is a bug or a bad config, not "does not fit": it raises, naming the
    slice and the batch, rather than silently shrinking the best batch found."""
    def fake_compile(cfg, name, tokens, devices):
        b = cfg.train.batch_size // 4
        if b > 16:
            raise ValueError("some bug")
        return {"slice": name, "batch_per_chip": b, "global_batch": cfg.train.batch_size, "compile_seconds": 1.0,
                "fits": True, "state_bytes": {"params": 2**30, "opt_state": 2**30}, "input_bytes": {"batch": 0, "teacher": 0},
                "memory": {"argument": 2**31, "output": 2**30, "alias": 2**30, "temp": b * 2**30 // 3, "generated_code": 0,
                           "peak_live": 2**31 + b * 2**30 // 3}}

    with pytest.raises(ValueError, match=r"v5e:2x2: the step at \d+ per chip \(train.batch_size=\d+\) cannot be built: some bug"):
        tpu_plan.find_max_batch(_tiny(data=-1, fsdp=1), "v5e:2x2", compile_fn=fake_compile)


def test_the_gpu_dry_run_and_the_tpu_plan_share_one_memory_total():
    from sarmae_jax.training import dry_run

    assert tpu_plan.hbm_total is dry_run.memory_total
    mem = {"argument": 10, "output": 4, "alias": 4, "temp": 5, "generated_code": 1, "peak_live": 12}
    assert dry_run.memory_total(mem) == 16 and dry_run.memory_total(dict(mem, peak_live=20)) == 20
