"""Model cards: the `README.md` written with every export (plain Python: no torch, no jax).

One card per artefact: the params-only export directory (`checkpoint.export_params`), and each PyTorch export
(`sarmae-export`: inside Hugging Face directories, `<file>.README.md` beside single files). A card says what the
weights are (architecture, patch and input size), how they were made (data, steps, SARE, SARC teacher), how to feed
them (the pre-training normalisation in each toolkit's units, and where the released fine-tuning configs differ),
how the fixed positions are resized for detection / segmentation inputs, and the lines that load the file strictly.
Everything comes from the export's metadata (`checkpoint.run_metadata`).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from etils import epath

from data_pipelines import normalization
from sarmae_jax.convert import source_normalization
from sarmae_jax.models import vit  # the model's own constants (LayerNorm eps), not copies

TARGETS = ("params", "timm", "hf-vit", "hf-vitmae", "sarmae-pretrain", "sarmae-finetune")
# Image sizes of the released detection / segmentation configs (SSDD 608, RSAR 800, SARDet-100k 1024, AIRSEG 512).
DOWNSTREAM_SIZES = (512, 608, 800, 1024)
# The released detection configs' `Normalize` (ImageNet statistics in 0-255 units, to_rgb=True).
RELEASED_DET_MEAN = (123.675, 116.28, 103.53)
RELEASED_DET_STD = (58.395, 57.12, 57.375)
# Widths of `vit.VIT_SIZES` (the card names the architecture without importing the model code).
_DEPTH_HEADS = {"mini": (128, 4, 4), "tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12),
                "large": (1024, 24, 16), "huge": (1280, 32, 16)}


def card_path(artefact: str) -> str:
    """Where the card of `artefact` goes: `README.md` inside a directory, `<file>.README.md` beside a file."""
    return os.path.join(artefact, "README.md") if not os.path.splitext(artefact)[1] else artefact + ".README.md"


def write(artefact: str, metadata: Mapping[str, Any], target: str, arch: Mapping[str, int] | None = None,
          absent: Sequence[str] = ()) -> str:
    """Render the card of `artefact` (a directory or file written for `target`) and write it; returns its path.
    `arch` (`width`, `depth`, `num_heads`, `patch_size`, read off the weights) overrides what the metadata says;
    `absent`: parts of the target model the file does not hold (said under Loading)."""
    path = card_path(artefact)
    text = render(metadata, target, os.path.basename(os.path.normpath(artefact)), arch, absent)
    epath.Path(path).write_text(text)
    return path


def render(metadata: Mapping[str, Any], target: str, name: str, arch: Mapping[str, int] | None = None,
           absent: Sequence[str] = ()) -> str:
    if target not in TARGETS:
        raise ValueError(f"model card target {target!r}: expected one of {TARGETS}")
    config = metadata.get("config", {})
    m = config.get("model", {})
    size, patch, image = m.get("size", "?"), int(m.get("patch_size", 16)), int(m.get("image_size", 224))
    width, depth, heads = _DEPTH_HEADS.get(size, ("?", "?", "?"))
    if arch:
        width, depth, heads, patch = arch["width"], arch["depth"], arch["num_heads"], arch["patch_size"]
        size = next((k for k, v in _DEPTH_HEADS.items() if v == (width, depth, heads)), f"{width}w{depth}d")
    sections = [
        f"# {name}: SARMAE ViT-{size} / {patch} ({_WHAT[target]})",
        _architecture(m, size, width, depth, heads, patch, image),
        _provenance(metadata, config),
        _normalisation(metadata),
        _positions(patch, image, m.get("pos_embed", "sincos")),
        "## Loading\n\n" + _loading(target, name, m, width, depth, heads, patch, image)
        + ("\n\nThis file does not hold: " + "; ".join(absent) + ". A strict load into the released model reports "
           "them missing." if absent else ""),
    ]
    return "\n\n".join(sections) + "\n"


_WHAT = {
    "params": "params-only export: `train.init_from`, `sarmae-eval`, `sarmae-export`",
    "timm": "timm `VisionTransformer` state dict",
    "hf-vit": "Hugging Face `ViTModel`",
    "hf-vitmae": "Hugging Face `ViTMAEForPreTraining`",
    "sarmae-pretrain": "released SARMAE pre-training layout",
    "sarmae-finetune": "released SARMAE fine-tuning / detection / segmentation encoder file",
}


def _architecture(m, size, width, depth, heads, patch, image) -> str:
    dec = m.get("decoder", {})
    learned = m.get("pos_embed", "sincos") == "learned"
    lines = [
        "## Architecture",
        "",
        f"- ViT-{size}: width {width}, depth {depth}, {heads} heads, MLP ratio 4, pre-norm blocks, "
        f"LayerNorm eps {_num(vit.LAYER_NORM_EPS)},"
        " exact GELU, a class token, qkv bias.",
        f"- Patch {patch} x {patch}, input {image} x {image} x {m.get('in_channels', 3)} "
        f"({image // patch} x {image // patch} = {(image // patch) ** 2} patches).",
        "- Positions: " + ("a learned table (imported from a fine-tuned classifier)." if learned else
                           "fixed 2-D sin-cos (MAE's table; the class row is zeros). Not trained."),
        "- Final LayerNorm after the last block: " + ("yes." if m.get("final_norm", True) else
                                                       "none (imported from an average-pooling classifier)."),
    ]
    if dec:
        lines.append(f"- MAE decoder (pre-training only): width {dec.get('width')}, depth {dec.get('depth')}, "
                     f"{dec.get('num_heads')} heads, mask ratio {m.get('mask_ratio', 0.75)}, "
                     f"norm_pix_loss {m.get('norm_pix_loss', False)}.")
    return "\n".join(lines)


def _provenance(metadata, config) -> str:
    lines = ["## Pre-training"]
    source = metadata.get("source")
    if source:
        lines += [f"- Imported from `{source}` (`sarmae-import`); parts: {', '.join(metadata.get('imported_parts', []))}."]
        ckpt = metadata.get("source_checkpoint") or {}
        args = ckpt.get("args") or {}
        if ckpt.get("read_past"):
            lines.append(f"- The file also held: {', '.join(ckpt['read_past'])}.")
        if args:
            keys = ("model", "epochs", "batch_size", "lr", "mask_ratio", "input_size", "enable_sar_noise", "noise_ratio",
                    "noise_min", "noise_max", "mae_loss_weight", "alignment_loss_weight", "dinov3_pretrained",
                    "sar_pretrained", "data_path", "finetune", "dataset", "nb_classes")
            shown = [f"{k}={args[k]!r}" for k in keys if k in args]
            lines.append("- Its run's arguments (`args`): " + (", ".join(shown) if shown else "none of the usual ones") + ".")
        if isinstance(ckpt.get("epoch"), int):
            lines.append(f"- Saved with epoch={ckpt['epoch']} (the released trainers count from 0: "
                         f"{ckpt['epoch'] + 1} epochs done).")
    dataset, steps = metadata.get("dataset"), metadata.get("total_steps")
    train = config.get("train", {})
    if dataset:
        lines += [f"- Data: `{dataset.get('path')}` ({dataset.get('split', 'train')} split), "
                  f"{dataset.get('num_examples')} SAR images, {dataset.get('num_paired')} of them with an optical pair; "
                  f"epoch = {dataset.get('epoch_size')} examples."]
    if steps:
        lines.append(f"- Steps: {steps} at global batch {train.get('batch_size')} "
                     f"({steps * int(train.get('batch_size') or 0):,} examples).")
    sare, sarc = config.get("sare"), config.get("sarc", {})
    if sare:
        if sare.get("enabled"):
            key = "looks" if sare.get("model") in ("gamma_intensity", "amplitude") else "sigma"
            lines.append(f"- SARE: speckle model `{sare.get('model')}`, {key} in {tuple(sare.get(key, ()))}, applied to "
                         f"{sare.get('prob')} of the images; the decoder reconstructs the clean image.")
        else:
            lines.append("- SARE: off.")
    teacher = sarc.get("teacher")
    if sarc.get("enabled") and teacher:
        weight = f"weight {sarc['weight']}, " if "weight" in sarc else ""
        lines.append(f"- SARC: {weight}frozen teacher `{teacher.get('kind')}` "
                     f"({teacher.get('size')}, patch {teacher.get('patch_size')}) from `{teacher.get('checkpoint')}`.")
    elif sarc and not sarc.get("enabled", True) and not source:  # an import says nothing of what the file lacks
        lines.append("- SARC: off.")
    if len(lines) == 1:
        lines.append("Not recorded in this export's metadata.")
    return "\n\n".join([lines[0], "\n".join(lines[1:])])


def sar_normalization(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    """The input rule an export's metadata records under `normalization.sar` (either spelling of the key): the
    project's SAR rule for a run's export, the source model's own for an import (`source_normalization`), or an
    entry saying it is not known. Metadata without one is refused: nothing else knows what the weights expect."""
    recorded = normalization.read(metadata, "export metadata")  # ValueError naming the keys it has
    if not isinstance(recorded, Mapping) or "sar" not in recorded:
        raise ValueError(f"export metadata: its {normalization.KEY!r} entry has no 'sar' rule: {recorded!r}")
    return recorded["sar"]


def _values(values: Sequence[float], scale: float = 1.0, bracket: str = "[]") -> str:
    """`[127.5] * 3` for equal values, `[123.675, 116.28, 103.53]` otherwise (`bracket="()"`: a tuple)."""
    scaled = [_num(v * scale) for v in values]
    if len(set(scaled)) == 1:
        return f"({scaled[0]},) * {len(scaled)}" if bracket == "()" else f"[{scaled[0]}] * {len(scaled)}"
    return bracket[0] + ", ".join(scaled) + bracket[1]


def _normalisation(metadata) -> str:
    sar = sar_normalization(metadata)
    if not source_normalization.is_known(sar):
        return "\n".join([
            "## Input normalisation",
            "",
            f"**Not known.** {sar.get('reason', '')}. The weights were imported from a file that does not say "
            "how its inputs were normalised; no Hugging Face `preprocessor_config.json` is written for them. Feed "
            "them what their original training used.",
        ])
    mean, std = source_normalization.per_channel(sar)
    det_mean, det_std = list(RELEASED_DET_MEAN), list(RELEASED_DET_STD)
    m255, s255 = _values(mean, 255), _values(std, 255)
    # mmcv reads images as BGR: per-channel statistics (RGB order) need the conversion, equal ones do not care.
    rgb = "True" if len(set(mean)) > 1 or len(set(std)) > 1 else "False"
    imported = metadata.get("source")
    if imported:
        intro = (f"Imported weights: the normalisation of the model they come from ({sar.get('source', imported)}): "
                 f"{sar.get('input', 'values in [0, 1]')}, then `(x - mean) / std` with mean {_values(mean)}, "
                 f"std {_values(std)}. The same in each toolkit's units:")
    else:
        intro = ("Pre-training fed grayscale SAR intensities scaled to [0, 1] (8-bit / 255, 16-bit / 65535), repeated "
                 f"to 3 channels, then `(x - {_values(mean)}) / {_values(std)}`; resized bilinearly (Pillow) to the "
                 "input size, aspect ratio not kept. The same in each toolkit's units:")
    if [round(v * 255, 3) for v in mean] == det_mean and [round(v * 255, 3) for v in std] == det_std:
        released = ("The released SARMAE detection configs (`SARMAE_Fintune/Detection/configs/SARMAE/`) normalise with "
                    "these same ImageNet statistics.")
    else:
        released = (
            f"**The released SARMAE detection configs differ.** `SARMAE_Fintune/Detection/configs/SARMAE/` (SSDD, RSAR, "
            f"SARDet-100k) normalise with ImageNet statistics, `mean={det_mean}, std={det_std}, to_rgb=True`, not with "
            f"the statistics above: a pixel v enters as (v - {det_mean[0]}) / {det_std[0]} instead of "
            f"(v - {_num(mean[0] * 255)}) / {_num(std[0] * 255)}, about {std[0] * 255 / det_std[0]:.1f} times the "
            "contrast these weights were trained with and different per channel. Set the values of the table above "
            "to feed the encoder what it was trained on. The released segmentation configs (AIRSEG) use `127.5` / "
            "`127.5`, as SARMAE pre-training; the released classification fine-tuning (`main_finetune.py`) feeds "
            "[0, 1] tensors without normalisation.")
    return "\n".join([
        "## Input normalisation",
        "",
        intro,
        "",
        "| toolkit | where | values |",
        "|---|---|---|",
        f"| timm / PyTorch | on [0, 1] tensors | `mean={_values(mean, bracket='()')}, std={_values(std, bracket='()')}` |",
        f"| Hugging Face | `preprocessor_config.json` (written with every HF export) | `rescale_factor=1/255`, "
        f"`image_mean={_values(mean)}`, `image_std={_values(std)}`, `do_convert_rgb=True` |",
        f"| mmdet 3.x, mmseg 1.x, mmrotate 1.x | `data_preprocessor` on 0-255 pixels | `mean={m255}, "
        f"std={s255}, bgr_to_rgb={rgb}` |",
        f"| mmdet 2.x, mmrotate 0.x (mmcv 1.x) | `img_norm_cfg` / `Normalize` on 0-255 pixels | `mean={m255}, "
        f"std={s255}, to_rgb={rgb}` |",
        "",
        "16-bit images: divide by 65535 first (the 0-255 and 1/255 values above assume 8-bit pixels).",
        "",
        released,
    ])


def _num(x: float) -> str:
    return f"{x:g}"


def _positions(patch: int, image: int, pos_embed: str) -> str:
    grid = image // patch
    rows = "\n".join(f"| {s} | {s // patch} x {s // patch} |" for s in DOWNSTREAM_SIZES)
    stored = "the learned table" if pos_embed == "learned" else "the fixed sin-cos table"
    return "\n".join([
        "## Positions at detection and segmentation sizes",
        "",
        f"The exported position table covers the pre-training grid, {grid} x {grid} (+ the class row). Larger inputs "
        f"need it on a larger grid:",
        "",
        "| input | grid |",
        "|---|---|",
        rows,
        "",
        f"The released loaders resample {stored} themselves: the detection / segmentation backbone "
        "(`VisionTransformer_timm.init_weights`) drops the class row (the file has `cls_token`) and resizes the "
        f"{grid} x {grid} grid bicubically (`align_corners=False`) to `img_size / {patch}`; `main_finetune.py` does the "
        "same through `interpolate_pos_embed`, keeping the class row. timm resamples the same way "
        "(`timm.layers.resample_abs_pos_embed`, or `dynamic_img_size=True`), Hugging Face at run time with "
        "`interpolate_pos_encoding=True`. "
        + ("" if pos_embed == "learned" else
           f"`sarmae-export --image-size S` writes instead the sin-cos table evaluated on the S / {patch} grid "
           f"(positions 0 .. S / {patch} - 1, a different table: pre-training only saw 0 .. {grid - 1}); the "
           "released loaders then find the size they need and resample nothing."),
    ])


def _timm_constructor(width, depth, heads, patch, image, extra="num_classes=0") -> str:
    return (f"VisionTransformer(img_size={image}, patch_size={patch}, embed_dim={width}, depth={depth}, "
            f"num_heads={heads}, {extra})")


def _loading(target, name, m, width, depth, heads, patch, image) -> str:
    has_norm = bool(m.get("final_norm", True))
    ctor = _timm_constructor(width, depth, heads, patch, image)
    if target == "params":
        return "\n".join([
            "```python",
            "from sarmae_jax.training import checkpoint",
            f"params, metadata = checkpoint.load_export({name!r})  # onto one CPU device, whatever mesh saved it",
            "```",
            f"Start a run from it with `--config.train.init_from={name}` (each part must match the model: names and "
            f"shapes); convert it with `sarmae-export {name} OUT --format "
            "{timm,hf-vit,hf-vitmae,sarmae-pretrain,sarmae-finetune}`.",
        ])
    if target == "timm":
        reader = (f'load_file("{name}")' if name.endswith(".safetensors") else
                  f'torch.load("{name}", map_location="cpu", weights_only=True)')
        imp = "from safetensors.torch import load_file\n" if name.endswith(".safetensors") else "import torch\n"
        return "\n".join([
            "```python",
            imp + "from timm.models.vision_transformer import VisionTransformer",
            f"model = {ctor}",
            f"model.load_state_dict({reader}, strict=True)",
            "```",
            "Keys and shapes are timm's `vit_*_patch16_224` names without a head (`num_classes=0`).",
        ])
    if target in ("hf-vit", "hf-vitmae"):
        cls = "ViTModel" if target == "hf-vit" else "ViTMAEForPreTraining"
        kw = ", add_pooling_layer=False" if target == "hf-vit" else ""
        return "\n".join([
            "```python",
            f"from transformers import AutoImageProcessor, {cls}",
            f'model, info = {cls}.from_pretrained("{name}"{kw}, output_loading_info=True)',
            'assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]',
            f'processor = AutoImageProcessor.from_pretrained("{name}", backend="pil")  # the pre-training resize and normalisation',
            'inputs = processor(images=pil_image, return_tensors="pt")  # grayscale PIL images are repeated to RGB',
            "```",
            "`backend=\"pil\"` resizes with Pillow's bilinear filter, as pre-training did; the torchvision backend "
            "(transformers' default when torchvision is installed) resizes with its own antialiased bilinear filter, "
            "which differs by a few gray levels." + (" There is no trained pooler: load with "
                                                    "`add_pooling_layer=False`." if target == "hf-vit" else ""),
        ])
    if target == "sarmae-pretrain":
        return "\n".join([
            "`{\"model\": SAROpticalPatchAlignment.state_dict()}` of the released `SARMAE_Pretrain` code: `sar_encoder.*` "
            "(the MAE, encoder and decoder), `sar_alignment_ffn.*` (the SARC head) and, when the run's teacher was the "
            "released one, `optical_encoder.*` (`SimplifiedDINOv3`). Continue pre-training there with "
            f"`train_mae_contrastive.py --resume {name} --dinov3_pretrained DINOV3.pth ...` (strict: `--dinov3_pretrained` "
            "must be given, or the released code builds a `FallbackViT` teacher whose keys differ); the file has no "
            "optimizer, scaler or epoch, so the optimiser starts fresh at `--start_epoch`. In Python:",
            "```python",
            "import torch",
            f'state = torch.load("{name}", map_location="cpu", weights_only=True)["model"]',
            "model = SAROpticalPatchAlignment(mae_model, dinov3_pretrained_path=DINOV3_PTH)  # the released classes",
            "print(model.load_state_dict(state, strict=True))",
            "```",
            f"`--sar_pretrained {name}` reads the encoder alone (it strips `sar_encoder.` and drops the decoder).",
        ])
    # sarmae-finetune
    unexpected_cls = '{"norm.weight", "norm.bias"}' if has_norm else "set()"
    unexpected_det = '{"cls_token", "norm.weight", "norm.bias"}' if has_norm else '{"cls_token"}'
    return "\n".join([
        "`{\"model\": encoder}` in MAE's encoder-file names (`cls_token`, `pos_embed`, `patch_embed.proj.*`, "
        "`blocks.N.*`" + (", `norm.*`" if has_norm else "") + "), the layout the released fine-tuning, detection and "
        "segmentation code reads (`main_finetune.py --finetune`, backbone `VisionTransformer_timm(pretrained=...)`).",
        "",
        "Classification (`SARMAE_Pretrain/main_finetune.py`: timm ViT, global average pooling):",
        "```python",
        "import torch",
        "from timm.models.vision_transformer import VisionTransformer",
        f'state = torch.load("{name}", map_location="cpu", weights_only=True)["model"]',
        "model = " + _timm_constructor(width, depth, heads, patch, image, 'num_classes=NUM_CLASSES, global_pool="avg"'),
        "missing, unexpected = model.load_state_dict(state, strict=False)",
        'assert set(missing) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}  # the new classifier',
        f"assert set(unexpected) == {unexpected_cls}  # average pooling normalises with fc_norm, not norm",
        "```",
        "Detection / segmentation (the released mmdet / mmrotate / mmseg `VisionTransformer_timm`: no class token, no "
        "final norm, four feature-pyramid branches):",
        "```python",
        f"backbone = dict(type='VisionTransformer_timm', img_size=608, patch_size={patch}, embed_dim={width}, "
        f"depth={depth}, num_heads={heads}, pretrained='{name}')",
        "```",
        f"Its loader reports missing `fpn1.*`, `fpn2.*` (new; plus `fc_norm.*`, `head.*` in the segmentation copy) and "
        f"unexpected {unexpected_det}: the parts that backbone does not have.",
    ])
