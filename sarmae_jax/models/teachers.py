"""Frozen optical teachers for SARC: `images [B, H, W, 3] (ImageNet-normalised) -> patch tokens [B, N, Dt]`.

A teacher is a swappable part: `build_teacher(cfg)` returns a Linen module and its output width;
its parameters are loaded once, live outside the train state and never reach the optimizer.

Kinds:
  - `released`: what the public SARMAE code actually ran as its "DINOv3 teacher": only the
    patch-embedding convolution followed by the final LayerNorm (no transformer blocks).
  - `vit`: a plain frozen ViT of configurable size (its patch tokens after the final norm).
  - `dinov2` / `dinov2_reg`: DINOv2 (Oquab et al., 2023) without / with its 4 register tokens
    (Darcet et al., 2023): a ViT with learned positions and LayerScale. Released DINOv2s have 14-pixel
    patches, so they need `model.patch_size=14` (the teacher's and the student's patches must coincide).
  - `dinov3`: the full DINOv3 ViT (registered by `sarmae_jax.models.dinov3` when available).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from sarmae_jax.models import vit

Dtype = Any
log = logging.getLogger("sarmae_jax")
RANDOM_INIT = "random-init"  # an explicit request for an untrained teacher (tests, smoke runs); never a fallback


class ReleasedTeacher(nn.Module):
    """Patch embedding + LayerNorm, as the released SARMAE code's teacher. `[B, H, W, 3] -> [B, N, D]`."""

    patch_size: int = 16
    width: int = 768
    norm_eps: float = 1e-5  # DINOv3's final norm epsilon
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = vit.PatchEmbed(self.patch_size, self.width, self.dtype, name="patch_embed")(images)
        return nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="norm")(x)


class ViTTeacher(nn.Module):
    """A ViT; its patch tokens (class and register tokens dropped) after the final norm. `[B, H, W, 3] -> [B, N, D]`.

    The position table is a parameter (`encoder/pos_embed [1, 1 + N, D]`, N at the input's grid): a frozen
    teacher keeps whatever table its checkpoint was trained with, learned (timm/HF ViT, DINOv2) or MAE's
    fixed sin-cos one (the initial value). A checkpoint made for another grid is resampled once at load.
    With `num_registers=4, layer_scale=True` this is DINOv2 with registers.
    """

    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    num_registers: int = 0
    layer_scale: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        tokens = vit.ViTEncoder(
            patch_size=self.patch_size, width=self.width, depth=self.depth, num_heads=self.num_heads,
            dtype=self.dtype, learned_pos_embed=True, num_registers=self.num_registers,
            layer_scale=self.layer_scale, name="encoder",
        )(images)
        return tokens[:, 1 + self.num_registers:]


# kind -> (teacher_cfg, dtype) -> (module, output width). Other modules register more kinds.
TEACHERS: dict[str, Callable[[Any, Dtype], tuple[nn.Module, int]]] = {}


def register_teacher(kind: str):
    def wrap(factory):
        TEACHERS[kind] = factory
        return factory
    return wrap


@register_teacher("released")
def _released(cfg, dtype):
    width = vit.VIT_SIZES[cfg.size]["width"]
    return ReleasedTeacher(patch_size=cfg.patch_size, width=width, dtype=dtype), width


@register_teacher("vit")
def _plain_vit(cfg, dtype):
    size = vit.VIT_SIZES[cfg.size]
    return ViTTeacher(patch_size=cfg.patch_size, dtype=dtype, **size), size["width"]


DINOV2_REGISTERS = 4  # every released DINOv2-with-registers ViT (S/B/L/g) carries 4


@register_teacher("dinov2")
def _dinov2(cfg, dtype):
    size = vit.VIT_SIZES[cfg.size]
    return ViTTeacher(patch_size=cfg.patch_size, layer_scale=True, dtype=dtype, **size), size["width"]


@register_teacher("dinov2_reg")
def _dinov2_with_registers(cfg, dtype):
    size = vit.VIT_SIZES[cfg.size]
    return (ViTTeacher(patch_size=cfg.patch_size, num_registers=DINOV2_REGISTERS, layer_scale=True, dtype=dtype, **size),
            size["width"])


def build_teacher(cfg, dtype: Dtype = jnp.float32) -> tuple[nn.Module, int]:
    """`cfg`: the `sarc.teacher` config (kind, size, patch_size, checkpoint)."""
    _ensure_registered()
    if cfg.kind not in TEACHERS:
        raise ValueError(f"config.sarc.teacher.kind={cfg.kind!r}: expected one of {sorted(TEACHERS)}")
    return TEACHERS[cfg.kind](cfg, dtype)


def teacher_identity(cfg) -> str:
    """A name for the teacher a config describes, stored with precomputed tokens and checked by the trainer."""
    checkpoint = os.path.basename(os.path.normpath(str(cfg.checkpoint)))
    return f"{cfg.kind}/{cfg.size}/p{cfg.patch_size}:{checkpoint}"


def _ensure_registered() -> None:
    # Optional teacher families register themselves on import.
    try:
        import sarmae_jax.models.dinov3  # noqa: F401
    except ImportError as e:  # only "module not there"; an error inside it must surface
        if e.name != "sarmae_jax.models.dinov3":
            raise


def load_teacher_params(cfg, module: nn.Module, image_size: int, seed: int = 0) -> Any:
    """The teacher's frozen parameters.

    `cfg.checkpoint`:
      - `"random-init"`: initialise from `seed` and say so loudly (for tests and the synthetic smoke run);
      - a path: official DINOv3 / DINOv2 `.pth`, transformers or timm files (`sarmae_jax.convert.teachers`).
    A missing checkpoint is an error, never a silent random teacher.
    """
    ckpt = cfg.checkpoint
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(seed), dummy)["params"]))
    if ckpt is None or ckpt == "":
        raise ValueError(
            "config.sarc.teacher.checkpoint is not set: the SARC teacher needs weights (a path), or the explicit "
            f"value {RANDOM_INIT!r} for an untrained teacher (tests and synthetic smoke runs only)."
        )
    if ckpt == RANDOM_INIT:
        log.warning("SARC teacher %r is RANDOMLY INITIALISED (checkpoint=%r), as the config asks.", cfg.kind, ckpt)
        return jax.jit(lambda: nn.unbox(module.init(jax.random.key(seed), dummy)["params"]))()
    from sarmae_jax.convert import teachers as convert_teachers  # PyTorch formats: optional extra

    params = convert_teachers.load_teacher_checkpoint(cfg, ckpt, image_size)
    check_tree_matches(params, shapes, what=f"teacher checkpoint {ckpt}")
    return jax.tree.map(jnp.asarray, params)


def check_tree_matches(params: Any, expected: Any, what: str) -> None:
    """Strict structural check: same parameter names and shapes, or a ValueError listing every difference."""
    got = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(expected, sep="/").items()}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    if missing or unexpected or wrong:
        lines = [f"{what} does not match the model:"]
        lines += [f"  missing:    {k} {want[k]}" for k in missing]
        lines += [f"  unexpected: {k} {got[k]}" for k in unexpected]
        lines += [f"  shape:      {k} has {got[k]}, model expects {want[k]}" for k in wrong]
        raise ValueError("\n".join(lines))
