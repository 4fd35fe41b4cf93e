"""Pure mappings between our Flax ViT parameters and PyTorch ViT state dicts (timm/MAE and Hugging Face names).

Tensor conventions (all exact transposes/reshapes, so conversions are bitwise lossless in float32):
  Linear   torch `weight [out, in]`          <-> Flax `kernel [in, out]`
  Conv     torch `weight [D, C, p, p]`       <-> Flax `kernel [p, p, C, D]` (HWIO)
  fused qkv torch `weight [3D, D]` rows (q|k|v, head, head_dim) <-> Flax `kernel [D, 3, H, Dh]`
  out proj torch `weight [D, D]` columns (head, head_dim)       <-> Flax `kernel [H, Dh, D]`
  LayerNorm `weight`/`bias`                 <-> `scale`/`bias`
Position embeddings of the student are fixed sin-cos tables (not parameters): exports write `vit.sincos_2d`
(class row included), imports check the stored table against it. Frozen ViT teachers keep their learned
table as a parameter (`encoder_from_torch(..., learned_pos=...)`), resampled to the run's grid.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from sarmae_jax.convert.state_dicts import StrictReader
from sarmae_jax.models import vit

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
HF_ENCODER = EncoderNames("embeddings.cls_token", "embeddings.position_embeddings",
                          "embeddings.patch_embeddings.projection", "layers.{i}.", "layernorm", "hf")
HF_DECODER = DecoderNames("decoder.decoder_embed", "decoder.mask_token", "decoder.decoder_pos_embed",
                          "decoder.decoder_layers.{i}.", "decoder.decoder_norm", "decoder.decoder_pred", "hf")
# DINOv2 (with or without registers): the official facebookresearch/dinov2 `.pth`, and transformers'
# Dinov2Model / Dinov2WithRegistersModel. Registers are read only where the checkpoint has them.
DINOV2_OFFICIAL = EncoderNames("cls_token", "pos_embed", "patch_embed.proj", "blocks.{i}.", "norm", "timm",
                               registers="register_tokens", layer_scale=("ls1.gamma", "ls2.gamma"))
DINOV2_HF = EncoderNames("embeddings.cls_token", "embeddings.position_embeddings", "embeddings.patch_embeddings.projection",
                         "encoder.layer.{i}.", "layernorm", "hf_dinov2", registers="embeddings.register_tokens",
                         layer_scale=("layer_scale1.lambda1", "layer_scale2.lambda1"))
# transformers (5.x) renames the names its files keep (the hub's `model.safetensors`) when it loads them;
# `hf_file_names_to_current` does the same, so a checkpoint on disk and a live `state_dict()` read alike.
_HF_ATTENTION_RENAMES = ((r"\.attention\.attention\.query\.", ".attention.q_proj."),
                         (r"\.attention\.attention\.key\.", ".attention.k_proj."),
                         (r"\.attention\.attention\.value\.", ".attention.v_proj."),
                         (r"\.attention\.output\.dense\.", ".attention.o_proj."))
_HF_FILE_RENAMES = {
    "dinov2": _HF_ATTENTION_RENAMES,
    "vit": _HF_ATTENTION_RENAMES + ((r"\.intermediate\.dense\.", ".mlp.fc1."), (r"\.output\.dense\.", ".mlp.fc2."),
                                    (r"^((?:vit\.)?)encoder\.layer\.", r"\1layers.")),
}


def hf_file_names_to_current(sd: dict[str, np.ndarray], family: str) -> dict[str, np.ndarray]:
    """Rename the stored transformers names of a ViT (`family="vit"`) or DINOv2 (`"dinov2"`) file
    (`encoder.layer.N.attention.attention.query`, ...) to the current ones (`layers.N.attention.q_proj`, ...)."""
    out = {}
    for key, value in sd.items():
        for pattern, replacement in _HF_FILE_RENAMES[family]:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


_HF_NORMS = {"hf": ("layernorm_before.", "layernorm_after."), "hf_dinov2": ("norm1.", "norm2.")}
# Our choice for the SARC projection head in the released format (nn.Sequential(Linear, ReLU, Linear, LayerNorm)).
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
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"{prefix}attention.{name}.weight"] = qkv_w[j * d:(j + 1) * d]
            out[f"{prefix}attention.{name}.bias"] = qkv_b[j * d:(j + 1) * d]
        out.update(linear_to_torch(proj, prefix + "attention.o_proj."))
        out.update(norm_to_torch(block["norm2"], prefix + "layernorm_after."))
    else:
        raise ValueError(f"unknown block naming scheme {scheme!r}")
    out.update(linear_to_torch(block["mlp"]["fc1"], prefix + "mlp.fc1."))
    out.update(linear_to_torch(block["mlp"]["fc2"], prefix + "mlp.fc2."))
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
        names = ("q_proj", "k_proj", "v_proj")
        qkv_w = np.concatenate([r.take(f"{prefix}attention.{n}.weight", (d, d)) for n in names])
        qkv_b = np.concatenate([r.take(f"{prefix}attention.{n}.bias", (d,)) for n in names])
        proj = linear_from_torch(r, prefix + "attention.o_proj.", d, d)
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
        "mlp": {"fc1": linear_from_torch(r, prefix + "mlp.fc1.", d, hidden),
                "fc2": linear_from_torch(r, prefix + "mlp.fc2.", hidden, d)},
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


def is_scanned(stack: Tree) -> bool:
    return "blocks" in stack


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
    expected = vit.sincos_2d(width, grid, with_cls_token=True)[None]
    err = float(np.max(np.abs(stored - expected)))
    if err > POS_EMBED_ATOL:
        raise ValueError(
            f"{r.source}: {key} differs from the fixed 2-D sin-cos table by up to {err:.3g} (tolerance {POS_EMBED_ATOL}); "
            "this model uses fixed sin-cos positions, so learned or other position embeddings cannot be imported."
        )


def learned_pos_table(r: StrictReader, key: str, width: int, grid: tuple[int, int], how: vit.PosResampling) -> np.ndarray:
    """A learned `[1, 1 + M*M, D]` table resampled to `grid`; a mis-shaped or missing one is recorded in `r`."""
    if not r.has(key):
        return r.take(key, (1, 1 + grid[0] * grid[1], width))
    stored = r.sd[key]
    m = int(round((stored.shape[1] - 1) ** 0.5)) if stored.ndim == 3 else 0
    table = r.take(key, (1, 1 + m * m, width))
    return vit.resample_pos_embed(table, grid, how) if m else np.zeros((1, 1 + grid[0] * grid[1], width), np.float32)


def encoder_to_torch(enc: Tree, image_size: int, names: EncoderNames, prefix: str = "") -> dict[str, np.ndarray]:
    width = np.shape(enc["cls_token"])[-1]
    patch = np.shape(enc["patch_embed"]["proj"]["kernel"])[0]
    grid = image_size // patch
    out = {prefix + names.cls: np.asarray(enc["cls_token"]),
           prefix + names.pos: vit.sincos_2d(width, grid, with_cls_token=True)[None]}
    out.update(conv_to_torch(enc["patch_embed"]["proj"], prefix + names.patch + "."))
    for i, block in enumerate(unstack_blocks(enc["stack"])):
        out.update(block_to_torch(block, prefix + names.blocks.format(i=i), names.scheme))
    out.update(norm_to_torch(enc["norm"], prefix + names.norm + "."))
    return out


def encoder_from_torch(r: StrictReader, names: EncoderNames, *, num_heads: int, image_size: int, channels: int = 3,
                       scan: bool = True, prefix: str = "", learned_pos: vit.PosResampling | None = None) -> Tree:
    """Read an encoder; width from the class token, depth from the block keys, patch size from the conv kernel.

    `learned_pos=None` (the student): the stored position table must be our sin-cos table. Otherwise (a frozen
    teacher) the table becomes the `pos_embed` parameter, resampled the checkpoint's model's way to
    `image_size / patch` if its grid differs. Register tokens and LayerScale are read where `names` has them.
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
    fc1 = r.sd.get(prefix + names.blocks.format(i=0) + "mlp.fc1.weight")
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
    return {
        **extra,
        "cls_token": r.take(cls_key, (1, 1, width)),
        "patch_embed": {"proj": conv_from_torch(r, prefix + names.patch + ".", width, channels, patch)},
        "stack": stack_blocks(blocks, scan),
        "norm": norm_from_torch(r, prefix + names.norm + ".", width),
    }


def decoder_to_torch(dec: Tree, image_size: int, patch: int, names: DecoderNames) -> dict[str, np.ndarray]:
    width = np.shape(dec["mask_token"])[-1]
    grid = image_size // patch
    out = {names.mask_token: np.asarray(dec["mask_token"]),
           names.pos: vit.sincos_2d(width, grid, with_cls_token=True)[None]}
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


def anchor_head_to_torch(head: Tree, prefix: str = ALIGN_HEAD) -> dict[str, np.ndarray]:
    out = linear_to_torch(head["fc1"], prefix + "0.")
    out.update(linear_to_torch(head["fc2"], prefix + "2."))
    out.update(norm_to_torch(head["norm"], prefix + "3."))
    return out


def anchor_head_from_torch(r: StrictReader, width: int, teacher_width: int, prefix: str = ALIGN_HEAD) -> Tree:
    return {"fc1": linear_from_torch(r, prefix + "0.", width, width),
            "fc2": linear_from_torch(r, prefix + "2.", width, teacher_width),
            "norm": norm_from_torch(r, prefix + "3.", teacher_width)}
