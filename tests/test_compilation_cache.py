"""The persistent compilation cache (runtime/compilation_cache.py): a second start of the trainer loads its
step from the cache directory the first start wrote, and says so in the log."""
import logging

import jax
import pytest

from sarmae_jax import config as config_lib
from sarmae_jax.runtime import compilation_cache
from sarmae_jax.training import loop
from tests.conftest import six_step_config


@pytest.fixture
def restore_jax_cache():
    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    yield
    from jax.experimental.compilation_cache import compilation_cache as cc

    cc.reset_cache()
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])


def test_a_second_start_compiles_from_the_cache(tmp_path, tiny_dataset, caplog, restore_jax_cache):
    c = six_step_config(tiny_dataset)
    c.train.num_steps, c.train.compilation_cache_dir = 1, str(tmp_path / "xla")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # the tiny step compiles in < 1 s
    messages = []
    for run in ("first", "second"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sarmae_jax"):
            loop.train_and_evaluate(c, str(tmp_path / run))
        messages.append(next(r.getMessage() for r in caplog.records if r.getMessage().startswith("first step")))
    assert "no persistent compilation cache hit in " + str(tmp_path / "xla") in messages[0]
    assert "loaded from the persistent compilation cache " + str(tmp_path / "xla") in messages[1]
    assert any((tmp_path / "xla").iterdir())


def test_default_is_a_local_directory_and_a_bucket_is_refused(tmp_path):
    assert config_lib.default_config().train.compilation_cache_dir == compilation_cache.DEFAULT_DIR
    assert compilation_cache.DEFAULT_DIR.startswith("~/")
    assert compilation_cache.enable(None) is None
    with pytest.raises(ValueError, match=r"compilation_cache_dir='gs://b/x': expected a directory on local disk"):
        compilation_cache.enable("gs://b/x")
