"""The encoder under evaluation: restored from a params-only export (or explicitly random), checked
strictly against the model its config describes, and run over images in batches.

The model description always comes from the export's metadata (`metadata["config"]["model"]`), so
an evaluation never guesses the architecture; `random_init=True` keeps that description and
replaces the trained parameters by a fresh initialisation (the baseline every table should show).
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from sarmae_jax.data import preprocess
from sarmae_jax.models import param_trees, sarmae, vit
from sarmae_jax.runtime import paths
from sarmae_jax.training import checkpoint

log = logging.getLogger("sarmae_jax")


class Encoder(NamedTuple):
    model_cfg: ml_collections.ConfigDict  # the pre-training `model` section
    params: dict[str, Any]  # full export tree: {"encoder": ..., "decoder": ..., ...} (random: encoder only)
    metadata: dict[str, Any]
    name: str  # what the results call it: the export path, or "random-init (seed S) of <path>"

    @property
    def width(self) -> int:
        return vit.VIT_SIZES[self.model_cfg.size]["width"]


def init_encoder_params(model_cfg, key: jax.Array) -> dict[str, Any]:
    """Fresh (unboxed) encoder parameters for `model_cfg`, as pre-training initialises them."""
    s = model_cfg.image_size
    images = jnp.zeros((1, s, s, sarmae.input_channels(model_cfg)), jnp.float32)
    return nn.unbox(sarmae.build_encoder(model_cfg).init(key, images)["params"])


def load(path: str, *, random_init: bool = False, seed: int = 0, expected_size: str = "") -> Encoder:
    """Restore `path` (an export directory) onto the default device, or randomly initialise its model.

    expected_size: "" accepts any size; otherwise the export must be a ViT of that size
    (`vit.VIT_SIZES` key), else ValueError naming both.
    Raises ValueError when the stored encoder does not match its own config (names and shapes).
    """
    if not path:
        raise ValueError("config.checkpoint is empty: give an export directory (<workdir>/export); with "
                         "--random_init it supplies the model description only")
    if not paths.as_path(path).exists():
        raise FileNotFoundError(f"config.checkpoint {path} does not exist: give an export directory "
                                "(<workdir>/export of a finished sarmae-train run, or the output of sarmae-import)")
    params, metadata = checkpoint.load_export(path, device=jax.devices()[0])
    model_cfg = ml_collections.ConfigDict(metadata["config"]["model"])
    if expected_size and model_cfg.size != expected_size:
        got = vit.VIT_SIZES.get(model_cfg.size, {})
        raise ValueError(f"{path}: checkpoint is a ViT {model_cfg.size!r} (width {got.get('width')}, depth "
                         f"{got.get('depth')}), but config.model_size expects {expected_size!r} "
                         f"{vit.VIT_SIZES.get(expected_size)}")
    if "encoder" not in params:
        raise ValueError(f"{path}: export holds parts {sorted(params)}, no 'encoder'")
    expected = jax.eval_shape(lambda k: init_encoder_params(model_cfg, k), jax.random.key(0))
    param_trees.check_tree_matches(params["encoder"], expected, what=f"{path} encoder (metadata says ViT {model_cfg.size!r})")
    if random_init:
        fresh = init_encoder_params(model_cfg, jax.random.key(seed))
        log.warning("evaluating a RANDOMLY INITIALISED encoder (seed %d) with the architecture of %s", seed, path)
        return Encoder(model_cfg, {"encoder": fresh}, metadata, f"random-init (seed {seed}) of {path}")
    return Encoder(model_cfg, params, metadata, path)


def data_channels(metadata: dict[str, Any]) -> tuple[int, list[str]]:
    """(count, names) of the SAR channels the encoder was pre-trained on: its run's `config.data.sar_units`;
    (1, ["SAR"]) for exports written before that entry (single-channel data)."""
    units = metadata.get("config", {}).get("data", {}).get("sar_units") or {"channels": ["SAR"]}
    return len(units["channels"]), list(units["channels"])


def check_data_channels(encoder: Encoder, images: np.ndarray, source: str) -> None:
    """Evaluation data must hold the channels pre-training saw (a grey image is not a VV + VH pair, and an
    RGB picture is not repeated grey). Raises ValueError naming `source`, both counts and the channel names."""
    count, names = data_channels(encoder.metadata)
    if images.shape[-1] != count:
        raise ValueError(f"{source}: SAR images have {images.shape[-1]} channel(s) (shape {tuple(images.shape)}), but "
                         f"{encoder.name} was pre-trained on {count} ({', '.join(names)}); evaluate it on data stored "
                         "as its pre-training data was")


def check_data_units(encoder: Encoder, units: dict[str, Any] | None, source: str) -> None:
    """Decibel data must be stored as the pre-training data was: both in dB over the same range, or neither in
    dB (the encoder's inputs are the stored values: another dB mapping, or linear values for a dB-trained encoder,
    would be other numbers for the same backscatter). `units`: the evaluation data's `sar_units` (None: unknown,
    not checked). Raises ValueError naming `source` and both entries."""
    trained = encoder.metadata.get("config", {}).get("data", {}).get("sar_units")
    if units is None or trained is None:
        return
    db = (trained.get("domain") == "db", units.get("domain") == "db")
    if db == (False, False):
        return
    if db != (True, True) or [float(v) for v in trained["db_range"]] != [float(v) for v in units["db_range"]]:
        raise ValueError(f"{source}: SAR stored as {units.get('domain')} {units.get('db_range', '')}, but "
                         f"{encoder.name} was pre-trained on {trained.get('domain')} {trained.get('db_range', '')}; "
                         "store the evaluation data in the pre-training data's units (for dB: the same db_range)")


def normalised_inputs(pixels: jax.Array, in_channels: int | None) -> jax.Array:
    """`[B, H, W, C]` integer SAR pixels -> `[B, H, W, in_channels]` model input: the one normalisation, as in
    pre-training (`objective.prepare_inputs`). C = 1 (grey, repeated to the model's channels) or C = in_channels
    (polarisations, taken as they are); anything else is an error naming both counts."""
    in_channels = sarmae.DEFAULT_IN_CHANNELS if in_channels is None else in_channels
    if pixels.shape[-1] not in (1, in_channels):
        raise ValueError(f"SAR images have {pixels.shape[-1]} channels (shape {tuple(pixels.shape)}), but the encoder "
                         f"takes {in_channels}: expected 1 channel (grey, repeated) or exactly {in_channels}")
    return preprocess.normalize_sar(preprocess.to_unit_interval(pixels), in_channels)


def pool(tokens: jax.Array, how: str) -> jax.Array:
    """`[B, 1+N, D]` -> `[B, D]`: "gap" = mean of the patch tokens (the fine-tuning protocol's pooling),
    "cls" = the class token."""
    if how == "gap":
        return tokens[:, 1:].mean(axis=1)
    if how == "cls":
        return tokens[:, 0]
    raise ValueError(f"feature pooling {how!r}: expected 'gap' or 'cls'")


def batches(n: int, batch_size: int):
    """(start, stop) of consecutive batches covering [0, n)."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def pad_to(x: np.ndarray, size: int) -> np.ndarray:
    """Pad the leading axis to `size` with copies of the last row (static shapes: one compile)."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


def embed_fn(model_cfg: ml_collections.ConfigDict, pooling: str):
    """`(encoder params, pixels [B, S, S, 1] integer) -> features [B, D] float32`, not jitted.

    The one definition of frozen features: `sarmae-eval` jits it on one device, the trainer's in-loop
    evaluators (`evaluate/in_loop.py`) jit it over the run's mesh. Deterministic (no drop path).
    """
    module = sarmae.build_encoder(model_cfg, deterministic=True, drop_path_rate=0.0)

    def embed(params, pixels):
        tokens = module.apply({"params": params}, normalised_inputs(pixels, model_cfg.in_channels))
        return pool(tokens, pooling).astype(jnp.float32)

    return embed


@functools.lru_cache(maxsize=8)
def _embed_fn(model_json: str, pooling: str):
    """Jitted `embed_fn`, one per (model, pooling): every split reuses it."""
    return jax.jit(embed_fn(ml_collections.ConfigDict(json.loads(model_json)), pooling))


def extract_features(encoder: Encoder, images: np.ndarray, *, pooling: str, batch_size: int,
                     desc: str = "features") -> np.ndarray:
    """Frozen features `[N, D]` float32 of `images: [N, S, S, 1]` integer pixels (padded batches)."""
    embed = _embed_fn(json.dumps(encoder.model_cfg.to_dict(), sort_keys=True), pooling)
    out = []
    for start, stop in tqdm(batches(len(images), batch_size), desc=desc, leave=False):
        out.append(np.asarray(embed(encoder.params["encoder"], pad_to(images[start:stop], batch_size)))[: stop - start])
    return np.concatenate(out)


def params_digest(params: Any) -> str:
    """sha256 over names, shapes and bytes of a parameter tree (identifies trained weights in caches)."""
    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: str(kv[0])):
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def cached_features(encoder: Encoder, images: np.ndarray, *, pooling: str, batch_size: int, cache_dir,
                    key: str) -> np.ndarray:
    """`extract_features`, memoised under `cache_dir/<digest>.npy` (a local directory or gs://).

    The digest covers the encoder's weights, the pooling, the images' bytes and `key` (a readable
    tag such as "synthetic/train"), so a changed checkpoint or dataset can never hit a stale entry.
    """
    h = hashlib.sha256()
    h.update(params_digest(encoder.params["encoder"]).encode())
    h.update(f"{pooling}|{key}|{images.shape}|{images.dtype}".encode())
    h.update(images.tobytes())
    path = paths.as_path(cache_dir) / f"{key.replace('/', '_')}-{h.hexdigest()[:16]}.npy"
    if path.exists():
        log.info("features: %s (cached)", path)
        return np.load(io.BytesIO(path.read_bytes()))
    feats = extract_features(encoder, images, pooling=pooling, batch_size=batch_size, desc=f"features {key}")
    buffer = io.BytesIO()
    np.save(buffer, feats)
    paths.write_atomic(path, buffer.getvalue())  # an interrupted run never leaves a truncated cache entry
    return feats
