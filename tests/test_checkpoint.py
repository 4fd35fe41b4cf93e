"""The data stream's state in checkpoints: written once (version 2, the global position), and the
per-process Grain state of checkpoints written before the stream became global read, or refused clearly."""
import json
import logging
import shutil

import numpy as np
import pytest

from sarmae_jax.data import pipeline
from sarmae_jax.training import checkpoint
from tests.conftest import tiny_config


def _iterator(data, batch=8):
    c = tiny_config()
    c.data.path = data
    return pipeline.make_train_iterator(pipeline.prepare(c.data, c.model, data), global_batch_size=batch, seed=0)


def _save(workdir, data, consumed):
    it = _iterator(data)
    for _ in range(consumed):
        next(it)
    ckpt = checkpoint.Checkpoints(str(workdir), keep=2, async_save=False)
    state = {"w": np.arange(4.0)}
    ckpt.save(5, state, it, {"config": {"train": {"batch_size": 8}}})
    ckpt.close()
    return str(ckpt.directory / "5")


def test_the_stream_state_is_one_json_with_a_version(tmp_path, tiny_dataset):
    step_dir = _save(tmp_path, tiny_dataset, 3)
    assert json.load(open(f"{step_dir}/data_stream/metadata")) == {"version": 2, "position": 3, "global_batch_size": 8}
    resumed = _iterator(tiny_dataset)
    step, _ = checkpoint.Checkpoints(str(tmp_path), keep=2).restore_latest(None, resumed)
    assert step == 5 and resumed.position == 3


def test_a_checkpoint_with_per_process_grain_state_is_read_at_its_position(tmp_path, tiny_dataset, caplog):
    step_dir = _save(tmp_path, tiny_dataset, 0)
    # As the earlier trainer wrote it with 2 processes: Grain's handler, one file per process.
    shutil.rmtree(f"{step_dir}/data_stream")
    for p in range(2):
        (tmp_path / "checkpoints" / "5" / "data_iter").mkdir(exist_ok=True)
        (tmp_path / "checkpoints" / "5" / "data_iter" / f"process_{p}-of-2.json").write_text('{"next_index": 4}')
    resumed = _iterator(tiny_dataset)
    with caplog.at_level(logging.WARNING, logger="sarmae_jax"):
        checkpoint.Checkpoints(str(tmp_path), keep=2).restore_latest(None, resumed)
    assert resumed.position == 4
    straight = _iterator(tiny_dataset)
    for _ in range(4):
        next(straight)
    np.testing.assert_array_equal(next(resumed)["sar"], next(straight)["sar"])
    assert any("earlier per-process format (2 file(s)); continuing the global data stream at batch 4" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("files, message", [
    ({"process_0-of-2.json": '{"next_index": 4}', "process_1-of-2.json": '{"next_index": 5}'},
     r"the processes' positions disagree \(\{'process_0-of-2.json': 4, 'process_1-of-2.json': 5\}\)"),
    ({"process_0-of-1.json": '{"workers_state": {}, "iterations_to_skip": {}}'},
     r"process_0-of-1.json: .*is not the Grain state this trainer used to write .*data.num_workers > 0"),
    ({}, r"no data stream state \(neither data_stream nor data_iter/process_\*-of-\*.json\)"),
])
def test_unreadable_old_stream_states_are_refused_naming_the_file(tmp_path, tiny_dataset, files, message):
    step_dir = _save(tmp_path, tiny_dataset, 0)
    shutil.rmtree(f"{step_dir}/data_stream")
    (tmp_path / "checkpoints" / "5" / "data_iter").mkdir()
    for name, text in files.items():
        (tmp_path / "checkpoints" / "5" / "data_iter" / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        checkpoint.Checkpoints(str(tmp_path), keep=2).restore_latest(None, _iterator(tiny_dataset))


def test_a_different_global_batch_is_refused(tmp_path, tiny_dataset):
    _save(tmp_path, tiny_dataset, 2)
    with pytest.raises(ValueError, match=r"data_stream: saved with global batch size 8, resumed with 16"):
        checkpoint.Checkpoints(str(tmp_path), keep=2).restore_latest(None, _iterator(tiny_dataset, batch=16))


def test_a_legacy_stream_state_is_converted_to_the_current_version(tmp_path, monkeypatch):
    """One definition of the stream state's version (pipeline.STREAM_STATE_VERSION), not a literal copy."""
    (tmp_path / "data_iter").mkdir()
    (tmp_path / "data_iter" / "process_0-of-1.json").write_text('{"next_index": 3}')
    monkeypatch.setattr(pipeline, "STREAM_STATE_VERSION", 7)
    assert checkpoint.legacy_stream_state(tmp_path / "data_iter", 8) == {
        "version": 7, "position": 3, "global_batch_size": 8}


@pytest.mark.parametrize("listing_error, said", [
    (PermissionError("403 Forbidden"), r"whether an earlier checkpoint is intact is unknown \(listing .* failed: "
                                       r"PermissionError: 403 Forbidden\)"),
    (FileNotFoundError("gone"), r"no earlier checkpoint exists"),
])
def test_a_failed_save_says_what_is_left_only_when_it_knows(tmp_path, monkeypatch, listing_error, said):
    """A listing that fails must not be reported as 'no earlier checkpoint exists'."""
    ckpt = checkpoint.Checkpoints(str(tmp_path), keep=2, async_save=False)

    def listing(directory):
        raise listing_error

    monkeypatch.setattr(checkpoint.ocp.utils, "checkpoint_steps", listing)
    with pytest.raises(checkpoint.CheckpointSaveError, match=said):
        with ckpt._failure_names(7):
            raise OSError("No space left on device")
    ckpt.close()
