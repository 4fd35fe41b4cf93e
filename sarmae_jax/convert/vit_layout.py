"""Pure mappings between our Flax ViT parameters and PyTorch ViT state dicts (timm/MAE and Hugging Face names).

Tensor conventions (all exact transposes/reshapes, so conversions are bitwise lossless in float32):
  Linear   torch `weight [out, in]`          <-> Flax `kernel [in, out]`
  Conv     torch `weight [D, C, p, p]`       <-> Flax `kernel [p, p, C, D]` (HWIO)
  fused qkv torch `weight [3D, D]` rows (q|k|v, head, head_dim) <-> Flax `kernel [D, 3, H, Dh]`
  out proj torch `weight [D, D]` columns (head, head_dim)       <-> Flax `kernel [H, Dh, D]`
  LayerNorm `weight`/`bias`                 <-> `scale`/`bias`
Position embeddings of the student are fixed sin-cos tables (not parameters): exports write `sincos_2d`
(class row included), imports check the stored table against it. Frozen ViT teachers keep their learned
table as a parameter (`encoder_from_torch(..., learned_pos=...)`), resampled to the run's grid.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from sarmae_jax.convert.state_dicts import StrictReader

from sarmae_jax.models.positions import PosResampling, resample_pos_embed, sincos_2d

POS_EMBED_ATOL = 1e-5  # MAE's table is computed in float64 and stored in float32: ours agrees to ~1e-7

Tree = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EncoderNames:
    cls: str
    pos: str
    patch: str
    blocks: str  # format string with {i}
    norm: str
    scheme: str  # block naming: "timm" (fused qkv) | "hf" (separate q/k/v) | "hf_dinov2" (hf, norm1/norm2)
    registers: str | None = None  # register tokens [1, R, D] (DINOv2 with registers)
    layer_scale: tuple[str, str] | None = None  # per-block LayerScale vectors of the two branches


@dataclasses.dataclass(frozen=True)
class DecoderNames:
    embed: str
    mask_token: str
    pos: str
    blocks: str
    norm: str
    pred: str
    scheme: str


TIMM_ENCODER = EncoderNames("cls_token", "pos_embed", "patch_embed.proj", "blocks.{i}.", "norm", "timm")
MAE_DECODER = DecoderNames("decoder_embed", "mask_token", "decoder_pos_embed", "decoder_blocks.{i}.", "decoder_norm",
                           "decoder_pred", "timm")
# Hugging Face names are those transformers writes to files (`save_pretrained`, the hub's `model.safetensors`):
# the same in every transformers version, and what any safetensors reader sees. transformers 5.x renames them
# in memory (`layers.N.attention.q_proj`, ...); `hf_live_names_to_file` maps such live `state_dict()`s back.
HF_ENCODER = EncoderNames("embeddings.cls_token", "embeddings.position_embeddings",
                          "embeddings.patch_embeddings.projection", "encoder.layer.{i}.", "layernorm", "hf")
HF_DECODER = DecoderNames("decoder.decoder_embed", "decoder.mask_token", "decoder.decoder_pos_embed",
                          "decoder.decoder_encoder.layer.{i}.", "decoder.decoder_norm", "decoder.decoder_pred", "hf")
# DINOv2 (with or without registers): the official facebookresearch/dinov2 `.pth`, and transformers'
# Dinov2Model / Dinov2WithRegistersModel. Registers are read only where the checkpoint has them.
DINOV2_OFFICIAL = EncoderNames("cls_token", "pos_embed", "patch_embed.proj", "blocks.{i}.", "norm", "timm",
                               registers="register_tokens", layer_scale=("ls1.gamma", "ls2.gamma"))
DINOV2_HF = EncoderNames("embeddings.cls_token", "embeddings.position_embeddings", "embeddings.patch_embeddings.projection",
                         "encoder.layer.{i}.", "layernorm", "hf_dinov2", registers="embeddings.register_tokens",
                         layer_scale=("layer_scale1.lambda1", "layer_scale2.lambda1"))
# transformers' DINOv3ViTModel file names: blocks `layer.{i}.` (live: `model.layer.{i}.`).
DINOV3_HF_BLOCKS = "layer.{i}."

# Live (transformers 5.x in-memory) -> file names, per family; the inverse of what `from_pretrained` does on load.
_LIVE_ATTENTION = ((r"\.attention\.q_proj\.", ".attention.attention.query."),
                   (r"\.attention\.k_proj\.", ".attention.attention.key."),
                   (r"\.attention\.v_proj\.", ".attention.attention.value."),
                   (r"\.attention\.o_proj\.", ".attention.output.dense."))
_LIVE_TO_FILE = {
    # ViTModel, ViTMAEModel, ViTMAEForPreTraining (encoder under `vit.`, decoder blocks), ViTForImageClassification.
    "vit": ((r"^((?:vit\.)?)layers\.", r"\1encoder.layer."), (r"^decoder\.decoder_layers\.", "decoder.decoder_encoder.layer."),
            *_LIVE_ATTENTION, (r"\.mlp\.fc1\.", ".intermediate.dense."), (r"\.mlp\.fc2\.", ".output.dense.")),
    "dinov2": _LIVE_ATTENTION,  # Dinov2Model, Dinov2WithRegistersModel: only the attention is renamed
    "dinov3": ((r"^model\.layer\.", "layer."),),  # DINOv3ViTModel: only the block prefix
}
# A key that only the live naming of each family has (checked in this order).
_LIVE_MARKERS = (("dinov3", r"^model\.layer\.\d+\."),
                 ("vit", r"^(vit\.)?layers\.\d+\.|^decoder\.decoder_layers\.\d+\."),
                 ("dinov2", r"^encoder\.layer\.\d+\.attention\.[qkvo]_proj\."))


def hf_live_naming(sd) -> str | None:
    """The transformers family (`"vit"`, `"dinov2"`, `"dinov3"`) whose 5.x in-memory names `sd` uses, or None when
    it holds file names (a `save_pretrained` / hub file, or any transformers 4.x dict) or is no transformers dict."""
    for family, marker in _LIVE_MARKERS:
        if any(re.match(marker, k) for k in sd):
            return family
    return None


def hf_live_names_to_file(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`sd` in transformers' file names: a live 5.x `state_dict()` of a ViT / ViTMAE (decoder included), DINOv2 or
    DINOv3 is renamed (`layers.N.attention.q_proj` -> `encoder.layer.N.attention.attention.query`, ...); file-named,
    timm, MAE and official dicts come back unchanged. The values are not copied."""
    family = hf_live_naming(sd)
    if family is None:
        return dict(sd)
    out = {}
    for key, value in sd.items():
        new = key
        for pattern, replacement in _LIVE_TO_FILE[family]:
            new = re.sub(pattern, replacement, new)
        if new in out:
            raise ValueError(f"{key!r} and another tensor both map to {new!r}: a dict mixing transformers' file and "
                             "in-memory names")
        out[new] = value
    return out


