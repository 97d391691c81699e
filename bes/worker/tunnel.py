"""The worker's end of a VM lease's tunnel: one outbound WebSocket to the service per lease
with forwarded ports, over which the service opens TCP streams to the guest's ports.

The worker never listens on a public address: the guest's ports are forwarded to its
loopback (as the VM extension says), and this connection, which the worker opens like any
other call of the worker protocol (its token, the service's TLS settings), is the only way in.
It dials only the lease's own forwarded ports, on 127.0.0.1. A lost connection is opened
again with backoff (open streams drop; the lease does not); it ends with the lease.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Mapping
from typing import Final

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

from bes.tunnel.mux import Mux, StreamRefused
from bes.tunnel.websocket import MAX_MESSAGE, WebSocketChannel
from bes.worker.client import TunnelEndpoint

log = logging.getLogger(__name__)

_OPEN_TIMEOUT_S: Final = 30.0
_BACKOFF_MAX_S: Final = 60.0
_CLOSE_TIMEOUT_S: Final = 10.0
_GONE: Final = frozenset({401, 403, 404, 409})
"""Answers after which reconnecting is useless: the lease or the token is not valid."""


class LeaseTunnel:
    """Keeps one lease's tunnel open on a thread of its own until :meth:`close`.

    Args:
        endpoint: Where the tunnel goes (from :meth:`ServiceClient.tunnel`).
        ports: The lease's forwarded TCP ports: guest port -> port on 127.0.0.1.
        name: For the logs (the activity id).
    """

    def __init__(self, endpoint: TunnelEndpoint, ports: Mapping[int, int], *, name: str) -> None:
        self._endpoint = endpoint
        self._ports = dict(ports)
        self._name = name
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"tunnel-{name}", daemon=True)
        self.connections = 0
        """How many times the WebSocket was opened (1 + reconnections)."""

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """End the tunnel and every stream in it (the lease is over)."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._cancel)
            self._thread.join(_CLOSE_TIMEOUT_S)

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _run(self) -> None:
        try:
            self._task = self._loop.create_task(self._serve())
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()
            log.info("%s: tunnel closed", self._name)

    async def _serve(self) -> None:
        delay = 1.0
        while True:
            try:
                async with connect(
                    self._endpoint.url,
                    additional_headers=dict(self._endpoint.headers),
                    ssl=self._endpoint.ssl,
                    server_hostname=self._endpoint.server_name,
                    open_timeout=_OPEN_TIMEOUT_S,
                    max_size=MAX_MESSAGE,
                    compression=None,
                ) as websocket:
                    self.connections += 1
                    delay = 1.0
                    log.info("%s: tunnel open to %s", self._name, self._endpoint.url)
                    await Mux(WebSocketChannel(websocket), dial=self._dial).run()
                    log.warning("%s: tunnel connection lost", self._name)
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in _GONE:
                    log.warning(
                        "%s: the service refuses the tunnel (%s); giving up", self._name, status
                    )
                    return
                log.warning(
                    "%s: tunnel refused (%s); retrying in %.0f s", self._name, status, delay
                )
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.warning("%s: tunnel: %s; retrying in %.0f s", self._name, exc, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 (jitter)
            delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _dial(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        local = self._ports.get(port)
        if local is None:
            forwarded = ", ".join(str(p) for p in sorted(self._ports)) or "none"
            raise StreamRefused(f"guest port {port} is not forwarded by this lease ({forwarded})")
        try:
            return await asyncio.open_connection("127.0.0.1", local)
        except OSError as exc:
            raise StreamRefused(f"guest port {port} refused the connection: {exc}") from exc
