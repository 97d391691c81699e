"""TCP streams to a VM lease's guest, through a bes service (``bes ssh``, ``bes port-forward``).

The service relays each stream over the tunnel its worker keeps open: the user never reaches
the worker, which is usually behind NAT. One stream is one WebSocket to the lease's tunnel URL
(``…/activities/ID/tunnel?port=GUEST_PORT``), with the client's credentials; binary messages
carry the bytes, an empty one ends a direction (TCP's half-close), closing it ends the stream.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from bes.client.faults import ConnectionProblem, HttpProblem
from bes.client.stream import BlockingWebSocket

log = logging.getLogger(__name__)

_MAX_MESSAGE: Final = 1024 * 1024
_READ: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class TunnelOptions:
    """Credentials and TLS for a lease's streams (from :meth:`BESClient.tunnel_options`)."""

    headers: Mapping[str, str]
    ssl: ssl.SSLContext | None
    timeout_s: float

    def __repr__(self) -> str:
        return "TunnelOptions(...)"  # never the credentials


def open_stream(tunnel_url: str, port: int, options: TunnelOptions) -> BlockingWebSocket:
    """One stream to ``port`` of the guest (close it when done).

    Raises:
        HttpProblem: The service refused it (with its reason: not yours, not ready, the port
            is not forwarded, the lease's stream limit).
        ConnectionProblem: The service could not be reached.
    """
    url = f"{tunnel_url}?port={port}"
    try:
        return BlockingWebSocket.connect(
            url,
            headers=options.headers,
            ssl=options.ssl,
            open_timeout_s=options.timeout_s,
            max_size=_MAX_MESSAGE,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        said = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
        message = f"{tunnel_url} refused a stream to port {port}: HTTP {status}"
        raise HttpProblem(
            f"{message} ({said})" if said else message, status=status, url=url
        ) from exc
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise ConnectionProblem(
            f"cannot open a stream through {tunnel_url}: {exc}", url=url
        ) from exc


class _Ends:
    """Both directions of one stream: the WebSocket closes once each has ended."""

    def __init__(self, websocket: BlockingWebSocket) -> None:
        self._websocket = websocket
        self._lock = threading.Lock()
        self._sent_eof = False
        self._got_eof = False

    def sent_eof(self) -> None:
        self._end(sent=True)

    def got_eof(self) -> None:
        self._end(sent=False)

    def _end(self, *, sent: bool) -> None:
        with self._lock:
            if sent:
                self._sent_eof = True
            else:
                self._got_eof = True
            done = self._sent_eof and self._got_eof
        if done:
            self._websocket.close()


def bridge(
    websocket: BlockingWebSocket,
    read: Callable[[], bytes],
    write: Callable[[bytes], None],
    write_eof: Callable[[], None],
) -> None:
    """Copy between a stream and a local end until both directions ended (or either failed).

    ``read`` returns ``b""`` at the local end's EOF; ``write_eof`` half-closes it.
    """
    ends = _Ends(websocket)

    def upstream() -> None:
        try:
            while data := read():
                websocket.send(data)
            websocket.send(b"")
            ends.sent_eof()
        except (OSError, ConnectionClosed):
            websocket.close()

    sender = threading.Thread(target=upstream, name="tunnel-up", daemon=True)
    sender.start()
    try:
        for message in websocket:
            if not message:
                with contextlib.suppress(OSError):
                    write_eof()
                ends.got_eof()
                continue
            write(message)
    except (OSError, ConnectionClosed):
        pass
    finally:
        websocket.close()


def stdio(websocket: BlockingWebSocket) -> None:
    """Bridge a stream with this process's stdin and stdout (ssh's ProxyCommand)."""

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(1, view)
            view = view[written:]

    bridge(websocket, lambda: os.read(0, _READ), write, lambda: os.close(1))


class PortForward:
    """Listen on a local port; carry each connection to ``guest_port`` through the service.

    Args:
        tunnel_url: The lease's tunnel URL (``BESClient.lease(ref)["tunnel"]``).
        guest_port: A port the lease forwards.
        options: Credentials and TLS (``BESClient.tunnel_options()``).
        local_port: 0 picks a free one (see :attr:`port`).
        host: Where to listen: loopback unless you mean to share it.
    """

    def __init__(
        self,
        tunnel_url: str,
        guest_port: int,
        options: TunnelOptions,
        *,
        local_port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        self._url = tunnel_url
        self._guest_port = guest_port
        self._options = options
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, local_port))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()

    def serve_forever(self) -> None:
        """Accept connections until :meth:`close`."""
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(
                target=self._carry, args=(connection,), name="port-forward", daemon=True
            ).start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _carry(self, connection: socket.socket) -> None:
        with connection:
            try:
                websocket = open_stream(self._url, self._guest_port, self._options)
            except (HttpProblem, ConnectionProblem) as exc:
                log.warning("port %d: %s", self._guest_port, exc)
                return
            bridge(
                websocket,
                lambda: connection.recv(_READ),
                connection.sendall,
                lambda: connection.shutdown(socket.SHUT_WR),
            )