_HF_NORMS = {"hf": ("layernorm_before.", "layernorm_after."), "hf_dinov2": ("norm1.", "norm2.")}
_HF_QKV = ("query", "key", "value")  # under `attention.attention.`
_HF_OUT = "attention.output.dense."
_MLP_NAMES = {"timm": ("mlp.fc1.", "mlp.fc2."), "hf": ("intermediate.dense.", "output.dense."),
              "hf_dinov2": ("mlp.fc1.", "mlp.fc2.")}
# The SARC projection head (nn.Sequential(Linear, ReLU, Linear, LayerNorm)) as the released code names it
# (`SAROpticalPatchAlignment.sar_alignment_ffn`), and as exports of earlier versions of this project named it.
RELEASED_HEAD = "sar_alignment_ffn."
ALIGN_HEAD = "align_head."


# ------------------------------------------------------------------------------------ small pieces
def linear_to_torch(dense: Tree, prefix: str) -> dict[str, np.ndarray]:
    return {prefix + "weight": np.asarray(dense["kernel"]).T, prefix + "bias": np.asarray(dense["bias"])}


def linear_from_torch(r: StrictReader, prefix: str, d_in: int, d_out: int) -> Tree:
    return {"kernel": r.take(prefix + "weight", (d_out, d_in)).T, "bias": r.take(prefix + "bias", (d_out,))}


def norm_to_torch(norm: Tree, prefix: str) -> dict[str, np.ndarray]:
    return {prefix + "weight": np.asarray(norm["scale"]), prefix + "bias": np.asarray(norm["bias"])}


def norm_from_torch(r: StrictReader, prefix: str, width: int) -> Tree:
    return {"scale": r.take(prefix + "weight", (width,)), "bias": r.take(prefix + "bias", (width,))}


def conv_to_torch(conv: Tree, prefix: str) -> dict[str, np.ndarray]:
    return {prefix + "weight": np.asarray(conv["kernel"]).transpose(3, 2, 0, 1), prefix + "bias": np.asarray(conv["bias"])}


def conv_from_torch(r: StrictReader, prefix: str, width: int, channels: int, patch: int) -> Tree:
    w = r.take(prefix + "weight", (width, channels, patch, patch))
    return {"kernel": w.transpose(2, 3, 1, 0), "bias": r.take(prefix + "bias", (width,))}


