"""Reconstruction and despeckling quality of the MAE on held-out synthetic scenes with known clean images.

For each speckle level L (looks; every image speckled, `speckle.apply_sare(..., prob=1.0,
strength_range=(L, L))`), the encoder sees the speckled image with the pre-training mask ratio and
the decoder predicts every patch. Measured against the clean image, on [0, 1] intensities:
  PSNR / SSIM of the speckled input (the baseline), of the full prediction, and PSNR on the masked
  patches only (pure reconstruction: those pixels were never seen);
  ENL (mean^2 / variance) of the speckled input and of the prediction over flat windows, i.e.
  windows whose CLEAN intensity varies by less than `flat_cv` (coefficient of variation): on such
  windows the input's ENL estimates L, and a despeckler should raise it.
Writes a PNG figure (per level: clean | speckled | visible | prediction) for a few scenes.

Multi-channel encoders (polarisations) and other stored domains: the speckle is applied in the stored
domain the pre-training's dataset recorded (`config.data.sar_units` of the export, `sare/domains.py`),
one field per image shared by its channels; PSNR is over all channels, SSIM the mean over channels, and
ENL and the flat windows are measured on the first channel converted to linear intensity. The figure
shows the first channel.
"""
from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from sarmae_jax.data import preprocess
from sarmae_jax.evaluate import encoder as encoder_lib
from sarmae_jax.models import mae, patches, sarmae
from sarmae_jax.runtime import paths
from sarmae_jax.sare import domains, speckle
from sarmae_jax.training import dataset_config


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.looks = (1.0, 2.0, 4.0, 16.0)
    c.num_images = 256  # from the dataset's test split (held out from pre-training)
    c.batch_size = 64
    c.mask_ratio = -1.0  # < 0: the checkpoint's pre-training ratio
    c.window = 8  # flat-window side in pixels (ENL)
    c.flat_cv = 0.05
    c.figure_images = 4
    c.seed = 0
    return c


# ------------------------------------------------------------------------------------- metrics
def psnr(x: jax.Array, y: jax.Array, data_range: float = 1.0) -> jax.Array:
    """Per image `[B]` PSNR in dB of `x` against reference `y`, both `[B, H, W, C]`."""
    mse = jnp.mean((x - y) ** 2, axis=(1, 2, 3))
    return 10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, 1e-12))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> jax.Array:
    g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    g /= g.sum()
    return jnp.asarray(np.outer(g, g), jnp.float32)


