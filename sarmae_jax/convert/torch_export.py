"""Params -> PyTorch formats. Pure functions returning `dict[str, np.ndarray]` (+ HF configs); I/O in `cli.py`.

  to_timm(params, image_size)      timm `VisionTransformer` keys (vit_base_patch16_224 names, no head):
                                   loads with `strict=True` into `timm.create_model(..., num_classes=0)`
  to_hf_vit(params, image_size)    transformers `ViTModel` (load with `add_pooling_layer=False`: we have no pooler)
  to_hf_vitmae(params, ...)        transformers `ViTMAEForPreTraining` (encoder + decoder)
The Hugging Face dicts hold exactly the keys `save_pretrained` writes (`encoder.layer.N.attention.attention.query`,
...): the file names every transformers version loads, not transformers 5.x's in-memory names.
  hf_preprocessor_config(...)      the matching `preprocessor_config.json` (pre-training resize and normalisation)
The released SARMAE code's layouts are written by `released.py`. Position tables are written from the fixed sin-cos
table (class row zeros), as MAE stores them.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from sarmae_jax.convert import source_normalization, vit_layout
from sarmae_jax.models import vit

TRANSFORMERS_VERSION = "5.24.0"  # written to config.json; the tests check the key sets against this version's files


def encoder_arch(enc: Any) -> dict[str, int]:
    """Width, depth, heads, MLP width and patch size, read off the parameter shapes."""
    blocks = vit_layout.unstack_blocks(enc["stack"])
    _, _, heads, _ = np.shape(blocks[0]["attn"]["qkv"]["kernel"])
    return dict(width=int(np.shape(enc["cls_token"])[-1]), depth=len(blocks), num_heads=int(heads),
                mlp=int(np.shape(blocks[0]["mlp"]["fc1"]["kernel"])[-1]),
                patch_size=int(np.shape(enc["patch_embed"]["proj"]["kernel"])[0]),
                channels=int(np.shape(enc["patch_embed"]["proj"]["kernel"])[2]))


def decoder_arch(dec: Any) -> dict[str, int]:
    blocks = vit_layout.unstack_blocks(dec["stack"])
    _, _, heads, _ = np.shape(blocks[0]["attn"]["qkv"]["kernel"])
    return dict(width=int(np.shape(dec["mask_token"])[-1]), depth=len(blocks), num_heads=int(heads),
                mlp=int(np.shape(blocks[0]["mlp"]["fc1"]["kernel"])[-1]))


def _require_final_norm(params: Any, fmt: str) -> None:
    if "norm" not in params["encoder"]:
        raise ValueError(f"this encoder has no final norm (imported from an average-pooling classifier), and {fmt} "
                         "models have one; use --format sarmae-finetune")


def to_timm(params: Any, image_size: int) -> dict[str, np.ndarray]:
    _require_final_norm(params, "timm's VisionTransformer(num_classes=0)")
    return vit_layout.encoder_to_torch(params["encoder"], image_size, vit_layout.TIMM_ENCODER)


def hf_preprocessor_config(image_size: int, sar_normalization: Mapping[str, Any]) -> dict:
    """`preprocessor_config.json` for `AutoImageProcessor`: the weights' input rule as the export's metadata records
    it (8-bit pixels / 255, then its mean / std, grayscale repeated to RGB, Pillow bilinear resize). A rule that is
    not known (an import of a file that does not say) is refused: ValueError with the reason."""
    mean, std = source_normalization.per_channel(sar_normalization)
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True, "size": {"height": image_size, "width": image_size}, "resample": 2,  # PIL.Image.BILINEAR
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": mean, "image_std": std,
    }


def _hf_common(arch: dict, image_size: int) -> dict:
    return {
        "hidden_size": arch["width"], "num_hidden_layers": arch["depth"], "num_attention_heads": arch["num_heads"],
        "intermediate_size": arch["mlp"], "hidden_act": "gelu", "layer_norm_eps": vit.LAYER_NORM_EPS,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "image_size": image_size,
        "patch_size": arch["patch_size"], "num_channels": arch["channels"], "qkv_bias": True,
        "transformers_version": TRANSFORMERS_VERSION,
    }


def to_hf_vit(params: Any, image_size: int) -> tuple[dict[str, np.ndarray], dict]:
    _require_final_norm(params, "Hugging Face ViTModel")
    arch = encoder_arch(params["encoder"])
    config = {"model_type": "vit", "architectures": ["ViTModel"], **_hf_common(arch, image_size)}
    return vit_layout.encoder_to_torch(params["encoder"], image_size, vit_layout.HF_ENCODER), config


def to_hf_vitmae(params: Any, image_size: int, mask_ratio: float, norm_pix_loss: bool) -> tuple[dict[str, np.ndarray], dict]:
    if "decoder" not in params:
        raise ValueError("ViTMAEForPreTraining needs a decoder; this export holds only "
                         f"{sorted(params)} (use --format hf-vit or timm for an encoder)")
    _require_final_norm(params, "Hugging Face ViTMAEForPreTraining")
    enc, dec = encoder_arch(params["encoder"]), decoder_arch(params["decoder"])
    config = {
        "model_type": "vit_mae", "architectures": ["ViTMAEForPreTraining"], **_hf_common(enc, image_size),
        "decoder_hidden_size": dec["width"], "decoder_num_hidden_layers": dec["depth"],
        "decoder_num_attention_heads": dec["num_heads"], "decoder_intermediate_size": dec["mlp"],
        "mask_ratio": float(mask_ratio), "norm_pix_loss": bool(norm_pix_loss),
    }
    sd = vit_layout.encoder_to_torch(params["encoder"], image_size, vit_layout.HF_ENCODER, prefix="vit.")
    sd.update(vit_layout.decoder_to_torch(params["decoder"], image_size, enc["patch_size"], vit_layout.HF_DECODER))
    return sd, config
