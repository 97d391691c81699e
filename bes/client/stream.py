"""A WebSocket for blocking code: websockets' asyncio client, on an event loop of its own.

Not websockets' threaded client (``websockets.sync``): its reader thread reads the TLS
connection while the caller's thread writes it, and an OpenSSL connection is not to be used
from two threads at once. A TLS 1.3 server sends its session tickets just after the handshake;
when they arrived as the opening request went out, the request could be lost: the client
waited for an answer the server never knew it owed (CI saw it, and about one stream in 400
opened in parallel did it here). asyncio's TLS runs on the loop's one thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import CancelledError as FutureCancelled
from typing import Any, Final, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedOK

T = TypeVar("T")

_CLOSE_TIMEOUT_S: Final = 10.0


class BlockingWebSocket:
    """One open WebSocket, used from any thread: one thread may receive while others send.

    Raises ``websockets.exceptions.ConnectionClosed`` once it is closed (by either end), as
    websockets' own connections do.
    """

    def __init__(
        self, websocket: ClientConnection, loop: asyncio.AbstractEventLoop, thread: threading.Thread
    ) -> None:
        self._websocket = websocket
        self._loop = loop
        self._thread = thread
        self._lock = threading.Lock()
        self._closing = False

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        headers: Mapping[str, str],
        ssl: Any,
        open_timeout_s: float,
        max_size: int,
    ) -> BlockingWebSocket:
        """Open a WebSocket to ``url`` (websockets' exceptions if it cannot be opened)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="bes-websocket", daemon=True)
        thread.start()
        opening = connect(
            url,
            additional_headers=dict(headers),
            ssl=ssl,
            open_timeout=open_timeout_s,
            close_timeout=_CLOSE_TIMEOUT_S,
            max_size=max_size,
            compression=None,
        )
        try:
            websocket = asyncio.run_coroutine_threadsafe(_opened(opening), loop).result()
        except BaseException:
            _stop(loop, thread)
            raise
        return cls(websocket, loop, thread)

    def send(self, message: bytes) -> None:
        """Send one binary message (waits while the peer reads slower than we write)."""
        self._call(lambda: self._websocket.send(message))

    def recv(self, timeout: float | None = None) -> bytes:
        """The next message, as bytes.

        Raises:
            TimeoutError: None came within ``timeout`` seconds (the connection stays open).
        """
        message: bytes = self._call(
            lambda: asyncio.wait_for(self._websocket.recv(decode=False), timeout)
        )
        return message

    def __iter__(self) -> Iterator[bytes]:
        """The messages until the connection closes normally (an abnormal close raises)."""
        while True:
            try:
                yield self.recv()
            except ConnectionClosedOK:
                return

    def close(self) -> None:
        """Close the WebSocket and its loop; calls of other threads waiting on it end with
        ConnectionClosed. Does nothing the second time."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        try:
            asyncio.run_coroutine_threadsafe(self._shut(), self._loop).result(_CLOSE_TIMEOUT_S + 5)
        except (OSError, TimeoutError, FutureCancelled):
            pass
        finally:
            _stop(self._loop, self._thread)

    def __enter__(self) -> BlockingWebSocket:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    async def _shut(self) -> None:
        await self._websocket.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``make()`` on the loop and wait for it (not made at all once closing)."""
        with self._lock:  # nothing is handed to a loop that close() stopped
            if self._closing:
                raise ConnectionClosedOK(None, None)
            future = asyncio.run_coroutine_threadsafe(make(), self._loop)
        try:
            return future.result()
        except FutureCancelled:  # close() ended it
            raise ConnectionClosedOK(None, None) from None


async def _opened(opening: Any) -> ClientConnection:
    websocket: ClientConnection = await opening
    return websocket


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(_CLOSE_TIMEOUT_S)
    if not thread.is_alive():
        loop.close()
