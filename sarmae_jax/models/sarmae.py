"""The SARMAE model: the modules of one run, built from the `model` and `sarc` configs.

Trainable parameters: `{"encoder", "decoder", "anchor_head"}` (the head only when SARC is on).
The teacher is built here too but its parameters are loaded separately and stay frozen.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sarmae_jax.models import anchor, mae, patches, teachers, vit

# No float16: its 5 exponent bits underflow small gradients without loss scaling, which this trainer does
# not do; bfloat16 keeps float32's range.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Input channels of a model whose `model.in_channels` is None and that no dataset has resolved
# (training/dataset_config.py): single-channel SAR repeated to 3, so ImageNet MAE weights load unchanged.
DEFAULT_IN_CHANNELS = 3


def input_channels(model_cfg) -> int:
    """`model.in_channels`, or `DEFAULT_IN_CHANNELS` while it is None (not yet resolved from a dataset)."""
    channels = model_cfg.get("in_channels", DEFAULT_IN_CHANNELS)
    return DEFAULT_IN_CHANNELS if channels is None else int(channels)


class Modules(NamedTuple):
    encoder: vit.ViTEncoder
    decoder: mae.MAEDecoder
    anchor_head: anchor.AnchorHead | None
    teacher: nn.Module | None
    teacher_width: int | None


def stack_options(model_cfg) -> vit.StackOptions:
    return vit.StackOptions(scan=bool(model_cfg.scan_layers), remat=model_cfg.remat,
                            scan_unroll=int(model_cfg.scan_unroll))


def build_encoder(model_cfg, *, deterministic: bool = True, drop_path_rate: float | None = None) -> vit.ViTEncoder:
    size = vit.VIT_SIZES[model_cfg.size]
    return vit.ViTEncoder(
        patch_size=model_cfg.patch_size,
        **size,
        drop_path_rate=model_cfg.drop_path_rate if drop_path_rate is None else drop_path_rate,
        deterministic=deterministic,
        dtype=DTYPES[model_cfg.dtype],
        param_dtype=DTYPES[model_cfg.param_dtype],
        attention_impl=model_cfg.attention_impl or None,
        stack=stack_options(model_cfg),
        # Exports written before these keys existed describe the default encoder.
        learned_pos_embed=model_cfg.get("pos_embed", "sincos") == "learned",
        final_norm=bool(model_cfg.get("final_norm", True)),
    )


def build(config) -> Modules:
    m = config.model
    dtype, param_dtype = DTYPES[m.dtype], DTYPES[m.param_dtype]
    encoder = build_encoder(m, deterministic=m.drop_path_rate == 0.0)
    decoder = mae.MAEDecoder(
        patch_size=m.patch_size, out_channels=input_channels(m), width=m.decoder.width, depth=m.decoder.depth,
        num_heads=m.decoder.num_heads, dtype=dtype, param_dtype=param_dtype,
        attention_impl=m.attention_impl or None, stack=stack_options(m),
    )
    head = teacher = width = None
    if config.sarc.enabled:
        teacher, width = teachers.build_teacher(config.sarc.teacher, dtype=dtype, scan_unroll=int(m.scan_unroll))
        head = anchor.AnchorHead(width, dtype=dtype, param_dtype=param_dtype)
    return Modules(encoder, decoder, head, teacher, width)


def init_params(modules: Modules, config, key: jax.Array) -> dict[str, Any]:
    """Boxed (logically partitioned) parameters; wrap in `jax.eval_shape` for shapes and shardings."""
    m = config.model
    s = m.image_size
    n = patches.num_patches(s, m.patch_size)
    k = mae.num_kept(n, m.mask_ratio)
    k_enc, k_dec, k_head = jax.random.split(key, 3)
    images = jnp.zeros((1, s, s, input_channels(m)), jnp.float32)
    ids_keep = jnp.zeros((1, k), jnp.int32)
    ids_restore = jnp.zeros((1, n), jnp.int32)
    width = vit.VIT_SIZES[m.size]["width"]
    params = {
        "encoder": modules.encoder.init(k_enc, images, ids_keep)["params"],
        "decoder": modules.decoder.init(k_dec, jnp.zeros((1, 1 + k, width)), ids_restore)["params"],
    }
    if modules.anchor_head is not None:
        params["anchor_head"] = modules.anchor_head.init(k_head, jnp.zeros((1, k, width)))["params"]
    return params