# ------------------------------------------------------------------------------------ blocks
def block_to_torch(block: Tree, prefix: str, scheme: str) -> dict[str, np.ndarray]:
    qkv_k = np.asarray(block["attn"]["qkv"]["kernel"])  # [D, 3, H, Dh]
    d = qkv_k.shape[0]
    qkv_w = qkv_k.reshape(d, 3 * d).T  # [3D, D]
    qkv_b = np.asarray(block["attn"]["qkv"]["bias"]).reshape(3 * d)
    proj = {"kernel": np.asarray(block["attn"]["proj"]["kernel"]).reshape(d, d), "bias": block["attn"]["proj"]["bias"]}
    out: dict[str, np.ndarray] = {}
    if scheme == "timm":
        out.update(norm_to_torch(block["norm1"], prefix + "norm1."))
        out[prefix + "attn.qkv.weight"], out[prefix + "attn.qkv.bias"] = qkv_w, qkv_b
        out.update(linear_to_torch(proj, prefix + "attn.proj."))
        out.update(norm_to_torch(block["norm2"], prefix + "norm2."))
    elif scheme == "hf":
        out.update(norm_to_torch(block["norm1"], prefix + "layernorm_before."))
        for j, name in enumerate(_HF_QKV):
            out[f"{prefix}attention.attention.{name}.weight"] = qkv_w[j * d:(j + 1) * d]
            out[f"{prefix}attention.attention.{name}.bias"] = qkv_b[j * d:(j + 1) * d]
        out.update(linear_to_torch(proj, prefix + _HF_OUT))
        out.update(norm_to_torch(block["norm2"], prefix + "layernorm_after."))
    else:
        raise ValueError(f"unknown block naming scheme {scheme!r}")
    fc1, fc2 = _MLP_NAMES[scheme]
    out.update(linear_to_torch(block["mlp"]["fc1"], prefix + fc1))
    out.update(linear_to_torch(block["mlp"]["fc2"], prefix + fc2))
    return out


