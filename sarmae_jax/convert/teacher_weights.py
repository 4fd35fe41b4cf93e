"""Frozen-teacher weights from PyTorch checkpoints: `load_teacher_checkpoint(cfg, path, image_size) -> params` (NumPy tree).

`load_teacher_params(cfg, module, image_size)` is what the trainer calls: the explicit `random-init`, or a
checkpoint read here and then checked name-by-name and shape-by-shape against the teacher module.

| kind       | accepted checkpoints                                                                  |
|------------|----------------------------------------------------------------------------------------|
| `dinov3`   | official DINOv3 `.pth` (`dinov3_vitb16_pretrain_lvd1689m-*.pth`), transformers         |
|            | `DINOv3ViTModel` directory / `.safetensors`                                             |
| `released` | a released SARMAE pre-training checkpoint (its `optical_encoder.*`), or the same DINOv3 |
|            | files, of which only `patch_embed`, the final `norm` and `cls_token` are read (the     |
|            | released code's simplified teacher); the blocks are deliberately left out              |
| `vit`      | timm/MAE-named ViT (`.pth`/`.safetensors`, e.g. our `sarmae-export --format timm`) or   |
|            | a Hugging Face `ViTModel`; learned or sin-cos position table (kept as a parameter)     |
| `dinov2`   | official DINOv2 `.pth` (`dinov2_vitb14_pretrain.pth`), transformers `Dinov2Model`      |
| `dinov2_reg` | official `dinov2_vitb14_reg4_pretrain.pth`, transformers `Dinov2WithRegistersModel`  |

Learned position tables made for another grid (DINOv2: 37 x 37, for 518-pixel images) are resampled once,
here, to `image_size / patch` exactly as the checkpoint's own model does it at that input size (see
`_pos_resampling`); the frozen teacher's forward is then the PyTorch model's forward at that size.
"""
from __future__ import annotations

import logging
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sarmae_jax.convert import released, state_dicts, vit_layout
from sarmae_jax.convert.state_dicts import StrictReader
from sarmae_jax.models import param_trees, positions, teachers, vit
from sarmae_jax.models.teachers import dinov3, vit_teacher

log = logging.getLogger("sarmae_jax")

# Buffers and heads of DINOv3 checkpoints that carry nothing the patch tokens depend on.
_DINOV3_OFFICIAL_IGNORED = ("mask_token",)
_DINOV3_HF_IGNORED = ("embeddings.mask_token",)


def load_teacher_checkpoint(cfg, path: str, image_size: int) -> dict:
    """`cfg`: the `sarc.teacher` config; `image_size`: the (square) optical input size the teacher will see."""
    sd = vit_layout.hf_live_names_to_file(state_dicts.strip_prefixes(state_dicts.load(path), ("module.", "backbone.")))
    size = vit.VIT_SIZES[cfg.size]
    if cfg.kind == "dinov3":
        return dinov3_from_torch(sd, path, num_heads=size["num_heads"])
    if cfg.kind == "released":
        return released_from_torch(sd, path)
    if cfg.kind == "vit":
        names, prefix = _vit_names(sd)
        _check_patch_size(sd, prefix + names.patch + ".weight", cfg.patch_size, path)
        r = StrictReader(sd, path)
        params = vit_layout.encoder_from_torch(r, names, num_heads=size["num_heads"], image_size=image_size, scan=True,
                                               prefix=prefix, learned_pos=positions.PLAIN_BICUBIC)
        r.ignore([k for k in sd if k.startswith(("head.", "fc_norm.", "pooler."))])  # classifier heads: not teacher features
        r.finish("a ViT teacher")
        return {"encoder": params}
    if cfg.kind in ("dinov2", "dinov2_reg"):
        return dinov2_from_torch(sd, path, num_heads=size["num_heads"], patch_size=cfg.patch_size, image_size=image_size,
                                 with_registers=cfg.kind == "dinov2_reg")
    raise ValueError(f"teacher kind {cfg.kind!r} cannot load PyTorch checkpoints ({path}); "
                     "supported: dinov2, dinov2_reg, dinov3, released, vit")


def _vit_names(sd) -> tuple[vit_layout.EncoderNames, str]:
    for prefix in ("", "vit."):
        if prefix + vit_layout.HF_ENCODER.cls in sd:
            return vit_layout.HF_ENCODER, prefix
    return vit_layout.TIMM_ENCODER, ""


