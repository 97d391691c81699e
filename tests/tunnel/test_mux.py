"""The tunnel's stream multiplexer: many streams, half-close, refusals, flow control, a relay
restart and a hostile far end, over in-memory channels and over real loopback TCP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from bes.tunnel.mux import (
    ChannelClosed,
    Dialer,
    Mux,
    Stream,
    StreamRefused,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

# The wire format, as mux.py documents it (spelled out again here on purpose).
OPEN, OPENED, REFUSED, DATA, EOF, CLOSE, CREDIT = range(1, 8)
THEIRS = 1 << 31  # bit 31: the stream was opened by the message's receiver

KiB = 1024


# Channels: a pair of in-memory queues, and length-prefixed messages over loopback TCP.


class Link:
    """Both ends of an in-memory channel; breaking it ends both (as a dying relay does)."""

    def __init__(self) -> None:
        self.inboxes: tuple[asyncio.Queue[bytes | None], asyncio.Queue[bytes | None]] = (
            asyncio.Queue(),
            asyncio.Queue(),
        )
        self.broken = False

    def break_(self) -> None:
        if not self.broken:
            self.broken = True
            for inbox in self.inboxes:
                inbox.put_nowait(None)


class MemoryChannel:
    def __init__(self, link: Link, side: int) -> None:
        self._link = link
        self._inbox = link.inboxes[side]
        self._peer = link.inboxes[1 - side]
        self.data_sent = 0  # DATA payload bytes sent, for the flow-control tests

    async def send(self, message: bytes) -> None:
        if self._link.broken:
            raise ChannelClosed("the link is broken")
        if message[:1] == bytes([DATA]):
            self.data_sent += len(message) - 5
        self._peer.put_nowait(message)
        await asyncio.sleep(0)  # a real transport yields too

    async def recv(self) -> bytes:
        message = await self._inbox.get()
        if message is None:
            self._inbox.put_nowait(None)
            raise ChannelClosed("the link is broken")
        return message

    async def close(self) -> None:
        self._link.break_()


def memory_pair() -> tuple[MemoryChannel, MemoryChannel, Link]:
    link = Link()
    return MemoryChannel(link, 0), MemoryChannel(link, 1), link


class TcpChannel:
    """Messages as 4-byte length + bytes over a real socket (the tests' stand-in for a
    WebSocket)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def send(self, message: bytes) -> None:
        if self._writer.is_closing():
            raise ChannelClosed("closed")
        self._writer.write(len(message).to_bytes(4, "big") + message)
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            raise ChannelClosed(str(exc)) from exc

    async def recv(self) -> bytes:
        try:
            size = int.from_bytes(await self._reader.readexactly(4), "big")
            return await self._reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ChannelClosed("the connection ended") from exc

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


