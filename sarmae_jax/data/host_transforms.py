"""Geometric transforms of a batch on the host: plain resize (the released recipe), or random
resized crop and horizontal flip (optional), applied identically to SAR and its optical pair.

SAR and optical are geometrically aligned; SARC pulls each SAR patch towards the teacher's token
of the same optical patch, so every crop box and flip is drawn once per example and applied to
both images. Pixels stay integers (uint8 / uint16): the conversion to [0, 1] runs on device.

Resampling is Pillow's bilinear filter with antialiasing when shrinking (``Image.resize`` with
``box=`` crops and resizes in one pass). Randomness comes from the caller's
``np.random.Generator``s, one per example -- the pipeline seeds each with (seed, global batch
position, row of the global batch), so a resumed iterator, on any number of processes, draws the
same box for the same example.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

# Pillow modes for the integer pixel types the records hold.
_MODES = {(np.dtype(np.uint8), 1): "L", (np.dtype(np.uint16), 1): "I;16", (np.dtype(np.uint8), 3): "RGB"}


def resize_image(pixels: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float] | None = None,
                 ) -> np.ndarray:
    """Bilinear resize of one image `[H, W, C]` (uint8 C in {1, 3}, or uint8 / uint16 SAR with any C) to
    `size` (h, w). SAR channels other than 1 (polarisations) are resized one by one, each as C = 1.

    `box` = (left, upper, right, lower) in pixels selects the region to resize (a crop).
    """
    mode = _MODES.get((pixels.dtype, pixels.shape[-1]))
    if mode is None and pixels.ndim == 3 and (pixels.dtype, 1) in _MODES:
        return np.concatenate([resize_image(pixels[..., c:c + 1], size, box) for c in range(pixels.shape[-1])],
                              axis=-1)
    if mode is None:
        raise ValueError(f"resize_image: pixels {pixels.shape} {pixels.dtype}: expected [H, W, C] uint8/uint16 "
                         "or [H, W, 3] uint8")
    # Pillow infers `mode` from the array (L, I;16, RGB); passing it explicitly is refused for uint16 by Pillow 12.
    image = Image.fromarray(np.ascontiguousarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels))
    assert image.mode == mode, (image.mode, mode)
    out = np.asarray(image.resize((size[1], size[0]), Image.BILINEAR, box=box))
    return out.reshape(size[0], size[1], pixels.shape[-1])


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float],
                            ratio: tuple[float, float], attempts: int = 10) -> tuple[float, float, float, float]:
    """A crop box (left, upper, right, lower) covering a random `scale` share of the area with a
    log-uniform aspect `ratio` (w / h); after `attempts` misses, the largest centred box whose
    ratio is within range (the usual Inception-style rule)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return (left, top, left + w, top + h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return (left, top, left + w, top + h)


def resize_batch(batch: dict[str, np.ndarray], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Plain resize of `sar` [b, H, W, C] and `optical` [b, H, W, 3] to `size` (aspect not kept).
    A no-op when the images already have that size; unpaired optical rows stay zero."""
    if batch["sar"].shape[1:3] == tuple(size):
        return batch
    return _apply(batch, size, boxes=None, flips=None)


def crop_flip_batch(batch: dict[str, np.ndarray], size: tuple[int, int], rngs: Sequence[np.random.Generator], *,
                    scale: tuple[float, float], ratio: tuple[float, float], flip: bool) -> dict[str, np.ndarray]:
    """Random resized crop to `size` (and a horizontal flip with probability 0.5 if `flip`), one
    box and flip per example, shared by its SAR and optical images; example i draws from `rngs[i]`."""
    b, height, width = batch["sar"].shape[:3]
    if len(rngs) != b:
        raise ValueError(f"crop_flip_batch: {len(rngs)} generators for a batch of {b}: expected one per example")
    boxes = [random_resized_crop_box(rng, height, width, scale, ratio) for rng in rngs]
    flips = np.array([rng.random() < 0.5 for rng in rngs]) if flip else None
    return _apply(batch, size, boxes=boxes, flips=flips)


def _apply(batch, size, boxes, flips):
    out = dict(batch)
    for key in ("sar", "optical"):
        images = batch[key]
        result = np.zeros((images.shape[0], *size, images.shape[-1]), images.dtype)
        for i in range(images.shape[0]):
            if key == "optical" and not batch["is_paired"][i]:
                continue  # zeros stay zeros
            result[i] = resize_image(images[i], size, None if boxes is None else boxes[i])
            if flips is not None and flips[i]:
                result[i] = result[i, :, ::-1]
        out[key] = result
    return out
