"""PyTorch MAE-family checkpoints -> params `{"encoder", "decoder", "anchor_head"}` (NumPy trees).

Reads, with default arguments:
  - the released SARMAE pre-training checkpoints (`released.py`: `sar_encoder.*`, the SARC head
    `sar_alignment_ffn.{0,2,3}`, the teacher `optical_encoder.*`; with or without `module.`). The teacher is not a
    trainable part: it is read by `sarc.teacher.kind=released` with `sarc.teacher.checkpoint` = the same file;
  - encoder files in MAE names (the released `--finetune` / backbone `pretrained=` files, ImageNet MAE checkpoints;
    encoder only or with decoder), our `timm` / `sarmae-*` exports and those of earlier versions (head `align_head.`);
  - fine-tuned timm classifiers (`main_finetune.py`: a `head`; average pooling: `fc_norm` and no final norm): the
    encoder is imported with its trained position table (`model.pos_embed="learned"`) and, for average pooling, without
    a final norm (`model.final_norm=False`); `fc_norm` and `head` are read past;
  - Hugging Face `ViTMAEForPreTraining` / `ViTModel` files (the names `save_pretrained` and the hub's files hold,
    or a transformers 5.x live `state_dict()`: see `vit_layout.hf_live_names_to_file`).
Strict: every tensor is placed and shape-checked, leftovers are errors; a pre-trained encoder's stored position
table must equal the fixed sin-cos table.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from sarmae_jax.convert import released, vit_layout
from sarmae_jax.convert.state_dicts import StrictReader, strip_prefixes
from sarmae_jax.models import positions

log = logging.getLogger("sarmae_jax")

PREFIXES = ("module.",)
PARTS = ("encoder", "decoder", "anchor_head")
HEAD_PREFIXES = (vit_layout.RELEASED_HEAD, vit_layout.ALIGN_HEAD)  # released name; earlier exports of this project
_CLS_KEYS = ("cls_token", "embeddings.cls_token", "vit.embeddings.cls_token")


def student_state_dict(sd: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(student, teacher)`: `module.` and `sar_encoder.` removed, HF live names renamed to file names, and the
    released teacher's `optical_encoder.*` tensors split off (`{}` when there are none)."""
    student, teacher = released.split_pretraining(strip_prefixes(sd, PREFIXES))
    return vit_layout.hf_live_names_to_file(student), teacher


def encoder_width(sd: Mapping[str, Any], source: str) -> int:
    """The encoder width of a student state dict (from `student_state_dict`), read off its class token."""
    for key in _CLS_KEYS:
        if key in sd:
            return int(sd[key].shape[-1])
    raise ValueError(f"{source}: no class token ({' / '.join(_CLS_KEYS)}): not a ViT encoder checkpoint "
                     f"(first keys: {sorted(sd)[:8]})")


def head_prefix_of(sd: Mapping[str, Any]) -> str | None:
    found = [p for p in HEAD_PREFIXES if any(k.startswith(p) for k in sd)]
    if len(found) > 1:
        raise ValueError(f"two SARC heads in one checkpoint: {found}")
    return found[0] if found else None


def detect_parts(sd, head_prefix: str | None) -> list[str]:
    """Which parts a student state dict holds."""
    parts = ["encoder"]
    if any(k.startswith(("decoder_", "decoder.", "mask_token")) for k in sd):
        parts.append("decoder")
    if head_prefix and any(k.startswith(head_prefix) for k in sd):
        parts.append("anchor_head")
    return parts


