"""The SARMAE objective: `mae_weight * MAE + sarc.weight * alignment`, for one batch.

Pure: `(params, teacher_params, inputs, is_paired, key) -> (loss, aux)`; the train step differentiates it.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sarmae_jax.data import preprocess
from sarmae_jax.models import anchor, mae, patches, sarmae
from sarmae_jax.models.sarmae import Modules
from sarmae_jax.sare import speckle
from sarmae_jax.training import dataset_config, paired_rows


def prepare_inputs(batch: dict[str, jax.Array], key: jax.Array, config) -> dict[str, jax.Array]:
    """Device batch -> normalised model inputs. SARE noises the encoder input; the target stays clean.

    `batch["sar"]` is `[B, H, W, C]` in the stored domain of `config.data.sar_units` (C = 1, repeated to
    the model's channels, or C = in_channels polarisations); SARE speckles it in that domain, one field
    per image shared by its channels. Returns `clean` and `noisy` `[B, H, W, in_channels]` (normalised
    SAR), `optical` `[B, H, W, 3]` (ImageNet-normalised), `speckled` `[B]` bool and `strength` `[B]`
    float32; `teacher_tokens` `[B, N, Dt]` passes through when the dataset stores precomputed teacher
    features.
    """
    channels = sarmae.input_channels(config.model)
    clean01 = preprocess.to_unit_interval(batch["sar"])
    noisy01, info = speckle.apply_sare_from_config(key, clean01, config.sare, dataset_config.stored_domain(config))
    extra = {"teacher_tokens": batch["teacher_tokens"]} if "teacher_tokens" in batch else {}
    return extra | {
        "clean": preprocess.normalize_sar(clean01, channels),
        "noisy": preprocess.normalize_sar(noisy01, channels),
        "optical": preprocess.normalize_optical(preprocess.to_unit_interval(batch["optical"])),
        "speckled": info["applied"],
        "strength": info["strength"],
    }


def total_loss(terms: dict[str, jax.Array], config, mae_share: jax.Array | float = 1.0,
               align_share: jax.Array | float = 1.0) -> jax.Array:
    """`mae_weight * MAE + sarc.weight * alignment`: the one place the loss terms are weighted.

    With gradient accumulation a micro-batch's means count `mae_share` (its masked patches / the
    batch's) and `align_share` (its paired samples / the batch's), so the micro-batches' parts sum to
    the full-batch loss, and so do their gradients. For a whole batch both shares are 1.
    """
    loss = config.loss.mae_weight * terms["loss_mae"] * mae_share
    if "loss_align" in terms:
        loss = loss + config.sarc.weight * terms["loss_align"] * align_share
    return loss


def reconstruct(params: dict[str, Any], inputs: dict[str, jax.Array], masking: mae.Masking, modules: Modules,
                drop_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Encoder on the visible patches of the speckled input, decoder back to every patch.

    Returns `(latent [B, 1 + K, D], pred [B, N, p*p*C])`; the loss and the picture grids both use it.
    """
    rngs = {"drop_path": drop_key} if drop_key is not None else {}
    latent = modules.encoder.apply({"params": params["encoder"]}, inputs["noisy"], masking.ids_keep, rngs=rngs)
    pred = modules.decoder.apply({"params": params["decoder"]}, latent, masking.ids_restore)
    return latent, pred


def forward(params: dict[str, Any], teacher_params: Any, inputs: dict[str, jax.Array], is_paired: jax.Array,
            mask_key: jax.Array | None, modules: Modules, config, drop_key: jax.Array | None = None,
            masking: mae.Masking | None = None, shares: tuple[jax.Array, jax.Array] | None = None,
            teacher_rows: tuple[int, int] | None = None):
    """One forward pass. Returns `(loss, aux)`; `aux` holds the loss terms and the reconstruction.

    The mask is drawn from `mask_key`, unless `masking` is given (gradient accumulation draws the
    full batch's masks once and hands each micro-batch its slice, with its `shares` of the batch,
    see `total_loss`). `teacher_rows = (G, C)`: the rows are ordered by `paired_rows.order`, and the
    teacher, anchor head and alignment loss run on the first C rows of each of G blocks only (the
    same loss: unpaired rows count nothing in it); None runs them on every row.
    """
    m = config.model
    b = inputs["noisy"].shape[0]
    if masking is None:
        masking = mae.random_masking(mask_key, b, patches.num_patches(m.image_size, m.patch_size), m.mask_ratio)
    latent, pred = reconstruct(params, inputs, masking, modules, drop_key)
    target = patches.patchify(inputs["clean"], m.patch_size)
    aux = {"loss_mae": mae.reconstruction_loss(pred, target, masking.mask, m.norm_pix_loss),
           "pred": pred, "mask": masking.mask}
    if modules.anchor_head is not None:
        rows = (lambda x: x) if teacher_rows is None else (lambda x: paired_rows.select(x, *teacher_rows))
        if teacher_rows is not None and teacher_rows[1] == 0:  # no paired rows at all (paired_share 0)
            loss_align, num_paired = jnp.zeros(()), jnp.zeros(())
        else:
            if "teacher_tokens" in inputs:  # precomputed offline (sarmae_jax/training/teacher_tokens.py)
                teacher_tokens = rows(inputs["teacher_tokens"]).astype(jnp.float32)
            else:
                teacher_tokens = modules.teacher.apply({"params": teacher_params}, rows(inputs["optical"]))
            teacher_visible = anchor.gather_patches(teacher_tokens, rows(masking.ids_keep))  # [R, K, Dt]
            student = modules.anchor_head.apply({"params": params["anchor_head"]}, rows(latent[:, 1:]))
            loss_align, num_paired = anchor.alignment_loss(student, teacher_visible, rows(is_paired))
        aux.update(loss_align=loss_align, paired_fraction=num_paired / b)
    loss = total_loss(aux, config, *(shares or (1.0, 1.0)))
    aux["loss"] = loss
    return loss, aux
