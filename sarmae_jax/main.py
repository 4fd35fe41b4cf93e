"""`sarmae-train --config configs/smoke.py --workdir DIR [--config.key=value ...] [--dry_run [--topology SLICE]]`.

`--dry_run` compiles the train step for the configured mesh and prints per-device memory and FLOPs,
without training or reading data (no --workdir needed); see sarmae_jax/training/dry_run.py. With
`--topology v5e:16x16` it compiles for that TPU slice with the TPU compiler (the `tpu` extra) and prints
the pod plan of sarmae_jax/training/tpu_plan.py; `--find_max_batch` adds the largest batch per chip,
`--num_slices 2` compiles for two slices joined over DCN, and `--plan` searches the layouts
(sarmae_jax/training/layout_plan.py).
"""
from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from sarmae_jax.evaluate import in_loop
from sarmae_jax.runtime import cli, distributed, tpu_topology
from sarmae_jax.training import dry_run, layout_plan, loop, metrics, resume, tpu_plan

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for data, checkpoints, metrics and images.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Compile the train step for the configured mesh (ahead of time) "
                             "and print per-device memory and FLOPs; no training, no data read.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "With --dry_run: compile for this TPU slice (e.g. v5e:16x16, "
                                "v5p:4x4x4, v6e:8x8) with the TPU compiler on this machine; needs pip install -e \".[tpu]\".")
_FIND_MAX_BATCH = flags.DEFINE_bool("find_max_batch", False, "With --topology: also search the largest batch per chip "
                                    "that fits (one compile per probe).")
_PLAN = flags.DEFINE_bool("plan", False, "With --topology: search the slice's layouts (data x fsdp x tensor, remat, "
                          "micro-batches, live or precomputed teacher), compile the best few, rank them by a step-time "
                          "bound and print the winner as --config overrides (training/layout_plan.py).")
_PLAN_COMPILES = flags.DEFINE_integer("plan_compiles", 2, "With --plan: how many of the best candidates to "
                                      "compile, for each teacher mode (live, precomputed).")
_PLAN_EPOCH_SIZE = flags.DEFINE_integer("plan_epoch_size", None, "With --plan: examples per epoch for the recipe's "
                                        "wall time and chip-hours (default: the manifest at data.path, else the "
                                        "synthetic set), e.g. the dataset you will train on.")
_PLAN_OUT = flags.DEFINE_string("plan_out", None, "With --plan: also write every candidate row and compile report "
                                "to this JSON file (refused if it exists).")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "With --topology: this many slices joined over DCN (multi-slice); "
                                   "config.mesh lays out one slice and the data axis spans the slices.")
_RESUME_ACCEPT = flags.DEFINE_string("resume_accept", None, "Resume although these config keys differ from the "
                                     "checkpoint's (comma-separated, e.g. optim.lr,data.path; or 'all'); the change "
                                     "is recorded in the metadata and the model card.")
_RESUME_FROM_INTACT = flags.DEFINE_bool("resume_from_intact", False, "If the latest checkpoint is damaged, move it "
                                        "to <workdir>/damaged_checkpoints/ and resume from the newest intact step.")
flags.mark_flags_as_required(["config"])
flags.register_validator("workdir", lambda v: v is not None or flags.FLAGS["dry_run"].value,
                         message="--workdir is required (except with --dry_run)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _TOPOLOGY.value or _FIND_MAX_BATCH.value or _PLAN.value or _NUM_SLICES.value != 1:
        _plan_for_slice()
        return
    distributed.maybe_initialize()
    if _DRY_RUN.value:
        report = dry_run.compile_train_step(_CONFIG.value)
        if metrics.is_main_process():
            print(dry_run.format_report(report), flush=True)
        return
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value, evaluators=in_loop.build,
                            resume_accept=resume.parse_accept(_RESUME_ACCEPT.value),
                            resume_from_intact=_RESUME_FROM_INTACT.value)


def _plan_for_slice() -> None:
    """--dry_run --topology SLICE [--find_max_batch]: one process, compile-only TPU devices, nothing run."""
    if not (_DRY_RUN.value and _TOPOLOGY.value):
        raise app.UsageError("--topology needs --dry_run, and --find_max_batch, --plan and --num_slices need --topology")
    if _NUM_SLICES.value < 1:
        raise app.UsageError(f"--num_slices={_NUM_SLICES.value}: expected 1 or more")
    try:
        tpu_topology.parse_slice(_TOPOLOGY.value)
        if not tpu_topology.compiler_available():
            raise tpu_topology.TpuCompilerMissing(
                f"--topology {_TOPOLOGY.value}: compiling for a TPU slice needs the TPU compiler (libtpu), which is "
                f"not installed: {tpu_topology.INSTALL_HINT}")
    except (ValueError, tpu_topology.TpuCompilerMissing) as e:
        raise SystemExit(f"sarmae-train: {e}") from None
    if _PLAN.value:
        try:
            if _PLAN_OUT.value and os.path.exists(_PLAN_OUT.value):
                raise ValueError(f"--plan_out {_PLAN_OUT.value}: the file exists; choose a new name")
            if _PLAN_EPOCH_SIZE.value is not None and _PLAN_EPOCH_SIZE.value < 1:
                raise ValueError(f"--plan_epoch_size={_PLAN_EPOCH_SIZE.value}: expected a positive number of examples")
            result = layout_plan.search(_CONFIG.value, _TOPOLOGY.value, compile_best=_PLAN_COMPILES.value,
                                        num_slices=_NUM_SLICES.value, epoch_size=_PLAN_EPOCH_SIZE.value,
                                        on_compile=_print_compile)
        except ValueError as e:
            raise ValueError(f"--topology {_TOPOLOGY.value} --plan: {e}") from None  # a user error: exit 2, one line
        print(layout_plan.format_search(result), flush=True)
        if _PLAN_OUT.value:
            layout_plan.write_json(result, _PLAN_OUT.value)
        return
    print(f"compiling the train step for {_TOPOLOGY.value} with the TPU compiler (minutes for ViT-L) ...", flush=True)
    try:
        report = tpu_plan.plan(_CONFIG.value, _TOPOLOGY.value, num_slices=_NUM_SLICES.value)
    except ValueError as e:  # a config the step cannot be built for (validation, batch split, sampler limits)
        raise SystemExit(f"sarmae-train --topology {_TOPOLOGY.value}: {e}") from None
    print(tpu_plan.format_plan(report), flush=True)
    if _FIND_MAX_BATCH.value:
        result = tpu_plan.find_max_batch(_CONFIG.value, _TOPOLOGY.value, known=[report], on_probe=lambda r: print(
            f"  probe: {r['batch_per_chip']} per chip {'fits' if r['fits'] else 'does not fit'} "
            f"(compiled in {r['compile_seconds']:.0f} s)", flush=True))
        print(tpu_plan.format_search(result), flush=True)


def _print_compile(r: dict) -> None:
    verdict = ("fits" if r["fits"] else f"compiler error: {r['compile_error']}" if "compile_error" in r
               else "does not fit")
    print(f"  compiled {r['mesh']} remat {r['remat']} A={r['grad_accum_steps']} teacher {r['teacher']}: {verdict} "
          f"({r['compile_seconds']:.0f} s)", flush=True)


def run():
    tpu_topology.quiet_libtpu_start()  # a host without TPU chips but with libtpu installed: no start-up warnings
    app.run(cli.main_with_user_errors("sarmae-train", main),
            flags_parser=lambda argv: cli.parse_flags("sarmae-train", argv, then=metrics.setup_logging))


if __name__ == "__main__":
    run()
