"""A place for the staging checks: an input to fetch and somewhere to deliver the output.

For an endpoint on this machine ``bes check`` serves it itself, on loopback (GET of the
input, PUT of the output, nothing else). Otherwise ``--staging-url`` names a place the
endpoint can reach that accepts HTTP PUT and GET (a WebDAV share, an object store's
pre-authorized prefix); the checker PUTs the input there first and GETs the output back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final
from urllib.parse import urlsplit

import requests

_MAX_BYTES: Final = 1024 * 1024


def is_local(url: str) -> bool:
    """Whether the endpoint is on this machine (a loopback address or localhost)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Place:
    """Where the staging check's files are: ``put``/``get`` by name."""

    def __init__(
        self, base: str, *, verify: bool | str = True, files: dict[str, bytes] | None = None
    ) -> None:
        self.base = base.rstrip("/")
        self._verify = verify
        self._files = files
        """Served by this process (loopback): read and written directly."""

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def put(self, name: str, data: bytes) -> None:
        if self._files is not None:
            self._files[name] = data
            return
        requests.put(self.url(name), data=data, timeout=30, verify=self._verify).raise_for_status()

    def get(self, name: str) -> bytes | None:
        if self._files is not None:
            return self._files.get(name)
        response = requests.get(self.url(name), timeout=30, verify=self._verify)
        return response.content if response.status_code == 200 else None


@contextlib.contextmanager
def loopback_place() -> Iterator[Place]:
    """Serve files on 127.0.0.1 for as long as the block runs."""
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = files.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            length = int(self.headers.get("content-length", "0") or 0)
            if length > _MAX_BYTES:
                self.send_error(413)
                return
            files[self.path.lstrip("/")] = self.rfile.read(length)
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="bes-check-staging", daemon=True)
    thread.start()
    place = Place(f"http://127.0.0.1:{server.server_address[1]}", files=files)
    try:
        yield place
    finally:
        server.shutdown()
        server.server_close()
