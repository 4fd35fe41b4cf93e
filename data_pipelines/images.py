"""Reading image files into the record format's pixels: bit depth, channels, intensity scaling,
resize. Shared by the SAR-1M converter and the ImageFolder classification builder.

Rules (each recorded in the dataset manifest as written here):

* **Decoding** with Pillow: PNG, JPEG, TIFF; 1-bit, 8-bit, 16-bit (``I;16*``), 32-bit int
  (``I``) and 32-bit float (``F``) single-channel images; 8-bit L/LA/RGB/RGBA/P/CMYK. Alpha is
  dropped. Multi-channel 16-bit or float TIFFs are not decodable by Pillow and are reported
  (with the reason) rather than guessed at.
* **Intensity** in [0, 1]: 8-bit: value / 255. 16-bit, 32-bit int and float: ``INTENSITY_RULES``
  (default ``percentile``: lo = min(0, min x), hi = the 99.9th percentile, (x - lo) / (hi - lo)
  clipped to [0, 1] -- 16-bit SAR products rarely use the full range, and dividing by 65535
  leaves them black, the released code's trap). NaN/Inf and constant images are errors.
* **SAR channels**: one channel stored. 3-channel SAR whose channels are equal is grayscale
  saved as RGB: channel 0 is kept. Otherwise (pseudo-colour composites) the channel mean of the
  intensities is stored and counted (``color_averaged``).
* **Resize**: bilinear (Pillow, antialiased when shrinking) on float32 [0, 1] intensities to a
  fixed square size, aspect ratio not kept (the released recipe), then rounded to the stored
  integer type.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
INTENSITY_RULES = {
    "percentile": "8-bit: v/255. 16-bit/int/float: lo=min(0, min v), hi=P99.9(v); clip((v-lo)/(hi-lo), 0, 1)",
    "full_range": "8-bit: v/255. 16-bit: v/65535. float: must already lie in [0, 1]",
}
RESIZE_RULE = "bilinear (Pillow, antialiased) on [0,1] float intensities to {h}x{w}, aspect not kept; round to dtype"


class BadImage(ValueError):
    """An input image that cannot be used; the message is the reason (the caller adds the file)."""


def read_image(path: str) -> tuple[np.ndarray, int]:
    """Decodes an image file into `[H, W, C]` pixels with C in {1, 3}, alpha dropped.

    Returns:
      (pixels, bit_depth): pixels uint8 (bit depth 8 or 1), uint16 (16), int32 (32) or float32 (32).
    Raises:
      BadImage: unreadable, truncated or an unsupported mode.
    """
    try:
        with Image.open(path) as image:
            image.load()  # decodes fully: truncated files fail here, not later
            mode = image.mode
            if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
                return np.asarray(image).astype(np.uint16)[..., None], 16
            if mode == "I":
                return np.asarray(image, np.int32)[..., None], 32
            if mode == "F":
                return np.asarray(image, np.float32)[..., None], 32
            if mode in ("1", "L", "LA"):
                return np.asarray(image.convert("L"))[..., None], 1 if mode == "1" else 8
            if mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
                return np.asarray(image.convert("RGB")), 8
            raise BadImage(f"unsupported image mode {mode!r}")
    except BadImage:
        raise
    except Exception as e:  # noqa: BLE001 -- any decoder failure is this file's fault, reported with its type
        # Pillow raises OSError for truncated data ("image file is truncated"), SyntaxError for
        # some broken headers, UnidentifiedImageError for non-images, DecompressionBombError
        # for images over Image.MAX_IMAGE_PIXELS, and plugin-specific errors for odd TIFFs.
        raise BadImage(f"unreadable image ({type(e).__name__}: {e})") from None


def to_unit_intensity(pixels: np.ndarray, rule: str = "percentile", percentile: float = 99.9) -> np.ndarray:
    """Pixels `[H, W, C]` -> float32 intensities in [0, 1] by the documented `rule`.

    Raises:
      BadImage: NaN/Inf values, a constant 16-bit/float image, or (full_range) floats outside [0, 1].
    """
    if rule not in INTENSITY_RULES:
        raise ValueError(f"intensity rule {rule!r}: expected one of {sorted(INTENSITY_RULES)}")
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    x = pixels.astype(np.float32)
    if not np.isfinite(x).all():
        raise BadImage(f"{int((~np.isfinite(x)).sum())} NaN/Inf pixel values")
    if rule == "full_range":
        if pixels.dtype == np.uint16:
            return x / 65535.0
        if x.min() < 0 or x.max() > 1:
            raise BadImage(f"values in [{x.min():g}, {x.max():g}], outside [0, 1] (intensity rule full_range)")
        return x
    lo = min(0.0, float(x.min()))
    hi = float(np.percentile(x, percentile))
    if hi <= lo:
        hi = float(x.max())  # mostly-dark images: fall back to the maximum before giving up
    if hi <= lo:
        raise BadImage(f"constant image (all values {lo:g}); nothing to learn from")
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def sar_channel(intensity: np.ndarray) -> tuple[np.ndarray, bool]:
    """[H, W, C] intensities -> ([H, W, 1], averaged): grayscale-as-RGB keeps channel 0;
    true colour (pseudo-colour SAR composites) is averaged over channels (averaged=True)."""
    if intensity.shape[-1] == 1:
        return intensity, False
    if (intensity == intensity[..., :1]).all():
        return intensity[..., :1], False
    return intensity.mean(-1, keepdims=True), True


def resize_intensity(intensity: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W, C] float32 -> [h, w, C] float32 by the documented resize rule (bilinear, antialiased)."""
    h, w = size
    if intensity.shape[:2] == (h, w):
        return intensity
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(intensity[..., c]), "F").resize((w, h), Image.BILINEAR))
                for c in range(intensity.shape[-1])]
    return np.stack(channels, -1)


def quantise(intensity: np.ndarray, dtype) -> np.ndarray:
    """[0, 1] float intensities -> integer pixels of `dtype` (value / dtype max = intensity)."""
    top = np.iinfo(dtype).max
    return np.round(np.clip(intensity, 0.0, 1.0) * top).astype(dtype)
