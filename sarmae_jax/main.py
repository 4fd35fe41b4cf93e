"""`sarmae-train --config configs/smoke.py --workdir DIR [--config.key=value ...] [--dry_run]`.

`--dry_run` compiles the train step for the configured mesh and prints per-device memory and FLOPs,
without training or reading data (no --workdir needed); see sarmae_jax/training/dry_run.py.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from sarmae_jax.runtime import distributed
from sarmae_jax.training import dry_run, loop, metrics

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for data, checkpoints, metrics and images.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Compile the train step for the configured mesh (ahead of time) "
                             "and print per-device memory and FLOPs; no training, no data read.")
flags.mark_flags_as_required(["config"])
flags.register_validator("workdir", lambda v: v is not None or flags.FLAGS["dry_run"].value,
                         message="--workdir is required (except with --dry_run)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.maybe_initialize()
    if _DRY_RUN.value:
        report = dry_run.compile_train_step(_CONFIG.value)
        if metrics.is_main_process():
            print(dry_run.format_report(report), flush=True)
        return
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
    app.run(main, flags_parser=metrics.parse_flags_with_logging)


if __name__ == "__main__":
    run()
