"""Train step, optimiser, config validation and the end-to-end training loop on tiny synthetic data."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import sarmae_vit_b16, sarmae_vit_l16, smoke
from sarmae_jax import config as config_lib
from sarmae_jax.convert import teacher_weights
from sarmae_jax.models import sarmae
from sarmae_jax.training import checkpoint, loop, optim
from sarmae_jax.training import state as state_lib
from sarmae_jax.training import step as step_lib
from tests import conftest
from tests.conftest import step_setup, synthetic_batch, tiny_config


def test_weight_decay_mask_by_name():
    c = tiny_config()
    params = jax.eval_shape(lambda: sarmae.init_params(sarmae.build(c), c, jax.random.key(0)))

    flat = traverse_util.flatten_dict(optim.weight_decay_mask(nn.unbox(params)), sep="/")
    assert flat["encoder/stack/blocks/attn/qkv/kernel"] and flat["encoder/patch_embed/proj/kernel"]
    assert flat["decoder/pred/kernel"] and flat["anchor_head/fc1/kernel"]
    for name in ("encoder/cls_token", "decoder/mask_token", "encoder/stack/blocks/norm1/scale",
                 "encoder/stack/blocks/attn/qkv/bias", "encoder/norm/bias", "anchor_head/norm/scale"):
        assert not flat[name], name  # stacked norm scales are 2-D but must not decay


def test_schedule_warmup_then_cosine_to_min():
    c = tiny_config().optim
    c.lr, c.warmup_steps, c.min_lr = 1.0, 10, 0.1
    s = optim.make_schedule(c, global_batch=8, total_steps=110, steps_per_epoch=10)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5) and float(s(10)) == pytest.approx(1.0)
    assert float(s(60)) == pytest.approx(0.55, abs=1e-3)  # half-way down the cosine
    assert float(s(110)) == pytest.approx(0.1)


def test_lr_scaled_by_batch_when_not_absolute():
    c = tiny_config().optim
    c.lr, c.base_lr, c.warmup_steps = None, 1e-3, 0
    assert optim.make_schedule(c, global_batch=512, total_steps=10, steps_per_epoch=1).peak_lr == pytest.approx(2e-3)


@pytest.mark.parametrize("norm", [0.0, 0.3, 1.0, 7.5])
def test_clip_by_global_norm_matches_optax(norm):
    """Same result as optax.clip_by_global_norm below, at and above the threshold, and for zero gradients."""
    rng = np.random.default_rng(0)
    g = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": {"c": rng.standard_normal(5).astype(np.float32)}}
    total = np.sqrt(sum(np.sum(x ** 2) for x in jax.tree.leaves(g)))
    g = jax.tree.map(lambda x: jnp.asarray(x * norm / total), g)
    ours, _ = optim.clip_by_global_norm(1.0).update(g, ())
    ref, _ = optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=0), ours, ref)
    assert float(optax.tree.norm(ours)) == pytest.approx(min(norm, 1.0), rel=1e-5, abs=0)
    # The train step hands in the norm it has already computed; same result.
    given, _ = optim.clip_by_global_norm(1.0).update(g, (), global_norm=optax.tree.norm(g))
    jax.tree.map(np.testing.assert_array_equal, given, ours)


def test_train_step_takes_an_optimizer_without_extra_arguments():
    """The step hands the clip its gradient norm; a plain optax transformation must still work."""
    c = tiny_config()
    modules = sarmae.build(c)
    schedule = optim.make_schedule(c.optim, global_batch=c.train.batch_size, total_steps=10, steps_per_epoch=5)
    tx = optax.scale(-1e-3)  # a plain GradientTransformation: its update takes no keyword arguments
    assert not isinstance(tx, optax.GradientTransformationExtraArgs)
    state = jax.jit(lambda k: state_lib.init_train_state(modules, tx, c, k))(jax.random.key(0))
    teacher = teacher_weights.load_teacher_params(c.sarc.teacher, modules.teacher, c.model.image_size)
    new_state, metrics = jax.jit(step_lib.make_train_step(modules, tx, c, schedule))(state, synthetic_batch(c), teacher)
    assert float(metrics["step_finite"]) == 1.0
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new_state.params, state.params)
    assert all(jax.tree.leaves(moved))


def test_train_step_overfits_a_fixed_batch():
    c = tiny_config()
    c.sare.enabled = False  # a fixed input, so only the mask changes between steps
    state, step, teacher = step_setup(c)
    batch = synthetic_batch(c)
    losses, aligns = [], []
    for _ in range(60):
        state, m = step(state, batch, teacher)
        losses.append(float(m["loss_mae"]))
        aligns.append(float(m["loss_align"]))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses
    assert np.mean(aligns[-5:]) < 0.5 * np.mean(aligns[:3]), aligns
    assert int(state.step) == 60 and int(state.skipped) == 0


def test_run_is_reproducible_from_the_seed():
    def losses(seed):
        c = tiny_config()
        state, step, teacher = step_setup(c, seed)
        out = []
        for i in range(3):
            state, m = step(state, synthetic_batch(c, i), teacher)
            out.append(float(m["loss"]))
        return out

    a, b, other = losses(0), losses(0), losses(1)
    assert a == b
    assert a != other


def test_teacher_is_frozen_and_not_in_optimizer_state():
    c = tiny_config()
    state, step, teacher = step_setup(c)
    assert set(state.params) == {"encoder", "decoder", "anchor_head"}
    before = jax.tree.map(np.asarray, teacher)
    state, _ = step(state, synthetic_batch(c), teacher)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, teacher))


def test_non_finite_step_is_skipped_and_counted():
    c = tiny_config()
    state, step, teacher = step_setup(c)
    params_before = jax.tree.map(np.asarray, state.params)
    poisoned = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), teacher)  # NaN teacher -> NaN alignment loss
    state, m = step(state, synthetic_batch(c, paired=(True, True)), poisoned)
    assert not np.isfinite(float(m["loss"])) and float(m["step_finite"]) == 0.0
    assert int(state.skipped) == 1 and int(state.skipped_in_a_row) == 1 and int(state.step) == 1
    jax.tree.map(np.testing.assert_array_equal, params_before, jax.tree.map(np.asarray, state.params))
    state, m = step(state, synthetic_batch(c), teacher)
    assert float(m["step_finite"]) == 1.0 and int(state.skipped_in_a_row) == 0


def test_logged_lr_is_the_rate_applied_after_a_skipped_update():
    """A skipped update does not advance the optimizer's count: the next update applies schedule(0), not
    schedule(1), and the logged lr must say so (it once read schedule(state.step))."""
    c = tiny_config()  # warm-up of 2 steps: schedule(0) = 0, schedule(1) = lr / 2
    parts = conftest.build_parts(c)
    state, step, teacher = step_setup(c)
    poisoned = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), teacher)
    state, m = step(state, synthetic_batch(c, paired=(True, True)), poisoned)
    assert float(m["step_finite"]) == 0.0 and int(optim.schedule_count(state.opt_state)) == 0
    state, m = step(state, synthetic_batch(c), teacher)
    assert float(m["step_finite"]) == 1.0 and int(state.step) == 2
    assert int(optim.schedule_count(state.opt_state)) == int(state.step - state.skipped) == 1
    assert float(m["lr"]) == pytest.approx(float(parts.schedule(0)))
    assert float(parts.schedule(0)) != pytest.approx(float(parts.schedule(1)))
    state, m = step(state, synthetic_batch(c), teacher)
    assert float(m["lr"]) == pytest.approx(float(parts.schedule(1)))


class _Sink:
    def write(self, step, scalars):
        pass

    def update(self, step, shown):
        pass


def test_consecutive_skips_ending_between_log_steps_stop_the_run():
    """A streak of `max_consecutive_skips` that ends before the log step must still stop the run."""
    c = tiny_config()
    c.train.log_every = 5
    c.train.max_consecutive_skips = 3
    window = loop.MetricWindow(c, _Sink(), _Sink(), flops_per_step=1.0)
    streaks = [0, 1, 2, 3, 0]  # steps 1-5: three skips in a row end at step 4, step 5 is fine again
    for k in streaks:
        window.add({"loss": jnp.asarray(np.nan if k else 1.0), "step_finite": jnp.asarray(float(k == 0)),
                    "skipped_in_a_row": jnp.asarray(k, jnp.int32)})
    with pytest.raises(FloatingPointError, match="3 consecutive steps up to step 4"):
        window.maybe_write(5)
    window = loop.MetricWindow(c, _Sink(), _Sink(), flops_per_step=1.0)
    for k in [0, 1, 2, 0, 0]:  # a shorter streak passes
        window.add({"loss": jnp.asarray(1.0), "step_finite": jnp.asarray(float(k == 0)),
                    "skipped_in_a_row": jnp.asarray(k, jnp.int32)})
    window.maybe_write(5)


def test_all_unpaired_batch_has_zero_alignment_loss():
    c = tiny_config()
    state, step, teacher = step_setup(c)
    _, m = step(state, synthetic_batch(c, paired=(False,)), teacher)
    assert float(m["loss_align"]) == 0.0 and np.isfinite(float(m["loss"]))


@pytest.mark.parametrize("key,value,fragment", [
    ("model.mask_ratio", 1.0, "model.mask_ratio=1.0"),
    ("model.mask_ratio", 0.0, "model.mask_ratio=0.0"),
    ("model.image_size", 30, "model.image_size=30"),
    ("model.size", "gigantic", "model.size='gigantic'"),
    ("sare.prob", 1.5, "sare.prob=1.5"),
    ("sare.looks", (0.0, 4.0), "sare.looks"),
    ("sarc.teacher.checkpoint", None, "sarc.teacher.checkpoint"),
    ("sarc.teacher.patch_size", 16, "sarc.teacher.patch_size=16"),
    ("optim.lr", -1.0, "optim.lr=-1.0"),
    ("train.batch_size", 0, "train.batch_size=0"),
    ("mesh.data", 0, "mesh.data=0"),
    ("model.remat", "some", "model.remat='some'"),
    ("model.dtype", "float16", "loss scaling"),
    ("train.profile", (0, 3), "train.profile=(0, 3): expected (first step >= 1"),
])
def test_invalid_config_fails_naming_key_and_value(key, value, fragment):
    c = tiny_config()
    node = c
    *path, leaf = key.split(".")
    for p in path:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        config_lib.validate(c)


def test_shipped_configs_validate():
    for module in (smoke, sarmae_vit_b16, sarmae_vit_l16):
        c = module.get_config()
        if c.sarc.teacher.checkpoint is None:
            c.sarc.teacher.checkpoint = "/weights/teacher.pth"  # the recipes need the user's teacher weights
        config_lib.validate(c)


def test_end_to_end_training_writes_outputs_and_resumes(tmp_path, tiny_dataset):
    c = tiny_config()
    c.data.path = tiny_dataset
    workdir = str(tmp_path / "run")
    final = loop.train_and_evaluate(c, workdir)
    assert np.isfinite(final["loss"])
    lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [l["step"] for l in lines] == [2, 4]
    assert {"loss", "loss_mae", "loss_align", "images_per_sec", "lr", "grad_norm"} <= set(lines[0])
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert os.path.exists(os.path.join(workdir, "images", "step_0000004.png"))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]

    params, meta = checkpoint.load_export(os.path.join(workdir, "export"))
    assert set(params) == {"encoder", "decoder", "anchor_head"}
    assert meta["normalization"]["sar"]["mean"] == 0.5 and meta["config"]["model"]["size"] == "mini"
    # Resume: asking for more steps continues from step 4, not from scratch.
    c.train.num_steps = 6
    loop.train_and_evaluate(c, workdir)
    lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [l["step"] for l in lines] == [2, 4, 6]
