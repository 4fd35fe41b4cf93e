"""What `sarmae-convert-sar1m` checks around the conversion itself: that the output is its own, that a shard
kept from an earlier run still is what its receipt says, and that no pair is dropped without a word.

  - `claim_output`: the output directory is new, or holds this converter's output of the same input and
    settings (resumed), or, with `overwrite`, an earlier conversion (replaced: written beside, then swapped
    in). Anything else, and the input itself, is refused (`ownership.OutputError`).
  - `verified_receipt`: a kept shard's bytes hash to its receipt's sha256, else it is rewritten; so the
    manifest's checksums always describe the files on disk.
  - `check_pairing_lists`: a SAR-1M-layout root (an OPT/ folder) must have paired.json; without it every
    optical image would be ignored.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from data_pipelines import ownership, records, shard_io

log = logging.getLogger("data_pipelines")
KIND = "sar1m conversion"
TOOL = "sarmae-convert-sar1m"


def _legacy(path: str) -> dict[str, Any] | bool:
    """A conversion written before ownership markers: a manifest with a `converter` entry, or shard receipts
    (`*.done.json`) of an unfinished run. With a manifest, its recorded input and settings are the identity."""
    try:
        manifest = records.read_manifest(path)
    except (FileNotFoundError, ValueError, OSError):
        return any(name.endswith(".done.json") for name in os.listdir(path))
    converter = manifest.get("converter")
    if not isinstance(converter, dict):
        return False
    return {"kind": KIND, "tool": TOOL, "identity": {"input": converter.get("input"),
                                                      "settings": converter.get("settings"),
                                                      "examples_per_shard": converter.get("examples_per_shard")}}


def claim_output(output_dir: str, input_root: str, settings: Mapping[str, Any], examples_per_shard: int, *,
                 overwrite: bool) -> ownership.Claim:
    """Decides where the conversion writes (see the module docstring). Raises ownership.OutputError."""
    identity = {"input": input_root, "settings": dict(settings), "examples_per_shard": examples_per_shard}
    return ownership.claim(output_dir, tool=TOOL, kind=KIND, identity=identity, inputs={"--input": input_root},
                           nested=True, overwrite=overwrite, resumable=True, legacy=_legacy, flag="--output")


def verified_receipt(path: str, receipt: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """`receipt` if shard `path` still hashes to the receipt's sha256 (and size), else None (rewrite it)."""
    if receipt is None:
        return None
    shard = receipt.get("shard", {})
    if not os.path.isfile(path):
        log.warning("%s: missing, though its receipt says it was written: writing it again", path)
        return None
    size = os.path.getsize(path)
    if size != shard.get("num_bytes"):
        log.warning("%s: %d bytes, its receipt says %s: not kept, writing it again", path, size, shard.get("num_bytes"))
        return None
    digest = shard_io.file_sha256(path)
    if digest != shard.get("sha256"):
        log.warning("%s: sha256 %s..., its receipt says %s...: changed since it was written, writing it again",
                    path, digest[:12], str(shard.get("sha256"))[:12])
        return None
    return receipt


def describe_lists(root: str) -> str:
    """What the root holds of the SAR-1M layout, for messages: 'OPT/: present; paired.json: absent; ...'."""
    parts = []
    for name in ("SAR", "OPT"):
        parts.append(f"{name}/: {'present' if os.path.isdir(os.path.join(root, name)) else 'absent'}")
    for name in ("paired.json", "unpaired.json"):
        path = os.path.join(root, name)
        if not os.path.exists(path):
            parts.append(f"{name}: absent")
            continue
        try:
            with open(path) as f:
                value = json.load(f)
            parts.append(f"{name}: {len(value)} entries" if isinstance(value, list) else f"{name}: not a list")
        except (OSError, json.JSONDecodeError):
            parts.append(f"{name}: unreadable")
    return "; ".join(parts)


def check_pairing_lists(root: str) -> None:
    """Raises ValueError for an OPT/ folder without paired.json: its optical images would all be ignored."""
    if os.path.isdir(os.path.join(root, "OPT")) and not os.path.exists(os.path.join(root, "paired.json")):
        raise ValueError(f"input {root}: has OPT/ but no paired.json, so every optical image would be ignored "
                         f"({describe_lists(root)}); add paired.json (a list of {{\"sar\": path, \"optical\": path}}), "
                         "or move OPT/ away to convert the SAR images unpaired")
