"""Precompute the frozen SARC teacher's patch tokens offline, into a copy of a records dataset.

At pod scale the teacher's forward pass (a full DINOv3 ViT-B on every paired optical image, every
step) costs about a third of the student's training FLOPs, for features that never change. This tool
runs the teacher once per record and stores `teacher_tokens [N, Dt] float16` beside the pixels; the
trainer then reads them instead of running the teacher (and checks that they come from the teacher
its config names).

    sarmae-precompute-teacher --data DIR --out DIR_WITH_TOKENS \
        --kind dinov3 --size base --patch_size 16 --checkpoint /weights/dinov3_vitb16.pth

Unpaired records get zero tokens (the pairing mask keeps them out of the loss). The geometry is
fixed by the stored images: a dataset with tokens cannot be resized or cropped in the pipeline.

`--out` may be a gs://BUCKET/PATH URI (checked for write access before the teacher is loaded): the shards
are written to a local staging directory (`paths.local_cache_dir("staging")`) and uploaded, the manifest
last, so a reader never sees a manifest without its shards. Train from such a dataset through a Cloud
Storage FUSE mount. `--data` is read from a local or FUSE path (ArrayRecord opens files by path).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from data_pipelines import cli_errors, ownership, records, shard_io
from sarmae_jax.convert import teacher_weights
from sarmae_jax.data import preprocess
from sarmae_jax.models import patches, teachers
from sarmae_jax.runtime import paths, tpu_topology

log = logging.getLogger("sarmae_jax")


def teacher_config(kind: str, size: str, patch_size: int, checkpoint: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(kind=kind, size=size, patch_size=patch_size, checkpoint=checkpoint))


def make_teacher_fn(teacher_cfg, image_size: int):
    """`optical uint8 [B, H, W, 3] -> tokens float16 [B, N, Dt]` (jitted), and the token shape (N, Dt)."""
    module, width = teachers.build_teacher(teacher_cfg)
    params = teacher_weights.load_teacher_params(teacher_cfg, module, image_size)

    @jax.jit
    def tokens(optical):
        x = preprocess.normalize_optical(preprocess.to_unit_interval(optical))
        return module.apply({"params": params}, x).astype(jnp.float16)

    n = patches.num_patches(image_size, teacher_cfg.patch_size)
    return tokens, (n, width)


def _examples_with_tokens(source: shard_io.ShardedRecordSource, spec: records.RecordSpec, tokens_fn,
                          batch_size: int, progress) -> Iterator[dict]:
    n = len(source)
    for start in range(0, n, batch_size):
        # example() raises CorruptRecordError naming shard and record: a copy never drops or zeroes records.
        examples = [source.example(i) for i in range(start, min(start + batch_size, n))]
        tokens = np.asarray(tokens_fn(np.stack([ex["optical"] for ex in examples])))
        for ex, tok in zip(examples, tokens):
            paired = bool(ex["is_paired"])
            source_name = ex["source"]
            yield records.make_example(
                spec, sar=ex["sar"], optical=ex["optical"] if paired else None, label=int(ex["label"]),
                source=source_name.decode() if isinstance(source_name, bytes) else str(source_name),
                original_size=tuple(int(v) for v in ex["original_size"]), bit_depth=int(ex["bit_depth"]),
                teacher_tokens=tok if paired else np.zeros_like(tok),  # unpaired: nothing to align with
            )
        progress.update(len(examples))


def precompute(data_dir: str, out_dir: str, teacher_cfg, *, batch_size: int = 64, examples_per_shard: int | None = None,
               splits: list[str] | None = None, overwrite: bool = False) -> dict:
    """Copy `data_dir` to `out_dir` (local or gs://) with the teacher's tokens added to every record.
    Returns the new manifest.

    `out_dir` may not be `data_dir` nor lie inside or around it; an earlier output of this command there is
    replaced only with `overwrite` (written beside, then swapped in); anything else there is refused
    (`ownership.OutputError`), all before the teacher is loaded."""
    paths.require_local(data_dir, "--data", "reading a records dataset")
    records.read_manifest(data_dir)  # a missing or foreign --data fails before anything is written
    out = paths.resolve(out_dir, "--out")
    claim = ownership.claim(str(out), tool="sarmae-precompute-teacher", kind=TOKENS_KIND,
                            identity=os.path.abspath(data_dir), inputs={"--data": data_dir}, nested=True,
                            overwrite=overwrite, legacy=_is_legacy_output, flag="--out")
    try:
        manifest = _precompute_claimed(data_dir, paths.resolve(claim.target, "--out"), teacher_cfg, batch_size,
                                       examples_per_shard, splits)
        claim.commit()
    except BaseException:
        claim.abort()
        raise
    return manifest


TOKENS_KIND = "teacher-token dataset"


def _is_legacy_output(path: str) -> bool:
    """An output written before ownership markers: a manifest recording `teacher_features`."""
    try:
        return "teacher_features" in records.read_manifest(path)
    except (FileNotFoundError, ValueError, OSError):
        return False


def _precompute_claimed(data_dir: str, out, teacher_cfg, batch_size: int, examples_per_shard: int | None,
                        splits: list[str] | None) -> dict:
    paths.check_writable(out, "--out", arrays=False)
    if not paths.is_gcs(out):
        return _precompute(data_dir, str(out), teacher_cfg, batch_size, examples_per_shard, splits)
    os.makedirs(paths.local_cache_dir("staging"), exist_ok=True)
    staging = tempfile.mkdtemp(prefix="teacher_tokens-", dir=paths.local_cache_dir("staging"))
    try:
        manifest = _precompute(data_dir, staging, teacher_cfg, batch_size, examples_per_shard, splits)
        upload_tree(staging, out, last=records.MANIFEST_FILENAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def upload_tree(local_dir: str, target, last: str) -> None:
    """Copy every file under `local_dir` to the same relative path under `target` (gs://), `last` at the end."""
    files = sorted(os.path.relpath(os.path.join(root, name), local_dir)
                   for root, _, names in os.walk(local_dir) for name in names)
    files = [f for f in files if f != last] + [f for f in files if f == last]
    with tqdm(total=sum(os.path.getsize(os.path.join(local_dir, f)) for f in files), desc=f"upload to {target}",
              unit="B", unit_scale=True) as progress:
        for name in files:
            with open(os.path.join(local_dir, name), "rb") as src, (target / name).open("wb") as dst:
                while chunk := src.read(16 << 20):
                    dst.write(chunk)
                    progress.update(len(chunk))


def _precompute(data_dir: str, out_dir: str, teacher_cfg, batch_size: int, examples_per_shard: int | None,
                splits: list[str] | None) -> dict:
    manifest = records.read_manifest(data_dir)
    spec = records.RecordSpec.from_json(manifest["features"])
    if spec.image_size[0] != spec.image_size[1] or spec.image_size[0] % teacher_cfg.patch_size:
        raise ValueError(f"{data_dir}: images are {spec.image_size}; the teacher needs square images divisible by "
                         f"its patch size {teacher_cfg.patch_size}")
    tokens_fn, token_shape = make_teacher_fn(teacher_cfg, spec.image_size[0])
    new_spec = records.RecordSpec(image_size=spec.image_size, sar_dtype=spec.sar_dtype, sar_channels=spec.sar_channels,
                                  teacher_tokens=token_shape,
                                  teacher_name=teachers.teacher_identity(teacher_cfg))
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for split in splits or sorted(manifest["splits"]):
        source = shard_io.ShardedRecordSource(data_dir, split)
        entry = manifest["splits"][split]
        per_shard = examples_per_shard or max(s["num_examples"] for s in entry["shards"])
        with tqdm(total=len(source), desc=f"teacher tokens [{split}]", unit="img") as progress:
            written[split] = shard_io.write_split(
                out_dir, split, _examples_with_tokens(source, new_spec, tokens_fn, batch_size, progress),
                spec=new_spec, num_examples=len(source), examples_per_shard=per_shard,
                dataset_name=manifest["dataset_name"], writer_options=manifest.get("writer_options",
                                                                                   records.DEFAULT_WRITER_OPTIONS))
    extra = {k: v for k, v in manifest.items() if k not in (
        "class_names", "dataset_name", "features", "format", "format_version", "splits", "resize_rule",
        "writer_options", "normalization", "normalisation", "description")}
    extra["teacher_features"] = {"teacher": new_spec.teacher_name, "source_dataset": os.path.abspath(data_dir)}
    return records.write_dataset_metadata(
        out_dir, dataset_name=manifest["dataset_name"], spec=new_spec, splits=written,
        class_names=manifest["class_names"], resize_rule=manifest["resize_rule"],
        writer_options=manifest.get("writer_options", records.DEFAULT_WRITER_OPTIONS),
        description=manifest.get("description", ""), extra=extra)


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sarmae-precompute-teacher", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="records dataset directory (manifest.json inside)")
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument("--kind", default="dinov3", help="teacher kind (released | vit | dinov3 | ...)")
    parser.add_argument("--size", default="base")
    parser.add_argument("--patch_size", type=int, default=16)
    parser.add_argument("--checkpoint", required=True, help="teacher weights, or 'random-init' (tests only)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--splits", nargs="*", default=None)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier output of this command in --out (written beside, then swapped in)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser


def main(argv=None) -> None:
    args = arg_parser().parse_args(argv)
    tpu_topology.quiet_libtpu_start()  # a host without TPU chips but with libtpu installed: no start-up warnings
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S")
    manifest = cli_errors.run("sarmae-precompute-teacher", lambda: precompute(
        args.data, args.out, teacher_config(args.kind, args.size, args.patch_size, args.checkpoint),
        batch_size=args.batch_size, splits=args.splits, overwrite=args.overwrite),
        user_errors=(paths.StorageAccessError,), argv=argv)
    log.info("wrote %s with teacher tokens %s from %s", args.out, manifest["features"]["teacher_tokens"]["shape"],
             manifest["features"]["teacher_tokens"]["teacher"])


if __name__ == "__main__":
    main()
