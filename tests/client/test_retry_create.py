"""A submission whose answer is lost is sent again with the same wsa:MessageID, and the
service answers it with the activity it already created: one activity, not two.

Between the client and a real ``bes serve`` sits a loopback TCP relay that, for the first
connection, passes the request on, waits for the service's answer, and then drops the
connection instead of delivering it: what a client sees when a replica dies after its commit,
or when a load balancer times out."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from bes.client import BESClient, jsdl
from tests.support.server import LiveServer


class LossyRelay:
    """Relays loopback connections to ``target``; the first ``lose`` answers are dropped."""

    def __init__(self, target: tuple[str, int], lose: int) -> None:
        self._target = target
        self._lose = lose
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> LossyRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._one, args=(client,), daemon=True).start()

    def _one(self, client: socket.socket) -> None:
        with client, socket.create_connection(self._target, timeout=10) as upstream:
            client.settimeout(10)
            lose = self.dropped < self._lose
            while True:
                request = _http_message(client)
                if request is None:
                    return
                upstream.sendall(request)
                answer = _http_message(upstream)
                if answer is None:
                    return
                if lose:
                    self.dropped += 1
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                    return  # reset: the answer never arrives
                client.sendall(answer)


def _http_message(sock: socket.socket) -> bytes | None:
    """One HTTP/1.1 message with a Content-Length body, or None at end of stream."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.fixture
def relay(server: LiveServer) -> Iterator[LossyRelay]:
    host, port = server.url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    with LossyRelay((host, int(port)), lose=1) as lossy:
        yield lossy


def test_a_lost_answer_is_asked_again_and_one_activity_exists(
    server: LiveServer, relay: LossyRelay
) -> None:
    document = jsdl.build(["/bin/true"], name="asked-twice")
    with BESClient(server.endpoint) as direct:
        before = direct.attributes().total_activities or 0
    with BESClient(f"http://127.0.0.1:{relay.port}/bes", timeout_s=20) as client:
        ref = client.submit(document)
    assert relay.dropped == 1  # the first answer was lost; the second attempt got it
    with BESClient(server.endpoint) as direct:
        assert direct.attributes().total_activities == before + 1
        [status] = direct.status(ref)
        assert status.fault is None
