"""`sarmae-train --dry_run --topology T --plan`: search the layouts of a slice, compile the best few, rank them.

At the config's global batch, the search spans the `data x fsdp x tensor` factorisations of the slice's
chips (tensor dividing every head count), the remat policies (`REMATS`), micro-batches (`ACCUMS`) and a
live against a precomputed teacher. Each candidate is first costed analytically, per chip and per step:

* memory: parameters and gradients (float32, split by fsdp x tensor), Adam moments (also split over
  data: ZeRO-1), the frozen teacher (replicated), the batch, saved activations of one micro-batch
  (`ACTIVATION_BYTES` per token and width unit for each remat policy, plus the float32 attention
  probabilities) and `CODE_BYTES` of program; a candidate above `FIT_SHARE` of the chip's HBM is pruned;
* compute: the analytic model FLOPs (`flops.train_step_flops`, the teacher on its rows) plus the
  forward the remat policy recomputes, at the chip's peak;
* HBM traffic (`traffic_terms`): the Adam moments (28 bytes per parameter of the chip's shard) and the
  teacher's weights by formula, the rest by five constants fitted to the programs the TPU compiler built
  for the recipes (`benchmarks/plan_calibration.py`): per trained parameter per micro-batch, per
  parameter gathered from the other fsdp chips, per token x width unit and per attention-score element
  of the trained blocks per example, per token x width unit of the teacher's forward per row it runs on;
* collectives per mesh axis, bytes over the chip's ICI bandwidth (DCN across slices): data: the
  gradients reduce-scattered and the updated parameters gathered (ZeRO-1); fsdp: the parameters
  gathered for each micro-batch's forward and backward and the gradients reduce-scattered; tensor: two
  all-reduces of a block's activations per block in the forward and two in the backward; slices:
  the gradients all-reduced over DCN.

The bound is given twice: no overlap, max(compute, HBM) + collectives; full overlap, the max of all
three. For each teacher mode the best row of each of the `compile_best` best meshes is compiled by the
TPU compiler (`tpu_plan.plan`), and so is the config's own layout; a candidate that does not fit, or that the compiler refuses, drops out,
and the compiled ones are ranked again with the program's memory and HBM traffic (`hlo_traffic.py`) and
the compiler's FLOPs and collectives (read from the program text, loop trip counts applied) where they
exceed the analytic ones. Chip-hours and wall time are for the whole recipe: `train.num_epochs` x the
epoch size / the global batch steps.

These are bounds at the chips' data-sheet peaks, not measured speeds.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections

from sarmae_jax.models import mae, param_trees, patches, sarmae, vit
from sarmae_jax.runtime import sharding, tpu_topology
from sarmae_jax.training import dry_run, flops, paired_rows, tpu_plan

REMATS = ("none", "dots", "full")
ACCUMS = (1, 2, 4)
FIT_SHARE = 0.9  # of HBM: the analytic memory model's margin for what it leaves out (code, fragmentation)
# Saved activation bytes per token per width unit of one block, bf16: none keeps every intermediate
# (qkv 3, attention output 1, MLP 4 + 4 after GELU, two norms 2, residuals 2: ~16 values x 2 bytes = 32,
# plus scores, counted apart); dots keeps the matmul outputs (qkv 3, output 1, MLP 4 = 8 x 2 = 16);
# full keeps the block input only (1 x 2 bytes).
ACTIVATION_BYTES = {"none": 32.0, "dots": 16.0, "full": 2.0}
RECOMPUTED_FORWARD = {"none": 0.0, "dots": 0.15, "full": 1.0}  # share of the trained forward run again
DCN_GBYTES_PER_S_PER_CHIP = 6.25  # 200 Gb/s per 4-chip host: an assumption, stated in docs/scale.md
CODE_BYTES = 0.3 * 2**30  # program code per chip: 0.19-0.32 GiB in the recipes' compiles
# HBM traffic per chip and step (`traffic_terms`): constants fitted to the programs the TPU compiler built for
# the recipes on v5e:2x2 (`python benchmarks/plan_calibration.py`, libtpu 0.0.42.1; docs/scale.md).
PARAM_PASS_BYTES = 85.5  # per trained parameter (/ tensor), per micro-batch: weights read, gradients, the update
FSDP_GATHER_BYTES = 33.0  # per parameter another fsdp chip holds, gathered for a micro-batch (/ tensor)
UNIT_BYTES = 49.0  # per token x width unit of a trained block, per example
SCORE_BYTES = 141.8  # per attention score element (heads x T^2 per block), per example
TEACHER_UNIT_BYTES = 71.0  # per token x width unit of the live teacher's forward, per row it runs on
# Share of an example's activation traffic that a tensor-parallel group does not split: 0.5 from the ViT-B/16
# recipe compiled for v5e:16x16 with tensor=2 and tensor=4 (0.50 and 0.49; docs/scale.md). The teacher's
# traffic is not split at all (its rows cost more per chip under tensor=4 than under data parallelism).
TENSOR_UNSPLIT_SHARE = 0.5


# GPUs the bound is stated for (data sheets; `dims` and the interconnect as for a TPU chip: NVLink per direction).
GPUS = {"H200": tpu_topology.Chip("h200", "NVIDIA H200", 141 * 10**9, 989.0, 4800.0, 1, 450.0)}


@dataclasses.dataclass(frozen=True)
class Candidate:
    data: int
    fsdp: int
    tensor: int
    remat: str
    accum: int
    live_teacher: bool
    slices: int = 1

    @property
    def mesh_text(self) -> str:
        return f"data={self.data} fsdp={self.fsdp} tensor={self.tensor}"

    def overrides(self) -> list[str]:
        out = [f"--config.mesh.data={self.data}", f"--config.mesh.fsdp={self.fsdp}",
               f"--config.mesh.tensor={self.tensor}", f"--config.model.remat={self.remat}",
               f"--config.train.grad_accum_steps={self.accum}"]
        if not self.live_teacher:
            out.append("(data.path: a dataset with precomputed teacher tokens, sarmae-precompute-teacher)")
        return out


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def head_counts(config) -> list[int]:
    m = config.model
    heads = [vit.VIT_SIZES[m.size]["num_heads"], m.decoder.num_heads]
    if config.sarc.enabled:
        heads.append(vit.VIT_SIZES[config.sarc.teacher.size]["num_heads"])
    return heads


def candidates(config, num_chips: int, slices: int = 1, max_tensor: int = 8) -> list[Candidate]:
    """Every layout of `num_chips` chips per slice (x `slices` along data) the global batch splits over."""
    b = config.train.batch_size
    heads = math.gcd(*head_counts(config))
    teachers = (True, False) if config.sarc.enabled else (False,)
    out = []
    for tensor in (t for t in _divisors(num_chips) if t <= max_tensor and heads % t == 0):
        for fsdp in _divisors(num_chips // tensor):
            data = num_chips // tensor // fsdp * slices
            for accum in ACCUMS:
                if b % (data * fsdp * accum):
                    continue
                out += [Candidate(data, fsdp, tensor, remat, accum, live, slices) for remat in REMATS for live in teachers]
    return out


@functools.lru_cache(maxsize=8)
def _param_counts(config_json: str) -> tuple[int, int]:
    config = ml_collections.ConfigDict(__import__("json").loads(config_json))
    modules = sarmae.build(config)
    boxed = jax.eval_shape(functools.partial(sarmae.init_params, modules, config), jax.random.key(0))
    trained = param_trees.count_params(nn.unbox(boxed))
    teacher = 0
    if modules.teacher is not None:
        s = config.model.image_size
        shapes = jax.eval_shape(lambda: modules.teacher.init(jax.random.key(0), jax.numpy.zeros((1, s, s, 3))))
        teacher = param_trees.count_params(nn.unbox(shapes)["params"])
    return trained, teacher


def _activation_sizes(config) -> tuple[int, int]:
    """(token x width units, attention score elements) of the trained blocks, per example."""
    m = config.model
    enc, dec = vit.VIT_SIZES[m.size], m.decoder
    n = patches.num_patches(m.image_size, m.patch_size)
    k = mae.num_kept(n, m.mask_ratio)
    units = enc["depth"] * (k + 1) * enc["width"] + dec.depth * (n + 1) * dec.width
    scores = enc["depth"] * enc["num_heads"] * (k + 1) ** 2 + dec.depth * dec.num_heads * (n + 1) ** 2
    return units, scores


def teacher_units(config) -> int:
    """Token x width units of the frozen teacher's forward per image: blocks x tokens x width (the released
    teacher: its patch embedding, one layer)."""
    if not config.sarc.enabled:
        return 0
    t = config.sarc.teacher
    n = patches.num_patches(config.model.image_size, config.model.patch_size)
    width = vit.VIT_SIZES[t.size]["width"]
    return n * width if t.kind == "released" else vit.VIT_SIZES[t.size]["depth"] * (n + 1) * width


def teacher_rows_per_chip(config, cand: Candidate) -> int:
    """Rows the teacher runs on per chip and step (every micro-batch's static capacity, `paired_rows`)."""
    t = config.train
    shards = cand.data * cand.fsdp
    return cand.accum * paired_rows.capacity(t.batch_size, shards, cand.accum, config.data.paired_share)


def traffic_terms(config, cand: Candidate) -> dict[str, Any]:
    """The HBM-traffic model per chip and step: `known` bytes by formula, and per fitted constant the
    quantity it multiplies (`fitted[NAME]`); traffic = known + sum(NAME * fitted[NAME])."""
    trained, teacher_params = _param_counts(config.to_json())
    units, scores = _activation_sizes(config)
    examples = config.train.batch_size // (cand.data * cand.fsdp)  # per chip, all micro-batches
    recompute = 1 + RECOMPUTED_FORWARD[cand.remat] / 3
    # A tensor group shares its examples, but only part of an example's traffic splits over the group.
    split = 1 / cand.tensor + TENSOR_UNSPLIT_SHARE * (1 - 1 / cand.tensor)
    live = cand.live_teacher and config.sarc.enabled
    data_in_slice = cand.data // cand.slices
    return {
        "known": 28 * trained / (cand.fsdp * cand.tensor * data_in_slice) + (4 * teacher_params if live else 0),
        "fitted": {
            "PARAM_PASS_BYTES": trained / cand.tensor * cand.accum,
            "FSDP_GATHER_BYTES": trained / cand.tensor * (cand.fsdp - 1) / cand.fsdp * cand.accum,
            "UNIT_BYTES": examples * units * recompute * split,
            "SCORE_BYTES": examples * scores * recompute * split,
            "TEACHER_UNIT_BYTES": teacher_rows_per_chip(config, cand) * teacher_units(config) if live else 0.0,
        },
    }


def hbm_traffic_estimate(config, cand: Candidate) -> float:
    terms = traffic_terms(config, cand)
    return terms["known"] + sum(globals()[name] * q for name, q in terms["fitted"].items())


def estimate(config, cand: Candidate, chip: tpu_topology.Chip, steps: int) -> dict[str, Any]:
    """The analytic per-chip model of the module docstring for one candidate."""
    m, t = config.model, config.train
    trained, teacher_params = _param_counts(config.to_json())
    chips = cand.data * cand.fsdp * cand.tensor
    shards = cand.data * cand.fsdp
    micro = t.batch_size // (shards * cand.accum)  # examples per chip per micro-batch
    units, scores = _activation_sizes(config)
    saved_scores = 0 if cand.remat == "full" else 4 * scores  # float32 probabilities, kept for the backward
    activations = micro * (units * ACTIVATION_BYTES[cand.remat] + saved_scores) / cand.tensor
    params = 4 * trained / (cand.fsdp * cand.tensor)
    grads = 4 * trained / (cand.fsdp * cand.tensor)
    moments = 8 * trained / (cand.fsdp * cand.tensor * cand.data // cand.slices)
    teacher = 4 * teacher_params if cand.live_teacher else 0
    batch = t.batch_size // shards * m.image_size**2 * (sarmae.input_channels(m) + 3)
    memory = params + grads + moments + teacher + batch + activations + CODE_BYTES
    total, teacher_flops = flops.train_step_flops(config, shards, live_teacher=cand.live_teacher)
    trained_forward = (total - teacher_flops) / 3
    work = (total + RECOMPUTED_FORWARD[cand.remat] * trained_forward) / chips
    ici = chip.ici_gbytes_per_s * 1e9
    data_in_slice = cand.data // cand.slices
    coll = {
        "data": 2 * grads * (data_in_slice - 1) / data_in_slice / ici if data_in_slice > 1 else 0.0,
        "fsdp": 3 * cand.accum * 4 * trained / cand.tensor * (cand.fsdp - 1) / cand.fsdp / ici if cand.fsdp > 1 else 0.0,
        "tensor": (8 * t.batch_size // shards * units * 2 * (cand.tensor - 1) / cand.tensor / ici
                   if cand.tensor > 1 else 0.0),
        "dcn": 2 * grads / (DCN_GBYTES_PER_S_PER_CHIP * 1e9) if cand.slices > 1 else 0.0,
    }
    return _bound({"candidate": cand, "memory_bytes": memory, "fits_estimate": memory <= FIT_SHARE * chip.hbm_bytes,
                   "compute_s": work / (chip.peak_bf16_tflops * 1e12),
                   "hbm_s": hbm_traffic_estimate(config, cand) / (chip.hbm_gbytes_per_s * 1e9),
                   "collective_s": coll, "compiled": None}, chips, steps)


def _bound(row: dict[str, Any], chips: int, steps: int) -> dict[str, Any]:
    collective = sum(row["collective_s"].values())
    row["no_overlap_s"] = max(row["compute_s"], row["hbm_s"]) + collective
    row["full_overlap_s"] = max(row["compute_s"], row["hbm_s"], collective)
    row["wall_hours"] = steps * row["no_overlap_s"] / 3600
    row["chip_hours"] = row["wall_hours"] * chips
    return row


def with_candidate(config, cand: Candidate) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict(config.to_dict())
    out.mesh.data, out.mesh.fsdp, out.mesh.tensor = cand.data // cand.slices, cand.fsdp, cand.tensor
    out.model.remat, out.train.grad_accum_steps = cand.remat, cand.accum
    return out


def search(config, slice_name: str, *, compile_best: int = 2, num_slices: int = 1, epoch_size: int | None = None,
           compile_fn: Callable[..., dict] | None = None, on_compile: Callable[[dict], None] | None = None) -> dict:
    """Analytic rows for every candidate, sorted; for each teacher mode (live, precomputed), the best row of
    each of the `compile_best` best meshes that fit by estimate compiled (`compile_fn(config, slice_name, live_teacher, num_slices)`,
    default `tpu_plan.plan`) and re-ranked.
    `epoch_size`: examples per epoch for the recipe's steps (default: the dataset's manifest, else the
    synthetic set)."""
    chip, shape = tpu_topology.parse_slice(slice_name)
    chips = math.prod(shape)
    _, manifest_epoch, stored_tokens = dry_run.data_spec(config)
    epoch_size = manifest_epoch if epoch_size is None else epoch_size
    steps = math.ceil(config.train.num_epochs * epoch_size / config.train.batch_size)
    rows = [estimate(config, c, chip, steps) for c in candidates(config, chips, num_slices)]
    rows.sort(key=lambda r: (not r["fits_estimate"], r["no_overlap_s"]))
    compile_fn = compile_fn or (lambda cfg, name, live, slices: tpu_plan.plan(
        cfg, name, teacher_tokens=not live, num_slices=slices))
    chosen = [r for live in (True, False) for r in _best_per_mesh(rows, live)[:compile_best]]
    own = _config_row(config, rows, chips, live=config.sarc.enabled and not stored_tokens)
    if own is not None:  # the config's own layout, compiled beside the others: the reference a winner must beat
        own["config_layout"] = True
        if compile_best and all(r is not own for r in chosen):
            chosen.append(own)
    for row in sorted(chosen, key=lambda r: r["no_overlap_s"]):
        cand = row["candidate"]
        start = time.perf_counter()
        try:
            report = compile_fn(with_candidate(config, cand), slice_name, cand.live_teacher, num_slices)
        except jax.errors.JaxRuntimeError as e:  # the compiler refused this layout: a result, not the end
            report = {"fits": False, "compile_error": str(e).strip().splitlines()[0][:300],
                      "mesh": {"data": cand.data, "fsdp": cand.fsdp, "tensor": cand.tensor}, "remat": cand.remat,
                      "grad_accum_steps": cand.accum, "teacher": "live" if cand.live_teacher else "precomputed",
                      "compile_seconds": time.perf_counter() - start}
        row["compiled"] = report
        if on_compile is not None:
            on_compile(report)
        if report["fits"]:
            _apply_compiled(row, report, chip, chips * num_slices, steps)
    compiled = [r for r in rows if r["compiled"] and r["compiled"]["fits"]]
    compiled.sort(key=lambda r: r["no_overlap_s"])
    return {"slice": slice_name, "num_slices": num_slices, "chip": chip, "steps": steps, "epoch_size": epoch_size,
            "rows": rows, "ranked": compiled, "best": compiled[0] if compiled else None}


def _config_row(config, rows: list[dict[str, Any]], chips: int, live: bool) -> dict[str, Any] | None:
    """The row of the layout `config` itself would run on the slice (its mesh, remat, micro-batches, teacher
    mode), or None where its mesh does not divide the slice."""
    try:
        data, fsdp, tensor = sharding.mesh_shape(config.mesh, chips)
    except ValueError:
        return None
    return next((r for r in rows if (r["candidate"].data // r["candidate"].slices, r["candidate"].fsdp,
                                     r["candidate"].tensor, r["candidate"].remat, r["candidate"].accum,
                                     r["candidate"].live_teacher)
                 == (data, fsdp, tensor, config.model.remat, config.train.grad_accum_steps, live)), None)


def _best_per_mesh(rows: list[dict[str, Any]], live: bool) -> list[dict[str, Any]]:
    """The best fitting row (by estimate) of each mesh, for one teacher mode, best first: the compiles then
    compare layouts, not remat policies of one layout."""
    best: dict[tuple[int, int, int], dict[str, Any]] = {}
    for r in rows:  # sorted by the bound
        c = r["candidate"]
        if r["fits_estimate"] and c.live_teacher == live:
            best.setdefault((c.data, c.fsdp, c.tensor), r)
    return list(best.values())


def _apply_compiled(row: dict[str, Any], report: dict[str, Any], chip: tpu_topology.Chip, chips: int, steps: int):
    """The compiled program's memory and HBM traffic; its FLOPs and collectives where they exceed the analytic
    ones (see the module docstring)."""
    row["memory_bytes"] = tpu_plan.hbm_total(report["memory"])
    row["compute_s"] = max(row["compute_s"], report["compiler_flops_per_chip"] / (chip.peak_bf16_tflops * 1e12))
    row["hbm_s"] = tpu_plan.hbm_traffic(report) / (chip.hbm_gbytes_per_s * 1e9)  # the program's, not the model's
    in_program = sum(report["collectives"]["bytes"].values()) / (chip.ici_gbytes_per_s * 1e9)
    analytic = sum(v for k, v in row["collective_s"].items() if k != "dcn")
    if in_program > analytic:  # the program's own collectives (trip counts applied), spread over the axes
        scale = in_program / analytic if analytic else 0.0
        row["collective_s"] = {k: (v * scale if k != "dcn" else v) for k, v in row["collective_s"].items()}
        if not analytic:
            row["collective_s"]["data"] = in_program
    _bound(row, chips, steps)


def format_search(result: dict[str, Any], limit: int = 12) -> str:
    chip = result["chip"]
    lines = [f"layout plan for {result['slice']}" + (f" x {result['num_slices']} slices" if result["num_slices"] > 1 else "")
             + f": {len(result['rows'])} candidates, {result['steps']:,} steps for the recipe "
             f"(epoch {result['epoch_size']:,} examples); bounds at {chip.peak_bf16_tflops:g} TFLOP/s, "
             f"{chip.hbm_gbytes_per_s:g} GB/s HBM, {chip.ici_gbytes_per_s:g} GB/s ICI per chip",
             f"  {'mesh':<26} {'remat':<5} {'A':>2} {'teacher':<11} {'HBM/chip':>9} {'compute':>8} {'HBM':>7} "
             f"{'coll d/f/t/dcn ms':>22} {'bound ms':>15} {'wall h':>7} {'chip-h':>9}  source"]
    shown = result["ranked"] + [r for r in result["rows"] if not (r["compiled"] and r["compiled"]["fits"])][:limit]
    shown += [r for r in result["rows"] if r.get("config_layout") and all(r is not x for x in shown)]
    for r in shown:
        c, col = r["candidate"], r["collective_s"]
        src = ("compiled" if r["compiled"]["fits"] else "compiler error" if "compile_error" in r["compiled"]
               else "compiled: does not fit") if r["compiled"] else (
            "estimate" if r["fits_estimate"] else "pruned: memory")
        if r.get("config_layout"):
            src += " (the config's layout)"
        lines.append(
            f"  {c.mesh_text:<26} {c.remat:<5} {c.accum:>2} {'live' if c.live_teacher else 'precomputed':<11} "
            f"{r['memory_bytes'] / 2**30:>7.2f}Gi {r['compute_s'] * 1e3:>8.1f} {r['hbm_s'] * 1e3:>7.1f} "
            f"{'/'.join(f'{col[a] * 1e3:.1f}' for a in ('data', 'fsdp', 'tensor', 'dcn')):>22} "
            f"{r['no_overlap_s'] * 1e3:>7.1f}/{r['full_overlap_s'] * 1e3:<7.1f} {r['wall_hours']:>7.1f} "
            f"{r['chip_hours']:>9,.0f}  {src}")
    lines.append("  (bound: no overlap / full overlap; compiler figures and analytic bounds at data-sheet peaks, "
                 "not measured speeds)")
    best = result["best"]
    if best is None and not any(r["compiled"] for r in result["rows"]):
        estimate_best = next((r for r in result["rows"] if r["fits_estimate"]), None)
        lines.append("  nothing compiled (--plan_compiles 0); " + (
            "the best by estimate: " + " ".join(estimate_best["candidate"].overrides()) if estimate_best
            else "no candidate fits by estimate: lower train.batch_size or use a larger slice"))
    elif best is None:
        lines.append("  no compiled candidate fits: lower train.batch_size or use a larger slice")
    else:
        lines.append("  winning layout: " + " ".join(best["candidate"].overrides()))
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str) -> None:
    """The search as JSON: every row (candidate, analytic parts, bound, and the compile report where one was
    made), the ranking and the winner's overrides. Written beside `path` and linked into place; an existing
    `path` is refused (ValueError), never replaced."""
    def row(r):
        out = {k: v for k, v in r.items() if k != "candidate"}
        out["candidate"] = dataclasses.asdict(r["candidate"])
        out["mesh"] = r["candidate"].mesh_text
        return out
    doc = {"slice": result["slice"], "num_slices": result["num_slices"], "chip": dataclasses.asdict(result["chip"]),
           "steps": result["steps"], "epoch_size": result["epoch_size"], "rows": [row(r) for r in result["rows"]],
           "ranked": [r["candidate"].mesh_text for r in result["ranked"]],
           "best_overrides": result["best"]["candidate"].overrides() if result["best"] else None}
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=float)
    try:  # a link, not a rename: a file that appeared at `path` while the plan compiled is refused, not replaced
        os.link(tmp, path)
    except FileExistsError:
        raise ValueError(f"--plan_out {path}: the file exists; choose a new name") from None
    finally:
        os.remove(tmp)


def single_device_bound(config, chip: tpu_topology.Chip, live_teacher: bool = True) -> dict[str, Any]:
    """The model's bound for `config`'s whole batch on one device (`chip`, e.g. `GPUS["H200"]`): the row of
    `estimate` for data = fsdp = tensor = 1, to set beside a measured step."""
    cand = Candidate(1, 1, 1, config.model.remat, config.train.grad_accum_steps, live_teacher)
    return estimate(config, cand, chip, steps=1)
