"""The evaluation config schema: every key, its default and why. Files in `configs/eval/` start here."""
from __future__ import annotations

import ml_collections

from sarmae_jax.evaluate import datasets, finetune, linear_probe, reconstruction
from sarmae_jax.runtime import paths

PROTOCOLS = ("linear_probe", "knn", "finetune", "reconstruction")


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.checkpoint = ""  # params-only export directory (<pretrain workdir>/export); --checkpoint sets it
    # Evaluate a RANDOMLY INITIALISED encoder with the checkpoint's architecture instead of its
    # weights (the baseline). Labelled as such in every result.
    c.random_init = False
    c.random_init_seed = 0
    c.model_size = ""  # "" accepts the checkpoint's size; e.g. "base" makes a ViT-L export an error
    c.image_size = 0  # model input size; 0: the checkpoint's pre-training size
    c.protocols = PROTOCOLS
    # Labelled subsets of the train split, each drawn from seed split_seed + run seed (so each of the
    # seeds of a protocol sees its own draw, and mean +- std covers the draw too).
    c.splits = ("shots:40", "fraction:0.3")
    c.split_seed = 0
    c.dataset = datasets.default_config()
    c.features = ml_collections.ConfigDict(dict(
        pooling="gap",  # gap (mean of patch tokens, the fine-tuning pooling) | cls
        batch_size=128,
        cache_dir="",  # "" -> <workdir>/features
    ))
    c.linear_probe = linear_probe.default_config()
    c.linear_probe.seeds = (0, 1, 2, 3, 4)
    c.knn = ml_collections.ConfigDict(dict(k=20, temperature=0.07, seeds=(0, 1, 2, 3, 4)))  # DINO's k=20, T=0.07
    c.finetune = finetune.default_config()
    c.reconstruction = reconstruction.default_config()
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """Fail before any work on keys that would only fail later."""
    unknown = sorted(set(c.protocols) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"config.protocols: unknown {unknown}; expected a subset of {PROTOCOLS}")
    if c.dataset.kind not in datasets.KINDS:
        raise ValueError(f"config.dataset.kind={c.dataset.kind!r}: expected one of {datasets.KINDS}")
    paths.require_local(c.dataset.path, "config.dataset.path", "the evaluation's dataset reader")
    if c.dataset.build_dir:
        paths.require_local(c.dataset.build_dir, "config.dataset.build_dir", "the image-folder build (TFDS)")
    if c.dataset.kind == "image_folder":  # split names are folder names the builder reads
        for key in ("train_split", "test_split", "val_split"):
            name = c.dataset[key]
            if key == "val_split" and (not name or name.startswith("holdout:")):
                continue
            try:
                datasets.image_folder_split(name)
            except ValueError as e:
                raise ValueError(f"config.dataset.{key}={name!r}: {e}") from None
    if "reconstruction" in c.protocols and c.dataset.kind != "synthetic":
        raise ValueError("config.protocols includes 'reconstruction', which needs known clean images: "
                         f"only dataset.kind='synthetic' has them (got {c.dataset.kind!r})")
    if c.dataset.val_split == c.dataset.test_split:
        raise ValueError(f"config.dataset.val_split={c.dataset.val_split!r} is the test split: selecting on "
                         "the test split is not allowed")
    if c.features.pooling not in ("gap", "cls"):
        raise ValueError(f"config.features.pooling={c.features.pooling!r}: expected 'gap' or 'cls'")


def released_protocol(path: str, splits: tuple[str, ...]) -> ml_collections.ConfigDict:
    """The released SARMAE classification evaluation of an ImageFolder set (`<path>/Train`, `<path>/Val`).

    `Val/` is the reported test split (the release has no separate validation; set
    `dataset.val_split="holdout:0.1"` to add one carved from Train). The folder is built by the
    TFDS image-folder builder at the checkpoint's input size (plain resize, aspect not kept) into
    `dataset.build_dir` (default `<workdir>/datasets`). Full fine-tuning with the defaults of
    `finetune.default_config()` (30 epochs, 5 seeds, layer decay 0.75, drop path 0.1, label smoothing
    0.1), plus the linear probe and k-NN.
    """
    c = default_config()
    c.dataset.kind = "image_folder"
    c.dataset.path = path
    c.dataset.train_split, c.dataset.test_split, c.dataset.val_split = "Train", "Val", ""
    c.splits = splits
    c.protocols = ("finetune", "linear_probe", "knn")
    return c