def block_from_torch(r: StrictReader, prefix: str, width: int, num_heads: int, hidden: int, scheme: str,
                     layer_scale: tuple[str, str] | None = None) -> Tree:
    d, h = width, num_heads
    if scheme == "timm":
        norm1 = norm_from_torch(r, prefix + "norm1.", d)
        qkv_w = r.take(prefix + "attn.qkv.weight", (3 * d, d))
        qkv_b = r.take(prefix + "attn.qkv.bias", (3 * d,))
        proj = linear_from_torch(r, prefix + "attn.proj.", d, d)
        norm2 = norm_from_torch(r, prefix + "norm2.", d)
    elif scheme in _HF_NORMS:
        norm1 = norm_from_torch(r, prefix + _HF_NORMS[scheme][0], d)
        qkv_w = np.concatenate([r.take(f"{prefix}attention.attention.{n}.weight", (d, d)) for n in _HF_QKV])
        qkv_b = np.concatenate([r.take(f"{prefix}attention.attention.{n}.bias", (d,)) for n in _HF_QKV])
        proj = linear_from_torch(r, prefix + _HF_OUT, d, d)
        norm2 = norm_from_torch(r, prefix + _HF_NORMS[scheme][1], d)
    else:
        raise ValueError(f"unknown block naming scheme {scheme!r}")
    scales = {}
    if layer_scale:
        scales = {"ls1": {"gamma": r.take(prefix + layer_scale[0], (d,))}, "ls2": {"gamma": r.take(prefix + layer_scale[1], (d,))}}
    return {**scales,
        "norm1": norm1,
        "attn": {
            "qkv": {"kernel": qkv_w.T.reshape(d, 3, h, d // h), "bias": qkv_b.reshape(3, h, d // h)},
            "proj": {"kernel": proj["kernel"].reshape(h, d // h, d), "bias": proj["bias"]},
        },
        "norm2": norm2,
        "mlp": {"fc1": linear_from_torch(r, prefix + _MLP_NAMES[scheme][0], d, hidden),
                "fc2": linear_from_torch(r, prefix + _MLP_NAMES[scheme][1], hidden, d)},
    }


def unstack_blocks(stack: Tree) -> list[Tree]:
    """Per-block trees from a `BlockStack`'s params, scanned (`blocks`, leading depth axis) or not (`blocks_{i}`)."""
    if "blocks" in stack:
        depth = np.shape(stack["blocks"]["norm1"]["scale"])[0]
        return [_tree_map(lambda x, i=i: np.asarray(x)[i], stack["blocks"]) for i in range(depth)]
    depth = len([k for k in stack if k.startswith("blocks_")])
    return [_tree_map(np.asarray, stack[f"blocks_{i}"]) for i in range(depth)]


def stack_blocks(blocks: list[Tree], scan: bool) -> Tree:
    if scan:
        return {"blocks": _tree_map(lambda *xs: np.stack(xs), *blocks)}
    return {f"blocks_{i}": b for i, b in enumerate(blocks)}


def _tree_map(fn, *trees):
    if isinstance(trees[0], dict):
        return {k: _tree_map(fn, *(t[k] for t in trees)) for k in trees[0]}
    return fn(*trees)


def count_blocks(keys, pattern: str) -> int:
    """Number of consecutive blocks `0..n-1` whose prefix (`pattern.format(i=i)`) starts some key."""
    n = 0
    while any(k.startswith(pattern.format(i=n)) for k in keys):
        n += 1
    return n


# ------------------------------------------------------------------------------------ encoder / decoder
def check_pos_embed(r: StrictReader, key: str, width: int, grid: int) -> None:
    """The stored position table must be our fixed sin-cos table (class row included); ValueError if not."""
    stored = r.take(key, (1, 1 + grid * grid, width))
    if not r.has(key) or stored.shape != (1, 1 + grid * grid, width):
        return  # already recorded as missing / mis-shaped
    expected = sincos_2d(width, grid, with_cls_token=True)[None]
    err = float(np.max(np.abs(stored - expected)))
    if err > POS_EMBED_ATOL:
        raise ValueError(
            f"{r.source}: {key} differs from the fixed 2-D sin-cos table by up to {err:.3g} (tolerance {POS_EMBED_ATOL}); "
            "this model uses fixed sin-cos positions, so learned or other position embeddings cannot be imported."
        )


def learned_pos_table(r: StrictReader, key: str, width: int, grid: tuple[int, int], how: PosResampling) -> np.ndarray:
    """A learned `[1, 1 + M*M, D]` table resampled to `grid`; a mis-shaped or missing one is recorded in `r`."""
    if not r.has(key):
        return r.take(key, (1, 1 + grid[0] * grid[1], width))
    stored = r.sd[key]
    m = int(round((stored.shape[1] - 1) ** 0.5)) if stored.ndim == 3 else 0
    table = r.take(key, (1, 1 + m * m, width))
    return resample_pos_embed(table, grid, how) if m else np.zeros((1, 1 + grid[0] * grid[1], width), np.float32)


def encoder_to_torch(enc: Tree, image_size: int, names: EncoderNames, prefix: str = "") -> dict[str, np.ndarray]:
    width = np.shape(enc["cls_token"])[-1]
    patch = np.shape(enc["patch_embed"]["proj"]["kernel"])[0]
    grid = image_size // patch
    if "pos_embed" in enc:  # a learned table (an encoder imported from a fine-tuned ViT): written as stored
        table = np.asarray(enc["pos_embed"])
        if table.shape[1] != 1 + grid * grid:
            m = int(round((table.shape[1] - 1) ** 0.5))
            raise ValueError(f"the encoder's learned position table covers a {m} x {m} grid (image size {m * patch}); "
                             f"it is written as stored, so export at image size {m * patch}, not {image_size}")
    else:
        table = sincos_2d(width, grid, with_cls_token=True)[None]
    out = {prefix + names.cls: np.asarray(enc["cls_token"]), prefix + names.pos: table}
    out.update(conv_to_torch(enc["patch_embed"]["proj"], prefix + names.patch + "."))
    for i, block in enumerate(unstack_blocks(enc["stack"])):
        out.update(block_to_torch(block, prefix + names.blocks.format(i=i), names.scheme))
    if "norm" in enc:  # absent only in encoders imported from average-pooling classifiers
        out.update(norm_to_torch(enc["norm"], prefix + names.norm + "."))
    return out


def encoder_from_torch(r: StrictReader, names: EncoderNames, *, num_heads: int, image_size: int, channels: int = 3,
                       scan: bool = True, prefix: str = "", learned_pos: PosResampling | None = None,
                       final_norm: bool = True) -> Tree:
    """Read an encoder; width from the class token, depth from the block keys, patch size from the conv kernel.

    `learned_pos=None` (a pre-trained student): the stored position table must be our sin-cos table. Otherwise (a
    frozen teacher, a fine-tuned ViT) the table becomes the `pos_embed` parameter, resampled the checkpoint's model's
    way to `image_size / patch` if its grid differs. Register tokens and LayerScale are read where `names` has them;
    `final_norm=False`: the checkpoint has no norm after the last block (timm's average-pooling classifiers).
    """
    cls_key = prefix + names.cls
    if not r.has(cls_key):
        raise ValueError(f"{r.source}: no {cls_key!r}: not a ViT encoder in {names.scheme} naming "
                         f"(first keys: {sorted(r.sd)[:8]})")
    width = r.sd[cls_key].shape[-1]
    patch_w = r.sd.get(prefix + names.patch + ".weight")
    patch = patch_w.shape[-1] if patch_w is not None else 16
    if image_size % patch:
        raise ValueError(f"image size {image_size} is not a multiple of the checkpoint's patch size {patch}")
    depth = count_blocks(r.sd, prefix + names.blocks)
    if depth == 0:
        raise ValueError(f"{r.source}: no encoder blocks named {prefix + names.blocks.format(i=0)}...")
    fc1 = r.sd.get(prefix + names.blocks.format(i=0) + _MLP_NAMES[names.scheme][0] + "weight")
    hidden = fc1.shape[0] if fc1 is not None else 4 * width
    if width % num_heads:
        raise ValueError(f"{r.source}: width {width} is not divisible by num_heads={num_heads}")
    grid = image_size // patch
    extra: Tree = {}
    if learned_pos is None:
        check_pos_embed(r, prefix + names.pos, width, grid)
    else:
        extra["pos_embed"] = learned_pos_table(r, prefix + names.pos, width, (grid, grid), learned_pos)
    if names.registers and r.has(prefix + names.registers):
        extra["register_tokens"] = r.take(prefix + names.registers, (1, r.sd[prefix + names.registers].shape[1], width))
    blocks = [block_from_torch(r, prefix + names.blocks.format(i=i), width, num_heads, hidden, names.scheme, names.layer_scale)
              for i in range(depth)]
    out = {
        **extra,
        "cls_token": r.take(cls_key, (1, 1, width)),
        "patch_embed": {"proj": conv_from_torch(r, prefix + names.patch + ".", width, channels, patch)},
        "stack": stack_blocks(blocks, scan),
    }
    if final_norm:
        out["norm"] = norm_from_torch(r, prefix + names.norm + ".", width)
    return out


def decoder_to_torch(dec: Tree, image_size: int, patch: int, names: DecoderNames) -> dict[str, np.ndarray]:
    width = np.shape(dec["mask_token"])[-1]
    grid = image_size // patch
    out = {names.mask_token: np.asarray(dec["mask_token"]),
           names.pos: sincos_2d(width, grid, with_cls_token=True)[None]}
    out.update(linear_to_torch(dec["embed"], names.embed + "."))
    for i, block in enumerate(unstack_blocks(dec["stack"])):
        out.update(block_to_torch(block, names.blocks.format(i=i), names.scheme))
    out.update(norm_to_torch(dec["norm"], names.norm + "."))
    out.update(linear_to_torch(dec["pred"], names.pred + "."))
    return out


def decoder_from_torch(r: StrictReader, names: DecoderNames, *, enc_width: int, width: int, depth: int, num_heads: int,
                       patch: int, channels: int, image_size: int, scan: bool = True) -> Tree:
    """Read a decoder of the given architecture (from the run's config); every tensor is shape-checked."""
    found = count_blocks(r.sd, names.blocks)
    if found != depth:
        raise ValueError(f"{r.source}: {found} decoder blocks ({names.blocks.format(i='N')}), the model has {depth}")
    check_pos_embed(r, names.pos, width, image_size // patch)
    blocks = [block_from_torch(r, names.blocks.format(i=i), width, num_heads, 4 * width, names.scheme)
              for i in range(depth)]
    return {
        "embed": linear_from_torch(r, names.embed + ".", enc_width, width),
        "mask_token": r.take(names.mask_token, (1, 1, width)),
        "stack": stack_blocks(blocks, scan),
        "norm": norm_from_torch(r, names.norm + ".", width),
        "pred": linear_from_torch(r, names.pred + ".", width, patch * patch * channels),
    }


def anchor_head_to_torch(head: Tree, prefix: str = RELEASED_HEAD) -> dict[str, np.ndarray]:
    out = linear_to_torch(head["fc1"], prefix + "0.")
    out.update(linear_to_torch(head["fc2"], prefix + "2."))
    out.update(norm_to_torch(head["norm"], prefix + "3."))
    return out


def anchor_head_from_torch(r: StrictReader, width: int, teacher_width: int, prefix: str = RELEASED_HEAD) -> Tree:
    return {"fc1": linear_from_torch(r, prefix + "0.", width, width),
            "fc2": linear_from_torch(r, prefix + "2.", width, teacher_width),
            "norm": norm_from_torch(r, prefix + "3.", teacher_width)}
