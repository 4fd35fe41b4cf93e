"""Helpers on parameter trees: counting, and the strict name-and-shape check every weight load goes through."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util


def count_params(params: Any) -> int:
    """Number of entries of every leaf of `params` (boxed or not)."""
    return int(sum(x.size for x in jax.tree.leaves(nn.unbox(params))))


def check_tree_matches(params: Any, expected: Any, what: str) -> None:
    """Strict structural check: same parameter names and shapes, or a ValueError listing every difference."""
    got = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(expected, sep="/").items()}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    if missing or unexpected or wrong:
        lines = [f"{what} does not match the model:"]
        lines += [f"  missing:    {k} {want[k]}" for k in missing]
        lines += [f"  unexpected: {k} {got[k]}" for k in unexpected]
        lines += [f"  shape:      {k} has {got[k]}, model expects {want[k]}" for k in wrong]
        raise ValueError("\n".join(lines))
