"""The tests' tiny config as a config file, for subprocess runs of the trainer:

    python -m sarmae_jax.main --config tests/tiny_train_config.py --workdir DIR --config.data.path=DATA

from any directory (the path to this file then as seen from there).
"""
import os
import sys

# config_flags loads this file by its path, from whatever directory the command runs in: the repository root
# (where `tests` and `configs` live) must be importable for the line below.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.conftest import tiny_config  # noqa: E402


def get_config():
    c = tiny_config()
    c.train.num_steps = 8
    c.train.image_every = 1000  # one picture at the end: the tests time training, not PNG writing
    return c
