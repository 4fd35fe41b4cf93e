"""Full fine-tuning for classification, the released SARMAE protocol.

Model: pre-trained encoder -> global average pool of the patch tokens -> LayerNorm (`fc_norm`) ->
linear head (weights N(0, 2e-5), as MAE fine-tuning). Our encoder always applies its final norm, so
the pooled tokens are already normalised once before `fc_norm` (MAE drops its final norm when it
pools; the extra affine-free-at-init LayerNorm changes nothing the fine-tuning cannot undo).

Optimisation: AdamW (0.9, 0.999), weight decay 0.05 (not on biases, norms, class token), layer-wise
lr decay: parameters of layer i (0 = patch embedding, class token and a learned position table,
1..depth = blocks, depth + 1 = final norms and head) get lr x decay^(depth + 1 - i), weight decay
included (PyTorch parameter groups scale both). Scanned blocks store their parameters stacked
`[depth, ...]`, so their scale is an array `[depth, 1, ...]`, one factor per slice. Peak lr = base_lr x batch / 256,
warm-up then half-cycle cosine to min_lr, per step. Label smoothing 0.1, drop path 0.1 (linearly
rising over depth). No augmentation beyond the resize (as the release's evaluation: plain resize).

The batch is split over this process's devices (data parallel, parameters replicated); evaluation
is single-process.
"""
from __future__ import annotations

import functools
import json
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from sarmae_jax.evaluate import encoder as encoder_lib
from sarmae_jax.evaluate import report
from sarmae_jax.models import sarmae, vit
from sarmae_jax.training import optim


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.epochs = 30
    c.warmup_epochs = 5
    c.batch_size = 64  # global; must be a multiple of the device count
    c.base_lr = 1e-3  # peak lr = base_lr * batch_size / 256
    c.min_lr = 1e-6
    c.b1, c.b2 = 0.9, 0.999
    c.weight_decay = 0.05
    c.layer_decay = 0.75
    c.label_smoothing = 0.1
    c.drop_path_rate = 0.1
    c.seeds = (0, 1, 2, 3, 4)  # each seed: its own head init, data order, drop path (and split draw)
    return c


class Classifier(nn.Module):
    """`[B, S, S, C]` normalised images -> logits `[B, num_classes]`."""

    encoder: vit.ViTEncoder
    num_classes: int

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        tokens = self.encoder(images)
        pooled = tokens[:, 1:].mean(axis=1)
        pooled = nn.LayerNorm(epsilon=vit.LAYER_NORM_EPS, name="fc_norm")(pooled)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(2e-5), name="head")(pooled).astype(jnp.float32)


# ------------------------------------------------------------------------- layer-wise lr decay
def layer_ids(params: dict[str, Any], depth: int) -> dict[str, Any]:
    """Layer index per parameter (see module docstring); an int array `[depth]` for scanned blocks."""
    def layer_of(path: tuple[str, ...], leaf) -> Any:
        if path[0] != "encoder":
            return depth + 1  # fc_norm, head
        if path[1] in ("patch_embed", "cls_token", "pos_embed"):
            return 0
        if path[1] == "stack":
            if path[2] == "blocks":  # scanned: leading axis is the layer
                if leaf.shape[0] != depth:
                    raise ValueError(f"scanned block parameter {'/'.join(path)} has leading axis "
                                     f"{leaf.shape[0]}, expected depth {depth}")
                return np.arange(1, depth + 1)
            if path[2].startswith("blocks_"):
                return int(path[2].split("_")[1]) + 1
        if path[1] == "norm":
            return depth + 1
        raise ValueError(f"layer-wise lr decay: no layer for parameter {'/'.join(path)}")

    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: layer_of(k, v) for k, v in flat.items()})


def lr_scales(params: dict[str, Any], depth: int, decay: float) -> dict[str, Any]:
    """decay^(depth + 1 - layer) per parameter, shaped to broadcast against it (float32)."""
    ids = layer_ids(params, depth)

    def scale(layer, leaf):
        s = np.asarray(decay, np.float64) ** (depth + 1 - np.asarray(layer))
        if s.ndim:  # stacked [depth] -> [depth, 1, ..., 1]
            s = s.reshape((-1,) + (1,) * (len(leaf.shape) - 1))
        return jnp.asarray(s, jnp.float32)

    return jax.tree.map(scale, ids, params)


def scale_per_parameter(scales: Any) -> optax.GradientTransformation:
    """Multiply each update by a fixed (broadcastable) factor."""
    def update(updates, state, params=None):
        return jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(cfg, params, depth: int) -> optax.GradientTransformation:
    """AdamW with layer-wise scales; the learning rate itself is applied by the step (`-lr * update`),
    so one compiled step serves every schedule (every split size)."""
    return optax.chain(
        optax.scale_by_adam(cfg.b1, cfg.b2, eps=1e-8),
        optax.add_decayed_weights(cfg.weight_decay, mask=optim.weight_decay_mask(params)),
        scale_per_parameter(lr_scales(params, depth, cfg.layer_decay)),
    )


# ------------------------------------------------------------------------------------ training
class Data(NamedTuple):
    images: np.ndarray  # [N, S, S, 1] integer pixels
    labels: np.ndarray  # [N] int32


class Programs(NamedTuple):
    """Everything compiled for one (model, classes, hyper-parameters): built once, reused by every
    split and seed (a fresh closure per run would recompile the whole encoder each time)."""

    init: Any  # key -> head and fc_norm params
    tx: optax.GradientTransformation
    train_step: Any  # (params, opt_state, pixels, labels, drop_key, lr) -> (params, opt_state, loss)
    count_correct: Any  # (params, pixels, labels, valid) -> int


