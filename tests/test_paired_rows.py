"""The teacher on paired rows only (training/paired_rows.py): the bound on every (device, micro-batch)
block, the same loss and update as the teacher on every row, the guard, and the FLOP count."""
import types

import jax
import numpy as np
import pytest

from configs import sarmae_vit_b16
from sarmae_jax.data import batch_sampling
from sarmae_jax.training import flops, loop, paired_rows
from sarmae_jax.training import step as step_lib
from tests.conftest import build_parts, synthetic_batch, tiny_config


@pytest.mark.parametrize("batch, shards, accum, share", [
    (4096, 256, 1, 0.7), (4096, 16, 4, 0.7), (64, 4, 2, 0.7), (60, 6, 5, 0.3), (32, 1, 1, 0.75), (48, 8, 3, 0.5)])
def test_capacity_bounds_every_block_of_every_batch(batch, shards, accum, share):
    """Over many batch positions (also far into the stream, where float rounding bites), no (device,
    micro-batch) block, once ordered, holds more paired rows than `capacity` says."""
    cap = paired_rows.capacity(batch, shards, accum, share)
    for start in (0, 10**9, 7 * 10**11):
        for position in range(start, start + 200):
            is_paired = batch_sampling.paired_at(position * batch + np.arange(batch), share)
            ordered = np.take_along_axis(is_paired.reshape(shards, -1),
                                         np.asarray(paired_rows.order(is_paired, shards)), 1).reshape(-1)
            micro = ordered.reshape(batch // accum, accum).T  # step.micro_batches: row r in micro r mod A
            blocks = micro.reshape(accum, shards, -1)
            assert blocks[:, :, cap:].sum() == 0, (position, cap)


def test_recipe_batch_runs_the_teacher_on_paired_rows():
    """Batch 4096 at share 0.7: 16 rows per chip on 256 chips hold 11 or 12 paired; 12 run the teacher."""
    assert paired_rows.capacity(4096, 256, 1, 0.7) == 12
    assert paired_rows.teacher_row_fraction(4096, 1, 1, 0.7) == pytest.approx(2868 / 4096)
    assert paired_rows.capacity(64, 4, 2, None) == 8 and paired_rows.capacity(64, 4, 2, 0.0) == 0


def _config(share=0.7, accum=1):
    c = tiny_config()
    c.train.batch_size = 16
    c.data.paired_share = share
    c.train.grad_accum_steps = accum
    c.sarc.teacher.kind = "dinov3"  # a real teacher forward (blocks), so the rows it sees matter
    c.sarc.teacher.size = "mini"
    return c


def _step(c, shards):
    parts = build_parts(c)
    from sarmae_jax.convert import teacher_weights
    teacher = teacher_weights.load_teacher_params(c.sarc.teacher, parts.modules.teacher, c.model.image_size)
    step = jax.jit(step_lib.make_train_step(parts.modules, parts.tx, c, parts.schedule, batch_shards=shards))
    return parts.init_state(jax.random.key(0)), step, teacher


@pytest.mark.parametrize("shards, accum", [(1, 1), (4, 1), (2, 2)])
def test_teacher_on_paired_rows_gives_the_same_loss_and_update(shards, accum):
    c = _config(accum=accum)
    batch = synthetic_batch(c)
    batch["is_paired"] = batch_sampling.paired_at(3 * 16 + np.arange(16), 0.7)  # as the sampler's batch 3
    every = c.copy_and_resolve_references()
    every.data.paired_share = None  # today's forward: the teacher on every row
    assert step_lib.teacher_rows(build_parts(c).modules, c, shards) is not None
    state, step, teacher = _step(c, shards)
    ref_state, ref_step, _ = _step(every, shards)
    new, m = step(state, batch, teacher)
    ref_new, ref = ref_step(ref_state, batch, teacher)
    assert int(m["teacher_rows_missed"]) == 0 and "teacher_rows_missed" not in ref
    for k in ("loss", "loss_mae", "loss_align", "grad_norm", "paired_fraction"):
        np.testing.assert_allclose(m[k], ref[k], rtol=2e-5, err_msg=k)
    assert float(m["loss_align"]) != 0.0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), new.params, ref_new.params)


def test_a_batch_off_the_share_is_counted_and_stops_the_loop():
    c = _config()
    state, step, teacher = _step(c, 2)
    batch = synthetic_batch(c)
    batch["is_paired"] = np.arange(16) < 11  # 11 paired: all 8 rows of the first device block, 3 of the second
    _, m = step(state, batch, teacher)
    assert int(m["teacher_rows_missed"]) == 8 - paired_rows.capacity(16, 2, 1, 0.7)
    quiet = types.SimpleNamespace(write=lambda *a: None, update=lambda *a: None)
    window = loop.MetricWindow(c, quiet, quiet, 1.0)
    window.add(jax.device_get(m))
    with pytest.raises(ValueError, match="paired row.*outside the rows the teacher runs on"):
        window.maybe_write(2, force=True)


def test_flops_count_the_teacher_on_its_rows_and_mfu_without_it():
    c = sarmae_vit_b16.get_config()
    c.sarc.teacher.kind = "dinov3"
    b = c.train.batch_size
    every, every_teacher = flops.train_step_flops(c.copy_and_resolve_references(), 1, live_teacher=True)
    fraction = paired_rows.teacher_row_fraction(b, 64, c.train.grad_accum_steps, c.data.paired_share)
    total, teacher = flops.train_step_flops(c, 64)
    assert 0.7 <= fraction < 0.75
    assert teacher == pytest.approx(flops.teacher_flops_per_image(c) * fraction * b)
    c.data.paired_share = None
    all_rows, all_teacher = flops.train_step_flops(c, 64)
    assert all_teacher == pytest.approx(flops.teacher_flops_per_image(c) * b)
    assert all_rows - total > 0.99 * (all_teacher - teacher)  # the teacher's (and head's) saved rows
    window = loop.MetricWindow(c, None, None, total, teacher)
    window.peak_tflops = 100.0
    t = window.throughput(1.0)
    assert t["mfu_without_teacher"] == pytest.approx(t["mfu"] * (total - teacher) / total)
