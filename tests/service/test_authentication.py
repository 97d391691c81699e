"""A secured site, end to end: ``bes ca`` and ``bes user add`` as an operator runs them, ``bes
serve --tls-cert --tls-key --tls-client-ca``, then zeep built from the official OGF WSDL with
zeep's own UsernameToken (digest) and BinarySignature (with a Timestamp), ``bes submit`` with a
password and with a certificate, and what an attacker does with captured messages: send them
again, change them, wrap them, or come without credentials."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import xmlsec
import zeep
from lxml import etree
from zeep.transports import Transport
from zeep.wsse.compose import Compose
from zeep.wsse.signature import BinarySignature
from zeep.wsse.username import UsernameToken
from zeep.wsse.utils import WSU, get_security_header

from bes.ns import WSSE
from tests.client.test_cli import Shell
from tests.support import soap
from tests.support.server import LiveServer, live_server
from tests.support.soap import ACTIONS, BES
from tests.support.standards import assert_official, standards_dir
from tests.support.worker import bes_cli

pytestmark = pytest.mark.slow

FACTORY = f"{{{BES}}}BESFactoryBinding"
PASSWORDS = {"alice": "alice-Secret-1", "bob": "bob-Secret-2", "root": "root-Secret-3"}


@dataclass(frozen=True)
class Site:
    server: LiveServer
    ca: Path
    alice_subject: str

    @property
    def ca_file(self) -> Path:
        return self.ca / "ca.pem"

    def cert(self, name: str) -> tuple[Path, Path]:
        return self.ca / f"{name}.pem", self.ca / f"{name}.key"


def run(*args: str) -> str:
    done = bes_cli(*args)
    assert done.returncode == 0, f"bes {' '.join(args)}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("secured")
    ca, data = root / "ca", root / "data"
    run("ca", "init", str(ca))
    run("ca", "server", str(ca), "127.0.0.1")
    told = run("ca", "user", str(ca), "alice")
    subject = told.split("subject: ", 1)[1].splitlines()[0].strip()
    run("ca", "user", str(ca), "bob")
    run("ca", "init", str(root / "other"), "--name", "Another CA")
    run("ca", "user", str(root / "other"), "alice")  # same name, another CA
    for name, password in PASSWORDS.items():
        password_file = root / f"{name}.pw"
        password_file.write_text(password + "\n")
        extra = ["--admin"] if name == "root" else []
        if name == "alice":
            extra += ["--certificate-subject", subject]
        run(
            "user",
            "add",
            name,
            "--password-file",
            str(password_file),
            "--data-dir",
            str(data),
            *extra,
        )
    tls = [
        "--tls-cert",
        str(ca / "127.0.0.1.pem"),
        "--tls-key",
        str(ca / "127.0.0.1.key"),
        "--tls-client-ca",
        str(ca / "ca.pem"),
    ]
    with live_server(data, extra=["--backend", "none", *tls], ca_file=ca / "ca.pem") as server:
        yield Site(server=server, ca=ca, alice_subject=subject)


class Recording(Transport):  # type: ignore[misc]
    """zeep's transport, keeping every request body as it went on the wire."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: list[bytes] = []

    def post(self, address: str, message: bytes, headers: dict[str, str]) -> Any:
        self.sent.append(message)
        # verify= on the call: requests lets REQUESTS_CA_BUNDLE override the session's.
        return self.session.post(
            address, data=message, headers=headers, timeout=30, verify=self.session.verify
        )