def ssim(x: jax.Array, y: jax.Array, data_range: float = 1.0) -> jax.Array:
    """Per image `[B]` SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
    valid convolution), single channel `[B, H, W, 1]`, H and W >= 11."""
    w = _gaussian_window()[:, :, None, None]

    def blur(a):
        return jax.lax.conv_general_dilated(a, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(axis=(1, 2, 3))


def flat_windows(clean: np.ndarray, window: int, max_cv: float) -> np.ndarray:
    """Boolean `[B, H/w, W/w]`: non-overlapping windows whose clean intensity has std/mean < max_cv."""
    b, h, w_, _ = clean.shape
    tiles = clean[:, : h - h % window, : w_ - w_ % window, 0].reshape(b, h // window, window, w_ // window, window)
    mean, std = tiles.mean(axis=(2, 4)), tiles.std(axis=(2, 4))
    return (mean > 1e-3) & (std < max_cv * mean)


def mean_enl(images: np.ndarray, flat: np.ndarray, window: int) -> float:
    """Mean over flat windows of `speckle.equivalent_number_of_looks` of `images [B, H, W, 1]`."""
    b, h, w_, _ = images.shape
    tiles = images[:, : h - h % window, : w_ - w_ % window, 0].reshape(b, h // window, window, w_ // window, window)
    tiles = np.moveaxis(tiles, 3, 2)[flat]  # [M, window, window]
    if not len(tiles):
        return float("nan")
    return float(np.mean(np.asarray(speckle.equivalent_number_of_looks(tiles, axis=(1, 2)))))


# ------------------------------------------------------------------------------------ evaluation
def _mae_modules(encoder: encoder_lib.Encoder):
    if "decoder" not in encoder.params:
        raise ValueError(f"{encoder.name}: no decoder parameters; reconstruction needs a full export "
                         "(a random-init baseline has none)")
    config = ml_collections.ConfigDict(encoder.metadata["config"])
    config.sarc.enabled = False  # the teacher plays no part in reconstruction
    return sarmae.build(config)


def evaluate(encoder: encoder_lib.Encoder, clean_pixels: np.ndarray, cfg: ml_collections.ConfigDict,
             figure_path: str | None) -> dict:
    """clean_pixels: `[N, S, S, 1]` integer held-out scenes at the model's input size.

    `figure_path=None` writes no figure (the in-loop evaluator on processes other than 0).
    """
    modules = _mae_modules(encoder)
    m = encoder.model_cfg
    mask_ratio = m.mask_ratio if cfg.mask_ratio < 0 else cfg.mask_ratio
    n_patches = patches.num_patches(m.image_size, m.patch_size)
    clean_pixels = clean_pixels[: cfg.num_images]
    channels, shown = sarmae.input_channels(m), clean_pixels.shape[-1]
    domain = dataset_config.stored_domain(ml_collections.ConfigDict(encoder.metadata.get("config", {})))

    def stored01(x):  # model output -> [B, H, W, shown] stored values in [0, 1]
        return jnp.clip(x[..., :shown] * preprocess.SAR_STD + preprocess.SAR_MEAN, 0.0, 1.0)

    def channel_ssim(x, y):
        return jnp.mean(jnp.stack([ssim(x[..., c:c + 1], y[..., c:c + 1]) for c in range(shown)]), axis=0)

    @jax.jit
    def run(params, pixels, key, looks):
        clean = preprocess.to_unit_interval(pixels)
        k_noise, k_mask = jax.random.split(key)
        noisy, _ = speckle.apply_sare(k_noise, clean, model="gamma_intensity", prob=1.0, strength_range=(looks, looks),
                                      domain=domain)
        masking = mae.random_masking(k_mask, pixels.shape[0], n_patches, mask_ratio)
        latent = modules.encoder.apply({"params": params["encoder"]}, preprocess.normalize_sar(noisy, channels),
                                       masking.ids_keep)
        pred = modules.decoder.apply({"params": params["decoder"]}, latent, masking.ids_restore)
        recon = stored01(patches.unpatchify(pred, m.patch_size, channels))
        hidden = patches.unpatchify(jnp.repeat(masking.mask[:, :, None], m.patch_size**2, axis=2), m.patch_size, 1)
        masked_mse = jnp.sum(hidden * (recon - clean) ** 2, axis=(1, 2, 3)) / jnp.maximum(hidden.sum(axis=(1, 2, 3)) * shown, 1)
        return {"clean": clean, "noisy": noisy, "recon": recon, "hidden": hidden,
                "psnr_noisy": psnr(jnp.clip(noisy, 0, 1), clean), "psnr_recon": psnr(recon, clean),
                "psnr_recon_masked": -10.0 * jnp.log10(jnp.maximum(masked_mse, 1e-12)),
                "ssim_noisy": channel_ssim(jnp.clip(noisy, 0, 1), clean), "ssim_recon": channel_ssim(recon, clean)}

    params = {"encoder": encoder.params["encoder"], "decoder": encoder.params["decoder"]}
    clean01 = clean_pixels.astype(np.float32) / np.iinfo(clean_pixels.dtype).max
    flat = flat_windows(_intensity(clean01, domain), cfg.window, cfg.flat_cv)
    levels, figure_rows = [], []
    for li, looks in enumerate(cfg.looks):
        outs = []
        for start, stop in encoder_lib.batches(len(clean_pixels), cfg.batch_size):
            key = jax.random.fold_in(jax.random.key(cfg.seed), li * 100003 + start)
            outs.append(jax.device_get(run(params, clean_pixels[start:stop], key, float(looks))))
        cat = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        levels.append({"looks": float(looks),
                       **{k: float(np.mean(cat[k])) for k in ("psnr_noisy", "psnr_recon", "psnr_recon_masked",
                                                                "ssim_noisy", "ssim_recon")},
                       "enl_noisy": mean_enl(_intensity(cat["noisy"], domain), flat, cfg.window),
                       "enl_recon": mean_enl(_intensity(cat["recon"], domain), flat, cfg.window)})
        figure_rows.append(cat)
    if figure_path is not None:
        save_figure(figure_path, figure_rows, cfg.looks, cfg.figure_images)
    return {"levels": levels, "num_images": len(clean_pixels), "mask_ratio": mask_ratio, "window": cfg.window,
            "flat_cv": cfg.flat_cv, "flat_windows": int(flat.sum()), "figure": str(figure_path),
            "speckle_model": "gamma_intensity"}


def _intensity(stored: np.ndarray, domain: domains.StoredDomain) -> np.ndarray:
    """Stored values `[B, H, W, C]` -> the first channel's linear intensity `[B, H, W, 1]` (ENL's quantity)."""
    first = stored[..., :1]
    return first if domain.domain == "intensity" else np.asarray(domains.to_intensity(first, domain))


def save_figure(path: str, rows: list[dict], looks, count: int) -> None:
    """PNG: one row per (level, scene): clean | speckled | visible to encoder | prediction.

    Displayed as amplitude (sqrt of intensity), as SAR viewers do, so dark scenes stay readable.
    """
    tiles = []
    for level, cat in zip(looks, rows):
        for i in range(min(count, len(cat["clean"]))):
            noisy = np.clip(cat["noisy"][i], 0, 1)
            visible = noisy * (1 - cat["hidden"][i]) + 0.25 * cat["hidden"][i]
            row = np.concatenate([cat["clean"][i][..., :1], noisy[..., :1], visible[..., :1], cat["recon"][i][..., :1]],
                                 axis=1)[..., 0]
            tiles.append((level, np.sqrt(np.clip(row, 0, 1))))
    s = rows[0]["clean"].shape[1]
    scale = max(1, 128 // s)
    label_w, header = 60, 16
    canvas = Image.new("L", (label_w + 4 * s * scale, header + len(tiles) * s * scale), 255)
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(("clean", "speckled", "visible", "prediction")):
        draw.text((label_w + j * s * scale + 4, 2), name, fill=0)
    for r, (level, tile) in enumerate(tiles):
        img = Image.fromarray((tile * 255).astype(np.uint8)).resize((4 * s * scale, s * scale), Image.NEAREST)
        canvas.paste(img, (label_w, header + r * s * scale))
        draw.text((4, header + r * s * scale + 4), f"L={level:g}", fill=0)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    paths.write_atomic(paths.as_path(path), buffer.getvalue())
