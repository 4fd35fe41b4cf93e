"""`sarmae-train --config configs/smoke.py --workdir DIR [--config.key=value ...]`."""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for data, checkpoints, metrics and images.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from sarmae_jax import distributed, train

    distributed.maybe_initialize()
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
    from sarmae_jax import metrics

    app.run(main, flags_parser=metrics.parse_flags_with_logging)


if __name__ == "__main__":
    run()
