"""State-dict files in and out, and a strict reader that reports every missing, unexpected or mis-shaped tensor.

A state dict here is `dict[str, np.ndarray]` (float32 kept bit-exact; bf16/f16 tensors are widened to float32).
"""
from __future__ import annotations

import os
import pickle
import zipfile
from typing import Iterable, Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file


def load(path: str) -> dict[str, np.ndarray]:
    """Read `.pth`/`.pt`/`.bin` (torch, `weights_only`), `.safetensors`, or a directory holding `model.safetensors`.

    A torch checkpoint wrapping its weights in `model` / `state_dict` / `teacher` is unwrapped.
    Unreadable, truncated or non-checkpoint files raise a ValueError naming the file.
    """
    if os.path.isdir(path):
        candidate = os.path.join(path, "model.safetensors")
        if not os.path.exists(candidate):
            raise FileNotFoundError(f"{path}: a directory without model.safetensors (expected a Hugging Face model directory)")
        path = candidate
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.endswith(".safetensors"):
        try:
            return {k: np.asarray(v) for k, v in load_file(path).items()}
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable .safetensors file (truncated or another format?): {e}") from e
    return _load_torch(path)


def _load_torch(path: str) -> dict[str, np.ndarray]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated, or not a torch.save file): {e}") from e
    obj = unwrap(obj, path)
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        if v.dtype in (torch.bfloat16, torch.float16):
            v = v.float()
        out[k] = v.detach().cpu().numpy()
    return out


def unwrap(obj, path: str) -> Mapping:
    """The tensor dict inside a training checkpoint (`{"model": ...}`, `{"state_dict": ...}`, DINO's `{"teacher": ...}`)."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    for key in ("model", "state_dict", "teacher"):
        if key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    return obj


def strip_prefixes(sd: Mapping[str, np.ndarray], prefixes: Iterable[str]) -> dict[str, np.ndarray]:
    """Remove any of `prefixes` from the start of each key, repeatedly (`module.sar_encoder.x` -> `x`)."""
    out = {}
    for key, value in sd.items():
        stripped = True
        while stripped:
            stripped = False
            for p in prefixes:
                if key.startswith(p):
                    key, stripped = key[len(p):], True
        if key in out:
            raise ValueError(f"two tensors map to {key!r} once prefixes {list(prefixes)} are removed")
        out[key] = value
    return out


def save(path: str, sd: Mapping[str, np.ndarray], wrap_key: str | None = None) -> str:
    """Write `.safetensors` (numpy, no torch needed) or `.pth` (torch; `{wrap_key: sd}` when given)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in sd.items()}
    if path.endswith(".safetensors"):
        save_file(arrays, path, metadata={"format": "pt"})
    elif path.endswith((".pth", ".pt", ".bin")):
        import torch

        tensors = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
        torch.save({wrap_key: tensors} if wrap_key else tensors, path)
    else:
        raise ValueError(f"{path}: unknown state-dict extension (expected .safetensors or .pth)")
    return path


class StrictReader:
    """Takes tensors out of a state dict by name and shape; `finish()` raises one report of every problem.

    Never a partial load: a missing key, a shape mismatch or a leftover (unexpected) key is an error.
    """

    def __init__(self, sd: Mapping[str, np.ndarray], source: str):
        self.sd = dict(sd)
        self.source = source
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.wrong: list[str] = []

    def has(self, key: str) -> bool:
        return key in self.sd

    def take(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The tensor at `key`, float32; a zero placeholder (and a recorded error) when missing or mis-shaped."""
        if key not in self.sd:
            self.missing.append(f"{key} {tuple(shape) if shape else ''}".rstrip())
            return np.zeros(shape or (), np.float32)
        self.used.add(key)
        value = np.asarray(self.sd[key])
        if shape is not None and tuple(value.shape) != tuple(shape):
            self.wrong.append(f"{key} has {tuple(value.shape)}, expected {tuple(shape)}")
            return np.zeros(shape, np.float32)
        return value.astype(np.float32, copy=False)

    def ignore(self, keys: Iterable[str]) -> None:
        self.used.update(k for k in keys if k in self.sd)

    def finish(self, what: str) -> None:
        unexpected = sorted(set(self.sd) - self.used)
        if self.missing or self.wrong or unexpected:
            lines = [f"{self.source}: does not match {what}:"]
            lines += [f"  missing:    {k}" for k in self.missing]
            lines += [f"  shape:      {k}" for k in self.wrong]
            lines += [f"  unexpected: {k} {tuple(np.shape(self.sd[k]))}" for k in unexpected]
            raise ValueError("\n".join(lines))
