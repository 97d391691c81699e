"""Credentials as they cross the wire: WS-Security UsernameTokens and X.509 signatures (checked
by xmlsec, as a verifying service would) and TLS client certificates (checked by a TLS server
that demands them). The envelopes are validated against the official WS-Security schemas."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from zeep.exceptions import SignatureVerificationFailed
from zeep.wsse.signature import verify_envelope

from bes.client import BESClient, ClientCertificate, UsernameToken, X509Signature, faults
from tests.support.peer import soap_peer, xml_answer
from tests.support.pki import Pki, make_pki
from tests.support.server import LiveServer
from tests.support.soap import HELLO_JSDL
from tests.support.standards import assert_official

WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
TOKEN_PROFILE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
NS = {"wsse": WSSE, "wsu": WSU, "ds": "http://www.w3.org/2000/09/xmldsig#"}
ATTRIBUTES = (
    b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
    b'<bes:GetFactoryAttributesDocumentResponse xmlns:bes="http://schemas.ggf.org/bes/2006/08/bes-factory">'
    b"<bes:FactoryResourceAttributesDocument>"
    b"<bes:IsAcceptingNewActivities>true</bes:IsAcceptingNewActivities>"
    b"</bes:FactoryResourceAttributesDocument></bes:GetFactoryAttributesDocumentResponse>"
    b"</soap:Body></soap:Envelope>"
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


CREATED = (
    b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
    b'<bes:CreateActivityResponse xmlns:bes="http://schemas.ggf.org/bes/2006/08/bes-factory">'
    b'<bes:ActivityIdentifier><wsa:Address xmlns:wsa="http://www.w3.org/2005/08/addressing">'
    b"https://bes.example.org/job/1</wsa:Address></bes:ActivityIdentifier>"
    b"</bes:CreateActivityResponse></soap:Body></soap:Envelope>"
)


def answer_attributes(operation: str, envelope: etree._Element) -> tuple[int, bytes, str]:
    return xml_answer(CREATED if operation == "CreateActivity" else ATTRIBUTES)


def security_of(body: bytes) -> etree._Element:
    [security] = etree.fromstring(body).findall(".//wsse:Security", NS)
    return security


def test_username_token_with_password_text() -> None:
    token = UsernameToken("alice", "s3cret")
    assert "s3cret" not in repr(token)
    with soap_peer(answer_attributes) as peer, BESClient(peer.url, auth=token) as client:
        assert client.attributes().accepting is True
        client.attributes()
    first, second = (security_of(r.body) for r in peer.received)
    assert first.findtext("wsse:UsernameToken/wsse:Username", namespaces=NS) == "alice"
    password = first.find("wsse:UsernameToken/wsse:Password", NS)
    assert password.text == "s3cret"
    assert password.get("Type") == f"{TOKEN_PROFILE}#PasswordText"
    created = dt.datetime.fromisoformat(first.findtext("wsu:Timestamp/wsu:Created", namespaces=NS))
    expires = dt.datetime.fromisoformat(first.findtext("wsu:Timestamp/wsu:Expires", namespaces=NS))
    assert abs(created - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    assert expires - created == dt.timedelta(minutes=5)
    assert (
        first.find("wsu:Timestamp", NS) is not None and second.find("wsu:Timestamp", NS) is not None
    )
    for request in peer.received:
        assert_official(request.body, "a request with a UsernameToken")


def test_username_token_with_password_digest() -> None:
    with (
        soap_peer(answer_attributes) as peer,
        BESClient(peer.url, auth=UsernameToken("alice", "s3cret", digest=True)) as client,
    ):
        client.attributes()
        client.attributes()
    tokens = [security_of(r.body).find("wsse:UsernameToken", NS) for r in peer.received]
    nonces = set()
    for token in tokens:
        password = token.find("wsse:Password", NS)
        assert password.get("Type") == f"{TOKEN_PROFILE}#PasswordDigest"
        nonce = base64.b64decode(token.findtext("wsse:Nonce", namespaces=NS))
        created = token.findtext("wsu:Created", namespaces=NS)
        # The profile's digest, as a verifying service computes it.
        expected = base64.b64encode(hashlib.sha1(nonce + created.encode() + b"s3cret").digest())
        assert password.text.encode() == expected
        assert b"s3cret" not in etree.tostring(token)
        nonces.add(nonce)
    assert len(nonces) == 2, "every request carries a fresh nonce"
    for request in peer.received:
        assert_official(request.body, "a request with a digest UsernameToken")


def test_our_service_takes_a_username_token(server: LiveServer) -> None:
    """The token is not marked mustUnderstand, so a service that does not authenticate yet
    (ours, on loopback) serves the request."""
    with BESClient(server.endpoint, auth=UsernameToken("alice", "s3cret")) as client:
        ref = client.submit(HELLO_JSDL)
        [result] = client.cancel(ref)
    assert result.terminated


def test_x509_signature_verifies_with_the_signers_certificate(pki: Pki) -> None:
    signature = X509Signature(pki.alice.key, pki.alice.cert)
    auth = [UsernameToken("alice"), signature]
    with soap_peer(answer_attributes) as peer, BESClient(peer.url, auth=auth) as client:
        client.attributes()
        client.submit(HELLO_JSDL)
    for request in peer.received:
        envelope = request.envelope
        verify_envelope(envelope, str(pki.alice.cert))  # xmlsec, as a service would
        security = security_of(request.body)
        assert security.find("wsse:BinarySecurityToken", NS) is not None
        signed = {
            r.get("URI").lstrip("#") for r in security.findall("ds:Signature//ds:Reference", NS)
        }
        body = envelope.find("{http://schemas.xmlsoap.org/soap/envelope/}Body")
        timestamp = security.find("wsu:Timestamp", NS)
        assert body.get(f"{{{WSU}}}Id") in signed
        assert timestamp.get(f"{{{WSU}}}Id") in signed
        assert_official(request.body, "a signed request")

    # Changing the signed job document afterwards breaks the signature.
    tampered = etree.fromstring(peer.received[1].body.replace(b"hello", b"rm -rf"))
    with pytest.raises(SignatureVerificationFailed):
        verify_envelope(tampered, str(pki.alice.cert))
    # ... and another certificate does not verify it.
    with pytest.raises(SignatureVerificationFailed):
        verify_envelope(peer.received[0].envelope, str(pki.stranger.cert))


def test_unsigned_answers_are_refused_when_the_client_asks_for_signed_ones(pki: Pki) -> None:
    signature = X509Signature(pki.alice.key, pki.alice.cert, verify_file=pki.server.cert)
    with (
        soap_peer(answer_attributes) as peer,
        BESClient(peer.url, auth=signature) as client,
        pytest.raises(faults.ProtocolProblem, match="signature"),
    ):
        client.attributes()


def test_our_service_takes_a_signed_request(server: LiveServer, pki: Pki) -> None:
    """zeep does not mark the Security header mustUnderstand, so a service that does not
    verify signatures yet (ours, on loopback) serves the request instead of refusing it."""
    auth = [UsernameToken("alice"), X509Signature(pki.alice.key, pki.alice.cert)]
    with BESClient(server.endpoint, auth=auth) as client:
        ref = client.submit(HELLO_JSDL)
        [status] = client.status(ref)
        client.cancel(ref)
    assert status.fault is None


def test_a_missing_key_file_is_reported_before_any_request(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(faults.ClientError, match=r"signing key .* does not exist"):
        BESClient("http://127.0.0.1:9/bes", auth=X509Signature(tmp_path / "no.key", pki.alice.cert))


def test_signing_without_xmlsec_says_what_to_install(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "xmlsec", None)  # as on a machine without the package
    with pytest.raises(faults.ClientError, match=r"xmlsec .*pip install 'bes\[sign\]'"):
        BESClient("http://127.0.0.1:9/bes", auth=X509Signature(pki.alice.key, pki.alice.cert))


@pytest.fixture
def tls_peer(pki: Pki) -> Iterator[str]:
    context = pki.server_context(require_client_certificate=True)
    with soap_peer(answer_attributes, tls=context) as peer:
        yield peer.url
        assert all(r.client_certificate for r in peer.received)
        subjects = {
            dict(part[0] for part in r.client_certificate["subject"])["commonName"]
            for r in peer.received
        }
        assert subjects <= {"Alice Physicist"}


def test_client_certificate_over_tls(tls_peer: str, pki: Pki) -> None:
    auth = ClientCertificate(pki.alice.cert, pki.alice.key)
    with BESClient(tls_peer, auth=auth, ca_file=pki.ca.cert) as client:
        assert client.attributes().accepting is True


def test_tls_failures_read_like_a_person_wrote_them(tls_peer: str, pki: Pki) -> None:
    alice = ClientCertificate(pki.alice.cert, pki.alice.key)
    with BESClient(tls_peer, auth=alice) as client, pytest.raises(faults.TlsProblem) as untrusted:
        client.attributes()
    assert "certificate is not trusted" in str(untrusted.value)
    assert "--ca-file" in str(untrusted.value)

    with (
        BESClient(tls_peer, ca_file=pki.ca.cert) as client,  # no client certificate
        pytest.raises(faults.ConnectionProblem) as refused,
    ):
        client.attributes()
    assert tls_peer in str(refused.value)

    mallory = ClientCertificate(pki.stranger.cert, pki.stranger.key)
    with (
        BESClient(tls_peer, auth=mallory, ca_file=pki.ca.cert) as client,
        pytest.raises(faults.ConnectionProblem),
    ):
        client.attributes()