def _check_patch_size(sd, key: str, patch_size: int, path: str) -> None:
    kernel = sd.get(key)
    if kernel is not None and kernel.ndim == 4 and kernel.shape[-1] != patch_size:
        raise ValueError(
            f"{path}: {key} has {kernel.shape[-1]}-pixel patches, but sarc.teacher.patch_size={patch_size}. Teacher and "
            "student tokens must cover the same pixels, so set model.patch_size and sarc.teacher.patch_size to "
            f"{kernel.shape[-1]} (DINOv2 ViTs use 14: e.g. image_size=224 gives a 16 x 16 grid for both).")


# ------------------------------------------------------------------------------------ DINOv2
def _pos_resampling(official: bool, with_registers: bool) -> positions.PosResampling:
    """How each DINOv2 resamples its 37 x 37 table at another input size (its `interpolate_pos_encoding`).

    transformers' Dinov2Model: plain bicubic to the new size. Dinov2WithRegistersModel and the official hub's
    `dinov2_*_reg` models: antialiased bicubic (`interpolate_antialias=True, interpolate_offset=0`).
    The official models without registers: plain bicubic with `scale_factor=(new + 0.1) / 37`
    (`interpolate_offset=0.1`), which samples slightly differently from transformers' port.
    """
    if with_registers:
        return positions.PosResampling(antialias=True)
    return positions.PosResampling(offset=0.1) if official else positions.PLAIN_BICUBIC


def dinov2_from_torch(sd, path: str, *, num_heads: int, patch_size: int, image_size: int, with_registers: bool) -> dict:
    """Params of `vit_teacher.ViTTeacher(layer_scale=True, num_registers=0 | 4)` from an official or transformers DINOv2."""
    sd = vit_layout.hf_live_names_to_file(sd)
    if "cls_token" in sd:
        names, official = vit_layout.DINOV2_OFFICIAL, True
    elif "embeddings.cls_token" in sd:
        names, official = vit_layout.DINOV2_HF, False
    else:
        raise ValueError(f"{path}: neither an official DINOv2 checkpoint (cls_token, pos_embed, blocks.N.ls1.gamma) nor a "
                         f"transformers Dinov2Model (embeddings.cls_token, encoder.layer.N); first keys: {sorted(sd)[:8]}")
    found = sd[names.registers].shape[1] if names.registers in sd else 0
    wanted = vit_teacher.DINOV2_REGISTERS if with_registers else 0
    if found != wanted:
        kind = "dinov2_reg" if found else "dinov2"
        raise ValueError(f"{path}: the checkpoint has {found} register tokens ({names.registers}), the teacher kind "
                         f"expects {wanted}: set sarc.teacher.kind={kind}")
    if names.blocks.format(i=0) + "mlp.w12.weight" in sd or names.blocks.format(i=0) + "mlp.weights_in.weight" in sd:
        raise ValueError(f"{path}: a SwiGLU DINOv2 (ViT-g/14) is not supported; use ViT-S/B/L")
    _check_patch_size(sd, names.patch + ".weight", patch_size, path)
    r = StrictReader(sd, path)
    encoder = vit_layout.encoder_from_torch(r, names, num_heads=num_heads, image_size=image_size, scan=True,
                                            learned_pos=_pos_resampling(official, with_registers))
    r.ignore(["mask_token", "embeddings.mask_token"])  # masked-image-modelling input only: never touches the features
    r.finish(f"a DINOv2{' with registers' if found else ''} ViT ({num_heads} heads)")
    return {"encoder": encoder}


def _dinov3_format(sd, path) -> str:
    if any(k.startswith(released.TEACHER) for k in sd):
        raise ValueError(f"{path}: a released SARMAE pre-training checkpoint: its teacher ({released.TEACHER}*) is only "
                         "DINOv3's patch embedding and norm, not a DINOv3; read it with sarc.teacher.kind=released")
    if "storage_tokens" in sd or "blocks.0.ls1.gamma" in sd:
        return "official"
    if "embeddings.register_tokens" in sd or "layer.0.norm1.weight" in sd:
        return "hf"
    raise ValueError(f"{path}: neither an official DINOv3 checkpoint (storage_tokens, blocks.N.ls1.gamma) nor a "
                     f"transformers DINOv3ViTModel (embeddings.register_tokens, layer.N); first keys: {sorted(sd)[:8]}")


