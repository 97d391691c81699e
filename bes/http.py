"""ASGI plumbing shared by the service's HTTP routes: headers, bounded bodies, responses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Final

from bes.errors import BesError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

XML: Final = b"text/xml; charset=utf-8"
TEXT: Final = b"text/plain; charset=utf-8"
JSON: Final = b"application/json"
_DRAIN_FACTOR: Final = 16  # read (and discard) at most this many limits of an oversized body
_FILE_CHUNK: Final = 256 * 1024


class BodyTooLarge(BesError):
    """A request body went past its limit, or the client went away sending it."""


def headers_of(scope: Scope) -> dict[str, str]:
    """Request headers, names in lower case."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes | None:
    """The request body, or None (after draining a bounded amount) if it exceeds ``limit``."""
    declared = headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > limit
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            too_big = True
        if not too_big:
            chunks.append(chunk)
        if not message.get("more_body", False) or size > limit * _DRAIN_FACTOR:
            break
    return None if too_big else b"".join(chunks)


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
