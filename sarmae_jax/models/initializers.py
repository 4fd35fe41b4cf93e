"""Parameter initialisers with logical axis names (the sharding rules map the names to mesh axes).

MAE's choices, which imported PyTorch weights were trained with: xavier-uniform for Linear layers
(not truncated-normal 0.02), and for every kernel whose PyTorch layer is one Linear (the patch
convolution, the fused qkv) xavier-uniform over the flattened `(fan_in, fan_out)` matrix.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

dense_init = nn.initializers.xavier_uniform()


def partitioned(init: Callable, names: tuple[str | None, ...]) -> Callable:
    """Attach logical axis names to an initializer."""
    return nn.with_logical_partitioning(init, names)


def conv_as_dense_init(key, shape, dtype=jnp.float32):
    """A `[kh, kw, C_in, D]` convolution kernel initialised as the Linear(kh*kw*C_in, D) it is."""
    kh, kw, cin, cout = shape
    w = nn.initializers.xavier_uniform()(key, (kh * kw * cin, cout), dtype)
    return w.reshape(shape)


def fused_dense_init(key, shape, dtype=jnp.float32):
    """Xavier-uniform over the flattened (fan_in, fan_out) matrix, as PyTorch would see the layer.

    For the fused qkv the PyTorch layer is Linear(D, 3D); timm/MAE initialise it as one matrix.
    """
    if len(shape) == 4:  # qkv: [D, 3, H, Dh]
        fan_in, fan_out = shape[0], int(np.prod(shape[1:]))
    else:  # proj: [H, Dh, D]
        fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1]
    w = nn.initializers.xavier_uniform()(key, (fan_in, fan_out), dtype)
    return w.reshape(shape)
