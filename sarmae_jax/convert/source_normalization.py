"""The input normalisation an imported checkpoint's weights were trained with (plain Python: no torch, no jax).

`sarmae-import` records it in the export's metadata under `normalization.sar`, where a run's export records
the project's SAR rule; the model card and every Hugging Face `preprocessor_config.json` exported from it then
tell a user what the weights expect. It comes from what the file itself says, never from the project's rule:

  - a Hugging Face directory with a `preprocessor_config.json`: its `image_mean`, `image_std`, `rescale_factor`;
  - the released SARMAE pre-training (`sar_encoder.*`, the `sar_alignment_ffn.` head, `optical_encoder.*`, or
    its `args` with `enable_sar_noise`): `(x - 0.5) / 0.5` on [0, 1] intensities, as the released
    `train_mae_contrastive.py` did with SARE; its no-SARE runs (`enable_sar_noise=False`) used ImageNet statistics;
  - earlier exports of this project (the `align_head.` head): the project's rule;
  - an ImageNet MAE training checkpoint (`args` of MAE's `main_pretrain.py`: `mask_ratio`, no SARMAE argument):
    ImageNet mean / std;
  - anything else (a bare encoder, timm or MAE state dict carries no record of its inputs): unknown, with the
    reason. `sarmae-import --source-normalization {imagenet,sarmae}` states it for such a file.

An entry is `{"input", "mean", "std", "channels", "source"}` (mean / std: one value, or one per RGB channel, on
[0, 1] inputs), or `{"known": False, "reason": ...}`.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from etils import epath

from data_pipelines import normalization

CHOICES = ("imagenet", "sarmae")  # what --source-normalization can state
_RELEASED_KEYS = ("sar_encoder.", "sar_alignment_ffn.", "optical_encoder.")
_SARMAE_ARGS = ("enable_sar_noise", "noise_ratio", "dinov3_pretrained", "alignment_loss_weight", "sar_pretrained")


def sarmae(source: str) -> dict:
    """The released SARMAE pre-training's rule (the project's): `(x - 0.5) / 0.5` on [0, 1] intensities."""
    return dict(normalization.NORMALIZATION["sar"], source=source)


def imagenet(source: str) -> dict:
    """ImageNet mean / std per RGB channel on [0, 1] values (MAE, timm's MAE-derived and DINO weights)."""
    return {"input": "RGB in [0, 1] (8-bit / 255); grayscale repeated to RGB", "mean": list(normalization.IMAGENET_MEAN),
            "std": list(normalization.IMAGENET_STD), "channels": "RGB", "source": source}


def unknown(reason: str) -> dict:
    return {"known": False, "reason": reason}


def is_known(entry: Mapping[str, Any]) -> bool:
    return entry.get("known", True) is not False


def read_hf_preprocessor(src: str) -> dict | None:
    """The `preprocessor_config.json` beside a Hugging Face directory's weights; None when there is none."""
    path = epath.Path(src) / "preprocessor_config.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file: {e}") from e


def of_import(src: str, keys: list[str], info: Mapping[str, Any], *, hf_preprocessor: Mapping[str, Any] | None = None,
              stated: str | None = None) -> dict:
    """The `normalization.sar` entry for weights imported from `src` (see the module docstring).

    `keys`: the file's state-dict keys (a leading `module.` removed); `info`: `state_dicts.load_with_info`'s
    record of what the file held beside them; `stated`: a value of `CHOICES` given by the user, which wins.
    """
    if stated is not None:
        if stated not in CHOICES:
            raise ValueError(f"--source-normalization {stated!r}: expected one of {CHOICES}")
        what = f"stated by the user (--source-normalization {stated}) for {src}"
        return imagenet(what) if stated == "imagenet" else sarmae(what)
    if hf_preprocessor is not None:
        return _from_hf(hf_preprocessor, src)
    args = info.get("args") or {}
    released_args = [k for k in _SARMAE_ARGS if k in args]
    if released_args or any(k.startswith(_RELEASED_KEYS) for k in keys):
        if args.get("enable_sar_noise") is False:
            return imagenet(f"{src}: a released SARMAE run without SARE (args.enable_sar_noise=False), which "
                            "normalised with ImageNet statistics")
        return sarmae(f"{src}: the released SARMAE pre-training")
    if any(k.startswith("align_head.") for k in keys):
        return sarmae(f"{src}: an export of sarmae-jax (its align_head. head)")
    if "mask_ratio" in args:
        return imagenet(f"{src}: an MAE pre-training checkpoint (its args: mask_ratio, no SARMAE argument), "
                        "trained on ImageNet statistics")
    return unknown(f"{src} holds weights and no record of the inputs they were trained on (no SARMAE keys or "
                   "arguments, no preprocessor_config.json); sarmae-import --source-normalization "
                   f"{{{','.join(CHOICES)}}} states it")


def _from_hf(pre: Mapping[str, Any], src: str) -> dict:
    where = f"{src}/preprocessor_config.json"
    if not pre.get("do_normalize", True):
        return unknown(f"{where}: do_normalize is false (the model is fed unnormalised values)")
    mean, std = pre.get("image_mean"), pre.get("image_std")
    if mean is None or std is None:
        raise ValueError(f"{where}: has no image_mean / image_std (keys: {sorted(pre)})")
    scale = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    if abs(scale * 255 - 1) > 1e-6:
        return unknown(f"{where}: rescale_factor {scale} is not 1/255; its mean / std are in other units")
    return {"input": "RGB in [0, 1] (8-bit / 255)", "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "channels": "RGB" if pre.get("do_convert_rgb", True) else "as given", "source": where}


def per_channel(entry: Mapping[str, Any], channels: int = 3) -> tuple[list[float], list[float]]:
    """(mean, std) of a known entry as one value per channel."""
    if not is_known(entry):
        raise ValueError(f"the normalisation is not known: {entry.get('reason')}")

    def expand(v):
        values = [float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)] * channels
        if len(values) != channels:
            raise ValueError(f"normalisation {entry}: {len(values)} values, expected 1 or {channels}")
        return values

    return expand(entry["mean"]), expand(entry["std"])
