"""The one normalisation rule of sarmae-jax, recorded in every dataset manifest and every checkpoint.

SAR: integer pixels / dtype max = intensity in [0, 1], then `(x - 0.5) / 0.5` (the released
pre-training's), grayscale repeated to the model's input channels. Optical (the teacher's input):
uint8 / 255 = RGB in [0, 1], then ImageNet mean/std (what DINO-family teachers were trained on).

Written under the key `"normalization"`; readers also accept the key `"normalisation"` of manifests
and exports written before that key was settled.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SAR_MEAN, SAR_STD = 0.5, 0.5  # on [0, 1] intensities -> [-1, 1]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

KEY = "normalization"
_LEGACY_KEY = "normalisation"

NORMALIZATION = {
    "sar": {"input": "intensity in [0, 1] (integer pixels / dtype max)", "mean": SAR_MEAN, "std": SAR_STD,
            "channels": "grayscale repeated to the model's input channels"},
    "optical": {"input": "RGB in [0, 1] (uint8 / 255)", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
}


def read(metadata: Mapping[str, Any], source: str) -> Any:
    """The normalisation recorded in a manifest or a checkpoint's metadata (either spelling of the key)."""
    for key in (KEY, _LEGACY_KEY):
        if key in metadata:
            return metadata[key]
    raise ValueError(f"{source}: no {KEY!r} entry (keys: {sorted(metadata)}); it was not written by sarmae-jax")
