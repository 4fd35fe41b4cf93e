"""Paths a user gives: a local path or a `gs://BUCKET/PATH` URI, as one `etils.epath.Path` (gcsfs underneath).

Every command-line path of the project goes through `resolve` (local paths made absolute, URIs checked),
and every directory a run will write is checked by `check_writable` at start-up, before any compilation:
a missing bucket, missing credentials, a read-only bucket or an unreachable endpoint fail within seconds
with a message naming the flag or config key, instead of at the first checkpoint hours later.

Cloud Storage facts the rest of the code relies on:
  - objects cannot be appended to: `open(path, "a")` through gcsfs replaces the object. Writers that grow a
    file (metrics.jsonl) keep it in memory and replace the object whole (`write_atomic`);
  - an object is replaced atomically: a reader sees the old or the new content, never a mix;
  - there are no directories (a prefix exists once an object under it does), and a rename is a copy and a
    delete: nothing here renames on a bucket (Orbax marks a finished checkpoint with commit_success.txt);
  - directory listings are not cached (`_no_listing_cache`): other writers change the bucket meanwhile;
  - ArrayRecord (the Grain data pipeline) reads local files only: a dataset in a bucket is read through a
    Cloud Storage FUSE mount (`require_local`).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
from typing import Callable

import fsspec.config
import google.auth
import tensorstore as ts
from etils import epath

log = logging.getLogger("sarmae_jax")

GCS = "gs://"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")  # Cloud Storage bucket naming rules
_PUBLIC_ENDPOINT = "https://storage.googleapis.com"
PROBE_TIMEOUT_S = 20.0  # gcsfs retries a dead endpoint for ~32 s and tensorstore for longer: cut it short

FUSE_HINT = ("mount the bucket with Cloud Storage FUSE on every host (`gcsfuse --implicit-dirs BUCKET /mnt/BUCKET`) "
             "and give the mounted path, e.g. /mnt/BUCKET/sar1m")
CREDENTIALS_HINT = ("on a Cloud TPU or GCE VM the VM's service account is used; elsewhere run "
                    "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS")


def _no_listing_cache() -> None:
    """gcsfs keeps every directory listing for the life of the process by default. A run has other writers
    (tensorstore writes Orbax's arrays, other hosts write their shards), so a cached listing goes stale: a
    checkpoint step finished after the directory was first listed would stay invisible. List afresh instead
    (set before epath creates its gcsfs instance, which it keeps)."""
    for protocol in ("gs", "gcs"):
        fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


_no_listing_cache()


class StorageAccessError(OSError):
    """A user's path cannot be written or read; the message names the flag or key, the path and the cause."""


def is_gcs(path: str | os.PathLike) -> bool:
    return os.fspath(path).startswith(GCS)


def resolve(path: str | os.PathLike, key: str) -> epath.Path:
    """`path` as an `epath.Path`: a `gs://BUCKET/...` URI as it is (checked), a local path made absolute.

    `key` names where the path came from (`--workdir`, `config.train.init_from`) for the error messages.
    Raises ValueError for a malformed URI, another scheme, or a local path that looks like a mangled URI.
    """
    text = os.fspath(path)
    if not text:
        raise ValueError(f"{key}: an empty path")
    if is_gcs(text):
        bucket = text[len(GCS):].split("/", 1)[0]
        if not _BUCKET.match(bucket):
            raise ValueError(f"{key}={text!r}: {bucket!r} is not a Cloud Storage bucket name (3-63 characters: "
                             "lower-case letters, digits, '-', '_' and '.'; expected gs://BUCKET/PATH)")
        return epath.Path(text)
    scheme = urllib.parse.urlsplit(text).scheme
    if text.lower().startswith("gs:") or (len(scheme) > 1 and "://" in text):
        raise ValueError(f"{key}={text!r}: expected a local path or a gs://BUCKET/PATH URI (only Cloud Storage "
                         "is supported among object stores)")
    return as_path(os.path.expanduser(text))


def as_path(path: str | os.PathLike) -> epath.Path:
    """`epath.Path` of a path the code already holds: URIs as they are, local paths absolute (Orbax needs that)."""
    text = os.fspath(path)
    return epath.Path(text) if is_gcs(text) else epath.Path(os.path.abspath(text))


def require_local(path: str | os.PathLike, key: str, what: str) -> None:
    """Raise ValueError if `path` is a bucket URI where only a local (or FUSE-mounted) path can be read."""
    if is_gcs(path):
        raise ValueError(f"{key}={os.fspath(path)!r}: {what} reads local files only (ArrayRecord opens its shards "
                         f"by path, not through Cloud Storage); {FUSE_HINT}")


def bucket_of(path: str | os.PathLike) -> str:
    return os.fspath(path)[len(GCS):].split("/", 1)[0]


def object_name(path: str | os.PathLike) -> str:
    parts = os.fspath(path)[len(GCS):].split("/", 1)
    return parts[1] if len(parts) > 1 else ""


# ------------------------------------------------------------------------------------ writing
def write_atomic(path: epath.Path, data: bytes) -> None:
    """Replace `path` whole so that a reader (or a crash) never sees a partial file.

    On a bucket an object upload is atomic; locally the bytes go to a temporary file that is renamed over
    `path` (a rename within one directory is atomic on POSIX file systems).
    """
    path = epath.Path(path)
    if is_gcs(path):
        path.write_bytes(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def local_cache_dir(*parts: str) -> str:
    """A directory on this host's disk: $SARMAE_CACHE_DIR, else $XDG_CACHE_HOME/sarmae_jax, else
    ~/.cache/sarmae_jax; `parts` are appended. Used for what must be local (ArrayRecord shards) when the
    run directory is a bucket."""
    root = os.environ.get("SARMAE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sarmae_jax")
    return os.path.join(root, *parts)


@contextlib.contextmanager
def host_lock(directory: str):
    """An exclusive lock on `directory` (a local one) among the processes of this host (fcntl.flock).

    Processes of one host that fill a shared local cache take turns: the first writes, the others find it.
    """
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------ probing
def check_writable(directory: epath.Path, key: str, *, timeout_s: float = PROBE_TIMEOUT_S,
                   arrays: bool = True) -> None:
    """Write, read back and delete a small object in `directory` (created locally if missing).

    On a bucket the probe goes through both clients a run uses: gcsfs (epath: metrics, images, metadata) and,
    with `arrays`, tensorstore (Orbax's checkpoint arrays), each with its own endpoint and credentials.
    Each process writes its own probe object, so every host of a pod checks its own access.
    Raises StorageAccessError naming `key`, the path and what failed, within about `timeout_s` seconds.
    """
    directory = epath.Path(directory)
    name = f".write_probe.{socket.gethostname()}.{os.getpid()}"
    if not is_gcs(directory):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / name
            probe.write_bytes(b"probe")
            probe.unlink()
        except OSError as e:
            raise StorageAccessError(f"{key}={directory}: cannot write there: {type(e).__name__}: {e}") from e
        return
    t0 = time.monotonic()
    endpoints = {_gcsfs_endpoint(): "gcsfs (STORAGE_EMULATOR_HOST)" if os.environ.get("STORAGE_EMULATOR_HOST")
                 else "gcsfs"}
    if arrays:
        endpoints.setdefault(_tensorstore_endpoint(), "tensorstore (TENSORSTORE_GCS_HTTP_URL)"
                             if os.environ.get("TENSORSTORE_GCS_HTTP_URL") else "tensorstore")
    for url, client in endpoints.items():
        _check_reachable(url, client, directory, key, timeout_s=min(5.0, timeout_s))
    probe = directory / name
    _with_deadline(lambda: _gcsfs_probe(probe), timeout_s - (time.monotonic() - t0), directory, key, "gcsfs")
    if arrays:
        _with_deadline(lambda: _tensorstore_probe(directory, name), timeout_s - (time.monotonic() - t0),
                       directory, key, "tensorstore (Orbax's checkpoint writer)")


def _gcsfs_endpoint() -> str:
    return os.environ.get("STORAGE_EMULATOR_HOST") or _PUBLIC_ENDPOINT


def _tensorstore_endpoint() -> str:
    return os.environ.get("TENSORSTORE_GCS_HTTP_URL") or _PUBLIC_ENDPOINT


def _check_reachable(url: str, client: str, directory, key: str, timeout_s: float) -> None:
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as e:
        raise StorageAccessError(
            f"{key}={directory}: cannot reach the Cloud Storage endpoint {url} used by {client}: "
            f"{type(e).__name__}: {e}") from e


def _gcsfs_probe(probe: epath.Path) -> None:
    probe.write_bytes(b"probe")
    if probe.read_bytes() != b"probe":
        raise OSError(f"{probe}: read back other bytes than were written")
    probe.unlink()


def _tensorstore_probe(directory, name: str) -> None:
    prefix = object_name(directory)
    kv = ts.KvStore.open({"driver": os.environ.get("TENSORSTORE_GCS_BACKEND", "gcs"), "bucket": bucket_of(directory),
                          "path": f"{prefix}/" if prefix else ""}).result()
    kv.write(name, b"probe").result()
    kv.write(name, None).result()  # deletes this one key (a range delete lists the prefix first)


def _with_deadline(fn: Callable[[], None], timeout_s: float, directory, key: str, client: str) -> None:
    """Run `fn` in a daemon thread; raise StorageAccessError for its error, or if it is still running
    after `timeout_s` (the clients retry unanswered requests for minutes)."""
    outcome: list[BaseException | None] = []

    def target():
        try:
            fn()
            outcome.append(None)
        except BaseException as e:  # handed to the caller's thread
            outcome.append(e)

    quiet = logging.getLogger("gcsfs")  # gcsfs logs a traceback per failed request; the error below says it
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        thread = threading.Thread(target=target, name="storage-probe", daemon=True)
        thread.start()
        thread.join(max(timeout_s, 1.0))
    finally:
        quiet.setLevel(level)
    if not outcome:
        raise StorageAccessError(f"{key}={directory}: no answer from Cloud Storage ({client}) within "
                                 f"{max(timeout_s, 1.0):.0f} s while writing a probe object")
    error = outcome[0]
    if error is not None:
        raise StorageAccessError(f"{key}={directory}: cannot write there through {client}: "
                                 f"{describe_gcs_error(error, bucket_of(directory))}") from error


def describe_gcs_error(error: BaseException, bucket: str) -> str:
    """What a Cloud Storage error means for the user: missing bucket, no credentials, no write permission."""
    message = " ".join(str(error).split())
    text = f"{type(error).__name__}: {message}"
    code = getattr(error, "code", None)  # gcsfs HttpError
    found = re.search(r"http_response_code='(\d+)'", message)  # tensorstore
    if found:
        code = int(found.group(1))
    elif message.startswith("Forbidden: "):  # gcsfs says 403 this way
        code = 403
    if isinstance(error, FileNotFoundError) or code == 404 or message.startswith("NOT_FOUND"):
        return f"bucket {bucket!r} does not exist, or these credentials cannot see it ({text})"
    if code == 401:
        return f"the request carried no valid credentials ({text}); {CREDENTIALS_HINT}{_credentials_found()}"
    if code == 403 or message.startswith("PERMISSION_DENIED"):
        return (f"the credentials may not write objects in bucket {bucket!r} ({text}); they need "
                "storage.objects.create, get and delete on it (role Storage Object User)")
    return text


def _credentials_found() -> str:
    try:
        google.auth.default()
        return ""
    except Exception as e:  # what google.auth found, so the user sees which lookup failed
        return f" (google.auth.default: {type(e).__name__}: {e})"
