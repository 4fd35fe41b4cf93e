"""Which record fills which row of which global batch: per-epoch shuffles and paired mixing, as a pure
function of (seed, global batch position) -- the same for any number of processes.

`BatchSampler(position) -> [len(rows)] record indices` is vectorised NumPy, so a batch costs a few
microseconds (Grain's per-element `shuffle` / `mix` cost ~60 us per index, more than decoding the
record). Global batch `position` is a function of the seed and the position alone; each process
reads only its `rows` of it (those its devices hold in the batch sharding, `sharding.process_batch_rows`).
So a run saved by P processes and resumed by Q sees exactly the examples it would have seen, and a
resumed iterator that knows its position yields exactly the batches of an uninterrupted run.

Definitions (global batch size B, paired records first in the split: [0, num_paired)):

* the stream is an endless sequence of record indices; global batch i holds stream positions
  [i B, (i + 1) B), row r of it being stream position i B + r;
* a pool is a range of record indices [start, stop) (all of them, whichever process reads);
  pool ordinal j (0, 1, 2, ...) -> epoch e = j // n, offset j % n, and record
  ``start + perm_e[offset]`` with ``perm_e`` a permutation of n = stop - start drawn from
  (seed, pool id, e);
* the stream interleaves the paired and unpaired pools at share q: stream position k is paired
  iff floor((k + 1) q) > floor(k q), i.e. every prefix of the stream holds floor(prefix q) or
  that + 1 paired examples (exact proportions, no randomness). Without a share (natural mix)
  stream position k is ordinal k of the one pool of all records.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class _Pool:
    """The record indices [start, stop), shuffled anew every epoch."""

    def __init__(self, start: int, stop: int, *, seed: int, pool_id: int):
        self.start, self.size = start, stop - start
        self._seed = (seed, pool_id)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # a batch spans at most two epochs of a pool in practice
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([*self._seed, epoch])
            self._perms[epoch] = self.start + rng.permutation(self.size).astype(np.int64)
        return self._perms[epoch]

    def take(self, ordinals: np.ndarray) -> np.ndarray:
        """Pool ordinals [k] int64 -> record indices [k]."""
        epochs, offsets = np.divmod(ordinals, self.size)
        out = np.empty(len(ordinals), np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._perm(int(epoch))[offsets[sel]]
        return out

    def __getstate__(self):  # pickled into Grain workers: drop the cached permutations
        return {**self.__dict__, "_perms": {}}


class BatchSampler:
    """position -> the record indices of rows `rows` of global batch `position`.

    Args:
      num_records: records in the split; num_paired: how many of them (the first) are paired.
      paired_share: None for the natural mix (one pool, each record once per epoch), or q in
        [0, 1]: paired and unpaired pools interleaved at exactly q.
      batch_size: the GLOBAL batch size B (all processes together).
      rows: the rows of every global batch this process reads, increasing, in [0, B); None: all.
    """

    def __init__(self, num_records: int, num_paired: int, paired_share: float | None, *, batch_size: int,
                 seed: int, rows: Sequence[int] | np.ndarray | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected a positive global batch size")
        self.batch_size = batch_size
        self.rows = np.arange(batch_size, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        if (self.rows.ndim != 1 or not len(self.rows) or self.rows.min() < 0 or self.rows.max() >= batch_size
                or (np.diff(self.rows) <= 0).any()):
            raise ValueError(f"rows={self.rows.tolist()[:16]}{'...' if self.rows.size > 16 else ''}: expected "
                             f"increasing row indices in [0, global batch size {batch_size})")
        if num_records < 1:
            raise ValueError(f"num_records={num_records}: the split is empty")
        self.paired_share = paired_share
        if paired_share is None:
            self._pools = [_Pool(0, num_records, seed=seed, pool_id=0)]
            return
        if paired_share > 0 and num_paired == 0:
            raise ValueError(f"paired_share={paired_share} but the split has no paired examples "
                             "(a plain SAR folder: set config.data.paired_share to 0 or None)")
        if paired_share < 1 and num_paired == num_records:
            raise ValueError(f"paired_share={paired_share} but the split has no unpaired examples")
        paired = _Pool(0, num_paired, seed=seed, pool_id=1) if paired_share > 0 else None
        unpaired = _Pool(num_paired, num_records, seed=seed, pool_id=2) if paired_share < 1 else None
        self._pools = [paired, unpaired]

    def __call__(self, position: int) -> np.ndarray:
        k = position * self.batch_size + self.rows  # stream positions of this process's rows
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