class Stamp:
    """A wsu:Timestamp in the Security header, fresh for every message (zeep's
    BinarySignature signs the Timestamp only if one is there before it signs)."""

    def apply(self, envelope: etree._Element, headers: dict[str, str]) -> tuple[Any, Any]:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        stamp = WSU.Timestamp()
        stamp.append(WSU.Created(now.strftime("%Y-%m-%dT%H:%M:%SZ")))
        stamp.append(WSU.Expires((now + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")))
        get_security_header(envelope).append(stamp)
        return envelope, headers

    def verify(self, envelope: etree._Element) -> etree._Element:
        return envelope


class UnsignedAnswers(BinarySignature):  # type: ignore[misc]
    """Stock zeep checks the answer's signature with the client's own certificate; this
    service does not sign its answers, so the check is turned off."""

    def verify(self, envelope: etree._Element) -> etree._Element:
        return envelope


def official_client(site: Site, wsse: Any, *, cert: tuple[Path, Path] | None = None):  # type: ignore[no-untyped-def]
    session = requests.Session()
    session.verify = str(site.ca_file)
    if cert is not None:
        session.cert = (str(cert[0]), str(cert[1]))
    transport = Recording(session=session)
    wsdl = standards_dir() / "gridsam-bes" / "wsdl" / "bes-factory.wsdl"
    client = zeep.Client(
        str(wsdl),
        settings=zeep.Settings(strict=True, forbid_dtd=True),
        transport=transport,
        wsse=wsse,
    )
    return client.create_service(FACTORY, site.server.endpoint), transport


def digest(name: str) -> UsernameToken:
    return UsernameToken(name, PASSWORDS[name], use_digest=True, zulu_timestamp=True)


def signature(site: Site, name: str = "alice", ca: Path | None = None) -> Compose:
    folder = ca or site.ca
    return Compose(
        [
            Stamp(),
            UnsignedAnswers(
                str(folder / f"{name}.key"),
                str(folder / f"{name}.pem"),
                signature_method=xmlsec.Transform.RSA_SHA256,
                digest_method=xmlsec.Transform.SHA256,
            ),
        ]
    )


def job(name: str) -> dict[str, Any]:
    posix = "http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
    application = etree.Element(f"{{{posix}}}POSIXApplication", nsmap={"posix": posix})
    etree.SubElement(application, f"{{{posix}}}Executable").text = "/bin/echo"
    return {
        "JobDefinition": {
            "JobDescription": {
                "JobIdentification": {"JobName": name},
                "Application": {"_value_1": [application]},
            }
        }
    }


def post(site: Site, body: bytes, *, cert: tuple[Path, Path] | None = None) -> httpx.Response:
    context = ssl.create_default_context(cafile=site.ca_file)
    if cert is not None:
        context.load_cert_chain(*cert)
    headers = {"SOAPAction": ACTIONS + "CreateActivity", "Content-Type": "text/xml"}
    return httpx.post(
        site.server.endpoint, content=body, headers=headers, verify=context, timeout=30
    )


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 500, response.text
    fault = soap.fault_of(response.content)
    assert fault.findtext("faultstring") == "not authorized"
    assert [d.tag for d in fault.xpath("detail/*")] == [f"{{{BES}}}NotAuthorizedFault"]
    assert_official(response.content)


def statuses_as(site: Site, name: str, eprs: list[str]) -> etree._Element:
    secret = base64.b64encode(f"{name}:{PASSWORDS[name]}".encode()).decode()
    context = ssl.create_default_context(cafile=site.ca_file)
    response = httpx.post(
        site.server.endpoint,
        content=soap.envelope(soap.vector("GetActivityStatuses", eprs)),
        headers={"Authorization": f"Basic {secret}", "SOAPAction": ACTIONS + "GetActivityStatuses"},
        verify=context,
    )
    assert response.status_code == 200, response.text
    return soap.body_of(response.content)


# ------------------------------------------------------------------------------ ways in


def test_zeep_from_the_official_wsdl_with_a_digest_token(site: Site) -> None:
    service, transport = official_client(site, digest("alice"))
    created = service.CreateActivity(ActivityDocument=job("digest"))
    statuses = service.GetActivityStatuses(ActivityIdentifier=[created.ActivityIdentifier])
    assert statuses.Response[0].ActivityStatus.state == "Pending"
    sent = etree.fromstring(transport.sent[0])
    password = sent.find(f".//{{{WSSE}}}Password")
    assert password is not None and password.get("Type", "").endswith("#PasswordDigest")
    activity_id = created.ActivityIdentifier.ReferenceParameters._value_1[0].text
    # The activity is alice's: bob cannot see it, root (an administrator) can.
    epr = soap.epr(activity_id=activity_id)
    assert soap.xpath(statuses_as(site, "bob", [epr]), "bes:Response/bes:Fault")
    assert soap.xpath(statuses_as(site, "root", [epr]), "bes:Response/bes:ActivityStatus")


def test_zeep_from_the_official_wsdl_with_an_x509_signature(site: Site) -> None:
    service, transport = official_client(site, signature(site))
    created = service.CreateActivity(ActivityDocument=job("signed"))
    assert created.ActivityIdentifier is not None
    sent = etree.fromstring(transport.sent[0])
    assert sent.find(".//ds:Signature", {"ds": "http://www.w3.org/2000/09/xmldsig#"}) is not None
    # Sent again, word for word, within the Timestamp's lifetime: a replay.
    assert_refused(post(site, transport.sent[0]))


def test_zeep_with_a_digest_token_and_a_signature_of_the_same_user(site: Site) -> None:
    wsse = Compose([digest("alice"), *signature(site).wsse_objects])
    service, _ = official_client(site, wsse)
    assert service.CreateActivity(ActivityDocument=job("both")).ActivityIdentifier is not None


def test_a_tls_client_certificate_alone_signs_alice_in(site: Site) -> None:
    service, _ = official_client(site, None, cert=site.cert("alice"))
    assert service.CreateActivity(ActivityDocument=job("tls")).ActivityIdentifier is not None


def test_bes_submit_with_a_password_and_with_a_certificate(site: Site, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    document = home / "hello.jsdl"
    shell = Shell(home, site.server.endpoint)
    made = shell("jsdl", "new", "-o", str(document), "--name", "secured", "/bin/true")
    assert made.returncode == 0, made.stderr
    password_file = home / "alice.pw"
    password_file.write_text(PASSWORDS["alice"] + "\n")
    trust = ["--ca-file", str(site.ca_file)]
    by_password = shell(
        "submit",
        str(document),
        "--username",
        "alice",
        "--password-file",
        str(password_file),
        *trust,
    )
    assert by_password.returncode == 0, by_password.stderr
    cert, key = site.cert("alice")
    by_certificate = shell("status", "--all", "--certificate", str(cert), "--key", str(key), *trust)
    assert by_certificate.returncode == 0, by_certificate.stderr
    assert by_password.stdout.split()[0] in by_certificate.stdout
    signed = shell(
        "submit", str(document), "--certificate", str(cert), "--key", str(key), "--sign", *trust
    )
    assert signed.returncode == 0, signed.stderr
    anonymous = shell("submit", str(document), *trust)
    assert anonymous.returncode == 3 and "NotAuthorizedFault" in anonymous.stderr


# ------------------------------------------------------------------------------ refused


def test_anonymous_requests_are_refused(site: Site) -> None:
    assert_refused(post(site, soap.envelope(soap.create_activity())))
    context = ssl.create_default_context(cafile=site.ca_file)
    page = httpx.get(site.server.url + "/bes/status", verify=context)
    assert page.status_code == 401
    assert httpx.get(site.server.url + "/healthz", verify=context).status_code == 200


def test_a_replayed_digest_token_is_refused(site: Site) -> None:
    service, transport = official_client(site, digest("alice"))
    service.CreateActivity(ActivityDocument=job("once"))
    assert_refused(post(site, transport.sent[0]))


def test_a_stale_token_is_refused(site: Site) -> None:
    stale = UsernameToken(
        "alice",
        PASSWORDS["alice"],
        use_digest=True,
        zulu_timestamp=True,
        created=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
    )
    service, _transport = official_client(site, stale)
    with pytest.raises(zeep.exceptions.Fault, match="not authorized"):
        service.CreateActivity(ActivityDocument=job("stale"))


def test_a_wrong_password_and_an_unknown_user_are_refused(site: Site) -> None:
    for token in (
        UsernameToken("alice", "guess", use_digest=True),
        UsernameToken("mallory", "guess", use_digest=True),
        UsernameToken("alice", "guess"),
    ):
        service, _ = official_client(site, token)
        with pytest.raises(zeep.exceptions.Fault, match="not authorized"):
            service.CreateActivity(ActivityDocument=job("nope"))


def test_a_tampered_signed_message_is_refused(site: Site) -> None:
    service, transport = official_client(site, signature(site))
    service.CreateActivity(ActivityDocument=job("original"))
    tampered = transport.sent[0].replace(b">original<", b">tampered<")
    assert tampered != transport.sent[0]
    assert_refused(post(site, tampered))


def test_a_wrapped_signed_message_is_refused(site: Site) -> None:
    """XSW: the signed Body moves into a header, a new Body takes its place."""
    service, transport = official_client(site, signature(site))
    service.CreateActivity(ActivityDocument=job("signed-body"))
    envelope = etree.fromstring(transport.sent[0])
    body = envelope.find(f"{{{soap.SOAP}}}Body")
    evil = etree.fromstring(soap.envelope(soap.create_activity())).find(f"{{{soap.SOAP}}}Body")
    envelope.replace(body, evil)
    wrapper = etree.SubElement(envelope.find(f"{{{soap.SOAP}}}Header"), "{urn:x}Wrapper")
    wrapper.append(body)
    assert_refused(post(site, etree.tostring(envelope)))


def test_a_signature_by_another_ca_is_refused(site: Site) -> None:
    other = site.ca.parent / "other"
    service, _ = official_client(site, signature(site, "alice", ca=other))
    with pytest.raises(zeep.exceptions.Fault, match="not authorized"):
        service.CreateActivity(ActivityDocument=job("foreign"))


def test_a_client_certificate_of_another_ca_fails_the_handshake(site: Site) -> None:
    other = site.ca.parent / "other"
    # TLS 1.3: the client learns of the refusal after its side of the handshake ended.
    with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError)):
        post(
            site,
            soap.envelope(soap.create_activity()),
            cert=(other / "alice.pem", other / "alice.key"),
        )


def test_refusals_are_counted_by_reason_for_the_operator(site: Site) -> None:
    post(site, soap.envelope(soap.create_activity()))  # no credentials
    service, transport = official_client(site, digest("alice"))
    service.CreateActivity(ActivityDocument=job("counted"))
    post(site, transport.sent[0])  # a replay
    for token in (UsernameToken("alice", "guess"), UsernameToken("nobody", "guess")):
        with pytest.raises(zeep.exceptions.Fault):
            official_client(site, token)[0].CreateActivity(ActivityDocument=job("x"))
    secret = base64.b64encode(f"root:{PASSWORDS['root']}".encode()).decode()
    context = ssl.create_default_context(cafile=site.ca_file)
    metrics = httpx.get(
        site.server.url + "/metrics", headers={"Authorization": f"Basic {secret}"}, verify=context
    )
    assert metrics.status_code == 200
    for reason in ("replay", "bad_password", "unknown_user", "no_credentials"):
        assert f'bes_auth_failures_total{{reason="{reason}"}}' in metrics.text, reason
    log = site.server.log.read_text()
    assert "not authorized (replay)" in log
    assert PASSWORDS["alice"] not in log