def dinov3_from_torch(sd, path: str, num_heads: int) -> dict:
    """Params of `sarmae_jax.models.teachers.dinov3.DINOv3` from an official or a transformers DINOv3 state dict (file
    names `layer.N.`, or a live 5.x `state_dict()`'s `model.layer.N.`)."""
    sd = vit_layout.hf_live_names_to_file(sd)
    fmt = _dinov3_format(sd, path)
    r = StrictReader(sd, path)
    official = fmt == "official"
    cls_key = "cls_token" if official else "embeddings.cls_token"
    d = r.sd[cls_key].shape[-1] if r.has(cls_key) else 0
    reg_key = "storage_tokens" if official else "embeddings.register_tokens"
    num_reg = r.sd[reg_key].shape[1] if r.has(reg_key) else 0
    patch_prefix = "patch_embed.proj." if official else "embeddings.patch_embeddings."
    patch = r.sd[patch_prefix + "weight"].shape[-1] if r.has(patch_prefix + "weight") else 16
    block_pattern = "blocks.{i}." if official else vit_layout.DINOV3_HF_BLOCKS
    depth = vit_layout.count_blocks(sd, block_pattern)
    if depth == 0 or d == 0:
        raise ValueError(f"{path}: DINOv3 checkpoint without {cls_key} or {block_pattern.format(i=0)}* tensors")
    if d % num_heads:
        raise ValueError(f"{path}: checkpoint width {d} cannot be split into the teacher config's {num_heads} heads "
                         "(wrong sarc.teacher.size for this checkpoint?)")
    fc1 = "mlp.fc1.weight" if official else "mlp.up_proj.weight"
    if not r.has(block_pattern.format(i=0) + fc1):
        raise ValueError(f"{path}: no {block_pattern.format(i=0) + fc1}: only the plain-MLP DINOv3 ViTs (S, B, L) are "
                         "supported, not the SwiGLU ones (H+, 7B)")
    hidden = r.sd[block_pattern.format(i=0) + fc1].shape[0]
    head_dim = d // num_heads
    if official and r.has("rope_embed.periods"):
        _check_rope_periods(r, head_dim)
    blocks = [(_dinov3_official_block if official else _dinov3_hf_block)(r, block_pattern.format(i=i), d, num_heads, hidden)
              for i in range(depth)]
    params = {
        "patch_embed": {"proj": vit_layout.conv_from_torch(r, patch_prefix, d, 3, patch)},
        "cls_token": r.take(cls_key, (1, 1, d)),
        "register_tokens": r.take(reg_key, (1, num_reg, d)),
        "blocks": vit_layout.stack_blocks(blocks, scan=True)["blocks"],
        "norm": vit_layout.norm_from_torch(r, "norm.", d),
    }
    # The teacher returns patch tokens after `norm`; `cls_norm`/`local_cls_norm` (untied class-token norms of
    # some checkpoints) and the mask token never touch them.
    r.ignore(_DINOV3_OFFICIAL_IGNORED if official else _DINOV3_HF_IGNORED)
    r.ignore([k for k in sd if k.startswith(("cls_norm.", "local_cls_norm."))])
    r.finish(f"a DINOv3 ViT (width {d}, depth {depth}, {num_heads} heads, {num_reg} registers)")
    return params


