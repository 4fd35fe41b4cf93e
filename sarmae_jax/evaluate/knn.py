"""Weighted k-nearest-neighbour classification on frozen features (the DINO protocol).

Features are L2-normalised; a test sample's k most cosine-similar training samples vote for their
class with weight exp(similarity / T). No training, no hyper-parameter chosen on the test split.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def l2_normalise(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def knn_scores(train_features: jax.Array, train_labels: jax.Array, query_features: jax.Array, *, k: int,
               num_classes: int, temperature: float) -> jax.Array:
    """Class scores `[Q, num_classes]`: sum over the k nearest training samples of exp(cos / T).

    train_features `[N, D]`, train_labels `[N]` int32, query_features `[Q, D]` (any scale).
    """
    sims = l2_normalise(query_features) @ l2_normalise(train_features).T  # [Q, N]
    top_sims, top_idx = jax.lax.top_k(sims, k)
    weights = jnp.exp(top_sims / temperature)
    votes = jax.nn.one_hot(train_labels[top_idx], num_classes) * weights[..., None]  # [Q, k, C]
    return votes.sum(axis=1)


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray, query_features: np.ndarray,
                 query_labels: np.ndarray, *, k: int, temperature: float, num_classes: int,
                 chunk: int = 1024) -> float:
    """Top-1 accuracy (fraction) of the weighted k-NN vote; `k` is capped at the training-set size."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"k-NN: k={k} must be >= 1 and temperature={temperature} > 0")
    k = min(k, len(train_labels))
    train_f, train_y = jnp.asarray(train_features), jnp.asarray(train_labels, jnp.int32)
    correct = 0
    for start in range(0, len(query_labels), chunk):
        scores = knn_scores(train_f, train_y, jnp.asarray(query_features[start:start + chunk]), k=k,
                            num_classes=num_classes, temperature=temperature)
        correct += int(np.sum(np.asarray(scores.argmax(-1)) == query_labels[start:start + chunk]))
    return correct / len(query_labels)
