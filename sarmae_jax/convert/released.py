"""The released SARMAE code's checkpoint layouts (github.com/MiliLab/SARMAE), read and written key for key.

Pre-training (`train_mae_contrastive.py`; `util/misc.py save_model` writes `torch.save({"model", "optimizer",
"epoch", "scaler", "args"})`, `args` the run's `argparse.Namespace`): `SAROpticalPatchAlignment.state_dict()`,
with `module.` in front of every key when a DDP wrapper's dict was saved instead:
  sar_encoder.*          `models_mae.MaskedAutoencoderViT`: cls_token, pos_embed [1, 1+N, D] (fixed sin-cos),
                         patch_embed.proj, blocks.N (timm `Block`), norm; mask_token, decoder_embed,
                         decoder_pos_embed, decoder_blocks.N, decoder_norm, decoder_pred
  sar_alignment_ffn.{0,2,3}.{weight,bias}
                         the SARC head: Linear(D, D), ReLU, Linear(D, Dt), LayerNorm(Dt)
  optical_encoder.{patch_embed.weight [Dt, 3, p, p], patch_embed.bias, norm.weight, norm.bias, cls_token [1, 1, Dt]}
                         the teacher `SimplifiedDINOv3`: DINOv3's patch convolution, final norm and class token
                         copied in. `forward(x, return_patches=True)` = conv -> flatten -> LayerNorm (eps 1e-5);
                         the class token is never used.
  The released code builds two other teachers as silent fallbacks, both random: `FallbackViT`
  (optical_encoder.patch_embed.{weight,bias} only: run without --dinov3_pretrained) and `MinimalViT`
  (optical_encoder.conv.*, norm.*: the DINOv3 file failed to load). Neither is accepted as a teacher.
Encoder files for fine-tuning, detection and segmentation (`main_finetune.py --finetune`, the mmdet/mmrotate/mmseg
  backbone `VisionTransformer_timm(pretrained=...)`; all written for MAE's `mae_pretrain_vit_base.pth`):
  `{"model": ...}` with cls_token, pos_embed [1, 1+N, D], patch_embed.proj, blocks.N, norm.
Fine-tuned classifiers (`main_finetune.py`: `{"model", "optimizer", "epoch", "scaler", "args", "max_accuracy"}`) are
  timm `vit_*_patch16_224(global_pool="avg")`: cls_token, pos_embed (trained), patch_embed.proj, blocks.N, fc_norm,
  head, and no final norm (`norm` is an Identity there); with `--cls_token`: norm and no fc_norm.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from sarmae_jax.convert import vit_layout
from sarmae_jax.convert.state_dicts import StrictReader

STUDENT = "sar_encoder."  # SAROpticalPatchAlignment.sar_encoder: the MaskedAutoencoderViT
HEAD = vit_layout.RELEASED_HEAD  # SAROpticalPatchAlignment.sar_alignment_ffn
TEACHER = "optical_encoder."  # SAROpticalPatchAlignment.optical_encoder
TEACHER_KEYS = ("patch_embed.weight", "patch_embed.bias", "norm.weight", "norm.bias", "cls_token")


def split_pretraining(sd: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(student, teacher)` of a (`module.`-free) state dict: every key but the teacher's, `sar_encoder.` removed, and
    the `optical_encoder.*` tensors (keys kept whole; `{}` when the dict has no teacher)."""
    student, teacher = {}, {}
    for key, value in sd.items():
        if key.startswith(TEACHER):
            teacher[key] = value
            continue
        name = key[len(STUDENT):] if key.startswith(STUDENT) else key
        if name in student:
            raise ValueError(f"both {name!r} and {STUDENT + name!r} are in the checkpoint: two encoders in one file")
        student[name] = value
    return student, teacher


def teacher_kind(teacher: Mapping[str, Any]) -> str:
    """Which of the released code's optical encoders the `optical_encoder.*` tensors are."""
    keys = {k[len(TEACHER):] for k in teacher}
    if keys == {"patch_embed.weight", "patch_embed.bias"}:
        return "FallbackViT"
    if "conv.weight" in keys:
        return "MinimalViT"
    return "SimplifiedDINOv3"


_FALLBACKS = {
    "FallbackViT": "a random patch convolution the released code builds when it runs without --dinov3_pretrained",
    "MinimalViT": "a random convolution and norm the released code builds when loading the DINOv3 file failed",
}


