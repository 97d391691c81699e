"""ASGI plumbing shared by the service's HTTP routes: headers, bounded bodies, responses."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Final

from bes.errors import BesError

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

XML: Final = b"text/xml; charset=utf-8"
TEXT: Final = b"text/plain; charset=utf-8"
JSON: Final = b"application/json"
DRAIN_BYTES: Final = 256 * 1024 * 1024
"""Most bytes of an oversized request body read (and thrown away) so the client can read
the refusal."""
DRAIN_SECONDS: Final = 30.0
"""Longest time spent doing so."""
_FILE_CHUNK: Final = 256 * 1024


class BodyTooLarge(BesError):
    """A request body went past its limit, or the client went away sending it."""


def headers_of(scope: Scope) -> dict[str, str]:
    """Request headers, names in lower case."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def read_body(
    receive: Receive,
    headers: dict[str, str],
    limit: int,
    *,
    drain_bytes: int = DRAIN_BYTES,
    drain_s: float = DRAIN_SECONDS,
) -> bytes | None:
    """The request body, or None if it exceeds ``limit`` (or the client went away).

    Most clients send a whole body before they read the answer, and a server that closes its
    socket with unread data in it makes the kernel reset the connection: the client then sees
    "connection reset" instead of the refusal. So an oversized body is read to its end and
    thrown away (nginx's lingering close), within ``drain_bytes`` and ``drain_s``; past
    either, or when the declared length is already past them, the caller answers and closes
    anyway. A client that waits for ``100 Continue`` before sending an oversized declared
    body is refused before it sends anything.

    Args:
        receive: The ASGI receive callable.
        headers: The request headers (names in lower case).
        limit: Most bytes of body accepted.
        drain_bytes: Most bytes of an oversized body read and thrown away past ``limit``.
        drain_s: Longest time spent doing so.
    """
    declared = headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        expects = "100-continue" in headers.get("expect", "").lower()
        if not expects and int(declared) <= limit + drain_bytes:
            await _drain(receive, limit + drain_bytes, drain_s)
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        more = bool(message.get("more_body", False))
        size += len(chunk)
        if size > limit:
            if more:
                await _drain(receive, drain_bytes, drain_s)
            return None
        chunks.append(chunk)
        if not more:
            return b"".join(chunks)


async def _drain(receive: Receive, budget: int, seconds: float) -> None:
    """Read and discard the rest of a body, until its end or past ``budget`` bytes or
    ``seconds``, whichever comes first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    drained = 0
    while drained <= budget:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            async with asyncio.timeout(remaining):
                message = await receive()
        except TimeoutError:
            break
        if message["type"] == "http.disconnect":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
    log.info("stopped draining an oversized request body after %d bytes", drained)


async def stream_body(receive: Receive) -> AsyncIterator[bytes]:
    """The request body chunk by chunk, as it arrives (for uploads)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyTooLarge("the client went away during the upload")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    *,
    close: bool = False,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A complete response."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    headers.extend(extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, status: int, data: Any, *, close: bool = False) -> None:
    """A JSON response."""
    body = json.dumps(data, separators=(",", ":")).encode()
    await respond(send, status, body, JSON, close=close)


async def respond_file(send: Send, path: Path, content_type: bytes, *, head: bool) -> None:
    """A file, streamed in chunks (it may be larger than memory)."""
    size = path.stat().st_size
    headers = [(b"content-type", content_type), (b"content-length", str(size).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if head:
        await send({"type": "http.response.body", "body": b""})
        return
    with path.open("rb") as source:
        while True:
            chunk = source.read(_FILE_CHUNK)
            more = len(chunk) == _FILE_CHUNK
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
            if not more:
                return


async def not_allowed(send: Send, allow: str) -> None:
    """405 with the methods that are."""
    await respond(send, 405, b"method not allowed\n", TEXT, extra=[(b"allow", allow.encode())])