@contextlib.asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[TcpChannel, TcpChannel]]:
    accepted: asyncio.Queue[TcpChannel] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.put_nowait(TcpChannel(reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        client = TcpChannel(*await asyncio.open_connection("127.0.0.1", port))
        worker = await asyncio.wait_for(accepted.get(), 5)
        try:
            yield client, worker
        finally:
            await client.close()
            await worker.close()


# Muxes on both ends, and TCP servers for the dialing end to reach.


class Pair:
    def __init__(self, client: Mux, worker: Mux) -> None:
        self.client = client  # opens streams (the service's relay)
        self.worker = worker  # dials them (the volunteer's worker)
        self.runs = [asyncio.create_task(client.run()), asyncio.create_task(worker.run())]

    async def ended(self, timeout_s: float = 3.0) -> None:
        """Both run() returned in time, without raising."""
        done, _ = await asyncio.wait(self.runs, timeout=timeout_s)
        assert len(done) == 2, "run() did not return"
        for task in done:
            assert task.exception() is None

    async def aclose(self) -> None:
        await self.client.close()
        await self.worker.close()
        await self.ended()


@contextlib.asynccontextmanager
async def muxes(channel: str = "memory", *, dial: Dialer | None = None) -> AsyncIterator[Pair]:
    if channel == "memory":
        a, b, _ = memory_pair()
        pair = Pair(Mux(a), Mux(b, dial=dial or dial_loopback))
        try:
            yield pair
        finally:
            await pair.aclose()
    else:
        async with tcp_pair() as (a2, b2):
            pair = Pair(Mux(a2), Mux(b2, dial=dial or dial_loopback))
            try:
                yield pair
            finally:
                await pair.aclose()


async def dial_loopback(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class TcpServer:
    """A server on 127.0.0.1 that counts its open connections."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.connections = 0
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._handler(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.connections -= 1


@contextlib.asynccontextmanager
async def tcp_server(handler: Handler) -> AsyncIterator[TcpServer]:
    served = TcpServer(handler)
    server = await asyncio.start_server(served._serve, "127.0.0.1", 0)
    served.port = server.sockets[0].getsockname()[1]
    async with server:
        try:
            yield served
        finally:  # every connection the tunnel made was closed
            await eventually(lambda: served.connections == 0)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(64 * KiB):
        writer.write(data)
        await writer.drain()
    writer.write_eof()


async def read_all(stream: Stream) -> bytes:
    chunks = []
    while data := await stream.read():
        chunks.append(data)
    return b"".join(chunks)


async def eventually(check: Callable[[], bool], timeout_s: float = 3.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def no_tunnel_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No test may make the mux log an error (a crashed task, a failed splice)."""
    caplog.set_level(logging.DEBUG, logger="bes.tunnel")
    yield
    errors = [r for r in caplog.records if r.name.startswith("bes.tunnel") and r.levelno >= 40]
    assert not errors, [r.getMessage() for r in errors]


# Many streams, both kinds of channel.


@pytest.mark.parametrize("channel", ["memory", "tcp"])
async def test_100_concurrent_streams_carry_distinct_payloads_intact(channel: str) -> None:
    async with tcp_server(echo) as server, muxes(channel) as pair:

        async def one(i: int) -> None:
            payload = random.Random(i).randbytes(256 * KiB)
            stream = await pair.client.open(server.port)

            async def send() -> None:
                await stream.write(payload)
                await stream.write_eof()

            sending = asyncio.create_task(send())
            received = await read_all(stream)
            await sending
            await stream.close()
            assert hashlib.sha256(received).hexdigest() == hashlib.sha256(payload).hexdigest()

        await asyncio.gather(*(one(i) for i in range(100)))
        assert pair.client.streams == 0
        await eventually(lambda: pair.worker.streams == 0 and server.connections == 0)


async def test_both_ends_may_open_streams_at_once() -> None:
    left, right, _ = memory_pair()
    pair = Pair(Mux(left, dial=dial_loopback), Mux(right, dial=dial_loopback))
    async with tcp_server(echo) as server:
        # Each end opens its stream 1: the ids live in separate spaces.
        a = await pair.client.open(server.port)
        b = await pair.worker.open(server.port)
        assert a.id == b.id == 1
        await a.write(b"from the client")
        await b.write(b"from the worker")
        assert await a.read() == b"from the client"
        assert await b.read() == b"from the worker"
        await a.close()
        await b.close()
    await pair.aclose()


# Half-close, both ways.


async def test_client_half_closes_then_reads_the_answer() -> None:
    async def count_then_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = await reader.read()  # to EOF
        writer.write(f"got {len(received)} bytes".encode())
        await writer.drain()

    async with tcp_server(count_then_answer) as server, muxes() as pair:
        stream = await pair.client.open(server.port)
        await stream.write(b"x" * 100_000)
        await stream.write_eof()
        assert await read_all(stream) == b"got 100000 bytes"
        assert await stream.read() == b""
        with pytest.raises(BrokenPipeError):
            await stream.write(b"after EOF")


async def test_server_half_closes_first_and_still_reads() -> None:
    heard: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def greet_then_listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello, then FIN")
        writer.write_eof()
        await writer.drain()
        heard.set_result(await reader.read())

    async with tcp_server(greet_then_listen) as server, muxes() as pair:
        stream = await pair.client.open(server.port)
        assert await read_all(stream) == b"hello, then FIN"  # the FIN arrived as EOF
        await stream.write(b"the client still talks")
        await stream.write_eof()
        assert await asyncio.wait_for(heard, 3) == b"the client still talks"
        await stream.close()
        await eventually(lambda: server.connections == 0 and pair.worker.streams == 0)


# Refusals.


async def test_nothing_listening_is_refused_with_the_port_in_the_reason() -> None:
    port = free_port()
    async with tcp_server(echo) as server, muxes() as pair:
        with pytest.raises(StreamRefused, match=str(port)):
            await pair.client.open(port)
        assert pair.client.streams == pair.worker.streams == 0
        stream = await pair.client.open(server.port)  # the mux carries on
        await stream.write(b"ping")
        assert await stream.read() == b"ping"


async def test_a_dialer_refusal_reaches_the_opener_word_for_word() -> None:
    async def only_ssh(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise StreamRefused(f"port {port} is not forwarded")

    async with muxes(dial=only_ssh) as pair:
        with pytest.raises(StreamRefused) as refused:
            await pair.client.open(25)
        assert str(refused.value) == "port 25 is not forwarded"


async def test_an_end_without_a_dialer_refuses_every_stream() -> None:
    async with muxes() as pair:
        with pytest.raises(StreamRefused, match="accepts no streams"):
            await pair.worker.open(22)  # the client end was given no dialer


# Flow control.


async def test_a_reader_that_does_not_read_holds_one_window_and_stops_the_writer() -> None:
    payload = random.Random(7).randbytes(2 * 1024 * KiB)

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()

    a, b, _ = memory_pair()
    window = 64 * KiB
    pair = Pair(Mux(a, window=window, chunk=16 * KiB), Mux(b, dial=dial_loopback, chunk=16 * KiB))
    async with tcp_server(flood) as server:
        stream = await pair.client.open(server.port)
        await eventually(lambda: stream.buffered == window)
        await asyncio.sleep(0.3)  # the writer had all the time it wanted
        assert stream.buffered == window
        assert b.data_sent == window
        received = await read_all(stream)  # reading grants credit back
        assert received == payload
        assert b.data_sent == len(payload)
        await stream.close()
    await pair.aclose()


async def test_a_writer_sends_no_more_than_the_far_end_granted() -> None:
    """Against a far end played by hand on the wire: it grants 10,000 bytes, then 40,000."""
    a, peer, _ = memory_pair()
    mux = Mux(a, window=4096)
    running = asyncio.create_task(mux.run())
    opening = asyncio.create_task(mux.open(22))
    assert await recv(peer) == (OPEN, 1, b"\x00\x16")
    assert await recv(peer) == (CREDIT, 1, (4096).to_bytes(4, "big"))  # our window
    await peer.send(message(OPENED, 1 | THEIRS))
    await peer.send(message(CREDIT, 1 | THEIRS, (10_000).to_bytes(4, "big")))
    stream = await opening

    payload = random.Random(3).randbytes(50_000)
    writing = asyncio.create_task(stream.write(payload))
    received = bytearray()
    while len(received) < 10_000:
        kind, wire_id, data = await recv(peer)
        assert (kind, wire_id) == (DATA, 1)
        received += data
    assert len(received) == 10_000
    await asyncio.sleep(0.2)
    assert not writing.done()
    assert peer._inbox.empty()  # nothing beyond the credit
    await peer.send(message(CREDIT, 1 | THEIRS, (40_000).to_bytes(4, "big")))
    while len(received) < 50_000:
        kind, wire_id, data = await recv(peer)
        assert (kind, wire_id) == (DATA, 1)
        assert len(data) <= 32 * KiB
        received += data
    await asyncio.wait_for(writing, 3)
    assert bytes(received) == payload
    await mux.close()
    await asyncio.wait_for(running, 3)


# The relay dies and comes back.


async def test_a_dead_channel_ends_every_stream_promptly_and_a_new_one_works() -> None:
    async with tcp_server(echo) as server:
        a, b, link = memory_pair()
        pair = Pair(Mux(a), Mux(b, dial=dial_loopback))
        stream = await pair.client.open(server.port)
        echoed = 0

        async def pump() -> None:
            block = b"z" * 16 * KiB
            while True:
                await stream.write(block)

        async def drain() -> None:
            nonlocal echoed
            while data := await stream.read():
                echoed += len(data)

        pumping, draining = asyncio.create_task(pump()), asyncio.create_task(drain())
        await eventually(lambda: echoed > 1024 * KiB)
        link.break_()  # the relay restarts: the channel dies mid-transfer

        await pair.ended(timeout_s=2)
        for task, error in ((pumping, ConnectionResetError), (draining, ConnectionResetError)):
            with pytest.raises(error):
                await asyncio.wait_for(task, 2)
        assert pair.client.streams == pair.worker.streams == 0
        assert stream.closed
        await eventually(lambda: server.connections == 0)  # the guest's end was closed too
        with pytest.raises(ChannelClosed):
            await pair.client.open(server.port)

        async with muxes() as again:
            stream = await again.client.open(server.port)
            await stream.write(b"back")
            await stream.write_eof()
            assert await read_all(stream) == b"back"


async def hang(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A dialer that never connects (within the test)."""
    await asyncio.sleep(10)
    raise StreamRefused("too late")


async def test_an_open_waiting_for_its_answer_fails_when_the_channel_dies() -> None:
    a, b, link = memory_pair()
    pair = Pair(Mux(a), Mux(b, dial=hang))
    opening = asyncio.create_task(pair.client.open(22))
    await eventually(lambda: pair.worker.streams == 1)
    link.break_()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(opening, 2)
    await pair.ended(timeout_s=2)  # the pending dial did not hold the worker's end


async def test_an_unanswered_open_times_out_and_is_abandoned() -> None:
    a, peer, _ = memory_pair()
    mux = Mux(a, open_timeout_s=0.2)
    running = asyncio.create_task(mux.run())
    with pytest.raises(TimeoutError, match="port 22"):
        await mux.open(22)
    assert [(await recv(peer))[0] for _ in range(3)] == [OPEN, CREDIT, CLOSE]
    assert mux.streams == 0
    await peer.send(message(OPENED, 1 | THEIRS))  # a late answer is ignored
    await mux.close()
    await asyncio.wait_for(running, 3)


async def test_cancelling_run_closes_the_channel_and_resets_streams() -> None:
    async with tcp_server(echo) as server:
        a, b, _ = memory_pair()
        pair = Pair(Mux(a), Mux(b, dial=dial_loopback))
        stream = await pair.client.open(server.port)
        pair.runs[1].cancel()  # the worker's tunnel is closed by cancelling its task
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(stream.read(), 3)
        done, _ = await asyncio.wait(pair.runs, timeout=3)
        assert len(done) == 2
        await eventually(lambda: server.connections == 0)


# A hostile or broken far end.


def message(kind: int, wire_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BI", kind, wire_id) + payload


async def recv(channel: MemoryChannel) -> tuple[int, int, bytes]:
    data = await asyncio.wait_for(channel.recv(), 3)
    kind, wire_id = struct.unpack_from(">BI", data)
    return kind, wire_id, data[5:]


GARBAGE = {
    "empty": [b""],
    "short": [b"\x04\x00\x00"],
    "unknown type": [message(99, 1)],
    "OPEN without a port": [message(OPEN, 1)],
    "OPEN in the receiver's id space": [message(OPEN, 1 | THEIRS, b"\x00\x16")],
    "OPEN reusing an id": [message(OPEN, 2, b"\x00\x16"), message(OPEN, 2, b"\x00\x16")],
    "OPENED for a stream the sender opened": [message(OPEN, 3, b"\x00\x16"), message(OPENED, 3)],
}


@pytest.mark.parametrize("messages", GARBAGE.values(), ids=GARBAGE.keys())
async def test_protocol_garbage_closes_the_channel_without_raising(
    messages: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    a, peer, _ = memory_pair()
    mux = Mux(a, dial=hang)
    running = asyncio.create_task(mux.run())
    for data in messages:
        await peer.send(data)
    await asyncio.wait_for(running, 3)  # run() returned, not raised
    assert running.exception() is None
    with pytest.raises(ChannelClosed):
        while True:  # skip any answers sent before the garbage
            await asyncio.wait_for(peer.recv(), 3)
    assert any(
        "protocol error" in r.getMessage() for r in caplog.records if r.levelname == "WARNING"
    )


@pytest.mark.parametrize("case", ["DATA beyond the window", "CREDIT of 3 bytes"])
async def test_protocol_garbage_on_an_open_stream_resets_it(case: str) -> None:
    a, peer, _ = memory_pair()
    mux = Mux(a, window=1000)
    running = asyncio.create_task(mux.run())
    opening = asyncio.create_task(mux.open(22))
    await recv(peer)  # OPEN
    await recv(peer)  # CREDIT 1000
    await peer.send(message(OPENED, 1 | THEIRS))
    stream = await opening
    if case == "DATA beyond the window":
        await peer.send(message(DATA, 1 | THEIRS, b"x" * 600))
        await peer.send(message(DATA, 1 | THEIRS, b"x" * 401))
    else:
        await peer.send(message(CREDIT, 1 | THEIRS, b"\x00\x00\x01"))
    await asyncio.wait_for(running, 3)
    assert running.exception() is None
    assert stream.closed
    if case == "DATA beyond the window":
        assert await stream.read() == b"x" * 600  # what arrived within the window
    with pytest.raises(ConnectionResetError):
        await stream.read()
    with pytest.raises(ConnectionResetError):
        await stream.write(b"x")


async def test_messages_for_closed_streams_are_ignored_and_for_unknown_ones_answered_close() -> (
    None
):
    a, peer, _ = memory_pair()
    mux = Mux(a)  # no dialer: every OPEN is refused
    running = asyncio.create_task(mux.run())
    await peer.send(message(OPEN, 1, b"\x00\x16"))
    kind, wire_id, reason = await recv(peer)
    assert (kind, wire_id) == (REFUSED, 1 | THEIRS)
    assert reason.decode()
    # Stream 1 is over: late messages for it are ignored, and so is a CLOSE for anything.
    await peer.send(message(DATA, 1, b"late"))
    await peer.send(message(CREDIT, 1, b"\x00\x00\x10\x00"))
    await peer.send(message(CLOSE, 9))
    # A stream never opened (theirs or ours) is told it is closed.
    await peer.send(message(DATA, 7, b"what?"))
    await peer.send(message(EOF, 5 | THEIRS))
    assert await recv(peer) == (CLOSE, 7 | THEIRS, b"")
    assert await recv(peer) == (CLOSE, 5, b"")
    assert mux.streams == 0
    assert not running.done()
    await mux.close()
    await asyncio.wait_for(running, 3)


async def test_a_mux_closed_before_it_ran_returns_at_once() -> None:
    a, peer, _ = memory_pair()
    mux = Mux(a)
    await mux.close()
    await asyncio.wait_for(mux.run(), 1)
    with pytest.raises(ChannelClosed):
        await mux.open(22)
    with pytest.raises(ChannelClosed):
        await peer.recv()