def teacher_from_torch(sd: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Params of `teachers.ReleasedTeacher` (`patch_embed/proj`, `norm`, `cls_token`) from the `optical_encoder.*`
    tensors of a released pre-training checkpoint; the dict's other tensors are not looked at."""
    teacher = {k: v for k, v in sd.items() if k.startswith(TEACHER)}
    if not teacher:
        raise ValueError(f"{source}: no {TEACHER}* tensors: not a released SARMAE pre-training checkpoint with its "
                         f"teacher (first keys: {sorted(sd)[:6]})")
    kind = teacher_kind(teacher)
    if kind != "SimplifiedDINOv3":
        raise ValueError(f"{source}: {TEACHER}* holds {sorted(teacher)}: the released code's {kind}, {_FALLBACKS[kind]}. "
                         "It is no trained teacher; use a DINOv3 checkpoint for sarc.teacher.checkpoint instead.")
    r = StrictReader(teacher, source)
    d, c, p, _ = np.shape(teacher.get(TEACHER + "patch_embed.weight", np.zeros((0, 0, 0, 0))))
    params = {"patch_embed": {"proj": vit_layout.conv_from_torch(r, TEACHER + "patch_embed.", d, c, p)},
              "norm": vit_layout.norm_from_torch(r, TEACHER + "norm.", d),
              "cls_token": r.take(TEACHER + "cls_token", (1, 1, d))}
    r.finish("the released SARMAE teacher (SimplifiedDINOv3: " + ", ".join(TEACHER + k for k in TEACHER_KEYS) + ")")
    return params


def teacher_to_torch(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """`teachers.ReleasedTeacher` params -> `optical_encoder.*`, as `SimplifiedDINOv3.state_dict()` names them."""
    out = vit_layout.conv_to_torch(params["patch_embed"]["proj"], TEACHER + "patch_embed.")
    out.update(vit_layout.norm_to_torch(params["norm"], TEACHER + "norm."))
    out[TEACHER + "cls_token"] = np.asarray(params["cls_token"])
    return out


def to_pretraining(params: Mapping[str, Any], image_size: int, teacher: Mapping[str, Any] | None = None
                   ) -> dict[str, np.ndarray]:
    """`SAROpticalPatchAlignment.state_dict()` names: `sar_encoder.*` (encoder and, when present, decoder),
    `sar_alignment_ffn.*` (when the run trained a SARC head) and `optical_encoder.*` (when `teacher` is given)."""
    mae = vit_layout.encoder_to_torch(params["encoder"], image_size, vit_layout.TIMM_ENCODER)
    if "decoder" in params:
        patch = int(np.shape(params["encoder"]["patch_embed"]["proj"]["kernel"])[0])
        mae.update(vit_layout.decoder_to_torch(params["decoder"], image_size, patch, vit_layout.MAE_DECODER))
    out = {STUDENT + k: v for k, v in mae.items()}
    if "anchor_head" in params:
        out.update(vit_layout.anchor_head_to_torch(params["anchor_head"], HEAD))
    if teacher is not None:
        out.update(teacher_to_torch(teacher))
    return out


def absent_pretraining_parts(params: Mapping[str, Any], teacher: Mapping[str, Any] | None) -> list[str]:
    """The parts of the released `SAROpticalPatchAlignment` a `to_pretraining` dict of `params` lacks."""
    absent = []
    if "norm" not in params["encoder"]:
        absent.append(STUDENT + "norm.* (this encoder has no final norm)")
    if "decoder" not in params:
        absent.append(STUDENT + "mask_token, decoder_* (no decoder in this export)")
    if "anchor_head" not in params:
        absent.append(HEAD + "* (no SARC head in this export)")
    if teacher is None:
        absent.append(TEACHER + "* (this export's teacher is not the released one)")
    return absent


def to_finetuning(params: Mapping[str, Any], image_size: int) -> dict[str, np.ndarray]:
    """The encoder in MAE's encoder-file names (cls_token, pos_embed, patch_embed.proj, blocks.N, norm), the
    dict the released fine-tuning, detection and segmentation code reads from `{"model": ...}`."""
    return vit_layout.encoder_to_torch(params["encoder"], image_size, vit_layout.TIMM_ENCODER)


def is_finetuned_classifier(sd: Mapping[str, Any]) -> bool:
    """A timm / MAE-style fine-tuned classifier (what `main_finetune.py` trains): a `head` on a ViT, whose position
    table was trained with it. Average pooling (its default) has `fc_norm` and no final `norm`; `--cls_token` the reverse."""
    return "head.weight" in sd and "cls_token" in sd and "patch_embed.proj.weight" in sd
