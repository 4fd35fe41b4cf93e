"""Linear probe: a softmax classifier on frozen, standardised features.

Features are standardised with the training subset's per-dimension mean and std (MAE's linear
probe puts a parameter-free BatchNorm before the head for the same reason: frozen ViT features
have very uneven scales). AdamW with a warm-up + cosine schedule; one jitted function runs a whole
epoch (`lax.scan` over mini-batches), so a 100-epoch probe costs a handful of dispatches.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sarmae_jax.evaluate import report


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.epochs = 100
    c.batch_size = 256
    c.lr = 1e-3  # absolute (AdamW on standardised features; insensitive within 3e-4..3e-3 here)
    c.weight_decay = 1e-4
    c.warmup_epochs = 5
    return c


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean = train.mean(0, keepdims=True)
    std = train.std(0, keepdims=True) + 1e-6
    return [(x - mean) / std for x in (train, *others)]


def accuracy(w: jax.Array, b: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(((x @ w + b).argmax(-1) == y).astype(jnp.float32))


def train_linear_probe(train_x: np.ndarray, train_y: np.ndarray, eval_sets: dict[str, tuple[np.ndarray, np.ndarray]],
                       *, num_classes: int, cfg: ml_collections.ConfigDict, seed: int) -> dict[str, list[float]]:
    """Train on `(train_x [N, D], train_y [N])`; return per-epoch accuracy curves (fractions).

    eval_sets: name -> (features, labels), e.g. {"val": ..., "test": ...}; the curve of each is
    measured after every epoch. Selection (last epoch, or best validation epoch) is the caller's.
    """
    standardised = standardise(train_x, *(x for x, _ in eval_sets.values()))
    x_train = jnp.asarray(standardised[0])
    evals = {name: (jnp.asarray(x), jnp.asarray(y, jnp.int32))
             for (name, (_, y)), x in zip(eval_sets.items(), standardised[1:])}
    y_train = jnp.asarray(train_y, jnp.int32)
    n, d = x_train.shape
    batch = min(cfg.batch_size, n)
    steps_per_epoch = -(-n // batch)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, cfg.warmup_epochs * steps_per_epoch, max(cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch + 1))
    tx = optax.adamw(schedule, weight_decay=cfg.weight_decay, mask={"w": True, "b": False})
    params = {"w": jnp.zeros((d, num_classes)), "b": jnp.zeros((num_classes,))}
    opt_state = tx.init(params)

    def loss_fn(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y).mean()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def run_epoch(params, opt_state, key):
        # Wrap the permutation so every mini-batch is full (a few examples seen twice per epoch).
        order = jnp.resize(jax.random.permutation(key, n), (steps_per_epoch * batch,)).reshape(steps_per_epoch, batch)

        def step(carry, idx):
            p, s = carry
            grads = jax.grad(loss_fn)(p, x_train[idx], y_train[idx])
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), order)
        accs = {name: accuracy(params["w"], params["b"], x, y) for name, (x, y) in evals.items()}
        return params, opt_state, accs

    curves: dict[str, list[float]] = {name: [] for name in evals}
    key = jax.random.key(seed)
    for epoch in range(cfg.epochs):
        params, opt_state, accs = run_epoch(params, opt_state, jax.random.fold_in(key, epoch))
        for name, acc in accs.items():
            curves[name].append(float(acc))
    return curves


def evaluate(train_x, train_y, test, val, *, num_classes: int, cfg, seed: int) -> dict:
    """Probe once; summary per `report.summarise_curves` (last-epoch test, test at best val epoch)."""
    sets = {"test": test} if val is None else {"val": val, "test": test}
    curves = train_linear_probe(train_x, train_y, sets, num_classes=num_classes, cfg=cfg, seed=seed)
    return report.summarise_curves(curves)
