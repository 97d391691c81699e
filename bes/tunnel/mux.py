"""TCP streams multiplexed over one message channel: the heart of the volunteer-cloud tunnel.

A worker behind NAT keeps one outbound WebSocket to the service per VM lease; the service
relays users' TCP streams (ssh, port forwards) to the guest over it. The WebSocket library
does the framing; this module carries many byte streams over any :class:`Channel` of binary
messages, and depends on no WebSocket library.

Wire format (ours). Each binary message is one byte of type, a 4-byte big-endian stream id,
then the payload::

    type  name     payload
    1     OPEN     the port, 2 bytes big-endian: connect the new stream to it
    2     OPENED   none: the port answered; the stream is open
    3     REFUSED  the reason, UTF-8: the stream did not open (its id stays spent)
    4     DATA     bytes of the stream (at most the sender's ``chunk``)
    5     EOF      none: the sender sends no more DATA on this stream (a TCP FIN)
    6     CLOSE    none: the stream is over, both ways; it is forgotten when sent or received

Stream ids. The side that opens a stream numbers it 1, 2, 3, ... (below 2**31), strictly
increasing and never reused. Either side may open streams, with no roles to agree on: bit 31
of the id on the wire is clear when the stream was opened by the message's *sender* and set
when it was opened by its *receiver*. So OPEN always has it clear, OPENED and REFUSED have it
set, and both sides' numbers live in separate spaces.

Flow control. A side sends DATA on a stream only against credit that the receiver granted
with CREDIT messages (type 7, payload a 4-byte big-endian increment). Each receiver grants its
own ``window`` once (the opener right after OPEN, the other side right after OPENED), then
grants bytes back as its application *reads* them (in batches of a quarter window), not as
they arrive: a slow reader holds at most one window per stream, and its writer waits.

Errors. A message shorter than 5 bytes, an unknown type, a malformed payload, an OPEN that
reuses an id, an answer to a stream not waiting for one, DATA beyond the granted credit or
after EOF: a protocol error, logged as a warning, that closes the channel (every stream ends).
Messages for a stream that was closed are ignored (they race with its CLOSE); a message for a
stream that was never opened is answered CLOSE.

When the channel ends, :meth:`Mux.run` returns and every stream is reset: its reader gets the
bytes already received, then :class:`ConnectionResetError` (or ``b""`` if the far end had sent
EOF); its writer gets :class:`ConnectionResetError`. Messages not yet sent are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Protocol

from bes.errors import BesError

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct(">BI")
_PEER_BIT: Final = 1 << 31
_MAX_NUMBER: Final = _PEER_BIT - 1
_MAX_REASON_BYTES: Final = 1024
_MAX_COURTESY_BACKLOG: Final = 1024
"""Past this many queued messages, CLOSE answers to never-opened streams are not sent."""
_CLOSE_TIMEOUT_S: Final = 5.0
_SPLICE_READ: Final = 64 * 1024


class ChannelClosed(BesError):
    """The channel ended (the far end went away, or it was closed): no stream can go on."""


class StreamRefused(BesError):
    """The far end refused to open a stream; ``str(exc)`` is its reason, for a person."""


class _ProtocolError(BesError):
    """The far end broke the wire format; the channel is closed."""


class _Kind(enum.IntEnum):
    OPEN = 1
    OPENED = 2
    REFUSED = 3
    DATA = 4
    EOF = 5
    CLOSE = 6
    CREDIT = 7


class Channel(Protocol):
    """One message-oriented, ordered, reliable transport, such as a WebSocket."""

    async def send(self, message: bytes) -> None:
        """Send one binary message; raises :class:`ChannelClosed` once the transport ended."""

    async def recv(self) -> bytes:
        """The next binary message; raises :class:`ChannelClosed` when the transport ended
        (including after :meth:`close` on this side)."""

    async def close(self) -> None:
        """End the transport (idempotent); a pending :meth:`recv` then raises."""


Dialer = Callable[[int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
"""Connects a stream the far end opened to a port: given the port, returns the TCP connection,
or raises :class:`StreamRefused` (its text is sent back as the reason) or :class:`OSError`."""


class Stream:
    """One bidirectional byte stream carried by a :class:`Mux`, with TCP's half-close.

    Made by :meth:`Mux.open` (or, on the dialing side, by the mux itself). Not safe to share
    between threads; several tasks may write (each write goes out whole, in order).

    Attributes:
        id: The stream's number, given by the side that opened it (the same on both sides).
        port: The port it was opened to.
    """

    def __init__(self, mux: Mux, *, number: int, port: int, local: bool) -> None:
        self.id = number
        self.port = port
        self._mux = mux
        self._local = local
        self._key = number if local else number | _PEER_BIT  # the id of the messages we send
        self._buffer = bytearray()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._answer: asyncio.Future[None] | None = None  # OPENED / REFUSED, for the opener
        self._credit = 0  # bytes we may still send
        self._allowance = 0  # bytes the far end may still send us
        self._ungranted = 0  # bytes our application read that the far end was not told of
        self._eof_in = False  # the far end sends no more (EOF or CLOSE)
        self._eof_out = False  # we send no more (EOF or CLOSE)
        self._closed = False  # CLOSE sent or received, refused, or reset
        self._error: str | None = None  # why the stream was reset (the channel ended)

    def __repr__(self) -> str:
        return f"<Stream {self.id} port {self.port}{' closed' if self._closed else ''}>"

    @property
    def closed(self) -> bool:
        """True once the stream is over: closed by either side, or its channel ended."""
        return self._closed

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read (never more than the mux's window)."""
        return len(self._buffer)

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Read what has arrived, up to ``max_bytes``; wait if nothing has.

        Returns:
            At least one byte, or ``b""`` once the far end sent EOF or closed the stream (or
            this side closed it).

        Raises:
            ConnectionResetError: The channel ended before the far end's EOF (after the bytes
                that had arrived were read).
        """
        while not self._buffer:
            if self._eof_in:
                return b""
            if self._error is not None:
                raise ConnectionResetError(f"stream {self.id}: {self._error}")
            if self._closed:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = bytes(self._buffer[:max_bytes])
        del self._buffer[:max_bytes]
        self._grant(len(data))
        return data

    async def write(self, data: bytes) -> None:
        """Send ``data``, in DATA messages of at most ``chunk`` bytes, as credit allows.

        Waits while the far end's window is full (its reader is slow) or the channel is busy.

        Raises:
            ConnectionResetError: The channel ended.
            BrokenPipeError: This side sent EOF, or either side closed the stream.
        """
        view = memoryview(data)
        async with self._write_lock:
            while view:
                self._check_writable()
                if self._credit <= 0:
                    self._writable.clear()
                    await self._writable.wait()
                    continue
                size = min(len(view), self._mux.chunk, self._credit)
                self._credit -= size
                await self._mux._send_data(self._key, view[:size])
                view = view[size:]

    async def write_eof(self) -> None:
        """Half-close: tell the far end we send no more (it reads ``b""``); we may still read.

        Does nothing if EOF was already sent or the stream was closed by this side.

        Raises:
            ConnectionResetError: The channel ended.
        """
        async with self._write_lock:
            if self._error is not None:
                raise ConnectionResetError(f"stream {self.id}: {self._error}")
            if self._eof_out or self._closed:
                return
            self._eof_out = True
            self._mux._post(_Kind.EOF, self._key)

    async def close(self) -> None:
        """End the stream both ways: the far end is sent CLOSE; unread bytes are dropped.

        Idempotent. Bytes already passed to :meth:`write` go out before the CLOSE.
        """
        if self._closed:
            return
        self._mux._forget(self)
        self._mux._post(_Kind.CLOSE, self._key)
        self._end()

    def _check_writable(self) -> None:
        if self._error is not None:
            raise ConnectionResetError(f"stream {self.id}: {self._error}")
        if self._eof_out or self._closed:
            raise BrokenPipeError(f"stream {self.id} is closed for writing")

    def _grant(self, size: int) -> None:
        if self._eof_in or self._closed:
            return
        self._ungranted += size
        if self._ungranted >= max(1, self._mux.window // 4):
            self._grant_now(self._ungranted)
            self._ungranted = 0

    def _grant_now(self, size: int) -> None:
        self._allowance += size
        self._mux._post(_Kind.CREDIT, self._key, size.to_bytes(4, "big"))

    def _end(self) -> None:
        self._closed = True
        self._eof_in = self._eof_out = True
        self._buffer.clear()
        self._wake()

    def _wake(self) -> None:
        self._readable.set()
        self._writable.set()

    # Messages from the far end, by Mux._dispatch (synchronous: the receive loop never waits).

    def _on_data(self, payload: bytes) -> None:
        if self._eof_in:
            raise _ProtocolError(f"DATA after EOF on stream {self.id}")
        if len(payload) > self._allowance:
            raise _ProtocolError(
                f"{len(payload)} bytes of DATA on stream {self.id} with credit for "
                f"{self._allowance}"
            )
        self._allowance -= len(payload)
        self._buffer += payload
        self._readable.set()

    def _on_eof(self) -> None:
        self._eof_in = True
        self._readable.set()

    def _on_credit(self, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ProtocolError(f"CREDIT with a {len(payload)}-byte payload")
        self._credit += int.from_bytes(payload, "big")
        if self._credit > 2 * _PEER_BIT:
            raise _ProtocolError(f"credit beyond 4 GiB on stream {self.id}")
        self._writable.set()

    def _on_close(self) -> None:
        # The far end neither reads nor writes any more: what arrived can still be read.
        self._closed = True
        self._eof_in = self._eof_out = True
        self._answered(StreamRefused(f"port {self.port}: the far end closed the stream"))
        self._wake()

    def _answered(self, error: BaseException | None) -> None:
        if self._answer is not None and not self._answer.done():
            if error is None:
                self._answer.set_result(None)
            else:
                self._answer.set_exception(error)

    def _reset(self, reason: str) -> None:
        self._error = reason
        self._closed = True
        self._answered(ChannelClosed(reason))
        self._wake()


class Mux:
    """Many TCP-like :class:`Stream` objects over one :class:`Channel`.

    One side (the service's relay) calls :meth:`open`; the side given ``dial`` (the worker)
    connects each stream opened from afar to a TCP port and :func:`splice` s them. Both may
    do both. :meth:`run` must be running for anything to move.

    Args:
        channel: The transport, already connected.
        dial: Accept OPEN by connecting to the port; without it, every OPEN is refused.
        window: Bytes the far end may send on a stream beyond what our application has read.
        chunk: The largest DATA payload we send.
        open_timeout_s: How long :meth:`open` waits for an answer, and ``dial`` for a
            connection.
    """

    def __init__(
        self,
        channel: Channel,
        *,
        dial: Dialer | None = None,
        window: int = 256 * 1024,
        chunk: int = 32 * 1024,
        open_timeout_s: float = 30.0,
    ) -> None:
        if not 0 < window < _PEER_BIT or chunk < 1:
            raise ValueError(f"window {window} and chunk {chunk} must be positive")
        self.window = window
        self.chunk = chunk
        self._channel = channel
        self._dial = dial
        self._open_timeout_s = open_timeout_s
        self._high_water = 4 * chunk
        self._streams: dict[int, Stream] = {}  # by the id of the messages we send for it
        self._next_number = 1  # of the next stream we open
        self._peer_number = 0  # of the last stream the far end opened
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._outbox_bytes = 0
        self._drained = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sender: asyncio.Task[None] | None = None
        self._started = False
        self._ended: str | None = None
        self._shutdown_task: asyncio.Task[None] | None = None

    @property
    def streams(self) -> int:
        """Streams open now (including those waiting for the far end's answer)."""
        return len(self._streams)

    async def run(self) -> None:
        """Carry messages until the channel ends, then end every stream and return.

        Never raises for what the far end sends or for the channel ending: a protocol error
        is logged and closes the channel. Cancelling it closes the channel too; after
        :meth:`close` it returns at once.

        Raises:
            RuntimeError: It was run before.
        """
        if self._started:
            raise RuntimeError("a Mux runs once; make a new one for a new channel")
        self._started = True
        if self._ended is not None:  # closed before it ran
            return
        self._sender = asyncio.create_task(self._send_loop())
        reason = "the channel closed"
        try:
            while True:
                try:
                    message = await self._channel.recv()
                except ChannelClosed as exc:
                    reason = str(exc) or reason
                    break
                except Exception as exc:
                    log.warning("tunnel channel failed: %s", exc, exc_info=True)
                    reason = f"the channel failed: {exc}"
                    break
                try:
                    self._dispatch(message)
                except _ProtocolError as exc:
                    log.warning("tunnel protocol error, closing the channel: %s", exc)
                    reason = f"protocol error: {exc}"
                    break
                except Exception:
                    log.exception("tunnel message handling failed; closing the channel")
                    reason = "internal error"
                    break
        finally:
            await self._shutdown(reason)

    async def open(self, port: int) -> Stream:
        """Open a stream to ``port`` on the far end, and wait until it answers.

        Raises:
            StreamRefused: The far end refused (nothing listens, the port is not forwarded).
            ChannelClosed: The channel ended (or had).
            TimeoutError: No answer within ``open_timeout_s`` (the stream is abandoned).
            ValueError: ``port`` is not a TCP port.
        """
        if not 0 < port < 65536:
            raise ValueError(f"{port} is not a TCP port")
        if self._ended is not None:
            raise ChannelClosed(self._ended)
        if self._next_number > _MAX_NUMBER:
            raise ChannelClosed("stream ids exhausted; open a new channel")
        stream = Stream(self, number=self._next_number, port=port, local=True)
        self._next_number += 1
        stream._answer = asyncio.get_running_loop().create_future()
        self._streams[stream._key] = stream
        self._post(_Kind.OPEN, stream._key, port.to_bytes(2, "big"))
        stream._grant_now(self.window)
        try:
            async with asyncio.timeout(self._open_timeout_s):
                await stream._answer
        except TimeoutError:
            await stream.close()
            raise TimeoutError(
                f"port {port}: no answer within {self._open_timeout_s:g} s"
            ) from None
        except asyncio.CancelledError:
            await stream.close()
            raise
        return stream

    async def close(self) -> None:
        """Close the channel and reset every stream (messages not yet sent are dropped).

        :meth:`run` then returns. Idempotent.
        """
        await self._shutdown("closed by this side")

    # Sending: one task sends every message, in the order posted.

    def _post(self, kind: _Kind, key: int, payload: bytes = b"") -> None:
        if self._ended is not None:
            return
        message = _HEADER.pack(kind, key) + payload
        self._outbox_bytes += len(message)
        self._outbox.put_nowait(message)

    async def _send_data(self, key: int, data: memoryview) -> None:
        if self._ended is not None:
            raise ConnectionResetError(self._ended)
        self._post(_Kind.DATA, key, bytes(data))
        while self._outbox_bytes > self._high_water and self._ended is None:
            self._drained.clear()
            await self._drained.wait()

    async def _send_loop(self) -> None:
        try:
            while True:
                message = await self._outbox.get()
                await self._channel.send(message)
                self._outbox_bytes -= len(message)
                if self._outbox_bytes <= self._high_water:
                    self._drained.set()
        except ChannelClosed as exc:
            log.debug("tunnel channel closed while sending: %s", exc)
        except Exception as exc:
            log.warning("tunnel channel failed while sending: %s", exc, exc_info=True)
        await self._close_channel()  # run() sees it end, and shuts down

    async def _close_channel(self) -> None:
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._channel.close()
        except Exception as exc:
            log.debug("closing the tunnel channel: %s", exc, exc_info=True)

    # Receiving: synchronous, so that a slow stream or a busy channel never stalls the others.

    def _dispatch(self, message: bytes) -> None:
        if len(message) < _HEADER.size:
            raise _ProtocolError(f"a message of {len(message)} bytes")
        kind_byte, wire_id = _HEADER.unpack_from(message)
        try:
            kind = _Kind(kind_byte)
        except ValueError:
            raise _ProtocolError(f"unknown message type {kind_byte}") from None
        payload = message[_HEADER.size :]
        if kind is _Kind.OPEN:
            self._on_open(wire_id, payload)
            return
        stream = self._streams.get(wire_id ^ _PEER_BIT)
        if stream is None:
            self._on_unknown(kind, wire_id)
        elif kind is _Kind.DATA:
            stream._on_data(payload)
        elif kind is _Kind.CREDIT:
            stream._on_credit(payload)
        elif kind is _Kind.EOF:
            stream._on_eof()
        elif kind is _Kind.CLOSE:
            self._forget(stream)
            stream._on_close()
        elif stream._answer is None or stream._answer.done():
            raise _ProtocolError(f"{kind.name} for stream {stream.id}, which waits for none")
        elif kind is _Kind.OPENED:
            stream._answered(None)
        else:
            self._forget(stream)
            reason = payload.decode("utf-8", errors="replace") or "refused"
            stream._answered(StreamRefused(reason))
            stream._end()

    def _on_open(self, wire_id: int, payload: bytes) -> None:
        if wire_id & _PEER_BIT or wire_id <= self._peer_number:
            raise _ProtocolError(f"OPEN of stream {wire_id} after {self._peer_number}")
        if len(payload) != 2:
            raise _ProtocolError(f"OPEN with a {len(payload)}-byte payload")
        self._peer_number = wire_id
        stream = Stream(self, number=wire_id, port=int.from_bytes(payload, "big"), local=False)
        self._streams[stream._key] = stream
        if self._dial is None:
            self._refuse(stream, "this end of the tunnel accepts no streams")
        elif stream.port == 0:
            self._refuse(stream, "port 0 is not a port")
        else:
            self._spawn(self._accept(stream, self._dial))

    def _on_unknown(self, kind: _Kind, wire_id: int) -> None:
        number = wire_id & _MAX_NUMBER
        if wire_id & _PEER_BIT:  # one of ours
            ever_opened = number < self._next_number
        else:
            ever_opened = number <= self._peer_number
        if kind is _Kind.CLOSE or ever_opened:
            return  # it raced with the stream's end
        if self._outbox.qsize() < _MAX_COURTESY_BACKLOG:
            self._post(_Kind.CLOSE, wire_id ^ _PEER_BIT)

    # Streams opened from afar.

    async def _accept(self, stream: Stream, dial: Dialer) -> None:
        port = stream.port
        try:
            async with asyncio.timeout(self._open_timeout_s):
                reader, writer = await dial(port)
        except StreamRefused as exc:
            reason = str(exc) or f"port {port} refused"
        except TimeoutError:
            reason = f"port {port}: no answer within {self._open_timeout_s:g} s"
        except OSError as exc:
            reason = f"cannot connect to port {port}: {exc.strerror or exc}"
        except Exception:
            log.exception("tunnel: dialing port %d failed", port)
            reason = f"port {port}: internal error"
        else:
            if stream.closed:  # the far end gave up, or the channel ended, while we dialed
                writer.transport.abort()
                return
            self._post(_Kind.OPENED, stream._key)
            stream._grant_now(self.window)
            await splice(stream, reader, writer)
            return
        log.info("tunnel: stream %d to port %d refused: %s", stream.id, port, reason)
        self._refuse(stream, reason)

    def _refuse(self, stream: Stream, reason: str) -> None:
        if stream.closed:
            return
        self._forget(stream)
        stream._end()
        payload = reason.encode()[:_MAX_REASON_BYTES]
        self._post(_Kind.REFUSED, stream._key, payload)

    def _forget(self, stream: Stream) -> None:
        if self._streams.get(stream._key) is stream:
            del self._streams[stream._key]

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("tunnel stream task failed", exc_info=task.exception())

    # The end.

    async def _shutdown(self, reason: str) -> None:
        if self._shutdown_task is None:
            caller = asyncio.current_task()
            self._shutdown_task = asyncio.create_task(self._end_all(reason, caller))
        await asyncio.shield(self._shutdown_task)

    async def _end_all(self, reason: str, caller: asyncio.Task[Any] | None) -> None:
        self._ended = reason
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream._reset(reason)
        self._drained.set()
        if self._sender is not None and self._sender is not caller:
            self._sender.cancel()
            await asyncio.wait([self._sender], timeout=_CLOSE_TIMEOUT_S)
        await self._close_channel()
        # Dials still waiting and splices of reset streams have nothing left to do: end them
        # now (a splice aborts its TCP connection), and wait for that, within bounds.
        tasks = [task for task in self._tasks if task is not caller]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT_S)


async def splice(
    stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Copy between a stream and a TCP connection, both ways, until both directions ended.

    The TCP end's FIN becomes the stream's EOF and the stream's EOF becomes a FIN (half-close
    both ways). At the end the stream is closed (CLOSE) and the connection too; if either
    side failed (reset, channel lost), the connection is aborted (RST) so its peer knows.
    Errors of either side end the splice; they are not raised. Cancelling it aborts both.
    """

    async def upstream() -> None:  # TCP -> stream
        while data := await reader.read(_SPLICE_READ):
            await stream.write(data)
        await stream.write_eof()

    async def downstream() -> None:  # stream -> TCP
        while data := await stream.read():
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
    for task in tasks:
        task.add_done_callback(_retrieve)
    clean = False
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        errors = [task.exception() for task in done if not task.cancelled()]
        for error in errors:
            if error is not None and not isinstance(error, OSError | BesError):
                log.error("tunnel: splice of stream %d failed", stream.id, exc_info=error)
            elif error is not None:
                log.debug("tunnel: stream %d ended: %s", stream.id, error)
        clean = len(done) == len(tasks) and all(error is None for error in errors)
    finally:
        # Everything that must happen comes before the first await: a cancelled splice (the
        # mux shutting down) still closes both ends.
        for task in tasks:
            task.cancel()
        await stream.close()  # never suspends
        if clean:
            writer.close()
        else:
            writer.transport.abort()
        await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT_S)
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await writer.wait_closed()


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a task's exception as seen: :func:`splice` reports the one that matters."""
    if not task.cancelled():
        task.exception()
