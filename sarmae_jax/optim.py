"""AdamW with MAE's weight-decay mask and a warm-up + half-cycle cosine schedule (per step)."""
from __future__ import annotations

import dataclasses
from typing import Any

import optax
from flax import traverse_util

# Parameter names that never decay: biases, LayerNorm scales/offsets, class and mask tokens.
# Decided by name, not by rank: scanned layers stack a LayerNorm scale into a 2-D [depth, D] array.
NO_DECAY_NAMES = frozenset({"bias", "scale", "cls_token", "mask_token", "pos_embed", "register_tokens"})


def weight_decay_mask(params: Any) -> Any:
    """Pytree of bools, True where weight decay applies (matrices and convolution kernels)."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: k[-1] not in NO_DECAY_NAMES for k in flat})


@dataclasses.dataclass(frozen=True)
class Schedule:
    peak_lr: float
    warmup_steps: int
    total_steps: int
    min_lr: float

    def __call__(self, step):
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=self.peak_lr, warmup_steps=self.warmup_steps,
            decay_steps=max(self.total_steps, self.warmup_steps + 1), end_value=self.min_lr,
        )(step)


def make_schedule(optim_cfg, *, global_batch: int, total_steps: int, steps_per_epoch: int) -> Schedule:
    """Peak lr: `optim.lr` if set, else `base_lr * global_batch / 256`. Warm-up in steps or epochs."""
    peak = optim_cfg.lr if optim_cfg.lr is not None else optim_cfg.base_lr * global_batch / 256.0
    if optim_cfg.warmup_steps is not None:
        warmup = int(optim_cfg.warmup_steps)
    else:
        warmup = int(round(optim_cfg.warmup_epochs * steps_per_epoch))
    return Schedule(float(peak), min(warmup, total_steps), int(total_steps), float(optim_cfg.min_lr))


def make_optimizer(optim_cfg, schedule: Schedule) -> optax.GradientTransformation:
    parts = []
    if optim_cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim_cfg.clip_norm))
    parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=1e-8,
                             weight_decay=optim_cfg.weight_decay, mask=weight_decay_mask))
    return optax.chain(*parts)

