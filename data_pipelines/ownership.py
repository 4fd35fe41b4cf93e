"""Who owns an output directory: every command writes only into a directory it created, or one that holds
exactly what a command of the same kind wrote before, and never deletes anything else.

Each command marks what it writes with `MARKER` (a small JSON file: tool, kind, identity) in the output's
root; a directory without the marker is recognised by the files that kind always writes (`legacy` names,
for outputs written before the marker existed). Before any work, `claim`:

  - refuses an output equal to an input (resolved paths; `nested=True` also one inside the other);
  - refuses an output that holds anything else, naming what is there;
  - reuses an output of the same kind and identity when the command resumes (`resumable=True`);
  - refuses a previous output of the same kind unless `overwrite=True`, which then writes into a fresh
    directory beside it and swaps it in at `Claim.commit` (a crash leaves the old or the new output,
    never a mix). A bucket (gs://) has no rename: there, `--overwrite` replaces the objects in place, the
    manifest or metadata last.

Refusals raise `OutputError` (a user error: the commands print its one line and exit with code 2).
Local paths use `os`; gs:// URIs go through `etils.epath`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any

from etils import epath

MARKER = ".sarmae_output.json"
_SHOW = 5  # entries named in a refusal


class OutputError(ValueError):
    """An output directory the command may not write (a user error: one line, exit code 2)."""


def _is_gcs(path: str) -> bool:
    return str(path).startswith("gs://")


def _norm(path: str | os.PathLike) -> str:
    path = str(path)
    return path.rstrip("/") if _is_gcs(path) else os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def check_not_input(out: str, inputs: Mapping[str, str | None], *, nested: bool = False, out_flag: str = "output"
                    ) -> None:
    """Raises OutputError if `out` is one of `inputs` ({flag: path}); with `nested`, also if one lies inside
    the other (a dataset written inside the dataset it reads, or around it)."""
    o = _norm(out)
    for flag, path in inputs.items():
        if path is None:
            continue
        i = _norm(path)
        if o == i:
            raise OutputError(f"{out_flag} {out} is the input {flag} {path}: the command would overwrite what it "
                              "reads; give a new directory")
        if nested and (_inside(o, i) or _inside(i, o)):
            where = "inside" if _inside(o, i) else "around"
            raise OutputError(f"{out_flag} {out} lies {where} the input {flag} {path}: give a directory outside it")


def entries(path: str) -> list[str]:
    """The names in `path`, without the write probes of `sarmae_jax.runtime.paths.check_writable` (deleted by it,
    but another process's may be there for a moment) and the `.lock` file of `paths.host_lock`."""
    if _is_gcs(path):
        p = epath.Path(path)
        names = [c.name for c in p.iterdir()] if p.exists() else []
    else:
        names = os.listdir(path) if os.path.isdir(path) else []
    return sorted(n for n in names if not n.startswith(".write_probe.") and n != ".lock")


def read_marker(path: str) -> dict[str, Any] | None:
    """The marker of output directory `path`, or None."""
    try:
        text = epath.Path(path, MARKER).read_text() if _is_gcs(path) else open(os.path.join(path, MARKER)).read()
        marker = json.loads(text)
    except (OSError, FileNotFoundError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) else None


def write_marker(path: str, *, tool: str, kind: str, identity: Any = None) -> None:
    text = json.dumps({"tool": tool, "kind": kind, "identity": identity,
                       "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1)
    if _is_gcs(path):
        epath.Path(path, MARKER).write_text(text)
    else:
        tmp = os.path.join(path, MARKER + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(path, MARKER))


def describe(entries: list[str]) -> str:
    shown = ", ".join(entries[:_SHOW])
    return shown + (f" and {len(entries) - _SHOW} more" if len(entries) > _SHOW else "")


@dataclasses.dataclass
class Claim:
    """An output the command may write: `target` is where to write (the output itself, or a staging
    directory beside it when replacing); `commit` marks it and swaps it in; `state` is "new", "resume" or
    "replace"."""

    path: str
    target: str
    state: str
    tool: str
    kind: str
    identity: Any = None

    def commit(self) -> None:
        write_marker(self.target, tool=self.tool, kind=self.kind, identity=self.identity)
        if self.target == self.path:
            return
        # Swap: the old output (ours, checked by `claim`) moves aside, the new one takes its name.
        old = f"{self.path}~old-{os.getpid()}"
        os.rename(self.path, old)
        os.rename(self.target, self.path)
        self.target = self.path
        shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Removes the staging directory of a failed replacement (the old output stays)."""
        if self.target != self.path and os.path.isdir(self.target):
            shutil.rmtree(self.target, ignore_errors=True)


def _made_from(old: Any, new: Any) -> str:
    """' (made from X)' for a refusal: the old identity's input, or the keys that differ, kept short."""
    if old is None:
        return ""
    if isinstance(old, dict) and isinstance(new, dict):
        if "input" in old and old.get("input") != new.get("input"):
            return f" (made from {old['input']})"
        differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return f" (made with other {', '.join(differ)})" if differ else ""
    text = str(old)
    return f" (made from {text[:160]}{'...' if len(text) > 160 else ''})"


def owner(path: str, kind: str, legacy: Iterable[str] = ()) -> dict[str, Any] | None:
    """The marker if `path` holds an output of `kind` (a legacy output: a marker-less directory holding
    every name of `legacy`, returned as {"kind": kind, "identity": None}); else None."""
    marker = read_marker(path)
    if marker is not None:
        return marker if marker.get("kind") == kind else None
    if callable(legacy):
        recognised = legacy(path)
        if isinstance(recognised, dict):
            return recognised
    else:
        legacy = list(legacy)
        recognised = bool(legacy) and all(name in entries(path) for name in legacy)
    if recognised:
        return {"kind": kind, "tool": "?", "identity": None}
    return None


def claim(path: str, *, tool: str, kind: str, identity: Any = None, inputs: Mapping[str, str | None] = {},
          nested: bool = False, overwrite: bool = False, resumable: bool = False, legacy: Iterable[str] = (),
          flag: str = "output", may_replace: bool = False) -> Claim:
    """Decides whether `tool` may write output `path` of `kind` (see the module docstring); creates it.

    Args:
      identity: what the output was made from (compared when resuming; JSON-serialisable).
      legacy: names that mark a marker-less output of this kind (written before markers existed), or a
        predicate on the path (which may return the marker it infers).
      may_replace: a regenerable cache (the synthetic datasets): an output of this kind with another
        identity is replaced (atomically) without `overwrite`.
    Raises:
      OutputError: output is an input, holds something else, or holds an earlier output and not `overwrite`.
    """
    check_not_input(path, inputs, nested=nested, out_flag=flag)
    # Compared with the marker's (read back from JSON): tuples become lists, so compare in JSON's terms.
    identity = json.loads(json.dumps(identity, default=str))
    path = str(path) if _is_gcs(path) else os.path.abspath(os.path.expanduser(str(path)))
    if not _is_gcs(path) and os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{flag} {path} is a file, not a directory")
    names = entries(path)
    if names == [MARKER] and (read_marker(path) or {}).get("kind") == kind:
        # A run of this kind that failed before writing anything (e.g. on a bad teacher file): nothing to
        # keep or replace, so the next run, whatever its identity, starts afresh without --overwrite.
        names = []
    if not names:
        if _is_gcs(path):
            epath.Path(path).mkdir(parents=True, exist_ok=True)
        else:
            os.makedirs(path, exist_ok=True)
        # Marked at once, so a run that dies half-way leaves an output its rerun recognises as its own.
        write_marker(path, tool=tool, kind=kind, identity=identity)
        return Claim(path, path, "new", tool, kind, identity)
    found = owner(path, kind, legacy)
    if found is None:
        other = read_marker(path)
        what = (f"a {other.get('kind')} output of {other.get('tool')}" if other else
                f"files this command did not write ({describe(names)})")
        raise OutputError(f"{flag} {path} holds {what}; refusing to write there. Give an empty or new directory")
    same = found.get("identity") == identity or found.get("identity") is None and identity is None
    if resumable and same:
        return Claim(path, path, "resume", tool, kind, identity)
    if not (overwrite or may_replace):
        made_from = _made_from(found.get("identity"), identity)
        raise OutputError(f"{flag} {path} holds an earlier {kind}{made_from}; pass --overwrite to replace it, "
                          "or give a new directory")
    if _is_gcs(path):
        return Claim(path, path, "replace", tool, kind, identity)
    # A fresh directory beside the output (never one that may already exist: nothing is deleted to make room).
    staging = tempfile.mkdtemp(prefix=f"{os.path.basename(path)}~new-", dir=os.path.dirname(path))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the output gets the usual permissions
    return Claim(path, staging, "replace", tool, kind, identity)
