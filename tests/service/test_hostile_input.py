"""Bad and hostile requests against a real server: each gets a well-formed SOAP fault with HTTP
500 and a clear message; never a traceback, an HTML page or a dropped connection."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterable, Iterator

import httpx
import pytest
from lxml import etree

from bes.http import read_body
from tests.support import soap
from tests.support.server import LiveServer
from tests.support.soap import BES, SOAP
from tests.support.standards import assert_official, corpus_dir

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE s:Envelope [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>&d;</s:Body></s:Envelope>"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE s:Envelope [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
<b:CreateActivity xmlns:b="http://schemas.ggf.org/bes/2006/08/bes-factory">&x;</b:CreateActivity>
</s:Body></s:Envelope>"""
SOAP12 = (
    b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body>'
    + soap.create_activity().encode()
    + b"</e:Body></e:Envelope>"
)

CASES = {
    "not-xml": (b"this is not XML at all", "not well-formed"),
    "empty": (b"", "empty"),
    "truncated": (soap.envelope(soap.create_activity())[:-40], "not well-formed"),
    "doctype": (b'<?xml version="1.0"?><!DOCTYPE x><x/>', "DOCTYPE"),
    "billion-laughs": (BILLION_LAUGHS, ""),
    "xxe": (XXE, ""),
    "not-an-envelope": (b"<hello/>", "expected a SOAP 1.1 Envelope"),
    "soap-1.2": (SOAP12, "SOAP 1.1"),
    "wrong-envelope-namespace": (
        b'<Envelope xmlns="urn:x"><Body/></Envelope>',
        "envelope namespace",
    ),
    "no-body": (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"/>', "no Body"),
    "empty-body": (soap.envelope(""), "exactly one element"),
    "two-operations": (soap.envelope(soap.create_activity() * 2), "exactly one element"),
    "unknown-operation": (soap.envelope(f'<b:Frobnicate xmlns:b="{BES}"/>'), "unknown operation"),
    "operation-in-no-namespace": (
        soap.envelope("<CreateActivity><ActivityDocument/></CreateActivity>"),
        "no namespace",
    ),
    "operation-in-wrong-namespace": (
        soap.envelope('<CreateActivity xmlns="urn:wrong"/>'),
        "urn:wrong",
    ),
    "missing-job-definition": (
        soap.envelope(
            f'<b:CreateActivity xmlns:b="{BES}"><b:ActivityDocument/></b:CreateActivity>'
        ),
        "JobDefinition",
    ),
    "job-definition-wrong-namespace": (
        soap.envelope(
            f'<b:CreateActivity xmlns:b="{BES}"><b:ActivityDocument>'
            '<JobDefinition xmlns="urn:wrongnamespace"/></b:ActivityDocument></b:CreateActivity>'
        ),
        "JobDefinition",
    ),
    "deep-nesting": (soap.envelope(b"<x>" * 3000 + b"</x>" * 3000), "not well-formed"),
    "invalid-utf8": (
        soap.envelope(soap.create_activity()).replace(b"hello", b"\xff\xfe"),
        "not well-formed",
    ),
}


def post(server: LiveServer, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        server.endpoint,
        content=body,
        timeout=30,
        headers={"Content-Type": "text/xml; charset=utf-8", **headers},
    )


def assert_soap_fault(response: httpx.Response, expected: str) -> etree._Element:
    assert response.status_code == 500, response.text
    assert response.headers["content-type"].startswith("text/xml")
    assert b"Traceback" not in response.content and b"<html" not in response.content.lower()
    assert_official(response.content, "fault")
    fault = soap.fault_of(response.content)
    string = fault.findtext("faultstring")
    assert string and expected in string, string
    return fault


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request_gets_a_soap_fault(server: LiveServer, case: str) -> None:
    body, expected = CASES[case]
    fault = assert_soap_fault(post(server, body), expected)
    code = fault.findtext("faultcode")
    if case in ("soap-1.2", "wrong-envelope-namespace"):
        assert code == "soap:VersionMismatch"
    else:
        assert code == "soap:Client"
    assert b"root:" not in etree.tostring(fault), "XXE must never disclose a file"


def test_oversized_body_is_refused_before_parsing(server: LiveServer) -> None:
    body = soap.envelope(soap.create_activity()).replace(b"hello", b"x" * (5 * 1024 * 1024))
    assert_soap_fault(post(server, body), "exceeds")
    # The server is still there and serves the next request normally.
    assert post(server, soap.envelope(soap.create_activity())).status_code == 200


HUNDRED_MB = 100 * 1024 * 1024
LIMIT = 4 * 1024 * 1024
"""``--max-request-bytes`` by default."""


def hundred_mb() -> Iterator[bytes]:
    """A CreateActivity that goes on for 100 MB, sent as it is made (never held in memory)."""
    head = soap.envelope(soap.create_activity())[:200]
    yield head
    block = b"<!-- " + b"x" * (1024 * 1024 - 9) + b" -->"
    left = HUNDRED_MB - len(head)
    while left > 0:
        yield block[:left]
        left -= len(block)


def assert_refused_as_too_large(response: httpx.Response) -> None:
    fault = assert_soap_fault(response, f"exceeds {LIMIT} bytes")
    assert fault.findtext("faultcode") == "soap:Client"
    assert response.headers.get("connection") == "close"


def raw_exchange(server: LiveServer, head: bytes, body: Iterable[bytes] = ()) -> httpx.Response:
    """Send ``head``, then all of ``body``, on a socket, and only then read until the server
    closes (as many SOAP stacks do: write the whole request, then read); parse the answer as
    HTTP/1.1. A server that closes with unread data resets the connection: ``sendall`` or
    ``recv`` then raises ConnectionResetError. (httpx and requests hide that: when a send
    fails they read the answer that came early.)"""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(head)
        for chunk in body:
            s.sendall(chunk)
        received = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    assert not status_line.startswith(b"HTTP/1.1 100"), "no 100 Continue for a body refused"
    header_block, _, content = rest.partition(b"\r\n\r\n")
    headers = dict(line.decode().split(": ", 1) for line in header_block.split(b"\r\n") if line)
    return httpx.Response(
        int(status_line.split()[1]),
        headers=headers,
        content=content,
        request=httpx.Request("POST", server.endpoint),
    )


def request_head(*extra: str) -> bytes:
    lines = [
        "POST /bes HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: text/xml; charset=utf-8",
        f"SOAPAction: {soap.ACTIONS}CreateActivity",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(parts: Iterable[bytes]) -> Iterator[bytes]:
    for part in parts:
        yield b"%x\r\n%s\r\n" % (len(part), part)
    yield b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_100_mb_body_gets_a_fault_the_client_can_read(server: LiveServer, framing: str) -> None:
    """The client sends all 100 MB, then reads: the service reads the rest and throws it
    away (within its drain budget) before it answers and closes, so the close is clean and
    the client reads an HTTP 500 SOAP fault instead of "connection reset"."""
    if framing == "chunked":
        head, body = request_head("Transfer-Encoding: chunked"), chunked(hundred_mb())
    else:
        head, body = request_head(f"Content-Length: {HUNDRED_MB}"), hundred_mb()
    started = time.monotonic()
    response = raw_exchange(server, head, body)
    elapsed = time.monotonic() - started
    assert_refused_as_too_large(response)
    assert elapsed < 30, f"the refusal took {elapsed:.1f} s"
    # The server is still there and serves the next request normally.
    assert post(server, soap.envelope(soap.create_activity())).status_code == 200


def test_an_http_library_streaming_100_mb_reads_the_fault(server: LiveServer) -> None:
    response = httpx.post(server.endpoint, content=hundred_mb(), timeout=60)
    assert_refused_as_too_large(response)


def test_a_client_waiting_for_100_continue_is_refused_before_it_sends(
    server: LiveServer,
) -> None:
    head = request_head(f"Content-Length: {HUNDRED_MB}", "Expect: 100-continue")
    assert_refused_as_too_large(raw_exchange(server, head))


def test_a_body_past_the_drain_budget_is_answered_at_once(server: LiveServer) -> None:
    """A declared length the service would never finish reading (10 GiB) is not read at all:
    the answer comes at once, and a client that waits for it can read it."""
    started = time.monotonic()
    response = raw_exchange(server, request_head(f"Content-Length: {10 * 1024**3}"))
    assert_refused_as_too_large(response)
    assert time.monotonic() - started < 5


class Trickle:
    """An ASGI receive callable: a body that never ends, ``size`` bytes every ``every_s``."""

    def __init__(self, size: int, every_s: float = 0.0) -> None:
        self.size = size
        self.every_s = every_s
        self.sent = 0

    async def __call__(self) -> dict[str, object]:
        await asyncio.sleep(self.every_s)
        self.sent += self.size
        return {"type": "http.request", "body": b"x" * self.size, "more_body": True}


@pytest.mark.anyio
async def test_draining_stops_at_its_byte_budget() -> None:
    receive = Trickle(64 * 1024)
    body = await read_body(receive, {}, 1024, drain_bytes=1024 * 1024, drain_s=30)
    assert body is None
    assert 1024 * 1024 <= receive.sent <= 1024 * 1024 + 3 * 64 * 1024


@pytest.mark.anyio
async def test_draining_stops_at_its_time_budget() -> None:
    receive = Trickle(10, every_s=0.05)
    started = time.monotonic()
    body = await read_body(receive, {}, 5, drain_bytes=1024**3, drain_s=0.5)
    assert body is None
    assert 0.4 < time.monotonic() - started < 2


@pytest.mark.anyio
async def test_a_body_within_the_limit_is_read_whole() -> None:
    parts = [b"abc", b"def", b""]

    async def receive() -> dict[str, object]:
        chunk = parts.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(parts)}

    assert await read_body(receive, {"content-length": "6"}, 6) == b"abcdef"


def test_garbage_on_the_socket_does_not_kill_the_server(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100)
        s.recv(1024)
    assert post(server, soap.envelope(soap.create_activity())).status_code == 200


@pytest.mark.parametrize(
    "name",
    [
        "saga-bes-ogf34-createactivity-mail-wrapped-MALFORMED.txt",
        "saga-bes-ogf34-createactivity-wsa-only-TRUNCATED.xml",
        "saga-bes-ogf34-createactivity-wssec-signed.xml",
        "saga-bespp-activityidentifier.xml",
    ],
)
def test_damaged_real_captures_get_faults(server: LiveServer, name: str) -> None:
    response = post(server, (corpus_dir() / "soap" / name).read_bytes())
    assert_soap_fault(response, "")


def test_unknown_paths_and_methods_are_plain_text(server: LiveServer) -> None:
    r = httpx.get(server.url + "/nothing")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/plain")
    r = httpx.delete(server.endpoint)
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    r = httpx.get(server.endpoint)
    assert r.status_code == 200 and "?wsdl" in r.text


def test_content_type_is_not_required(server: LiveServer) -> None:
    response = httpx.post(
        server.endpoint,
        content=soap.envelope(soap.create_activity()),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200
    assert etree.fromstring(response.content).tag == f"{{{SOAP}}}Envelope"
