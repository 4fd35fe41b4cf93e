"""PyTorch MAE-family checkpoints -> params `{"encoder", "decoder", "anchor_head"}` (NumPy trees).

Reads the released SARMAE pre-training checkpoints (`{"model": ...}`; keys with or without `module.` and
`sar_encoder.` prefixes; MAE `models_mae.py` names for encoder and decoder, the SARC head under
`align_head.{0,2,3}` -- `nn.Sequential(Linear, ReLU, Linear, LayerNorm)`; another prefix can be named),
ImageNet MAE checkpoints (encoder only, or with decoder), our own `to_timm`/`to_released` exports and
Hugging Face `ViTMAEForPreTraining` / `ViTModel` files (the names `save_pretrained` and the hub's files hold,
or a transformers 5.x live `state_dict()`: see `vit_layout.hf_live_names_to_file`). Strict: every tensor is placed and shape-checked,
leftovers are errors; the stored position tables must equal the fixed sin-cos table.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from sarmae_jax.convert import vit_layout
from sarmae_jax.convert.state_dicts import StrictReader, strip_prefixes

log = logging.getLogger("sarmae_jax")

PREFIXES = ("module.", "sar_encoder.")
PARTS = ("encoder", "decoder", "anchor_head")


def detect_parts(sd, head_prefix: str = vit_layout.ALIGN_HEAD) -> list[str]:
    """Which parts a (prefix-stripped) state dict holds."""
    parts = ["encoder"]
    if any(k.startswith(("decoder_", "decoder.", "mask_token")) for k in sd):
        parts.append("decoder")
    if any(k.startswith(head_prefix) for k in sd):
        parts.append("anchor_head")
    return parts


def import_mae_family(sd, source: str, *, num_heads: int, image_size: int, decoder: dict | None = None,
                      parts: Sequence[str] | None = None, scan: bool = True,
                      head_prefix: str = vit_layout.ALIGN_HEAD) -> dict[str, Any]:
    """Params for the requested `parts` (default: every part the file holds).

    sd: the raw state dict; decoder: `{"width", "depth", "num_heads"}` of the model's decoder (needed for
    the decoder part). Tensors of parts that are present but not requested are skipped on purpose and
    logged (e.g. `parts=["encoder"]`: the recipe's ImageNet-MAE initialisation, decoder left fresh).
    """
    sd = vit_layout.hf_live_names_to_file(strip_prefixes(sd, PREFIXES))
    hf = any(k.startswith(("vit.embeddings.", "embeddings.")) for k in sd)
    enc_names = vit_layout.HF_ENCODER if hf else vit_layout.TIMM_ENCODER
    enc_prefix = "vit." if hf and any(k.startswith("vit.") for k in sd) else ""
    dec_names = vit_layout.HF_DECODER if hf else vit_layout.MAE_DECODER
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
    out["encoder"] = vit_layout.encoder_from_torch(r, enc_names, num_heads=num_heads, image_size=image_size,
                                                   scan=scan, prefix=enc_prefix)
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
    # MAE fine-tuning leftovers, timm classifier heads and HF ViTModel's pooler are not pre-training parts.
    r.ignore([k for k in sd if k.startswith(("head.", "fc_norm.", "pooler."))])
    r.finish("a MAE-family ViT" + (f" with {present[1:]}" if len(present) > 1 else ""))
    skipped = [p for p in present if p not in parts]
    if skipped:
        log.info("%s: parts %s read and checked but not imported, as asked", source, skipped)
    return {p: out[p] for p in parts}