def import_mae_family(sd, source: str, *, num_heads: int, image_size: int, decoder: dict | None = None,
                      parts: Sequence[str] | None = None, scan: bool = True, head_prefix: str | None = None
                      ) -> dict[str, Any]:
    """Params for the requested `parts` (default: every part the file holds).

    sd: the raw state dict; decoder: `{"width", "depth", "num_heads"}` of the model's decoder (needed for
    the decoder part); head_prefix: the SARC head's key prefix (default: `sar_alignment_ffn.` or `align_head.`,
    whichever the file has). Tensors of parts that are present but not requested are skipped on purpose and
    logged (e.g. `parts=["encoder"]`: the recipe's ImageNet-MAE initialisation, decoder left fresh).
    """
    sd, teacher = student_state_dict(sd)
    if teacher:
        log.info("%s: holds the released teacher (%s, %d tensors): not a trainable part, not imported; a run reads it "
                 "with sarc.teacher.kind=released sarc.teacher.checkpoint=%s", source, released.teacher_kind(teacher),
                 len(teacher), source)
    head_prefix = head_prefix or head_prefix_of(sd)
    hf = any(k.startswith(("vit.embeddings.", "embeddings.")) for k in sd)
    enc_names = vit_layout.HF_ENCODER if hf else vit_layout.TIMM_ENCODER
    enc_prefix = "vit." if hf and any(k.startswith("vit.") for k in sd) else ""
    dec_names = vit_layout.HF_DECODER if hf else vit_layout.MAE_DECODER
    finetuned = not hf and released.is_finetuned_classifier(sd)
    final_norm = not finetuned or "norm.weight" in sd  # average-pooling classifiers have none
    present = detect_parts(sd, head_prefix)
    parts = list(parts or present)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; expected some of {list(PARTS)}")
    absent = sorted(set(parts) - set(present))
    if absent:
        raise ValueError(f"{source}: parts {absent} requested but not in the checkpoint (it holds {present})")
    r = StrictReader(sd, source)
    out: dict[str, Any] = {}
    # The student's input channels are the file's (grey repeated to 3, or C polarisations): the imported model is
    # built with as many (`cli.import_config(in_channels=...)`), so a 2-channel encoder never lands in a 3-channel one.
    patch_w = sd.get(enc_prefix + enc_names.patch + ".weight")
    channels = int(patch_w.shape[1]) if patch_w is not None and len(patch_w.shape) == 4 else 3
    out["encoder"] = vit_layout.encoder_from_torch(
        r, enc_names, num_heads=num_heads, image_size=image_size, channels=channels, scan=scan, prefix=enc_prefix,
        learned_pos=positions.PLAIN_BICUBIC if finetuned else None, final_norm=final_norm)
    width = out["encoder"]["cls_token"].shape[-1]
    patch = out["encoder"]["patch_embed"]["proj"]["kernel"].shape[0]
    channels = out["encoder"]["patch_embed"]["proj"]["kernel"].shape[2]
    if "decoder" in present:
        if decoder is None:
            raise ValueError(f"{source}: holds a decoder; give the model's decoder width/depth/heads to import it")
        out["decoder"] = vit_layout.decoder_from_torch(
            r, dec_names, enc_width=width, width=decoder["width"], depth=decoder["depth"],
            num_heads=decoder["num_heads"], patch=patch, channels=channels, image_size=image_size, scan=scan)
    if "anchor_head" in present:
        fc2 = sd.get(head_prefix + "2.weight")
        teacher_width = fc2.shape[0] if fc2 is not None else width
        out["anchor_head"] = vit_layout.anchor_head_from_torch(r, width, teacher_width, head_prefix)
    # Classifier parts (timm / MAE fine-tuning heads, HF ViTModel's pooler) are not pre-training parts.
    classifier = [k for k in sd if k.startswith(("head.", "fc_norm.", "pooler."))]
    r.ignore(classifier)
    r.finish("a MAE-family ViT" + (f" with {present[1:]}" if len(present) > 1 else ""))
    if finetuned:
        classes = sd["head.weight"].shape[0] if "head.weight" in sd else 0
        log.info("%s: a fine-tuned classifier (%d classes, %s): encoder imported with its trained position table%s; "
                 "read past: %s", source, classes, "class-token pooling" if final_norm else "average pooling",
                 "" if final_norm else " and no final norm (it has none)", ", ".join(sorted(classifier)))
    skipped = [p for p in present if p not in parts]
    if skipped:
        log.info("%s: parts %s read and checked but not imported, as asked", source, skipped)
    return {p: out[p] for p in parts}
