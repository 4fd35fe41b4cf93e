"""Which record fills which batch slot: process sharding, per-epoch shuffles and paired mixing,
as a pure function of the batch position.

`BatchSampler(position) -> [b] global record indices` is vectorised NumPy, so a batch costs a
few microseconds (Grain's per-element `shuffle` / `mix` cost ~60 us per index, more than
decoding the record). Because it is a pure function of (seed, position), a resumed iterator
that knows its position yields exactly the same batches.

Definitions (per process p of P, paired records first in the split: [0, num_paired)):

* a pool is a range of global indices [start, stop); this process owns its
  ``[p::P]`` slice (disjoint across processes, together covering the pool);
* pool ordinal j (0, 1, 2, ...) -> epoch e = j // n, offset j % n, and local element
  ``perm_e[offset]`` with ``perm_e`` a permutation drawn from (seed, pool id, e);
* the stream interleaves the paired and unpaired pools at share q: stream position k is
  paired iff floor((k + 1) q) > floor(k q), i.e. every prefix of the stream holds
  floor(prefix q) or that + 1 paired examples (exact proportions, no randomness).
"""

from __future__ import annotations

import numpy as np


class _Pool:
    """This process's slice of the global indices [start, stop), shuffled anew every epoch."""

    def __init__(self, start: int, stop: int, *, seed: int, pool_id: int, process_index: int, process_count: int):
        self.members = np.arange(start + process_index, stop, process_count, dtype=np.int64)
        if len(self.members) == 0:
            raise ValueError(f"records [{start}, {stop}) split over {process_count} processes leave process "
                             f"{process_index} with none; use fewer processes or more data")
        self._seed = (seed, pool_id)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # a batch spans at most two epochs of a pool in practice
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([*self._seed, epoch])
            self._perms[epoch] = self.members[rng.permutation(len(self.members))]
        return self._perms[epoch]

    def take(self, ordinals: np.ndarray) -> np.ndarray:
        """Pool ordinals [k] int64 -> global record indices [k]."""
        n = len(self.members)
        epochs, offsets = np.divmod(ordinals, n)
        out = np.empty(len(ordinals), np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._perm(int(epoch))[offsets[sel]]
        return out

    def __getstate__(self):  # pickled into Grain workers: drop the cached permutations
        return {**self.__dict__, "_perms": {}}


class BatchSampler:
    """position -> the [batch_size] global record indices of this process's batch `position`.

    Args:
      num_records: records in the split; num_paired: how many of them (the first) are paired.
      paired_share: None for the natural mix (one pool, each record once per epoch), or q in
        [0, 1]: paired and unpaired pools interleaved at exactly q.
      batch_size: per-process batch size.
    """

    def __init__(self, num_records: int, num_paired: int, paired_share: float | None, *, batch_size: int,
                 seed: int, process_index: int, process_count: int):
        kw = dict(seed=seed, process_index=process_index, process_count=process_count)
        self.batch_size = batch_size
        self.paired_share = paired_share
        if paired_share is None:
            self._pools = [_Pool(0, num_records, pool_id=0, **kw)]
            return
        if paired_share > 0 and num_paired == 0:
            raise ValueError(f"paired_share={paired_share} but the split has no paired examples "
                             "(a plain SAR folder: set config.data.paired_share to 0 or None)")
        if paired_share < 1 and num_paired == num_records:
            raise ValueError(f"paired_share={paired_share} but the split has no unpaired examples")
        paired = _Pool(0, num_paired, pool_id=1, **kw) if paired_share > 0 else None
        unpaired = _Pool(num_paired, num_records, pool_id=2, **kw) if paired_share < 1 else None
        self._pools = [paired, unpaired]

    def __call__(self, position: int) -> np.ndarray:
        k = np.arange(position * self.batch_size, (position + 1) * self.batch_size, dtype=np.int64)
        if self.paired_share is None:
            return self._pools[0].take(k)
        paired_before = np.floor(k * self.paired_share).astype(np.int64)  # paired among positions [0, k)
        is_paired = np.floor((k + 1) * self.paired_share).astype(np.int64) > paired_before
        out = np.empty(len(k), np.int64)
        if is_paired.any():
            out[is_paired] = self._pools[0].take(paired_before[is_paired])
        if (~is_paired).any():
            out[~is_paired] = self._pools[1].take((k - paired_before)[~is_paired])
        return out