def _check_rope_periods(r: StrictReader, head_dim: int) -> None:
    stored = r.take("rope_embed.periods", (head_dim // 4,))
    expected = dinov3.ROPE_THETA ** (2 * np.arange(head_dim // 4, dtype=np.float64) / (head_dim // 2))
    if np.max(np.abs(stored / expected - 1.0)) > 1e-5:
        raise ValueError(f"{r.source}: rope_embed.periods {stored[:4]}... is not base {dinov3.ROPE_THETA} RoPE; "
                         "this DINOv3 variant is not supported")


def _qkv(q_w, k_w, v_w, q_b, k_b, v_b, d, h) -> dict:
    w = np.concatenate([q_w, k_w, v_w])  # [3D, D]
    b = np.concatenate([q_b, k_b, v_b])
    return {"kernel": w.T.reshape(d, 3, h, d // h), "bias": b.reshape(3, h, d // h)}


def _dinov3_official_block(r: StrictReader, p: str, d: int, h: int, hidden: int) -> dict:
    w = r.take(p + "attn.qkv.weight", (3 * d, d))
    b = r.take(p + "attn.qkv.bias", (3 * d,))
    if r.has(p + "attn.qkv.bias_mask"):  # LinearKMaskedBias: the effective bias is bias * mask (k part masked to 0)
        b = b * r.take(p + "attn.qkv.bias_mask", (3 * d,))
    proj = vit_layout.linear_from_torch(r, p + "attn.proj.", d, d)
    return _dinov3_block(
        vit_layout.norm_from_torch(r, p + "norm1.", d), _qkv(w[:d], w[d:2 * d], w[2 * d:], b[:d], b[d:2 * d], b[2 * d:], d, h),
        proj, r.take(p + "ls1.gamma", (d,)), vit_layout.norm_from_torch(r, p + "norm2.", d),
        vit_layout.linear_from_torch(r, p + "mlp.fc1.", d, hidden), vit_layout.linear_from_torch(r, p + "mlp.fc2.", hidden, d),
        r.take(p + "ls2.gamma", (d,)), h,
    )


def _dinov3_hf_block(r: StrictReader, p: str, d: int, h: int, hidden: int) -> dict:
    a = p + "attention."
    q_w, k_w, v_w = (r.take(f"{a}{n}_proj.weight", (d, d)) for n in "qkv")
    # transformers' DINOv3 has no key bias (key_bias=False); a checkpoint made with one is read too.
    k_b = r.take(a + "k_proj.bias", (d,)) if r.has(a + "k_proj.bias") else np.zeros((d,), np.float32)
    qkv = _qkv(q_w, k_w, v_w, r.take(a + "q_proj.bias", (d,)), k_b, r.take(a + "v_proj.bias", (d,)), d, h)
    return _dinov3_block(
        vit_layout.norm_from_torch(r, p + "norm1.", d), qkv, vit_layout.linear_from_torch(r, a + "o_proj.", d, d),
        r.take(p + "layer_scale1.lambda1", (d,)), vit_layout.norm_from_torch(r, p + "norm2.", d),
        vit_layout.linear_from_torch(r, p + "mlp.up_proj.", d, hidden),
        vit_layout.linear_from_torch(r, p + "mlp.down_proj.", hidden, d), r.take(p + "layer_scale2.lambda1", (d,)), h,
    )


def _dinov3_block(norm1, qkv, proj, ls1, norm2, fc1, fc2, ls2, h) -> dict:
    d = proj["kernel"].shape[0]
    return {"norm1": norm1, "attn": {"qkv": qkv, "proj": {"kernel": proj["kernel"].reshape(h, d // h, d), "bias": proj["bias"]}},
            "ls1": {"gamma": ls1}, "norm2": norm2, "fc1": fc1, "fc2": fc2, "ls2": {"gamma": ls2}}


def released_from_torch(sd, path: str) -> dict:
    """The released SARMAE teacher (SimplifiedDINOv3: patch embedding, final norm, class token): the
    `optical_encoder.*` of a released pre-training checkpoint, or copied out of a DINOv3 file as its code does."""
    if any(k.startswith(released.TEACHER) for k in sd):
        return released.teacher_from_torch(sd, path)
    sd = vit_layout.hf_live_names_to_file(sd)
    fmt = _dinov3_format(sd, path)
    patch_prefix = "patch_embed.proj." if fmt == "official" else "embeddings.patch_embeddings."
    r = StrictReader(sd, path)
    if not r.has(patch_prefix + "weight"):
        raise ValueError(f"{path}: no {patch_prefix}weight")
    d, c, p, _ = r.sd[patch_prefix + "weight"].shape
    params = {"patch_embed": {"proj": vit_layout.conv_from_torch(r, patch_prefix, d, c, p)},
              "norm": vit_layout.norm_from_torch(r, "norm.", d),
              "cls_token": r.take("cls_token" if fmt == "official" else "embeddings.cls_token", (1, 1, d))}
    missing = r.missing + r.wrong
    if missing:
        raise ValueError(f"{path}: cannot build the released teacher: " + "; ".join(missing))
    return params


def load_teacher_params(cfg, module: nn.Module, image_size: int, seed: int = 0) -> Any:
    """The teacher's frozen parameters.

    `cfg.checkpoint`:
      - `"random-init"`: initialise from `seed` and say so loudly (for tests and the synthetic smoke run);
      - a path: official DINOv3 / DINOv2 `.pth`, transformers or timm files (`load_teacher_checkpoint`).
    A missing checkpoint is an error, never a silent random teacher.
    """
    ckpt = cfg.checkpoint
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(seed), dummy)["params"]))
    if ckpt is None or ckpt == "":
        raise ValueError(
            "config.sarc.teacher.checkpoint is not set: the SARC teacher needs weights (a path), or the explicit "
            f"value {teachers.RANDOM_INIT!r} for an untrained teacher (tests and synthetic smoke runs only)."
        )
    if ckpt == teachers.RANDOM_INIT:
        log.warning("SARC teacher %r is RANDOMLY INITIALISED (checkpoint=%r), as the config asks.", cfg.kind, ckpt)
        return jax.jit(lambda: nn.unbox(module.init(jax.random.key(seed), dummy)["params"]))()
    params = load_teacher_checkpoint(cfg, ckpt, image_size)
    param_trees.check_tree_matches(params, shapes, what=f"teacher checkpoint {ckpt}")
    return jax.tree.map(jnp.asarray, params)
