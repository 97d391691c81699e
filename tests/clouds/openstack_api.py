"""A recorded OpenStack API on 127.0.0.1: fixture files served over real HTTP.

A small threaded server plays a DevStack-shaped cloud on one port (Keystone under
``/identity``, Nova under ``/compute/v2.1``, Glance under ``/image``, Neutron under
``/networking``). Each route answers from a file in ``fixtures/openstack/`` (``{base}`` in a
file becomes the server's URL, so the token's service catalog points back at it) and every
request is recorded, so that tests can check what the client really sent.
"""

from __future__ import annotations

import datetime
import json
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).parent / "fixtures" / "openstack"
TOKEN = "gAAAAABnUvKq3Xy0bes-test-token-0001"
SERVER = "8d3b6f2a-1c4e-4a5b-9d7e-3f2a1b0c9d8e"
GONE = "6e0f2b1c-9a8d-4e7f-b6c5-d4e3f2a1b0c9"
IMAGE = "5d7f4c1e-8a2b-4c3d-9e0f-1a2b3c4d5e6f"


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """A recorded answer: status, body from a fixture file, extra headers, a delay."""

    status: int
    fixture: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """A request the server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


def routes() -> dict[tuple[str, str], Answer]:
    """The answers of one session: create, list, delete, as a DevStack cloud gave them."""
    return {
        ("POST", "/identity/v3/auth/tokens"): Answer(
            status=201, fixture="keystone_token_password.json", headers={"X-Subject-Token": TOKEN}
        ),
        ("GET", "/compute/v2.1/flavors/detail"): Answer(
            status=200, fixture="nova_flavors_detail.json"
        ),
        ("POST", "/compute/v2.1/servers"): Answer(status=202, fixture="nova_server_create.json"),
        ("GET", f"/compute/v2.1/servers/{SERVER}"): Answer(
            status=200, fixture="nova_server_building.json"
        ),
        ("GET", "/compute/v2.1/servers/detail"): Answer(
            status=200, fixture="nova_servers_detail.json"
        ),
        ("DELETE", f"/compute/v2.1/servers/{SERVER}"): Answer(status=204),
        ("DELETE", f"/compute/v2.1/servers/{GONE}"): Answer(
            status=404, fixture="nova_server_not_found.json"
        ),
        ("GET", "/image/v2/images"): Answer(status=200, fixture="glance_images.json"),
        ("GET", f"/image/v2/images/{IMAGE}"): Answer(
            status=200, fixture="glance_image_worker.json"
        ),
        ("GET", "/networking/v2.0/networks"): Answer(status=200, fixture="neutron_networks.json"),
        ("GET", "/networking/v2.0/security-groups"): Answer(
            status=200, fixture="neutron_security_groups_none.json"
        ),
        ("POST", "/networking/v2.0/security-groups"): Answer(
            status=201, fixture="neutron_security_group_created.json"
        ),
    }


class RecordedCloud(ThreadingHTTPServer):
    """Answers OpenStack API requests from fixture files and records them."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.base = f"http://127.0.0.1:{self.server_address[1]}"
        self.routes = routes()
        self.sent: list[Sent] = []
        self.release = threading.Event()  # ends the delays of slow answers at teardown

    def calls(self) -> list[str]:
        """The requests received, as ``METHOD /path``."""
        return [f"{s.method} {s.path}" for s in self.sent]

    def bodies(self, method: str, path: str) -> list[Any]:
        """The JSON bodies of the requests to one route."""
        return [s.body for s in self.sent if (s.method, s.path) == (method, path)]

    def render(self, fixture: str) -> bytes:
        now = datetime.datetime.now(datetime.UTC)
        stamp = "%Y-%m-%dT%H:%M:%S.%fZ"
        text = (FIXTURES / fixture).read_text(encoding="utf-8")
        text = text.replace("{base}", self.base)
        text = text.replace("{issued_at}", now.strftime(stamp))
        text = text.replace("{expires_at}", (now + datetime.timedelta(hours=1)).strftime(stamp))
        return text.encode()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up on a slow answer is expected here."""


class _Handler(BaseHTTPRequestHandler):
    server: RecordedCloud
    disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def _answer(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.server.sent.append(
            Sent(
                method=self.command,
                path=url.path,
                query=parse_qs(url.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=json.loads(raw) if raw else None,
            )
        )
        answer = self.server.routes.get((self.command, url.path))
        if answer is None:
            answer = Answer(status=404, fixture="nova_server_not_found.json")
        if answer.delay_s:
            self.server.release.wait(answer.delay_s)
        body = self.server.render(answer.fixture) if answer.fixture else b""
        self.send_response(answer.status)
        kind = "text/html" if (answer.fixture or "").endswith(".html") else "application/json"
        self.send_header("Content-Type", f"{kind}; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Openstack-Request-Id", f"req-{uuid.uuid4()}")
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass
