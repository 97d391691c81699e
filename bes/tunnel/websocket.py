"""A :class:`~bes.tunnel.mux.Channel` over a connection of the ``websockets`` library (the
worker's tunnel, a replica forwarding to another, the user's commands)."""

from __future__ import annotations

from typing import Final

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed

from bes.tunnel.mux import ChannelClosed

MAX_MESSAGE: Final = 1024 * 1024
"""The largest WebSocket message either end accepts (a mux message is far smaller)."""


def websocket_url(url: str) -> str:
    """An http(s) URL as the ws(s) URL of the same place (TLS stays TLS)."""
    scheme, _, rest = url.partition("://")
    return f"{'wss' if scheme.lower() == 'https' else 'ws'}://{rest}"


class WebSocketChannel:
    """Binary messages over a WebSocket; the end of the connection is :class:`ChannelClosed`."""

    def __init__(self, websocket: Connection) -> None:
        self._websocket = websocket

    async def send(self, message: bytes) -> None:
        try:
            await self._websocket.send(message)
        except ConnectionClosed as exc:
            raise ChannelClosed(f"the WebSocket closed: {exc}") from exc

    async def recv(self) -> bytes:
        try:
            message = await self._websocket.recv()
        except ConnectionClosed as exc:
            raise ChannelClosed(f"the WebSocket closed: {exc}") from exc
        if isinstance(message, str):
            raise ChannelClosed("a text message in a binary tunnel")
        return message

    async def close(self) -> None:
        await self._websocket.close()
