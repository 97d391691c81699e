"""Property-based fuzzing of what reads untrusted XML: the SOAP request parser, the WS-Security
header checks and the JSDL parser. Inputs are random bytes, and real messages (zeep's own
UsernameTokens and X.509 signatures, the shared corpus) mutated byte by byte or element by
element. The property: only our own errors come out (:class:`bes.soap.SoapFault` and
:class:`bes.errors.BesError` subclasses), never another exception.

The CI run is short and deterministic. ``BES_FUZZ_EXAMPLES`` sets the examples per target and
``BES_FUZZ_RANDOM=1`` draws fresh inputs on every run; ``scripts/fuzz`` runs the long version.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import os
from collections.abc import Callable
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from bes.errors import BesError
from bes.jsdl import load_job_definition
from bes.soap import SoapFault, parse_request
from bes.wssecurity import SECURITY_HEADERS, SecurityRefused, read_security
from tests.service.test_wssecurity import Wire, pki, wire  # noqa: F401 - fixtures
from tests.support.standards import corpus_dir

EXAMPLES = int(os.environ.get("BES_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("BES_FUZZ_RANDOM") != "1",
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Values an attacker would try in attributes and text: the URIs the checks look at, ids,
# broken base64, dates at the edges of what datetime can hold.
_DS = "http://www.w3.org/2000/09/xmldsig#"
_PROFILE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-"
INTERESTING = [
    "",
    "#",
    "#id-1",
    "#xpointer(/)",
    "#xpointer(id('x'))",
    "http://example.org/x",
    _DS + "rsa-sha1",
    _DS + "hmac-sha1",
    _DS + "enveloped-signature",
    "http://www.w3.org/2001/04/xmldsig-more#md5",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "http://www.w3.org/2001/04/xmlenc#sha256",
    "http://www.w3.org/2001/10/xml-exc-c14n#",
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
    _PROFILE + "x509-token-profile-1.0#X509v3",
    _PROFILE + "x509-token-profile-1.0#X509PKIPathv1",
    _PROFILE + "x509-token-profile-1.0#PKCS7",
    _PROFILE + "soap-message-security-1.0#Base64Binary",
    _PROFILE + "username-token-profile-1.0#PasswordText",
    _PROFILE + "username-token-profile-1.0#PasswordDigest",
    "http://schemas.xmlsoap.org/soap/actor/next",
    "1",
    "true",
    "AAAA",
    "MIIB",
    "=====",
    "MA==",
    "MIQAAAAA",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "2026-02-30T00:00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-01-01T00:00:00",
    "2026-01-01T00:00:00.123456789012Z",
    "\u0000",
    "\ud7ff\ue000",
]
ATTRIBUTES = [
    "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd}Id",
    "Id",
    "ID",
    "URI",
    "Algorithm",
    "ValueType",
    "EncodingType",
    "Type",
    "{http://schemas.xmlsoap.org/soap/envelope/}actor",
    "{http://schemas.xmlsoap.org/soap/envelope/}mustUnderstand",
]
SOAP_ERRORS = (SoapFault, BesError)


# ------------------------------------------------------------------------------ mutations


def _byte_mutation(data: bytes, draw: st.DrawFn) -> bytes:
    at = draw(st.integers(0, len(data)))
    kind = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "truncate"]))
    if kind == "flip" and at < len(data):
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if kind == "insert":
        piece = draw(st.sampled_from([b"<", b">", b"&", b"'", b'"', b"<!--", b"]]>", b"\x00"]))
        return data[:at] + draw(st.one_of(st.just(piece), st.binary(max_size=16))) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + draw(st.integers(1, 64)) :]
    if kind == "duplicate":
        end = at + draw(st.integers(1, 256))
        return data[:end] + data[at:end] + data[end:]
    return data[:at]


def _element_mutation(root: etree._Element, draw: st.DrawFn) -> None:
    elements = list(root.iter(etree.Element))
    target = draw(st.sampled_from(elements))
    kind = draw(
        st.sampled_from(["remove", "copy", "move", "attribute", "unset", "text", "rename", "wrap"])
    )
    parent = target.getparent()
    if kind == "remove" and parent is not None:
        parent.remove(target)
    elif kind == "copy" and parent is not None:
        draw(st.sampled_from(elements)).append(copy.deepcopy(target))
    elif kind == "move" and parent is not None:
        destination = draw(st.sampled_from(elements))
        if destination is not target and target not in destination.iterancestors():
            destination.insert(draw(st.integers(0, len(destination))), target)
    elif kind == "attribute":
        values = INTERESTING + [v for e in elements for v in e.attrib.values()]
        target.set(draw(st.sampled_from(ATTRIBUTES)), _xml_safe(draw(st.sampled_from(values))))
    elif kind == "unset" and target.attrib:
        del target.attrib[draw(st.sampled_from(sorted(target.attrib)))]
    elif kind == "text":
        text = draw(st.one_of(st.sampled_from(INTERESTING), st.text(max_size=40)))
        target.text = _xml_safe(text)
    elif kind == "rename":
        target.tag = draw(st.sampled_from([e.tag for e in elements]))
    elif kind == "wrap" and parent is not None:
        wrapper = etree.Element("{urn:fuzz}Wrapper")
        target.addprevious(wrapper)
        wrapper.append(target)


def _xml_safe(text: str) -> str:
    return "".join(c for c in text if c in "\t\n\r" or (" " <= c <= "\ud7ff") or c >= "\ue000")


def mutated(seeds: Callable[[], list[bytes]]) -> st.SearchStrategy[bytes]:
    @st.composite
    def strategy(draw: st.DrawFn) -> bytes:
        data = draw(st.sampled_from(seeds()))
        if draw(st.booleans()):
            root = etree.fromstring(data)
            for _ in range(draw(st.integers(1, 4))):
                _element_mutation(root, draw)
            data = etree.tostring(root)
        else:
            for _ in range(draw(st.integers(1, 4))):
                data = _byte_mutation(data, draw)
        return data

    return strategy()


# ------------------------------------------------------------------------------ SOAP + WS-Security

_SOAP_SEEDS: list[bytes] = []
_MADE: list[dt.datetime] = []


@pytest.fixture(scope="module", autouse=True)
def _soap_seeds(wire: Wire) -> None:  # noqa: F811 - the fixture imported above
    _SOAP_SEEDS[:] = [
        wire.zeep_digest,
        wire.zeep_text,
        wire.zeep_signed_sha256,
        wire.zeep_signed_sha1,
        wire.zeep_signed_without_timestamp,
        wire.client_signed,
    ]
    _MADE[:] = [wire.made]


def soap_seeds() -> list[bytes]:
    return _SOAP_SEEDS + _corpus_soap()


@cache
def _corpus_soap() -> list[bytes]:
    seeds = []
    for path in sorted((corpus_dir() / "soap").iterdir()):
        data = path.read_bytes()
        try:
            etree.fromstring(data)
        except etree.XMLSyntaxError:
            continue  # damaged captures are fuzzed by the byte mutations of the others
        seeds.append(data)
    return seeds


def read_request(data: bytes) -> None:
    """The service's path for a request's security: parse, then read the header."""
    request = parse_request(data, understood=SECURITY_HEADERS)
    now = _MADE[0] if _MADE else dt.datetime.now(dt.UTC)
    read_security(request, now=now, window_s=300)


def test_valid_seeds_pass() -> None:
    """Sanity: the unmutated zeep messages are accepted, so mutations start from good input."""
    for data in _SOAP_SEEDS[:4]:
        read_request(data)
    with pytest.raises(SecurityRefused):
        read_request(_SOAP_SEEDS[4])


@FUZZ
@given(data=mutated(soap_seeds))
def test_mutated_soap_requests_raise_only_our_errors(data: bytes) -> None:
    with contextlib.suppress(SOAP_ERRORS):
        read_request(data)


@FUZZ
@given(data=st.one_of(st.binary(max_size=2048), st.text(max_size=2048).map(str.encode)))
def test_random_bytes_raise_only_our_errors(data: bytes) -> None:
    with contextlib.suppress(SOAP_ERRORS):
        read_request(data)


# ------------------------------------------------------------------------------ JSDL


@cache
def jsdl_seeds() -> list[bytes]:
    seeds = []
    for path in sorted((corpus_dir() / "jsdl").iterdir()):
        data = path.read_bytes()
        try:
            etree.fromstring(data)
        except etree.XMLSyntaxError:
            continue
        seeds.append(data)
    assert len(seeds) > 20, "the shared JSDL corpus is missing"
    return seeds


@FUZZ
@given(data=mutated(jsdl_seeds))
def test_mutated_jsdl_documents_raise_only_our_errors(data: bytes) -> None:
    with contextlib.suppress(BesError):
        load_job_definition(data)
