"""The train step: `(state, batch, teacher_params) -> (state, metrics)`, and the picture of what it saw.

Pure functions of their inputs, jitted with explicit shardings by `state.TrainParts.jit_step`. Speckle,
masks and drop-path are drawn from `(config.seed, step)`, so a step is reproducible from the config.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sarmae_jax.data import preprocess
from sarmae_jax.models import mae, patches, sarmae
from sarmae_jax.runtime import sharding
from sarmae_jax.training import objective, optim


def step_keys(seed: int, step: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(speckle, masking, drop-path) keys for `step`: a run is reproducible from its config alone."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    k_noise, k_mask, k_drop = jax.random.split(key, 3)
    return k_noise, k_mask, k_drop


def micro_batches(tree: Any, num: int) -> Any:
    """`[B, ...]` leaves -> `[num, B / num, ...]`, micro-batch j holding rows j, j + num, j + 2 num, ...

    Strided, not contiguous: with the batch split over devices along its first axis, every micro-batch
    then keeps an equal share on every device (a contiguous slice would sit on a few devices only).
    """
    def split(x):
        return jnp.swapaxes(x.reshape(x.shape[0] // num, num, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, tree)


def make_train_step(modules: sarmae.Modules, tx: optax.GradientTransformation, config, schedule):
    """`(state, batch, teacher_params) -> (state, metrics)`; pure, to be jitted with shardings.

    Activation sharding annotations in the model are resolved by `config.mesh.rules` at trace time.
    With `train.grad_accum_steps = A > 1` the batch runs as A micro-batches in a `lax.scan`; speckle and
    masks are drawn for the whole batch first and sliced, so the update equals the full-batch one up
    to float rounding (drop-path, off for MAE pre-training, draws per micro-batch instead).
    """
    # The update hands the clip its gradient norm (`global_norm=`); a transformation that takes no
    # extra arguments is wrapped to ignore it.
    tx = optax.with_extra_args_support(tx)
    uses_drop_path = config.model.drop_path_rate > 0
    rules = sharding.rules_from_config(config.mesh.rules)
    accum = config.train.grad_accum_steps
    m = config.model
    num_patches = patches.num_patches(m.image_size, m.patch_size)

    def train_step(state, batch: dict[str, jax.Array], teacher_params: Any):
        with nn.logical_axis_rules(rules):
            return _train_step(state, batch, teacher_params)

    def micro_loss(params, teacher_params, micro, shares, drop_key):
        inputs, masking, is_paired = micro
        loss, aux = objective.forward(params, teacher_params, inputs, is_paired, None, modules, config,
                                      drop_key=drop_key, masking=masking, shares=shares)
        aux = {k: v for k, v in aux.items() if k not in ("pred", "mask")}
        return loss, aux

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def loss_and_grads(params, teacher_params, inputs, masking, is_paired, k_drop):
        drop = k_drop if uses_drop_path else None
        total_masked = jnp.sum(masking.mask)
        total_paired = jnp.sum(is_paired.astype(jnp.float32))
        if accum == 1:
            shares = (jnp.ones(()), jnp.ones(()))
            (loss, aux), grads = grad_fn(params, teacher_params, (inputs, masking, is_paired), shares, drop)
            return loss, aux, grads

        def body(carry, xs):
            grads_sum, loss_sum, terms_sum = carry
            index, micro = xs
            _, micro_masking, micro_paired = micro
            shares = (jnp.sum(micro_masking.mask) / total_masked,
                      jnp.sum(micro_paired.astype(jnp.float32)) / jnp.maximum(total_paired, 1.0))
            drop_key = jax.random.fold_in(drop, index) if drop is not None else None
            (loss, aux), grads = grad_fn(params, teacher_params, micro, shares, drop_key)
            terms = {"loss_mae": aux["loss_mae"] * shares[0]}
            if "loss_align" in aux:
                terms["loss_align"] = aux["loss_align"] * shares[1]
            return (jax.tree.map(jnp.add, grads_sum, grads), loss_sum + loss,
                    jax.tree.map(jnp.add, terms_sum, terms)), aux

        zeros = jax.tree.map(jnp.zeros_like, params)
        terms0 = {"loss_mae": jnp.zeros(())}
        if modules.anchor_head is not None:
            terms0["loss_align"] = jnp.zeros(())
        xs = (jnp.arange(accum), micro_batches((inputs, masking, is_paired), accum))
        (grads, loss, terms), per_micro = jax.lax.scan(body, (zeros, jnp.zeros(()), terms0), xs)
        aux = jax.tree.map(lambda v: jnp.mean(v, axis=0), per_micro)  # other diagnostics: micro-batch means
        aux.update(terms, loss=loss)
        if "paired_fraction" in aux:
            aux["paired_fraction"] = total_paired / is_paired.shape[0]
        return loss, aux, grads

    def _train_step(state, batch: dict[str, jax.Array], teacher_params: Any):
        k_noise, k_mask, k_drop = step_keys(config.seed, state.step)
        inputs = objective.prepare_inputs(batch, k_noise, config)
        masking = mae.random_masking(k_mask, batch["sar"].shape[0], num_patches, m.mask_ratio)
        loss, aux, grads = loss_and_grads(state.params, teacher_params, inputs, masking, batch["is_paired"], k_drop)
        grad_norm = optax.tree.norm(grads)
        # A non-finite loss or gradient must not poison the parameters: keep the old state, count it.
        # A `cond`, not a per-leaf `where`: the update runs only when it is kept, and a `where` would
        # read and write params and moments once more (+60% optimizer time on CPU, memory-bound).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply_update(operands):
            params, opt_state, grads, grad_norm = operands
            # The clip (optim.clip_by_global_norm) reuses this norm rather than reading the gradients again.
            updates, opt_state = tx.update(grads, opt_state, params, global_norm=grad_norm)
            return optax.apply_updates(params, updates), opt_state

        new_params, new_opt_state = jax.lax.cond(
            finite, apply_update, lambda operands: operands[:2], (state.params, state.opt_state, grads, grad_norm))
        new_state = state.replace(
            step=state.step + 1,
            params=new_params,
            opt_state=new_opt_state,
            skipped=state.skipped + (~finite).astype(jnp.int32),
            skipped_in_a_row=jnp.where(finite, 0, state.skipped_in_a_row + 1),
        )
        out = dict(aux)
        # The rate this step's update applied: the schedule at the optimizer's own count (which skipped
        # updates do not advance), not at `state.step`. A skipped step logs the rate its update would have used.
        count = optim.schedule_count(state.opt_state)
        if count is not None:
            out["lr"] = schedule(count)
        out.update(grad_norm=grad_norm, step_finite=finite.astype(jnp.float32),
                   skipped_in_a_row=new_state.skipped_in_a_row,
                   speckled_fraction=jnp.mean(inputs["speckled"].astype(jnp.float32)))
        return new_state, out

    return train_step


PICTURE_COLUMNS = ("clean", "speckled input", "visible to encoder", "reconstruction", "reconstruction + visible")


def make_visualize(modules: sarmae.Modules, config):
    """`(params, batch, step) -> tuple of [B, H, W, 1] images in [0, 1]`, one per `PICTURE_COLUMNS` entry:
    what the step at `step` saw and made.

    Same keys and the same reconstruction (`objective.reconstruct`) as the train step, so the picture
    shows that step's speckle, mask and prediction.
    """
    m = config.model

    def visualize(params, batch, step):
        k_noise, k_mask, _ = step_keys(config.seed, step)
        inputs = objective.prepare_inputs(batch, k_noise, config)
        masking = mae.random_masking(k_mask, inputs["noisy"].shape[0], patches.num_patches(m.image_size, m.patch_size),
                                     m.mask_ratio)
        _, pred = objective.reconstruct(params, inputs, masking, modules)
        pixels = m.patch_size**2 * m.in_channels
        masked = patches.unpatchify(jnp.repeat(masking.mask[:, :, None], pixels, axis=2), m.patch_size, m.in_channels)
        masked = masked[..., :1]  # [B, H, W, 1], 1 where the patch was hidden
        noisy = preprocess.denormalize_sar(inputs["noisy"])
        recon = preprocess.denormalize_sar(patches.unpatchify(pred, m.patch_size, m.in_channels))
        return (  # a tuple: pytrees sort dict keys, and the column order matters to a reader
            preprocess.denormalize_sar(inputs["clean"]),
            noisy,
            noisy * (1 - masked) + 0.5 * masked,  # hidden patches grey
            recon,
            recon * masked + noisy * (1 - masked),
        )

    return visualize
