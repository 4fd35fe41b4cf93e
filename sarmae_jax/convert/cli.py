"""`sarmae-import` and `sarmae-export`: the command-line edges of the converters (all I/O lives here).

    sarmae-import CKPT.pth OUT_DIR --size base [--parts encoder] [--image-size 224]
        PyTorch (released SARMAE / ImageNet MAE / timm / HF) -> params-only export (`train.init_from`).
    sarmae-export EXPORT_DIR OUT --format {timm,hf-vit,hf-vitmae,released}
        params-only export -> PyTorch files (timm: OUT.safetensors or OUT.pth; hf-*: a directory).
Both run on CPU in one process, whatever mesh saved the export.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from sarmae_jax import config as config_lib
from sarmae_jax.convert import state_dicts, torch_export, torch_import
from sarmae_jax.models import anchor, mae, param_trees, sarmae, vit
from sarmae_jax.training import checkpoint

log = logging.getLogger("sarmae_jax")
EXPORT_FORMATS = ("timm", "hf-vit", "hf-vitmae", "released")


# ------------------------------------------------------------------------------------------ import
def import_config(size: str, image_size: int, patch_size: int, decoder: dict, scan: bool,
                  teacher_width: int | None = None) -> ml_collections.ConfigDict:
    """The config describing the imported model (its `model` section, as the run config names it).

    Written into the export's metadata; compute settings are the neutral ones (float32, no remat or drop-path):
    a run that `init_from`s the export sets its own.
    """
    model = config_lib.default_config().model  # the one schema: every key a run config has
    model.update(size=size, patch_size=patch_size, image_size=image_size, in_channels=3, drop_path_rate=0.0,
                 dtype="float32", param_dtype="float32", scan_layers=scan, remat="none")
    model.decoder.update(dict(decoder))
    return ml_collections.ConfigDict({"model": model.to_dict(), "sarc": {"enabled": teacher_width is not None,
                                                               "teacher_width": teacher_width}})


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


def run_import(src: str, out_dir: str, *, size: str, image_size: int, parts: Sequence[str] | None,
               decoder: dict, scan: bool = True, head_prefix: str = "align_head.") -> str:
    """Convert `src` to a params-only export in `out_dir`; returns `out_dir`."""
    sd = state_dicts.load(src)
    arch = vit.VIT_SIZES[size]
    params = torch_import.import_mae_family(sd, src, num_heads=arch["num_heads"], image_size=image_size,
                                            decoder=decoder, parts=parts, scan=scan, head_prefix=head_prefix)
    patch = params["encoder"]["patch_embed"]["proj"]["kernel"].shape[0]
    head = params.get("anchor_head")
    teacher_width = head["fc2"]["kernel"].shape[-1] if head is not None else None
    config = import_config(size, image_size, patch, decoder, scan, teacher_width)
    shapes = model_shapes(config)
    for part, value in params.items():  # the whole model, not just the converter, agrees on every name and shape
        param_trees.check_tree_matches(value, shapes[part], what=f"{src} part {part!r} (size {size!r})")
    meta = checkpoint.run_metadata(config, source=os.path.abspath(src), imported_parts=sorted(params),
                                   teacher_width=teacher_width)
    checkpoint.export_params(out_dir, jax.tree.map(np.asarray, params), meta)
    log.info("imported %s from %s into %s", sorted(params), src, out_dir)
    return out_dir


def import_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sarmae-import", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help=".pth / .safetensors / HF directory")
    p.add_argument("out_dir", help="params-only export directory to write (config.train.init_from)")
    p.add_argument("--size", required=True, choices=sorted(vit.VIT_SIZES), help="encoder size (sets the head count)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--parts", nargs="+", choices=torch_import.PARTS, default=None,
                   help="parts to import (default: all the file holds); 'encoder' = the recipe's MAE initialisation")
    p.add_argument("--decoder-width", type=int, default=512)
    p.add_argument("--decoder-depth", type=int, default=8)
    p.add_argument("--decoder-heads", type=int, default=16)
    p.add_argument("--head-prefix", default="align_head.", help="key prefix of the SARC head in the checkpoint")
    p.add_argument("--no-scan", action="store_true", help="write per-block params (model.scan_layers=False)")
    return p


def import_main(argv: Sequence[str] | None = None) -> int:
    a = import_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    decoder = dict(width=a.decoder_width, depth=a.decoder_depth, num_heads=a.decoder_heads)
    try:
        run_import(a.checkpoint, a.out_dir, size=a.size, image_size=a.image_size, parts=a.parts, decoder=decoder,
                   scan=not a.no_scan, head_prefix=a.head_prefix)
    except (ValueError, FileNotFoundError) as e:
        print(f"sarmae-import: {e}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------ export
def run_export(export_dir: str, out: str, fmt: str, image_size: int | None = None) -> str:
    params, meta = checkpoint.load_export(export_dir)
    params = jax.tree.map(np.asarray, params)
    model_cfg = meta.get("config", {}).get("model", {})
    image_size = image_size or model_cfg.get("image_size")
    if not image_size:
        raise ValueError(f"{export_dir}: metadata has no config.model.image_size; pass --image-size")
    if fmt == "timm":
        return _save(out, torch_export.to_timm(params, image_size))
    if fmt == "released":
        return _save(out, torch_export.to_released(params, image_size), wrap_key="model")
    if fmt == "hf-vit":
        sd, hf_config = torch_export.to_hf_vit(params, image_size)
    elif fmt == "hf-vitmae":
        sd, hf_config = torch_export.to_hf_vitmae(params, image_size, model_cfg.get("mask_ratio", 0.75),
                                                  model_cfg.get("norm_pix_loss", False))
    else:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {EXPORT_FORMATS}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    _save(os.path.join(out, "model.safetensors"), sd)
    return out


def _save(path: str, sd: dict, wrap_key: str | None = None) -> str:
    # Materialise each tensor once (contiguous float32) under a progress bar: big models take a while.
    sd = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tqdm(sd.items(), desc=os.path.basename(path), unit="tensor")}
    return state_dicts.save(path, sd, wrap_key=wrap_key)


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sarmae-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export_dir", help="a params-only export (workdir/export, or sarmae-import's output)")
    p.add_argument("out", help="timm/released: a .safetensors or .pth file; hf-*: a directory")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("--image-size", type=int, default=None, help="position-table size (default: the run's image size)")
    return p


def export_main(argv: Sequence[str] | None = None) -> int:
    a = export_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(run_export(a.export_dir, a.out, a.format, a.image_size))
    except (ValueError, FileNotFoundError) as e:
        print(f"sarmae-export: {e}", file=sys.stderr)
        return 1
    return 0
