"""`metrics.jsonl` of a run, local or on a bucket: one JSON object per logged step, each step once.

A line is `{"step": int, "time": float (Unix seconds), <name>: float, ...}`.

Cloud Storage objects cannot be appended to (an append through gcsfs silently replaces the object), so
on a bucket the lines are kept in memory and the object is replaced whole by `flush()` (an upload is
atomic: a reader sees the previous or the new file, never a torn one). `flush()` runs at most every
`flush_secs` as lines come, before every checkpoint, and at `close()`; a crash then loses only lines of
steps after the last checkpoint, which the resumed run logs again. A local file is appended to and
flushed line by line.

Resuming from checkpoint step S keeps the file's lines of steps <= S and drops the later ones (the resumed
run logs them again), so after any number of interruptions every logged step appears exactly once.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Mapping

from etils import epath

from sarmae_jax.runtime import paths

log = logging.getLogger("sarmae_jax")


def read(path: epath.Path) -> list[dict[str, Any]]:
    """The records of a metrics file (a torn last line, from a crash mid-write, is left out)."""
    return _parse(epath.Path(path), epath.Path(path).read_text())[0]


def _parse(path: epath.Path, text: str) -> tuple[list[dict[str, Any]], bool]:
    """(records, whether a torn last line was dropped). Raises ValueError for a bad line elsewhere."""
    lines = text.split("\n")
    torn = lines[-1] != ""  # every complete line ends with a newline
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {number}: not a JSON object ({e}): {line[:200]!r}") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path} line {number}: expected an object with an integer 'step', found {line[:200]!r}")
        records.append(record)
    return records, torn


class MetricsFile:
    """Writes `path` (see module docstring); `resume_step` is the step the run restarts from (0: none)."""

    def __init__(self, path: epath.Path, resume_step: int, flush_secs: float = 30.0):
        self.path = epath.Path(path)
        self.flush_secs = flush_secs
        self._on_bucket = paths.is_gcs(self.path)
        kept = self._kept_lines(resume_step)
        self._lines = kept  # bucket: the whole file, flushed by replacing the object
        self._dirty = False
        self._last_flush = time.monotonic()
        self._file = None
        if not self._on_bucket:
            self._file = self.path.open("a")

    def _kept_lines(self, resume_step: int) -> list[str]:
        if not self.path.exists():
            return []
        records, torn = _parse(self.path, self.path.read_text())
        kept = [r for r in records if r["step"] <= resume_step]
        dropped = [r["step"] for r in records if r["step"] > resume_step]
        lines = [json.dumps(r) + "\n" for r in kept]
        if dropped or torn:
            log.info("%s: resuming from step %d: kept %d lines, dropped %d of later steps (%s) that are logged "
                     "again%s", self.path, resume_step, len(kept), len(dropped),
                     f"{min(dropped)}-{max(dropped)}" if dropped else "none",
                     "; dropped a torn last line" if torn else "")
            paths.write_atomic(self.path, "".join(lines).encode())
        return lines

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(dict(record)) + "\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
            return
        self._lines.append(line)
        self._dirty = True
        if time.monotonic() - self._last_flush >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        """Make every line written so far durable (a bucket's object is replaced whole)."""
        if self._file is not None:
            self._file.flush()
        elif self._dirty:
            paths.write_atomic(self.path, "".join(self._lines).encode())
            self._dirty = False
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
