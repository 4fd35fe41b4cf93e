"""Labelled subsets of a training pool: N-shot per class, x% labelled, held-out validation.

Pure functions of (labels, seed): the same seed gives the same indices on every machine
(`np.random.default_rng([seed, class])`, one stream per class, so adding a class never moves
another class's draw). Indices are returned sorted, int64, into the pool given.

A split is named by a string in configs and results:
  "all"            every example of the pool;
  "shots:<N>"      N examples of every class (error if a class has fewer);
  "fraction:<x>"   round(x * n_c) examples of every class c (at least 1), x in (0, 1].
"""
from __future__ import annotations

import numpy as np


def _class_indices(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in range(num_classes)]


def _draw(indices: np.ndarray, count: int, seed: int, cls: int) -> np.ndarray:
    rng = np.random.default_rng([seed, cls])
    return rng.permutation(indices)[:count]


def few_shot(labels: np.ndarray, shots: int, seed: int, class_names: tuple[str, ...]) -> np.ndarray:
    """`shots` indices per class. Raises ValueError naming every class that has fewer examples."""
    if shots < 1:
        raise ValueError(f"N-shot split: shots={shots}, expected >= 1")
    per_class = _class_indices(labels, len(class_names))
    short = [f"{class_names[c]!r} has {len(ix)}" for c, ix in enumerate(per_class) if len(ix) < shots]
    if short:
        raise ValueError(f"{shots}-shot split: larger than these classes of the training pool: {', '.join(short)}")
    return np.sort(np.concatenate([_draw(ix, shots, seed, c) for c, ix in enumerate(per_class)]))


def fraction(labels: np.ndarray, share: float, seed: int, class_names: tuple[str, ...]) -> np.ndarray:
    """Stratified `share` of every class (round, at least 1 per non-empty class)."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"labelled-fraction split: fraction={share}, expected a value in (0, 1]")
    picks = []
    for c, ix in enumerate(_class_indices(labels, len(class_names))):
        if len(ix):
            picks.append(_draw(ix, max(1, int(round(share * len(ix)))), seed, c))
    return np.sort(np.concatenate(picks))


def select(spec: str, labels: np.ndarray, seed: int, class_names: tuple[str, ...]) -> np.ndarray:
    """Indices of the subset named by `spec` ("all", "shots:N", "fraction:x")."""
    kind, _, value = spec.partition(":")
    try:
        if kind == "all" and not value:
            return np.arange(len(labels))
        if kind == "shots":
            return few_shot(labels, int(value), seed, class_names)
        if kind == "fraction":
            return fraction(labels, float(value), seed, class_names)
    except ValueError as e:
        if "split" in str(e):
            raise
        raise ValueError(f"split {spec!r}: cannot parse {value!r} ({e})") from e
    raise ValueError(f"split {spec!r}: expected 'all', 'shots:<N>' or 'fraction:<x>'")


def holdout(labels: np.ndarray, share: float, seed: int, class_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Stratified validation hold-out: `(pool_indices, validation_indices)`, disjoint, both sorted.

    Drawn with a seed offset from the subset draws, so the validation set is not the first
    examples the N-shot draw would take.
    """
    val = fraction(labels, share, seed + 7919, class_names)
    pool = np.setdiff1d(np.arange(len(labels)), val)
    return pool, val


def label_name(spec: str) -> str:
    """Human name for tables: "shots:40" -> "40-shot", "fraction:0.3" -> "30%", "all" -> "100%"."""
    kind, _, value = spec.partition(":")
    if kind == "shots":
        return f"{int(value)}-shot"
    if kind == "fraction":
        return f"{float(value) * 100:g}%"
    return "100%"
