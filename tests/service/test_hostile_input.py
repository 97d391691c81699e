"""Bad and hostile requests against a real server: each gets a well-formed SOAP fault with HTTP
500 and a clear message; never a traceback, an HTML page or a dropped connection."""

from __future__ import annotations

import socket

import httpx
import pytest
from lxml import etree

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


def test_oversized_chunked_body_is_refused(server: LiveServer) -> None:
    def chunks():
        yield soap.envelope(soap.create_activity())[:200]
        for _ in range(80):
            yield b"<!-- " + b"x" * 65536 + b" -->"

    response = httpx.post(server.endpoint, content=chunks(), timeout=30)
    assert_soap_fault(response, "exceeds")


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
