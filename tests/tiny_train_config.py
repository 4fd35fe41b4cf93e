"""The tests' tiny config as a config file, for subprocess runs of the trainer:

    python -m sarmae_jax.main --config tests/tiny_train_config.py --workdir DIR --config.data.path=DATA
"""
from tests.conftest import tiny_config


def get_config():
    c = tiny_config()
    c.train.num_steps = 8
    c.train.image_every = 1000  # one picture at the end: the tests time training, not PNG writing
    return c
