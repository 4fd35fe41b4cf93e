"""Multi-head softmax attention with an explicit, hand-written backward pass.

`dot_product_attention(q, k, v, implementation)` is what the ViT blocks call. By default it runs
`explicit_attention` here; "xla" and "cudnn" select `jax.nn.dot_product_attention`'s paths (its own
default is the XLA path; "cudnn" pads the sequence, see `padded_attention`). Explicit is the default because it measured faster on both machines this
project benchmarks on: in the backward pass the softmax gradient uses FlashAttention's row term
`sum(dO * O)` (a reduction over the head width, 32-64) instead of `sum(P * dP)` (over the key length,
197 tokens in the MAE decoder), and the saved probabilities are read once.
  - 2-core CPU, float32, ViT-B/16 MAE+SARC step at batch 8: about 9% faster than "xla".
  - NVIDIA H200, bfloat16, the same step at batch 256 (released teacher), measured side by side in one
    run: 65.8 vs 75.3 ms (+14% images/s); docs/benchmarks.md's GPU table has both and the current step time. cuDNN flash attention refuses the decoder's 197-token sequences in JAX 0.11.

Numerics: logits, softmax and its gradient are computed in float32 whatever the input dtype (as
`jax.nn.dot_product_attention` does), products with V and the outputs are in the input dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("", "xla", "cudnn", "explicit")
# cuDNN's fused attention refused the MAE decoder's 197-token sequences on an H200 (jax 0.11): "cudnn"
# pads every sequence to a multiple of this and passes the true lengths, so the padding is masked out.
CUDNN_SEQUENCE_MULTIPLE = 64


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str | None = None) -> jax.Array:
    """Scaled dot-product attention, no mask. `q, k, v: [B, T, H, Dh]` -> `[B, T, H, Dh]`.

    `implementation`: None, "" or "explicit" (this module), "xla" or "cudnn" (`jax.nn.dot_product_attention`).
    """
    if implementation not in IMPLEMENTATIONS + (None,):
        raise ValueError(f"attention implementation {implementation!r}: expected one of {list(IMPLEMENTATIONS)}")
    if not implementation or implementation == "explicit":
        return explicit_attention(q, k, v)
    if implementation == "cudnn":
        return padded_attention(q, k, v, "cudnn", CUDNN_SEQUENCE_MULTIPLE)
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)


def padded_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str, multiple: int) -> jax.Array:
    """`jax.nn.dot_product_attention` on `q, k, v: [B, T, H, Dh]` padded with zeros to `T'`, the next multiple
    of `multiple`, with `query_seq_lengths = key_value_seq_lengths = T`: padded keys get no weight and the
    padded queries' rows are dropped, so the result (and its gradient) is the unpadded attention's. -> `[B, T, H, Dh]`."""
    b, t = q.shape[:2]
    padded = -(-t // multiple) * multiple
    if padded == t:
        return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    pad = lambda x: jnp.pad(x, ((0, 0), (0, padded - t), (0, 0), (0, 0)))
    lengths = jnp.full((b,), t, jnp.int32)
    out = jax.nn.dot_product_attention(pad(q), pad(k), pad(v), query_seq_lengths=lengths,
                                       key_value_seq_lengths=lengths, implementation=implementation)
    return out[:, :t]


def explicit_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """`softmax(q k^T / sqrt(Dh)) v` per head; `[B, T, H, Dh]` in and out."""
    b, t, h, dh = q.shape
    heads_first = lambda x: x.transpose(0, 2, 1, 3).reshape(b * h, x.shape[1], dh)  # [B*H, T, Dh]
    out = _attention(heads_first(q * jnp.asarray(dh ** -0.5, q.dtype)), heads_first(k), heads_first(v))
    return out.reshape(b, h, t, dh).transpose(0, 2, 1, 3)


@jax.custom_vjp
def _attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """`q [N, T, Dh]` (already scaled), `k, v [N, S, Dh]` -> `[N, T, Dh]`."""
    return _attention_fwd(q, k, v)[0]


def _attention_fwd(q, k, v):
    logits = jnp.einsum("ntd,nsd->nts", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("nts,nsd->ntd", probs.astype(v.dtype), v)
    return out, (q, k, v, probs, out)


def _attention_bwd(residuals, d_out):
    q, k, v, probs, out = residuals
    d_v = jnp.einsum("nts,ntd->nsd", probs.astype(d_out.dtype), d_out)
    d_probs = jnp.einsum("ntd,nsd->nts", d_out, v, preferred_element_type=jnp.float32)
    # Softmax backward: dS = P * (dP - sum_s P dP), and sum_s P dP = sum_d dO * O (O = P V).
    row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_logits = (probs * (d_probs - row)).astype(q.dtype)
    d_q = jnp.einsum("nts,nsd->ntd", d_logits, k)
    d_k = jnp.einsum("nts,ntd->nsd", d_logits, q)
    return d_q, d_k, d_v


_attention.defvjp(_attention_fwd, _attention_bwd)
