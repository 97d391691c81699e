"""The blocking WebSocket of ``bes ssh`` and ``bes port-forward`` (bes.client.stream), against a
real WebSocket server on loopback (websockets' own, on a thread): what a caller sees when it
receives, times out, is closed by the peer, or closes from another thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.http11 import Request, Response

from bes.client.stream import BlockingWebSocket


async def _handler(websocket: ServerConnection) -> None:
    path = websocket.request.path if websocket.request else ""
    if path == "/echo":
        async for message in websocket:
            await websocket.send(message)
    elif path == "/two-then-close":
        await websocket.send(b"one")
        await websocket.send(b"two")
        await websocket.close()
    elif path == "/abort":
        await websocket.send(b"then nothing")
        websocket.transport.abort()  # no closing handshake: an abnormal end
    else:  # "/silent": never says anything
        await websocket.wait_closed()


def _refuse(_: ServerConnection, request: Request) -> Response | None:
    if request.path == "/refused":
        return Response(403, "Forbidden", Headers([("Content-Length", "10")]), b"not yours\n")
    return None


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    port: list[int] = []

    async def run() -> None:
        async with serve(_handler, "127.0.0.1", 0, process_request=_refuse) as running:
            port.append(running.sockets[0].getsockname()[1])
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield f"ws://127.0.0.1:{port[0]}"
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def _open(server: str, path: str) -> BlockingWebSocket:
    return BlockingWebSocket.connect(
        server + path, headers={}, ssl=None, open_timeout_s=10, max_size=1 << 20
    )


def test_messages_go_both_ways_as_bytes(server: str) -> None:
    with _open(server, "/echo") as websocket:
        for payload in (b"hello", b"", bytes(range(256)) * 100):
            websocket.send(payload)
            assert websocket.recv(timeout=10) == payload


def test_a_receive_that_times_out_leaves_the_connection_open(server: str) -> None:
    with _open(server, "/echo") as websocket:
        with pytest.raises(TimeoutError):
            websocket.recv(timeout=0.2)
        websocket.send(b"still here")
        assert websocket.recv(timeout=10) == b"still here"


def test_iteration_ends_when_the_peer_closes(server: str) -> None:
    with _open(server, "/two-then-close") as websocket:
        assert list(websocket) == [b"one", b"two"]
        with pytest.raises(ConnectionClosed):
            websocket.send(b"too late")


def test_an_abnormal_end_is_an_error_not_an_end(server: str) -> None:
    with _open(server, "/abort") as websocket:
        assert websocket.recv(timeout=10) == b"then nothing"
        with pytest.raises(ConnectionClosedError):
            websocket.recv(timeout=10)


def test_closing_from_another_thread_ends_a_waiting_receive(server: str) -> None:
    websocket = _open(server, "/silent")
    ended: list[BaseException] = []

    def receive() -> None:
        try:
            websocket.recv()
        except BaseException as exc:  # noqa: BLE001 (what the waiting thread saw)
            ended.append(exc)

    waiting = threading.Thread(target=receive, daemon=True)
    waiting.start()
    time.sleep(0.2)
    websocket.close()
    waiting.join(10)
    assert not waiting.is_alive()
    assert len(ended) == 1 and isinstance(ended[0], ConnectionClosed)
    websocket.close()  # a second close does nothing
    with pytest.raises(ConnectionClosed):
        websocket.recv(timeout=1)


def test_a_refusal_keeps_its_status_and_leaves_no_thread(server: str) -> None:
    before = threading.active_count()
    with pytest.raises(InvalidStatus) as refused:
        _open(server, "/refused")
    assert refused.value.response.status_code == 403
    assert refused.value.response.body == b"not yours\n"
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before  # (another test's thread may end meanwhile)
