"""Scale machinery: gradient accumulation, bf16 compute, MFU peaks, and (8 fake devices, one subprocess)
the AOT dry run, restoring onto another device count and a failed save."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from sarmae_jax import config as config_lib
from sarmae_jax.convert import teacher_weights
from sarmae_jax.training import flops, loop
from sarmae_jax.training import state as state_lib
from sarmae_jax.training import step as step_lib
from tests.conftest import build_parts, synthetic_batch, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_step(c, batch, tx=None):
    parts = build_parts(c)
    tx = tx or parts.tx
    state = jax.jit(lambda k: state_lib.init_train_state(parts.modules, tx, c, k))(jax.random.key(0))
    teacher = teacher_weights.load_teacher_params(c.sarc.teacher, parts.modules.teacher, c.model.image_size)
    step = jax.jit(step_lib.make_train_step(parts.modules, tx, c, parts.schedule))
    state, m = step(state, batch, teacher)
    return jax.device_get(state), jax.device_get(m)


def test_gradient_accumulation_gives_the_full_batch_update():
    c = tiny_config()
    # Plain SGD with lr 1: the update IS the gradient, compared entry by entry. (Through Adam, entries
    # with a near-zero gradient, e.g. of zero-initialised biases, flip sign on any rounding difference.)
    sgd = optax.sgd(1.0)
    # Paired samples spread unevenly over the strided micro-batches (2 / 1 / 1 / 0 of 4 each).
    batch = synthetic_batch(c, paired=(True, False, True, True, False, True, False, False))
    full_state, full = _one_step(c, batch, sgd)
    for accum in (4,):  # micro-batches of 2 examples, one of them with no paired sample
        c.train.grad_accum_steps = accum
        state, m = _one_step(c, batch, sgd)
        for key in ("loss", "loss_mae", "loss_align", "grad_norm", "paired_fraction", "speckled_fraction"):
            np.testing.assert_allclose(m[key], full[key], rtol=2e-5, err_msg=f"{key}, {accum} micro-batches")
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), state.params,
                     full_state.params)
    assert float(full["grad_norm"]) > 0.1  # a real update was compared


def test_micro_batches_are_strided_so_each_device_keeps_a_share():
    x = np.arange(8)
    np.testing.assert_array_equal(step_lib.micro_batches(x, 2), [[0, 2, 4, 6], [1, 3, 5, 7]])


def test_bfloat16_compute_trains_with_float32_parameters():
    c = tiny_config()
    c.model.dtype = "bfloat16"
    c.model.remat = "dots"
    state, m = _one_step(c, synthetic_batch(c))
    assert np.isfinite(m["loss"]) and float(m["step_finite"]) == 1.0
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}


def test_peak_table_and_override():
    assert flops.peak_tflops_per_device("NVIDIA H100 80GB HBM3") == 989.0
    assert flops.peak_tflops_per_device("NVIDIA H100 PCIe") == 756.0
    assert flops.peak_tflops_per_device("NVIDIA H200") == 989.0
    assert flops.peak_tflops_per_device("TPU v5 lite") == 197.0
    assert flops.peak_tflops_per_device("TPU v5p") == 459.0
    assert flops.peak_tflops_per_device("TPU v6 lite") == 918.0
    assert flops.peak_tflops_per_device("cpu") is None
    assert flops.peak_tflops_per_device("cpu", override=1.5) == 1.5


def test_metric_window_reports_mfu_against_the_peak(tmp_path):
    c = tiny_config()
    c.train.peak_tflops_per_device = 2.0

    class Sink:
        def write(self, step, scalars):
            self.scalars = scalars

        def update(self, step, shown):
            pass

    sink = Sink()
    window = loop.MetricWindow(c, sink, sink, flops_per_step=4e12 * jax.device_count())
    out = window.throughput(seconds_per_step=2.0)
    assert out["tflops_per_device"] == pytest.approx(2.0) and out["mfu"] == pytest.approx(1.0)
    assert out["images_per_sec"] == pytest.approx(c.train.batch_size / 2.0)


def test_grad_accum_must_divide_the_batch():
    c = tiny_config()
    c.train.grad_accum_steps = 3

    with pytest.raises(ValueError, match="train.grad_accum_steps=3"):
        config_lib.validate(c)


def test_dry_run_restore_onto_fewer_devices_and_failed_save(tmp_path):
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8",
               PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "scripts", "pod_checks.py"), str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])

    dry = r["dry_run"]["report"]
    assert dry["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and dry["num_devices"] == 8
    assert dry["examples_per_device_per_micro_batch"] == 2  # 16 / 2 micro-batches / (data 2 x fsdp 2)
    assert dry["memory"]["argument"] > 0 and dry["memory"]["temp"] > 0 and dry["memory"]["alias"] > 0
    assert dry["xla_flops_per_device"] > 0 and dry["analytic_flops_per_step"] > 0
    assert "memory per device (XLA)" in r["dry_run"]["text"]

    rs = r["reshard"]
    assert rs["saved_shards"] == 8
    assert rs["4"] == {"step": 5, "bitwise_equal": True, "devices": 4, "shards": 2}
    assert rs["1"] == {"step": 5, "bitwise_equal": True, "devices": 1, "shards": 1}

    fd = r["full_disk"]
    assert "saving checkpoint step 2" in fd["error"] and "the previous checkpoint (step 1) is intact" in fd["error"]
    assert "File too large" in fd["error"]
    assert fd["restored_step"] == 1 and fd["restored_equal"]
