"""A Cloud Storage emulator on loopback for the tests: the JSON API of `gcp-storage-emulator`, in memory.

    python tests/gcs_emulator.py [--bucket NAME] [--read-only-bucket NAME] [--require-auth]

prints the port it listens on (127.0.0.1, a free port) and serves until its standard input closes, so
it outlives every process that writes to it (tensorboardX uploads its event files once more at
interpreter exit) and never outlives the test session that started it.

Listings with startOffset/endOffset, which the emulator would ignore (and list the whole prefix), get 400.
Media downloads also carry the object's `x-goog-generation` header, as Cloud Storage sends it:
tensorstore's OCDBT driver (Orbax) reads it back from every manifest it rereads.

Two switches stand in for what the emulator cannot know, Cloud IAM:
  --read-only-bucket NAME  writes to that bucket get 403, as for credentials without
                           storage.objects.create on it;
  --require-auth           requests without an `Authorization` header get 401, as a private bucket
                           answers an anonymous caller.

`Emulator` starts one from Python and gives the environment that points gcsfs, google-cloud-storage
(tensorboardX) and tensorstore (Orbax's arrays) at it; `env` must be in place before gcsfs is imported.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.parse
from http import server as http_server

WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def client_env(port: int) -> dict[str, str]:
    """Environment variables that send every Cloud Storage client of a run to the emulator at `port`."""
    url = f"http://127.0.0.1:{port}"
    return {
        "STORAGE_EMULATOR_HOST": url,          # gcsfs and google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,       # tensorstore reads only this one
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: a bearer token, no metadata-server lookup
        "FSSPEC_GS_TOKEN": "anon",             # gcsfs through etils.epath: no credential lookup
        "NO_GCE_CHECK": "true",                # google-auth: do not probe the GCE metadata server
        # gcsfs otherwise probes the bucket type over gRPC, which the emulator cannot answer (60 s per call).
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_MEDIA = re.compile(r"(/download)?(?:/storage/v1)?/b/(?P<bucket>[^/]+)/o/(?P<object>.+)")


def _handler_class(read_only: set[str], require_auth: bool):
    from gcp_storage_emulator import exceptions, server

    lock = threading.Lock()

    class Handler(server.RequestHandler):
        extra_headers: dict[str, str] = {}

        def end_headers(self):
            for key, value in self.extra_headers.items():
                self.send_header(key, value)
            super().end_headers()

        def _generation_headers(self) -> dict[str, str]:
            url = urllib.parse.urlsplit(self.path)
            match = _MEDIA.fullmatch(url.path)
            if not match or not (match.group(1) or "alt=media" in url.query):
                return {}
            try:
                obj = self.storage.get_file_obj(match["bucket"], urllib.parse.unquote(match["object"]))
            except exceptions.NotFound:
                return {}
            return {"x-goog-generation": str(obj["generation"]), "x-goog-metageneration": str(obj["metageneration"])}

        def _refusal(self, method: str) -> tuple[int, str] | None:
            if require_auth and not self.headers.get("Authorization"):
                return 401, "Anonymous caller does not have storage.objects access (emulated: no credentials)"
            if method in WRITE_METHODS and any(f"/b/{b}/" in self.path or self.path.endswith(f"/b/{b}")
                                               for b in read_only):
                return 403, "caller does not have storage.objects.create access (emulated: read-only bucket)"
            return None

        def _route(self, method: str) -> None:
            refusal = self._refusal(method)
            if refusal is None and method == "GET" and re.search(r"[?&](startOffset|endOffset)=", self.path):
                # The emulator would ignore these and list the whole prefix (tensorstore's range delete then
                # deletes every object it lists): refuse, so that nothing relies on them unnoticed.
                refusal = 400, "startOffset/endOffset listing is not served by the test emulator"
            if refusal is None:
                with lock:  # the emulator's storage is not thread-safe; connections are served in threads
                    self.extra_headers = self._generation_headers() if method == "GET" else {}
                    return server.Router(self).handle(method)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))  # the client is still sending
            code, message = refusal
            body = json.dumps({"error": {"code": code, "message": message,
                                         "errors": [{"message": message, "reason": {400: "invalid", 401: "required", 403: "forbidden"}[code]}]}}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def do_PUT(self):
            self._route("PUT")

        def do_PATCH(self):
            self._route("PATCH")

        def do_DELETE(self):
            self._route("DELETE")

    return Handler


class _Server(http_server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up before reading its answer (tensorstore cancels reads it no longer needs)
        # is no error of the emulator; anything else is printed as usual.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def serve(buckets: list[str], read_only: list[str], require_auth: bool) -> None:
    from functools import partial

    from gcp_storage_emulator.handlers import buckets as bucket_handlers
    from gcp_storage_emulator.storage import Storage

    logging.disable(logging.CRITICAL)  # the emulator logs every missing object a client looks for
    storage = Storage(use_memory_fs=True)
    # In memory, the JSON snapshot of all object metadata it rewrites after every write serves nothing.
    storage._write_config_to_file = lambda: None
    for name in buckets + read_only:
        bucket_handlers.create_bucket(name, storage)
    handler = _handler_class(set(read_only), require_auth)
    httpd = _Server(("127.0.0.1", 0), partial(handler, storage))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print(httpd.server_address[1], flush=True)
    sys.stdin.read()  # returns when whoever started us closes the pipe (or dies)
    httpd.shutdown()


class Emulator:
    """A running emulator (a child process): `port`, `env`, `url(path)`; `close()` stops it."""

    def __init__(self, bucket: str = "sarmae-test", *, read_only_bucket: str | None = None,
                 require_auth: bool = False):
        cmd = [sys.executable, os.path.abspath(__file__), "--bucket", bucket]
        if read_only_bucket:
            cmd += ["--read-only-bucket", read_only_bucket]
        if require_auth:
            cmd.append("--require-auth")
        self.bucket = bucket
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline()
        if not line.strip().isdigit():
            self._proc.kill()
            raise RuntimeError(f"the Cloud Storage emulator did not start ({cmd}): printed {line!r}")
        self.port = int(line)
        self.env = client_env(self.port)

    def url(self, path: str = "", bucket: str | None = None) -> str:
        return f"gs://{bucket or self.bucket}/{path}".rstrip("/")

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    p.add_argument("--read-only-bucket", action="append", default=[], help="bucket whose writes get 403")
    p.add_argument("--require-auth", action="store_true", help="401 for requests without credentials")
    a = p.parse_args(argv)
    serve(a.bucket, a.read_only_bucket, a.require_auth)


if __name__ == "__main__":
    main()
