"""The service's relay between users and the VMs of their leases, through the workers' tunnels.

A worker running a VM lease keeps one WebSocket open to the service (its *tunnel*,
``/worker/v1/leases/LEASE/tunnel``); a user opens one WebSocket per TCP stream
(``/bes/activities/ID/tunnel?port=GUEST_PORT``: ``bes ssh``, ``bes port-forward``). The relay
opens a stream of the tunnel's multiplexer (:mod:`bes.tunnel.mux`) to that guest port and
copies bytes both ways. On the user's WebSocket, binary messages are the stream's bytes and an
empty binary message is its end in that direction (TCP's half-close); closing the WebSocket
ends the stream.

Limits, per lease, from :class:`RelayLimits`: concurrent streams (one more is refused with
the reason) and bandwidth (both directions together, a token bucket: streams slow down,
nothing is dropped). ``/metrics`` shows, per lease whose tunnel this replica holds, the open
streams, the bytes relayed and both limits.

Replicas. A worker's tunnel reaches one replica; a user's stream may reach another. The
replica holding a tunnel records it in the ``tunnel`` table with its relay URL and a secret;
another replica that gets a user's stream for that lease *forwards* it: it opens a WebSocket
to the holder's ``/bes/relay/ID?port=N`` with the secret and copies messages between the two.
Users never need to reach a particular replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client.core import GaugeMetricFamily, Metric
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

from bes.db import tunnel_rows
from bes.db.store import Database
from bes.errors import BesError
from bes.http import Receive, Scope, Send
from bes.tunnel.mux import Channel, ChannelClosed, Mux, Stream, StreamRefused
from bes.tunnel.websocket import MAX_MESSAGE, WebSocketChannel, websocket_url

log = logging.getLogger(__name__)

RELAY_PATH: Final = "/bes/relay/"
"""Where one replica forwards a user's stream to the replica holding the lease's tunnel."""
SECRET_HEADER: Final = "x-bes-relay-secret"  # noqa: S105 (a header name)
_CLOSE_TIMEOUT_S: Final = 5.0
_OPEN_TIMEOUT_S: Final = 30.0
POLICY: Final = 1008
"""The WebSocket close code of a refusal where no HTTP answer can be sent (RFC 6455 §7.4.1)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayLimits:
    """Per-lease limits of the relay."""

    streams: int = 16
    """Concurrent streams (ssh sessions, forwarded connections) per lease."""
    bytes_per_second: int = 64 * 1024 * 1024
    """Bandwidth per lease, both directions together."""


class TokenBucket:
    """A token bucket: :meth:`take` waits until ``size`` bytes may pass (one second of burst)."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = float(rate)
        self._tokens = float(rate)
        self._clock = clock
        self._at = clock()
        self._lock = asyncio.Lock()

    async def take(self, size: int) -> None:
        async with self._lock:
            now = self._clock()
            self._tokens = min(self._rate, self._tokens + (now - self._at) * self._rate)
            self._at = now
            self._tokens -= size
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self._rate)


@dataclass(slots=True)
class _Tunnel:
    """A worker's tunnel this replica holds, with its counters."""

    activity_id: str
    mux: Mux
    bucket: TokenBucket
    secret: str
    streams: int = 0
    opened: int = 0
    refused: int = 0
    bytes: dict[str, int] = field(default_factory=lambda: {"to_guest": 0, "from_guest": 0})


class AsgiChannel:
    """A :class:`~bes.tunnel.mux.Channel` over an accepted ASGI WebSocket."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._closed = False

    async def send(self, message: bytes) -> None:
        if self._closed:
            raise ChannelClosed("the WebSocket is closed")
        try:
            await self._send({"type": "websocket.send", "bytes": message})
        except OSError as exc:  # uvicorn: the client went away
            self._closed = True
            raise ChannelClosed(f"the WebSocket closed: {exc}") from exc

    async def recv(self) -> bytes:
        while not self._closed:
            event = await self._receive()
            if event["type"] == "websocket.receive":
                if event.get("bytes") is not None:
                    data: bytes = event["bytes"]
                    return data
                self._closed = True
                raise ChannelClosed("a text message in a binary stream")
            if event["type"] == "websocket.disconnect":
                self._closed = True
        raise ChannelClosed("the WebSocket closed")

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError, RuntimeError):
                await self._send({"type": "websocket.close", "code": 1000})


async def refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    """Refuse a WebSocket before accepting it: an HTTP answer with a reason, where the server
    can send one (the ASGI extension), else a plain close (HTTP 403)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = (message + "\n").encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": POLICY})


