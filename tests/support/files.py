"""A small HTTP file server on 127.0.0.1 for staging tests: GET serves files, PUT stores them.

PUT honours ``If-None-Match: *`` (412 when the file exists), as a WebDAV or object store does;
with ``credentials`` set, every request needs that HTTP Basic user and password.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FileServer:
    """Files by path (``/data/in.txt``) in memory, and a log of requests."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.files: dict[str, bytes] = {}
        self.delays: dict[str, float] = {}
        self.read_only: set[str] = set()
        """Paths a PUT may not write (403), as a read-only web server answers."""
        """Seconds to wait before answering a GET of a path (a slow source)."""
        self.requests: list[tuple[str, str]] = []
        self.credentials = credentials
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _authorized(self) -> bool:
                if server.credentials is None:
                    return True
                user, password = server.credentials
                expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                if self.headers.get("Authorization") == expected:
                    return True
                self._answer(401, b"who are you?")
                return False

            def _answer(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                server.requests.append(("GET", self.path))
                if not self._authorized():
                    return
                time.sleep(server.delays.get(self.path, 0.0))
                data = server.files.get(self.path)
                if data is None:
                    self._answer(404, b"not here")
                else:
                    self._answer(200, data)

            def do_PUT(self) -> None:
                server.requests.append(("PUT", self.path))
                length = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(length)
                if not self._authorized():
                    return
                if self.path in server.read_only:
                    self._answer(403, b"read-only")
                    return
                if self.headers.get("If-None-Match") == "*" and self.path in server.files:
                    self._answer(412, b"exists")
                    return
                server.files[self.path] = data
                self._answer(201)

        return Handler


@contextlib.contextmanager
def file_server(credentials: tuple[str, str] | None = None) -> Iterator[FileServer]:
    server = FileServer(credentials).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def ftp_server(root: Path, *, user: str = "grid", password: str = "secret") -> Iterator[str]:
    """A real FTP server (pyftpdlib) on 127.0.0.1 serving ``root`` read-write to one user and
    read-only to anonymous; yields ``ftp://127.0.0.1:PORT``."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import ThreadedFTPServer

    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, str(root), perm="elradfmwMT")
    authorizer.add_anonymous(str(root))
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer})
    server = ThreadedFTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.2}, daemon=True)
    thread.start()
    try:
        yield f"ftp://127.0.0.1:{server.address[1]}"
    finally:
        server.close_all()
        thread.join(5)