@functools.lru_cache(maxsize=8)
def _programs(model_json: str, num_classes: int, cfg_json: str) -> Programs:
    m = ml_collections.ConfigDict(json.loads(model_json))
    cfg = ml_collections.ConfigDict(json.loads(cfg_json))
    depth = vit.VIT_SIZES[m.size]["depth"]
    model = Classifier(sarmae.build_encoder(m, deterministic=False, drop_path_rate=cfg.drop_path_rate), num_classes)
    eval_model = Classifier(sarmae.build_encoder(m, deterministic=True, drop_path_rate=0.0), num_classes)
    s = m.image_size
    abstract = jax.eval_shape(lambda k: nn.unbox(eval_model.init(k, jnp.zeros((1, s, s, sarmae.input_channels(m))))["params"]),
                              jax.random.key(0))
    tx = make_optimizer(cfg, abstract, depth)

    def init(key):
        return nn.unbox(eval_model.init(key, jnp.zeros((1, s, s, sarmae.input_channels(m))))["params"])

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, pixels, labels, drop_key, lr):
        def loss_fn(p):
            logits = model.apply({"params": p}, encoder_lib.normalised_inputs(pixels, m.in_channels),
                                 rngs={"drop_path": drop_key})
            targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), cfg.label_smoothing)
            return optax.softmax_cross_entropy(logits, targets).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: -lr * u, updates)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def count_correct(params, pixels, labels, valid):
        logits = eval_model.apply({"params": params}, encoder_lib.normalised_inputs(pixels, m.in_channels))
        return jnp.sum((logits.argmax(-1) == labels) & valid)

    return Programs(init, tx, train_step, count_correct)


def accuracy(programs: Programs, params, data: Data, batch_size: int, sharding) -> float:
    """Top-1 accuracy (fraction) over `data`, in fixed-size padded batches (one compile)."""
    total = 0
    for start, stop in encoder_lib.batches(len(data.labels), batch_size):
        valid = np.arange(batch_size) < stop - start
        pixels = encoder_lib.pad_to(data.images[start:stop], batch_size)
        labels = encoder_lib.pad_to(data.labels[start:stop], batch_size)
        total += int(programs.count_correct(params, *jax.device_put((pixels, labels, valid), sharding)))
    return total / len(data.labels)


def finetune(encoder: encoder_lib.Encoder, train: Data, eval_sets: dict[str, Data], *, num_classes: int,
             cfg: ml_collections.ConfigDict, seed: int, desc: str = "fine-tune") -> dict[str, list[float]]:
    """Fine-tune a copy of the encoder; returns per-epoch accuracy curves (fractions) of `eval_sets`."""
    devices = jax.local_devices()
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    batch_size = min(cfg.batch_size, len(train.labels))
    batch_size -= batch_size % len(devices)
    eval_batch_size = cfg.batch_size - cfg.batch_size % len(devices)  # fixed: one compile for every split
    if batch_size == 0:
        raise ValueError(f"fine-tuning: {len(train.labels)} training examples cannot fill one batch over "
                         f"{len(devices)} devices")
    data_sharding, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    hyper = {k: v for k, v in cfg.to_dict().items() if k not in ("seeds", "epochs", "warmup_epochs", "batch_size",
                                                                  "base_lr", "min_lr")}
    programs = _programs(json.dumps(encoder.model_cfg.to_dict(), sort_keys=True), num_classes,
                         json.dumps(hyper, sort_keys=True))

    k_init, k_drop = jax.random.split(jax.random.key(seed))
    # A copy of the encoder: the step donates its inputs, and the caller's parameters must survive.
    params = {**programs.init(k_init), "encoder": jax.tree.map(jnp.copy, encoder.params["encoder"])}
    params = jax.device_put(params, replicated)
    opt_state = jax.device_put(programs.tx.init(params), replicated)

    steps_per_epoch = len(train.labels) // batch_size  # drop the last partial batch, as MAE fine-tuning
    total_steps = cfg.epochs * steps_per_epoch
    schedule = optim.Schedule(cfg.base_lr * batch_size / 256.0, min(cfg.warmup_epochs * steps_per_epoch, total_steps),
                              total_steps, cfg.min_lr)
    curves: dict[str, list[float]] = {name: [] for name in eval_sets}
    rng = np.random.default_rng([seed, 1])
    step = 0
    with tqdm(total=total_steps, desc=desc, leave=False) as bar:
        for _ in range(cfg.epochs):
            order = rng.permutation(len(train.labels))
            for i in range(steps_per_epoch):
                idx = np.sort(order[i * batch_size:(i + 1) * batch_size])
                pixels, labels = jax.device_put((train.images[idx], train.labels[idx]), data_sharding)
                params, opt_state, loss = programs.train_step(params, opt_state, pixels, labels,
                                                              jax.random.fold_in(k_drop, step), schedule(step))
                step += 1
                bar.update()
            bar.set_postfix(loss=f"{float(loss):.3f}")
            for name, data in eval_sets.items():
                curves[name].append(accuracy(programs, params, data, eval_batch_size, data_sharding))
    return curves


def evaluate(encoder, train: Data, test: Data, val: Data | None, *, num_classes: int, cfg, seed: int,
             desc: str = "fine-tune") -> dict:
    sets = {"test": test} if val is None else {"val": val, "test": test}
    curves = finetune(encoder, train, sets, num_classes=num_classes, cfg=cfg, seed=seed, desc=desc)
    return {**report.summarise_curves(curves), "curves": curves}
