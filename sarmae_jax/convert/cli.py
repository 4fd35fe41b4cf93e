"""`sarmae-import` and `sarmae-export`: the command-line edges of the converters (all I/O lives here).

    sarmae-import CKPT OUT_DIR [--size base] [--parts encoder] [--image-size 224]
        PyTorch (released SARMAE pre-training / fine-tuning / encoder files, ImageNet MAE, timm, HF) ->
        params-only export (`train.init_from`, `sarmae-eval`, `sarmae-export`); the size is read off the tensors.
    sarmae-export EXPORT_DIR OUT --format FORMAT
        params-only export -> PyTorch, one format per use:
          timm              OUT.safetensors / OUT.pth: timm `VisionTransformer` (no head), strict
          hf-vit            OUT directory: Hugging Face `ViTModel` (+ preprocessor_config.json)
          hf-vitmae         OUT directory: Hugging Face `ViTMAEForPreTraining` (+ preprocessor_config.json)
          sarmae-pretrain   OUT.pth: the released pre-training code's `SAROpticalPatchAlignment` (resume there)
          sarmae-finetune   OUT.pth: the encoder file the released fine-tuning, detection and segmentation code reads
Every export gets a model card (`README.md` in directories, `OUT.README.md` beside files). Both commands run on CPU
in one process, whatever mesh saved the export. Every path may be local or gs://BUCKET/PATH; the output location
is checked for write access before any conversion.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from data_pipelines import normalization
from sarmae_jax import config as config_lib
from sarmae_jax.convert import (model_card, released, source_normalization, state_dicts, teacher_weights, torch_export,
                                torch_import)
from sarmae_jax.models import anchor, mae, param_trees, sarmae, teachers, vit
from sarmae_jax.runtime import paths, tpu_topology
from sarmae_jax.training import checkpoint

log = logging.getLogger("sarmae_jax")
EXPORT_FORMATS = ("timm", "hf-vit", "hf-vitmae", "sarmae-pretrain", "sarmae-finetune")
# Formats of earlier versions -> what to use now.
RENAMED_FORMATS = {
    "released": "--format released is now two formats named after their use: 'sarmae-pretrain' (the released "
                "pre-training code's SAROpticalPatchAlignment layout: sar_encoder.*, sar_alignment_ffn.*, "
                "optical_encoder.*; to resume pre-training there) and 'sarmae-finetune' (the encoder file its "
                "fine-tuning, detection and segmentation code reads)",
}


# ------------------------------------------------------------------------------------------ import
def size_for_width(width: int, source: str) -> str:
    """The `vit.VIT_SIZES` name of an encoder of this width (the widths are distinct)."""
    for name, arch in vit.VIT_SIZES.items():
        if arch["width"] == width:
            return name
    raise ValueError(f"{source}: width {width} is none of the ViT sizes "
                     f"{ {k: v['width'] for k, v in vit.VIT_SIZES.items()} }")


def import_config(size: str, image_size: int, patch_size: int, decoder: dict, scan: bool,
                  teacher_width: int | None = None, *, teacher: dict | None = None, pos_embed: str = "sincos",
                  final_norm: bool = True) -> ml_collections.ConfigDict:
    """The config describing the imported model (its `model` section, as the run config names it).

    Written into the export's metadata; compute settings are the neutral ones (float32, no remat or drop-path):
    a run that `init_from`s the export sets its own. `teacher`: the released teacher the file holds
    (`sarc.teacher`: kind, size, patch_size, checkpoint), which `sarmae-export --format sarmae-pretrain` reads back.
    """
    model = config_lib.default_config().model  # the one schema: every key a run config has
    model.update(size=size, patch_size=patch_size, image_size=image_size, in_channels=3, drop_path_rate=0.0,
                 dtype="float32", param_dtype="float32", scan_layers=scan, remat="none", pos_embed=pos_embed,
                 final_norm=final_norm)
    model.decoder.update(dict(decoder))
    sarc: dict[str, Any] = {"enabled": teacher_width is not None, "teacher_width": teacher_width}
    if teacher is not None:
        sarc["teacher"] = dict(teacher)
    return ml_collections.ConfigDict({"model": model.to_dict(), "sarc": sarc})


def model_shapes(config) -> dict[str, Any]:
    """Parameter shapes of the model `config` (from `import_config`) describes, every part included."""
    m = config.model
    encoder = sarmae.build_encoder(m)
    decoder = mae.MAEDecoder(patch_size=m.patch_size, out_channels=m.in_channels, width=m.decoder.width,
                             depth=m.decoder.depth, num_heads=m.decoder.num_heads, stack=sarmae.stack_options(m))
    width = config.sarc.teacher_width
    head = anchor.AnchorHead(width) if width is not None else None
    modules = sarmae.Modules(encoder, decoder, head, None, width)
    return jax.eval_shape(lambda: nn.unbox(sarmae.init_params(modules, config, jax.random.key(0))))


def released_teacher_config(sd: dict, src: str) -> dict | None:
    """`sarc.teacher` for the released teacher a pre-training file holds (None when it holds none or a fallback)."""
    _, teacher = torch_import.student_state_dict(sd)
    if not teacher:
        return None
    kind = released.teacher_kind(teacher)
    if kind != "SimplifiedDINOv3":
        log.warning("%s: its optical_encoder is the released code's random fallback %s (%s): no teacher recorded",
                    src, kind, ", ".join(sorted(teacher)))
        return None
    params = released.teacher_from_torch(teacher, src)
    width = int(params["cls_token"].shape[-1])
    return {"kind": "released", "size": size_for_width(width, src + " optical_encoder"),
            "patch_size": int(params["patch_embed"]["proj"]["kernel"].shape[0]), "checkpoint": str(src)}


def run_import(src: str, out_dir: str, *, size: str | None = None, image_size: int = 224,
               parts: Sequence[str] | None = None, decoder: dict, scan: bool = True,
               head_prefix: str | None = None, stated_normalization: str | None = None) -> str:
    """Convert `src` to a params-only export in `out_dir` (either local or gs://); returns `out_dir`.
    `size=None`: read off the width. The metadata records the source's own input normalisation
    (`source_normalization.of_import`; `stated_normalization` overrides it)."""
    src = str(paths.resolve(src, "checkpoint"))  # a string: the converters name it in their messages
    out_dir = paths.resolve(out_dir, "out_dir")
    paths.check_writable(out_dir, "out_dir")
    sd, info = state_dicts.load_with_info(src)
    width = torch_import.encoder_width(torch_import.student_state_dict(sd)[0], src)
    found = size_for_width(width, src)
    if size is not None and size != found:
        raise ValueError(f"{src}: the encoder is {width} wide, a ViT-{found}, not the ViT-{size} --size asks for")
    size = found
    arch = vit.VIT_SIZES[size]
    params = torch_import.import_mae_family(sd, src, num_heads=arch["num_heads"], image_size=image_size,
                                            decoder=decoder, parts=parts, scan=scan, head_prefix=head_prefix)
    enc = params["encoder"]
    patch = enc["patch_embed"]["proj"]["kernel"].shape[0]
    head = params.get("anchor_head")
    teacher_width = head["fc2"]["kernel"].shape[-1] if head is not None else None
    teacher = released_teacher_config(sd, src)
    config = import_config(size, image_size, patch, decoder, scan, teacher_width, teacher=teacher,
                           pos_embed="learned" if "pos_embed" in enc else "sincos", final_norm="norm" in enc)
    shapes = model_shapes(config)
    for part, value in params.items():  # the whole model, not just the converter, agrees on every name and shape
        param_trees.check_tree_matches(value, shapes[part], what=f"{src} part {part!r} (size {size!r})")
    meta = checkpoint.run_metadata(config, source=str(src), imported_parts=sorted(params),
                                   teacher_width=teacher_width, source_checkpoint=info)
    meta[normalization.KEY] = dict(normalization.NORMALIZATION, sar=source_normalization.of_import(
        src, [k.removeprefix("module.") for k in sd], info, hf_preprocessor=source_normalization.read_hf_preprocessor(src),
        stated=stated_normalization))
    checkpoint.export_params(out_dir, jax.tree.map(np.asarray, params), meta)
    log.info("imported %s (ViT-%s) from %s into %s%s", sorted(params), size, src, out_dir,
             f"; its released teacher is recorded as sarc.teacher={teacher}" if teacher else "")
    return str(out_dir)


def import_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sarmae-import", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help=".pth / .safetensors / HF directory")
    p.add_argument("out_dir", help="params-only export directory to write (config.train.init_from)")
    p.add_argument("--size", default=None, choices=sorted(vit.VIT_SIZES),
                   help="encoder size (default: read off the width; given, it must agree)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--parts", nargs="+", choices=torch_import.PARTS, default=None,
                   help="parts to import (default: all the file holds); 'encoder' = the recipe's MAE initialisation")
    p.add_argument("--decoder-width", type=int, default=512)
    p.add_argument("--decoder-depth", type=int, default=8)
    p.add_argument("--decoder-heads", type=int, default=16)
    p.add_argument("--head-prefix", default=None,
                   help="key prefix of the SARC head (default: sar_alignment_ffn. or align_head., whichever is there)")
    p.add_argument("--no-scan", action="store_true", help="write per-block params (model.scan_layers=False)")
    p.add_argument("--source-normalization", choices=source_normalization.CHOICES, default=None,
                   help="the input normalisation the weights were trained with, for a file that does not say")
    return p


def import_main(argv: Sequence[str] | None = None) -> int:
    a = import_parser().parse_args(argv)
    tpu_topology.quiet_libtpu_start()  # a host without TPU chips but with libtpu installed: no start-up warnings
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    decoder = dict(width=a.decoder_width, depth=a.decoder_depth, num_heads=a.decoder_heads)
    try:
        run_import(a.checkpoint, a.out_dir, size=a.size, image_size=a.image_size, parts=a.parts, decoder=decoder,
                   scan=not a.no_scan, head_prefix=a.head_prefix, stated_normalization=a.source_normalization)
    except (ValueError, FileNotFoundError, paths.StorageAccessError) as e:
        print(f"sarmae-import: {e}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------ export
def run_export(export_dir: str, out: str, fmt: str, image_size: int | None = None,
               teacher_checkpoint: str | None = None) -> str:
    """Write `out` in format `fmt` (see the module docstring) and its model card; returns `out`."""
    if fmt in RENAMED_FORMATS:
        raise ValueError(RENAMED_FORMATS[fmt])
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {EXPORT_FORMATS}")
    export_dir, out = str(paths.resolve(export_dir, "export_dir")), paths.resolve(out, "out")
    paths.check_writable(out if fmt.startswith("hf-") else out.parent, "out", arrays=False)
    params, meta = checkpoint.load_export(export_dir)
    params = jax.tree.map(np.asarray, params)
    model_cfg = meta.get("config", {}).get("model", {})
    image_size = image_size or model_cfg.get("image_size")
    if not image_size:
        raise ValueError(f"{export_dir}: metadata has no config.model.image_size; pass --image-size")
    absent: list[str] = []
    if fmt in ("sarmae-pretrain", "sarmae-finetune") and not out.name.endswith(".pth"):
        raise ValueError(f"{out}: the released code reads .pth files (torch.load); name the output *.pth")
    if fmt == "timm":
        _save(out, torch_export.to_timm(params, image_size))
    elif fmt == "sarmae-pretrain":
        teacher = released_teacher_params(meta, export_dir, teacher_checkpoint, image_size)
        absent = released.absent_pretraining_parts(params, teacher)  # told in the log and the card
        if absent:
            log.info("%s: without %s", out, "; ".join(absent))
        _save(out, released.to_pretraining(params, image_size, teacher), wrap_key="model")
    elif fmt == "sarmae-finetune":
        _save(out, released.to_finetuning(params, image_size), wrap_key="model")
    else:
        if fmt == "hf-vit":
            sd, hf_config = torch_export.to_hf_vit(params, image_size)
        else:
            sd, hf_config = torch_export.to_hf_vitmae(params, image_size, model_cfg.get("mask_ratio", 0.75),
                                                      model_cfg.get("norm_pix_loss", False))
        sar_rule = model_card.sar_normalization(meta)
        paths.write_atomic(out / "config.json", json.dumps(hf_config, indent=2).encode())
        if source_normalization.is_known(sar_rule):
            preprocessor = torch_export.hf_preprocessor_config(image_size, sar_rule)
            paths.write_atomic(out / "preprocessor_config.json", json.dumps(preprocessor, indent=2).encode())
        else:
            log.warning("%s: no preprocessor_config.json: the input normalisation is not known (%s)", out,
                        sar_rule.get("reason"))
        _save(out / "model.safetensors", sd)
    card_meta = dict(meta, config=dict(meta.get("config", {}), model=dict(model_cfg, image_size=image_size)))
    card = model_card.write(str(out), card_meta, fmt, torch_export.encoder_arch(params["encoder"]), absent)
    log.info("model card: %s", card)
    return str(out)


def released_teacher_params(meta: dict, export_dir: str, override: str | None, image_size: int) -> dict | None:
    """The run's teacher when it is the released one (`sarc.teacher.kind=released`), read from its checkpoint
    (`override` replaces the path the metadata records); None for any other teacher."""
    teacher_cfg = meta.get("config", {}).get("sarc", {}).get("teacher")
    kind = (teacher_cfg or {}).get("kind")
    if kind != "released":
        if override:
            raise ValueError(f"{export_dir}: --teacher-checkpoint given, but the run's teacher is "
                             f"sarc.teacher.kind={kind!r}, not 'released': optical_encoder.* is written only for it")
        return None
    cfg = ml_collections.ConfigDict(dict(teacher_cfg))
    path = override or cfg.checkpoint
    if path == teachers.RANDOM_INIT:
        log.warning("%s: the run's released teacher was randomly initialised (checkpoint=%r): optical_encoder.* "
                    "is not written", export_dir, path)
        return None
    if not path or not paths.as_path(path).exists():
        raise ValueError(f"{export_dir}: the run's teacher is sarc.teacher.kind=released from {path!r}, which is not "
                         "there; pass --teacher-checkpoint PATH (that file: a released SARMAE pre-training checkpoint "
                         "or the DINOv3 checkpoint the teacher was built from)")
    cfg.checkpoint = path
    module, _ = teachers.build_teacher(cfg)
    return jax.tree.map(np.asarray, teacher_weights.load_teacher_params(cfg, module, image_size))


def _save(path, sd: dict, wrap_key: str | None = None) -> str:
    # Materialise each tensor once (contiguous float32) under a progress bar: big models take a while.
    path = paths.as_path(path)
    sd = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tqdm(sd.items(), desc=path.name, unit="tensor")}
    return state_dicts.save(path, sd, wrap_key=wrap_key)


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sarmae-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export_dir", help="a params-only export (workdir/export, or sarmae-import's output)")
    p.add_argument("out", help="timm: a .safetensors or .pth file; sarmae-*: a .pth file; hf-*: a directory")
    p.add_argument("--format", required=True, help=f"one of {', '.join(EXPORT_FORMATS)}")
    p.add_argument("--image-size", type=int, default=None, help="position-table size (default: the run's image size)")
    p.add_argument("--teacher-checkpoint", default=None,
                   help="sarmae-pretrain: where the run's released teacher is (default: sarc.teacher.checkpoint)")
    return p


def export_main(argv: Sequence[str] | None = None) -> int:
    a = export_parser().parse_args(argv)
    tpu_topology.quiet_libtpu_start()  # a host without TPU chips but with libtpu installed: no start-up warnings
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(run_export(a.export_dir, a.out, a.format, a.image_size, a.teacher_checkpoint))
    except (ValueError, FileNotFoundError, paths.StorageAccessError) as e:
        print(f"sarmae-export: {e}", file=sys.stderr)
        return 1
    return 0
