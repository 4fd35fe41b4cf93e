"""The dataset's facts that shape the model and the step: SAR channels and the stored units.

The trainer and the dry run read the manifest (`pipeline.dataset_info`) before building anything, and
`resolve(config, info)` returns a copy of the config with

* `model.in_channels`: the model's input channels. None (the default) follows the dataset: a
  single-channel dataset gives 3 (grey repeated to 3 channels, so ImageNet MAE weights load
  unchanged: the behaviour from before multi-channel datasets existed), a C-channel dataset
  (polarisations, C > 1) gives C. A value set by the user is checked: 1 or 3 for a single-channel
  dataset, exactly C otherwise (repeating or dropping polarisations is never done silently).
* `data.sar_units`: the manifest's `sar_units` entry (stored domain, channel names, dB range), which
  the step hands to SARE as a static `domains.StoredDomain`. A value set by the user must equal it.

Both are recorded in the run's checkpoint metadata and exports, with the rest of the config.
"""
from __future__ import annotations

import copy
from typing import Any

import ml_collections

from sarmae_jax.models import sarmae
from sarmae_jax.sare import domains

GREY_CHANNELS = (1, 3)  # model inputs a single-channel dataset may feed (grey repeated to 3, or kept)


def in_channels_for(requested: int | None, data_channels: int, source: str) -> int:
    """The model's input channels for a dataset of `data_channels` SAR channels (rules above)."""
    if requested is None:
        return sarmae.DEFAULT_IN_CHANNELS if data_channels == 1 else data_channels
    if data_channels == 1:
        if requested not in GREY_CHANNELS:
            raise ValueError(f"config.model.in_channels={requested!r}: {source} holds 1 SAR channel, which is fed as "
                             f"1 channel or repeated to 3; expected one of {GREY_CHANNELS} (or None to follow the data)")
        return requested
    if requested != data_channels:
        raise ValueError(f"config.model.in_channels={requested!r}: {source} holds {data_channels} SAR channels; "
                         f"expected {data_channels} (or None to follow the data)")
    return requested


def resolve(config: ml_collections.ConfigDict, info: dict[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with `model.in_channels` and `data.sar_units` set from the dataset `info`."""
    source = f"dataset {info['path']}"
    units = info["sar_units"]
    out = copy.deepcopy(config)
    out.model.in_channels = in_channels_for(config.model.in_channels, int(info["sar_channels"]), source)
    requested = config.data.get("sar_units")
    if requested is not None:
        requested = requested.to_dict() if isinstance(requested, ml_collections.ConfigDict) else dict(requested)
        if requested != units:
            raise ValueError(f"config.data.sar_units={requested!r}: {source} stores {units!r} (its manifest's "
                             "sar_units entry); leave config.data.sar_units=None to follow it")
    out.data.sar_units = units
    return out


def data_channels(config: ml_collections.ConfigDict) -> int:
    """SAR channels of the batches of a (resolved) config: the manifest's channel names; 1 unresolved."""
    units = config.data.get("sar_units") if "data" in config else None
    return 1 if units is None else len(units["channels"])


def stored_domain(config: ml_collections.ConfigDict) -> domains.StoredDomain:
    """The static SARE domain of a (resolved) config; None (no dataset resolved): legacy intensity."""
    units = config.data.get("sar_units") if "data" in config else None
    if isinstance(units, ml_collections.ConfigDict):
        units = units.to_dict()
    return domains.StoredDomain.from_units(units)