async def accept(receive: Receive, send: Send) -> AsgiChannel:
    """Complete the WebSocket handshake of an ASGI connection."""
    event = await receive()
    if event["type"] != "websocket.connect":
        raise ChannelClosed("the client left before the handshake")
    await send({"type": "websocket.accept"})
    return AsgiChannel(receive, send)


class Relay:
    """The relay of one replica.

    Args:
        db: The shared database (the ``tunnel`` table).
        replica: This replica's id.
        relay_url: How other replicas reach this one (its base URL, e.g. ``http://10.0.0.5:8080``).
        limits: Per-lease limits.
        peer_ssl: How to check another replica's HTTPS certificate when forwarding to it:
            chained to the replicas' own certificate file (every certificate in it is an
            anchor). Host names are not checked: replicas behind a load balancer share the
            public name's certificate, and the tunnel's secret authenticates the call.
    """

    def __init__(
        self,
        db: Database,
        *,
        replica: str,
        relay_url: str,
        limits: RelayLimits | None = None,
        peer_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self._db = db
        self._peer_ssl = peer_ssl
        self.replica = replica
        self.relay_url = relay_url.rstrip("/")
        self.limits = limits or RelayLimits()
        self._tunnels: dict[str, _Tunnel] = {}

    # ------------------------------------------------------------------ worker side

    async def serve_tunnel(self, activity_id: str, receive: Receive, send: Send) -> None:
        """Hold a worker's tunnel for ``activity_id`` until it ends (a newer one replaces it)."""
        channel = await accept(receive, send)
        tunnel = _Tunnel(
            activity_id=activity_id,
            mux=Mux(channel),
            bucket=TokenBucket(self.limits.bytes_per_second),
            secret=secrets.token_urlsafe(32),
        )
        replaced = self._tunnels.get(activity_id)
        self._tunnels[activity_id] = tunnel
        if replaced is not None:
            await replaced.mux.close()
        await self._db.write(
            tunnel_rows.hold,
            tunnel_rows.Held(
                activity_id=activity_id,
                replica=self.replica,
                relay_url=self.relay_url,
                secret=tunnel.secret,
            ),
        )
        log.info("%s: tunnel of its worker open", activity_id)
        try:
            await tunnel.mux.run()
        finally:
            if self._tunnels.get(activity_id) is tunnel:
                del self._tunnels[activity_id]
                with contextlib.suppress(BesError):
                    await self._db.write(tunnel_rows.release, (activity_id, self.replica))
            await channel.close()
            log.info("%s: tunnel of its worker closed", activity_id)

    async def close_all(self) -> None:
        """End every tunnel held here, and their streams (the service stops)."""
        tunnels, self._tunnels = list(self._tunnels.values()), {}
        for tunnel in tunnels:
            await tunnel.mux.close()

    # ------------------------------------------------------------------ user side

    async def serve_stream(
        self, activity_id: str, port: int, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Relay one user's stream to ``port`` of the lease's guest (the caller checked that
        the user may). Here if this replica holds the tunnel, else through the one that does.
        """
        tunnel = self._tunnels.get(activity_id)
        if tunnel is None:
            held = await self._db.read(tunnel_rows.holder, activity_id)
            if held is None or held.replica == self.replica:
                await refuse(
                    scope,
                    send,
                    503,
                    f"the worker of {activity_id} has no tunnel open yet (the VM is not ready, "
                    "or its worker is reconnecting); try again in a few seconds",
                )
                return
            await self._forward(held, port, scope, receive, send)
            return
        await self._local_stream(tunnel, port, scope, receive, send)

    async def serve_forwarded(
        self,
        activity_id: str,
        port: int,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        secret: str,
    ) -> None:
        """A stream another replica forwards here (``/bes/relay/ID``), with the tunnel's
        secret instead of a user's credentials."""
        tunnel = self._tunnels.get(activity_id)
        if tunnel is None or not secrets.compare_digest(secret, tunnel.secret):
            await refuse(scope, send, 404, f"this replica holds no tunnel for {activity_id}")
            return
        await self._local_stream(tunnel, port, scope, receive, send)

    async def _local_stream(
        self, tunnel: _Tunnel, port: int, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if tunnel.streams >= self.limits.streams:
            tunnel.refused += 1
            await refuse(
                scope,
                send,
                429,
                f"{tunnel.activity_id} has {tunnel.streams} streams open, its limit; "
                "close one and try again",
            )
            return
        tunnel.streams += 1
        try:
            try:
                stream = await tunnel.mux.open(port)
            except (StreamRefused, ChannelClosed, TimeoutError) as exc:
                tunnel.refused += 1
                await refuse(scope, send, 502, f"the guest's port {port}: {exc}")
                return
            tunnel.opened += 1
            try:
                user = await accept(receive, send)
            except ChannelClosed:
                await stream.close()
                return
            await _bridge(user, stream, tunnel)
        finally:
            tunnel.streams -= 1

    async def _forward(
        self, held: tunnel_rows.Held, port: int, scope: Scope, receive: Receive, send: Send
    ) -> None:
        url = websocket_url(f"{held.relay_url}{RELAY_PATH}{held.activity_id}")
        try:
            async with connect(
                f"{url}?port={port}",
                additional_headers={SECRET_HEADER: held.secret},
                ssl=self._peer_ssl if url.startswith("wss:") else None,
                proxy=None,
                open_timeout=_OPEN_TIMEOUT_S,
                max_size=MAX_MESSAGE,
                compression=None,
            ) as websocket:
                user = await accept(receive, send)
                await _copy_both(user, WebSocketChannel(websocket))
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
            await refuse(scope, send, status, body or f"replica {held.replica} refused: {status}")
        except (OSError, TimeoutError, WebSocketException) as exc:
            await refuse(
                scope,
                send,
                502,
                f"the replica holding the tunnel of {held.activity_id} ({held.replica}) is "
                f"unreachable: {exc}",
            )

    # ------------------------------------------------------------------ metrics

    def collect(self) -> Iterator[Metric]:
        """Per-lease gauges and counters of the tunnels this replica holds (a Collector)."""
        streams = GaugeMetricFamily(
            "bes_tunnel_streams", "Open streams of a VM lease's tunnel", labels=["activity"]
        )
        limit = GaugeMetricFamily(
            "bes_tunnel_stream_limit", "Concurrent streams a VM lease may have", labels=["activity"]
        )
        rate = GaugeMetricFamily(
            "bes_tunnel_bandwidth_limit_bytes_per_second",
            "A VM lease's relay bandwidth, both directions together",
            labels=["activity"],
        )
        relayed = GaugeMetricFamily(
            "bes_tunnel_relayed_bytes",
            "Bytes relayed for a VM lease since its tunnel opened here, by direction",
            labels=["activity", "direction"],
        )
        opened = GaugeMetricFamily(
            "bes_tunnel_streams_opened",
            "Streams opened (or refused: limit, port) since the lease's tunnel opened here",
            labels=["activity", "outcome"],
        )
        for tunnel in list(self._tunnels.values()):
            key = [tunnel.activity_id]
            streams.add_metric(key, tunnel.streams)
            limit.add_metric(key, self.limits.streams)
            rate.add_metric(key, self.limits.bytes_per_second)
            for direction, count in tunnel.bytes.items():
                relayed.add_metric([*key, direction], count)
            opened.add_metric([*key, "opened"], tunnel.opened)
            opened.add_metric([*key, "refused"], tunnel.refused)
        connected = GaugeMetricFamily(
            "bes_tunnels", "Workers' tunnels of VM leases this replica holds"
        )
        connected.add_metric([], len(self._tunnels))
        return iter([connected, streams, limit, rate, relayed, opened])


async def _bridge(user: AsgiChannel, stream: Stream, tunnel: _Tunnel) -> None:
    """Copy between a user's WebSocket and a stream until both directions ended, or either
    side failed; then close both."""
    user_done = asyncio.Event()

    async def to_guest() -> None:
        with contextlib.suppress(ChannelClosed):
            while True:
                data = await user.recv()
                if not data:
                    await stream.write_eof()
                    user_done.set()
                    continue
                await tunnel.bucket.take(len(data))
                await stream.write(data)
                tunnel.bytes["to_guest"] += len(data)

    async def from_guest() -> None:
        while data := await stream.read():
            await tunnel.bucket.take(len(data))
            await user.send(data)
            tunnel.bytes["from_guest"] += len(data)
        await user.send(b"")
        await user_done.wait()

    await _first_of(to_guest(), from_guest())
    await stream.close()
    await user.close()


async def _copy_both(a: Channel, b: Channel) -> None:
    """Copy messages both ways between two channels until either ends."""

    async def copy(source: Channel, sink: Channel) -> None:
        with contextlib.suppress(ChannelClosed):
            while True:
                await sink.send(await source.recv())

    await _first_of(copy(a, b), copy(b, a))
    await a.close()
    await b.close()


async def _first_of(*coroutines: Awaitable[Any]) -> None:
    """Run ``coroutines`` until one of them ends (or fails); cancel the others."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if error is not None and not isinstance(error, OSError | BesError):
                log.error("relay: a stream failed", exc_info=error)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT_S)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()


def peer_context(certificate_file: str) -> ssl.SSLContext:
    """TLS to another replica: its certificate must chain to one in ``certificate_file`` (the
    replicas' own certificate and its chain); host names are not checked (see :class:`Relay`)."""
    context = ssl.create_default_context(cafile=certificate_file)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = False
    return context
