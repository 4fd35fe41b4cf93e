"""State-dict files in and out, and a strict reader that reports every missing, unexpected or mis-shaped tensor.

A state dict here is `dict[str, np.ndarray]` (float32 kept bit-exact; bf16/f16 tensors are widened to float32).
Files are local paths or gs:// URIs (etils.epath): a file in a bucket is read into memory whole, and a file
written anywhere is built in memory and then written in one piece (locally: a temporary file renamed over it).
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import pickle
import re
from typing import Iterable, Mapping

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

from sarmae_jax.runtime import paths

log = logging.getLogger("sarmae_jax")


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read `.pth`/`.pt`/`.bin` (torch, `weights_only`), `.safetensors`, or a directory holding `model.safetensors`.

    A torch checkpoint wrapping its weights in `model` / `state_dict` / `teacher` is unwrapped; the other
    entries of a training checkpoint (optimizer, scaler, epoch, args, ...) are read past and named in one log line.
    Unreadable, truncated or non-checkpoint files raise a ValueError naming the file and what it holds.
    """
    return load_with_info(path)[0]


def load_with_info(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """`load`, plus what a training checkpoint held beside its weights: `{"entry": "model", "read_past": [...],
    "epoch": 299, "args": {...}}` (`args`: the plain values of a pickled `argparse.Namespace`); `{}` otherwise."""
    path = paths.as_path(path)
    if path.is_dir():
        candidate = path / "model.safetensors"
        if not candidate.exists():
            raise FileNotFoundError(f"{path}: a directory without model.safetensors (expected a Hugging Face model directory)")
        path = candidate
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.name.endswith(".safetensors"):
        try:  # a local file is memory-mapped; a bucket's is read whole
            tensors = (safetensors.numpy.load(path.read_bytes()) if paths.is_gcs(path)
                       else safetensors.numpy.load_file(os.fspath(path)))
            return {k: np.asarray(v) for k, v in tensors.items()}, {}
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable .safetensors file (truncated or another format?): {e}") from e
    return _load_torch(path)


def torch_safe_globals() -> list:
    """What `torch.load(weights_only=True)` may unpickle beside tensors and plain Python values: the objects the
    released SARMAE trainers save in their checkpoints (`util/misc.py save_model`, `main_finetune.py`: the run's
    `argparse.Namespace` under `args`). Nothing else is unpickled."""
    return [argparse.Namespace]


def _load_torch(path) -> tuple[dict[str, np.ndarray], dict]:
    import torch

    obj = read_torch_file(path)
    key, sd = unwrap(obj, path)
    info: dict = {}
    if key is not None:
        passed = [describe_entry(k, v) for k, v in obj.items() if k != key]
        log.info("%s: %d tensors under %r%s", path, len(sd), key, "; read past: " + ", ".join(passed) if passed else "")
        info = {"entry": key, "read_past": passed}
        if isinstance(obj.get("epoch"), int):
            info["epoch"] = obj["epoch"]
        if isinstance(obj.get("args"), argparse.Namespace):
            info["args"] = {k: v for k, v in vars(obj["args"]).items() if _plain(v)}
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        if v.dtype in (torch.bfloat16, torch.float16):
            v = v.float()
        out[k] = v.detach().cpu().numpy()
    return out, info


def _plain(value) -> bool:
    """JSON-safe plain values (what a run's arguments are, and what metadata may keep of them)."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def read_torch_file(path: str | os.PathLike):
    """`torch.load(path, weights_only=True)` with `torch_safe_globals()` allowed; a ValueError saying what the
    file holds when it cannot be read that way. A file in a bucket is read into memory first."""
    import torch

    path = paths.as_path(path)
    if paths.is_gcs(path):
        data = path.read_bytes()
        head, size, source = data[:8], len(data), lambda: io.BytesIO(data)
    else:
        with open(path, "rb") as f:
            head = f.read(8)
        size, source = os.path.getsize(path), lambda: os.fspath(path)
    zipped, legacy = head.startswith(b"PK\x03\x04"), head[:1] == b"\x80"
    if not (zipped or legacy):
        raise ValueError(f"{path}: not a torch.save file: it starts with {head!r}, while torch.save writes a zip "
                         "archive (b'PK\\x03\\x04') or, before torch 1.6, a pickle (b'\\x80')")
    allowed = torch_safe_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(source(), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = {f"{g.__module__}.{g.__qualname__}" for g in allowed}
        try:
            found = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(source()) if g not in names]
        except (RuntimeError, ValueError):  # legacy files: torch cannot list them
            found = []
        # torch's own message advises weights_only=False (arbitrary code execution): never quoted; only the
        # global it refused is kept.
        found = found or re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f"pickled objects of {found}" if found else "pickled objects outside the allowlist"
        raise ValueError(
            f"{path}: holds {what} beside its tensors; only tensors, plain Python values and {sorted(names)} are "
            f"unpickled, since unpickling runs code (this project never loads with weights_only=False). If you "
            f"trust the file, save its state dict alone (torch.save(ckpt['model'], 'weights.pth')) and read that"
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
        kind = "a zip archive (torch.save's format)" if zipped else "a legacy torch.save pickle"
        cause = (str(e).splitlines() or [""])[0].split(". ")[0].strip() or type(e).__name__
        if "central directory" in cause:
            cause += " (a zip archive keeps its directory at the end: the file is cut short)"
        raise ValueError(f"{path}: not a readable PyTorch checkpoint: {kind} of {size} bytes that torch cannot "
                         f"read: {cause}") from e


def describe_entry(key: str, value) -> str:
    """A few words on a checkpoint entry read past (`optimizer (300 parameter states)`, `epoch=299`, ...)."""
    if isinstance(value, argparse.Namespace):
        shown = {k: getattr(value, k) for k in ("model", "input_size", "epochs") if hasattr(value, k)}
        return f"{key} (argparse.Namespace{': ' + ', '.join(f'{k}={v!r}' for k, v in shown.items()) if shown else ''})"
    if isinstance(value, Mapping) and "param_groups" in value and "state" in value:
        return f"{key} ({len(value['state'])} parameter states, {len(value['param_groups'])} groups)"
    if isinstance(value, (bool, int, float, str)) or value is None:
        return f"{key}={value!r}"
    if isinstance(value, Mapping):
        return f"{key} ({len(value)} entries)"
    return f"{key} ({type(value).__name__})"


def unwrap(obj, path: str) -> tuple[str | None, Mapping]:
    """`(key, tensors)`: the tensor dict inside a training checkpoint (`{"model": ...}`, `{"state_dict": ...}`, DINO's
    `{"teacher": ...}`), or `(None, obj)` for a bare state dict."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    for key in ("model", "state_dict", "teacher"):
        if key in obj and isinstance(obj[key], Mapping):
            return key, obj[key]
    return None, obj


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


def save(path: str | os.PathLike, sd: Mapping[str, np.ndarray], wrap_key: str | None = None) -> str:
    """Write `.safetensors` (numpy, no torch needed) or `.pth` (torch; `{wrap_key: sd}` when given), local or gs://."""
    path = paths.as_path(path)
    if not path.name.endswith((".safetensors", ".pth", ".pt", ".bin")):
        raise ValueError(f"{path}: unknown state-dict extension (expected .safetensors or .pth)")
    arrays = {k: np.ascontiguousarray(v) for k, v in sd.items()}
    if path.name.endswith(".safetensors"):
        data = safetensors.numpy.save(arrays, metadata={"format": "pt"})
    else:
        import torch

        tensors = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
        buffer = io.BytesIO()
        torch.save({wrap_key: tensors} if wrap_key else tensors, buffer)
        data = buffer.getvalue()
    paths.write_atomic(path, data)
    return str(path)


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
