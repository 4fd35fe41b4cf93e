"""Shared fixtures: a tiny, fast SARMAE config and a small synthetic dataset built once per session."""
import pytest

from sarmae_jax import config as config_lib


def tiny_config():
    """A 2-block ViT on 32x32 images with 8x8 patches: compiles and steps in well under a second."""
    c = config_lib.default_config()
    c.model.size = "mini"
    c.model.image_size = 32
    c.model.patch_size = 8
    c.model.decoder.width = 32
    c.model.decoder.depth = 1
    c.model.decoder.num_heads = 2
    c.sarc.teacher.kind = "released"
    c.sarc.teacher.size = "mini"
    c.sarc.teacher.patch_size = 8
    c.sarc.teacher.checkpoint = "random-init"
    c.data.synthetic.num_examples = 64
    c.data.synthetic.num_test_examples = 16
    c.data.synthetic.examples_per_shard = 32
    c.data.paired_share = None
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 2
    c.train.batch_size = 8
    c.train.num_steps = 4
    c.train.log_every = 2
    c.train.image_every = 4
    c.train.checkpoint_every = 2
    return c


@pytest.fixture
def tiny():
    return tiny_config()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Path of a synthetic dataset matching `tiny_config()` (generated once)."""
    from data_pipelines import synthetic

    c = tiny_config()
    out = str(tmp_path_factory.mktemp("tiny_data"))
    synthetic.ensure_synthetic_dataset(out, **dict(c.data.synthetic.to_dict(), image_size=c.model.image_size))
    return out
