"""A scripted SOAP peer on loopback: it answers each operation with a prepared envelope, the
way another middleware's BES would, and keeps every request it received (after WS-Security
was applied, exactly as it crossed the wire)."""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lxml import etree

Answer = tuple[int, bytes, str]
"""HTTP status, body, content type."""

Responder = Callable[[str, etree._Element], Answer]
"""Operation (local name of the Body's element) and the request envelope → the answer."""


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    client_certificate: dict | None = None

    @property
    def envelope(self) -> etree._Element:
        return etree.fromstring(self.body)

    @property
    def operation(self) -> str:
        return operation_of(self.envelope)


@dataclass
class Peer:
    url: str
    received: list[Received] = field(default_factory=list)


def operation_of(envelope: etree._Element) -> str:
    body = envelope.find("{http://schemas.xmlsoap.org/soap/envelope/}Body")
    assert body is not None, "no SOAP 1.1 Body in the request"
    return etree.QName(body[0]).localname


@contextlib.contextmanager
def soap_peer(
    responder: Responder, *, tls: ssl.SSLContext | None = None, path: str = "/bes"
) -> Iterator[Peer]:
    """Serve ``responder`` at ``http(s)://127.0.0.1:PORT{path}`` for the duration of the block."""
    received: list[Received] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            certificate = None
            if isinstance(self.connection, ssl.SSLSocket):
                certificate = self.connection.getpeercert() or None
            received.append(
                Received(
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    client_certificate=certificate,
                )
            )
            try:
                envelope = etree.fromstring(body)
                status, answer, kind = responder(operation_of(envelope), envelope)
            except Exception as exc:  # noqa: BLE001 - a broken responder says so on the wire
                status, answer, kind = 599, f"peer error: {exc!r}".encode(), "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    scheme = "https" if tls is not None else "http"
    try:
        yield Peer(url=f"{scheme}://127.0.0.1:{server.server_address[1]}{path}", received=received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def xml_answer(body: bytes, status: int = 200) -> Answer:
    return status, body, "text/xml; charset=utf-8"
