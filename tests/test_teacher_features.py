"""Offline teacher features: the stored tokens are the teacher's, and the objective gives the same loss with them."""
import jax
import numpy as np

from data_pipelines import shard_io
from sarmae_jax.convert import teacher_weights
from sarmae_jax.data import preprocess
from sarmae_jax.models import sarmae, teachers
from sarmae_jax.training import loop, objective, teacher_tokens
from tests.conftest import tiny_config


def test_precomputed_tokens_match_the_live_teacher(tmp_path, tiny_dataset):
    c = tiny_config()
    out = str(tmp_path / "with_tokens")
    manifest = teacher_tokens.precompute(tiny_dataset, out, c.sarc.teacher, batch_size=16, splits=["test"])
    assert manifest["features"]["teacher_tokens"]["teacher"] == teachers.teacher_identity(c.sarc.teacher)
    src, dst = shard_io.ShardedRecordSource(tiny_dataset, "test"), shard_io.ShardedRecordSource(out, "test")
    assert len(dst) == len(src) and dst.num_paired == src.num_paired

    modules = sarmae.build(c)
    teacher_params = teacher_weights.load_teacher_params(c.sarc.teacher, modules.teacher, c.model.image_size)
    batch, errors = dst.read_batch(range(len(dst)))
    original, _ = src.read_batch(range(len(src)))
    assert not errors
    np.testing.assert_array_equal(batch["sar"], original["sar"])  # pixels copied unchanged
    live = modules.teacher.apply({"params": teacher_params},
                                 preprocess.normalize_optical(preprocess.to_unit_interval(batch["optical"])))
    paired = batch["is_paired"]
    assert paired.any() and (~paired).any()
    np.testing.assert_allclose(batch["teacher_tokens"][paired].astype(np.float32), np.asarray(live)[paired],
                               atol=2e-2, rtol=1e-2)  # float16 storage
    assert not batch["teacher_tokens"][~paired].any()

    # The objective uses stored tokens instead of running the teacher, with the same result (up to float16).
    params = jax.jit(lambda k: sarmae.init_params(modules, c, k))(jax.random.key(0))
    import flax.linen as nn

    params = nn.unbox(params)
    device_batch = {k: batch[k][:8] for k in ("sar", "optical", "is_paired", "teacher_tokens")}
    key = jax.random.key(3)
    with_tokens = objective.prepare_inputs(device_batch, key, c)
    without = objective.prepare_inputs({k: v for k, v in device_batch.items() if k != "teacher_tokens"}, key, c)
    forward = jax.jit(lambda p, t, inputs, paired: objective.forward(p, t, inputs, paired, key, modules, c)[1]["loss_align"])
    align_stored = forward(params, None, with_tokens, device_batch["is_paired"])
    align_live = forward(params, teacher_params, without, device_batch["is_paired"])
    assert float(align_stored) > 0
    np.testing.assert_allclose(float(align_stored), float(align_live), rtol=2e-3)


def test_training_reads_stored_tokens_and_refuses_another_teachers(tmp_path, tiny_dataset):
    import pytest


    c = tiny_config()
    data_dir = str(tmp_path / "with_tokens")
    teacher_tokens.precompute(tiny_dataset, data_dir, c.sarc.teacher, batch_size=32)
    c.data.path = data_dir
    c.train.num_steps = 2
    final = loop.train_and_evaluate(c, str(tmp_path / "run"))
    assert final["loss_align"] > 0 and np.isfinite(final["loss"])

    other = tiny_config()
    other.data.path = data_dir
    other.sarc.teacher.kind = "vit"
    with pytest.raises(ValueError, match="stores teacher tokens of 'released/mini/p8:random-init'"):
        loop.train_and_evaluate(other, str(tmp_path / "run_other"))
