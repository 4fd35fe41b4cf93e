"""Compiler options per backend: `train.cpu_gemm=onednn` runs the train step's matmuls in oneDNN, with the
same results, and the inference program that crashes XLA's fused oneDNN variant runs."""
import os
import subprocess
import sys
import textwrap
import types

import jax
import numpy as np
import pytest

from sarmae_jax import compiler_options, optim, sharding, train
from sarmae_jax.models import sarmae
from tests.conftest import tiny_config
from tests.test_train import _batch, _setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model_and_optimizer(c):
    modules = sarmae.build(c)
    schedule = optim.make_schedule(c.optim, global_batch=c.train.batch_size, total_steps=100, steps_per_epoch=10)
    return modules, schedule, optim.make_optimizer(c.optim, schedule)


def test_this_jaxlib_hands_cpu_dots_to_onednn():
    # The x86 jaxlib this project installs has oneDNN; if a new jaxlib drops it, this is the test that says so.
    assert compiler_options.onednn_dots_available()
    assert compiler_options.for_devices(jax.devices("cpu"), "onednn") == compiler_options.ONEDNN_DOTS


@pytest.mark.parametrize("gemm,onednn", [("onednn", True), ("xla", False)])
def test_trainer_step_runs_its_matmuls_in_the_configured_library(gemm, onednn):
    c = tiny_config()
    c.train.cpu_gemm = gemm
    state, _, teacher = _setup(c)
    modules, schedule, tx = _model_and_optimizer(c)
    mesh = sharding.make_mesh(c.mesh)
    _, shardings = train.state_shardings(modules, tx, c, mesh)
    step = train.jit_train_step(modules, tx, c, schedule, mesh, shardings)  # what sarmae-train compiles
    text = step.lower(state, _batch(c), teacher).compile().as_text()
    assert ("__onednn_fusion" in text) == onednn


def test_onednn_and_xla_steps_train_alike():
    losses, params = {}, {}
    for gemm in ("onednn", "xla"):
        c = tiny_config()
        state, _, teacher = _setup(c)
        modules, schedule, tx = _model_and_optimizer(c)
        step = jax.jit(train.make_train_step(modules, tx, c, schedule),
                       compiler_options=compiler_options.for_devices(jax.devices(), gemm))
        losses[gemm] = []
        for i in range(4):
            state, m = step(state, _batch(c, i), teacher)
            losses[gemm].append(float(m["loss"]))
        params[gemm] = jax.tree.map(np.asarray, state.params)
    np.testing.assert_allclose(losses["onednn"], losses["xla"], rtol=1e-5)
    # Parameters within a tenth of one AdamW step (lr 1e-3). The two libraries sum in different orders, and
    # Adam's normalised update turns a last-bit difference in a near-zero gradient into a visible one
    # (measured: up to 1.2e-5 on 3 of 1,536 elements after 4 steps).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-4), params["onednn"], params["xla"])


def test_inference_attention_runs_with_onednn_dots():
    # XLA's fused oneDNN variant folds the softmax normalisation into the P.V product, oneDNN refuses that
    # partition at run time and the process dies with SIGILL: hence a subprocess, and the individual-dot
    # variant in ONEDNN_DOTS.
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from sarmae_jax import compiler_options
        from sarmae_jax.models import attention
        q, k, v = (jnp.asarray(np.random.default_rng(i).normal(size=(8, 17, 4, 32)), jnp.float32) for i in range(3))
        f = jax.jit(attention.dot_product_attention, compiler_options=compiler_options.ONEDNN_DOTS)
        assert "__onednn_fusion" in f.lower(q, k, v).compile().as_text()
        np.testing.assert_allclose(f(q, k, v), jax.jit(attention.dot_product_attention)(q, k, v), rtol=1e-5, atol=1e-6)
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (out.returncode, out.stderr[-2000:])


def test_onednn_asked_for_but_unavailable_is_an_error(monkeypatch):
    monkeypatch.setattr(compiler_options, "onednn_dots_available", lambda: False)
    with pytest.raises(ValueError, match=r"config\.train\.cpu_gemm='onednn'.*does not hand dots to oneDNN"):
        compiler_options.for_devices(jax.devices("cpu"), "onednn")
    assert compiler_options.for_devices(jax.devices("cpu"), "xla") == {}


def test_options_only_for_programs_on_cpus():
    gpu = types.SimpleNamespace(platform="gpu")
    assert compiler_options.for_devices([gpu], "onednn") == {}
    assert compiler_options.for_devices([gpu, *jax.devices("cpu")], "onednn") == {}
    with pytest.raises(ValueError, match=r"config\.train\.cpu_gemm='mkl'"):
        compiler_options.for_devices(jax.devices("cpu"), "mkl")
