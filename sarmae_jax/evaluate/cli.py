"""`sarmae-eval --config configs/eval/synthetic.py --checkpoint DIR --workdir OUT [--random_init] [--config.key=value ...]`.

Writes OUT/results.json, OUT/results.md (and OUT/reconstruction.png, OUT/features/ cache).
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from sarmae_jax.evaluate import pipeline, report
from sarmae_jax.runtime import cli, tpu_topology
from sarmae_jax.training import metrics

_CONFIG = config_flags.DEFINE_config_file("config", None, "Evaluation config (configs/eval/*.py).", lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Params-only export directory (sets config.checkpoint).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory for results, figures and the feature cache.")
_RANDOM_INIT = flags.DEFINE_bool("random_init", False, "Evaluate a randomly initialised encoder with the "
                                 "checkpoint's architecture (the baseline; sets config.random_init).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")

    cfg = _CONFIG.value
    with cfg.unlocked():
        if _CHECKPOINT.value is not None:
            cfg.checkpoint = _CHECKPOINT.value
        if _RANDOM_INIT.value:
            cfg.random_init = True
    results = pipeline.run(cfg, _WORKDIR.value)

    print(report.markdown(results))


def run():
    tpu_topology.quiet_libtpu_start()  # a host without TPU chips but with libtpu installed: no start-up warnings
    app.run(cli.main_with_user_errors("sarmae-eval", main),
            flags_parser=lambda argv: cli.parse_flags("sarmae-eval", argv, then=metrics.setup_logging))


if __name__ == "__main__":
    run()
