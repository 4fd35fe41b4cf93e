"""JAX's persistent compilation cache for the trainer: a restart (after a preemption, say) loads the
compiled train step from local disk instead of compiling it again.

`train.compilation_cache_dir` (config.py) names the directory; default `DEFAULT_DIR`, under the
user's home on local disk (each host of a pod keeps its own). None leaves JAX's own setting alone
(the `JAX_COMPILATION_CACHE_DIR` environment variable, or no cache). Only programs that took at least
`jax_persistent_cache_min_compile_time_secs` (JAX's default: 1 s) to compile are written: the train
step, not the small helpers. `CacheEvents` counts JAX's cache hits and misses, so the trainer can log
whether its step came from the cache.

The cache is trusted by JAX (it loads executables from it): keep it on a disk only you can write.
"""
from __future__ import annotations

import os
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache as cc

DEFAULT_DIR = "~/.cache/sarmae_jax/xla"
_HIT, _MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"


def enable(directory: str | None) -> Path | None:
    """Point JAX's persistent compilation cache at `directory` (created); None: leave JAX's setting.

    Raises ValueError for a bucket URI: the cache must be on local disk (every restart reads it
    before compiling, and JAX loads what it finds there).
    """
    if directory is None:
        return None
    if "://" in str(directory):
        raise ValueError(f"config.train.compilation_cache_dir={directory!r}: expected a directory on local disk "
                         "(or None to leave JAX's own setting)")
    path = Path(os.path.expanduser(str(directory))).resolve()
    path.mkdir(parents=True, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != str(path):
        cc.reset_cache()  # JAX opens its cache once, at the first compile: point it at the new directory
        cc.set_cache_dir(str(path))
    return path


class CacheEvents:
    """Counts JAX's persistent-cache hits and misses between `__enter__` and `__exit__`."""

    def __init__(self):
        self.hits = self.misses = 0

    def _listen(self, event: str, **_) -> None:
        if event == _HIT:
            self.hits += 1
        elif event == _MISS:
            self.misses += 1

    def __enter__(self) -> "CacheEvents":
        jax.monitoring.register_event_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_listener(self._listen)

    def describe(self) -> str:
        """What the compiles counted so far did with the cache, for the log."""
        cache = jax.config.jax_compilation_cache_dir
        if not cache:
            return "no persistent compilation cache"
        if self.hits:
            return f"{self.hits} program(s) loaded from the persistent compilation cache {cache}"
        return f"compiled; no persistent compilation cache hit in {cache} ({self.misses} miss(es))"
