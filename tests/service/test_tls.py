"""HTTPS: ``bes serve --tls-cert`` with certificates made by ``bes ca`` as an operator makes
them, real handshakes from clients with good, foreign, revoked, expired and proxy
certificates, the client certificate in the ASGI scope, trusted proxies, and workers over
HTTPS."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import ssl
import stat
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from bes import tls
from bes.certs import PROXY_CERT_INFO, CertificateTrust, normalize_dn
from bes.errors import UntrustedCertificate
from bes.identity import transport_of
from tests.support.server import LiveServer, free_port
from tests.support.worker import WorkerProcess, bes_cli, issue_token

# ProxyCertInfo { proxyPolicy { policyLanguage id-ppl-inheritAll } } (RFC 3820 section 3.8)
_INHERIT_ALL = bytes.fromhex("300c300a06082b06010505071501")


@dataclass(frozen=True)
class Site:
    """What ``bes ca`` wrote, plus certificates no ``bes ca`` command makes."""

    dir: Path
    alice_subject: str
    other: Path  # another CA's directory, with its user "mallory"
    expired: tuple[Path, Path]
    proxy: tuple[Path, Path]  # a proxy of alice: chain file (proxy, alice) and key

    def client(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.dir / "ca.pem")
        if cert is not None:
            context.load_cert_chain(cert, key)
        return context

    def user(self, name: str) -> ssl.SSLContext:
        return self.client(self.dir / f"{name}.pem", self.dir / f"{name}.key")


def _ca(*args: str) -> str:
    done = bes_cli("ca", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    root = tmp_path_factory.mktemp("site")
    ca = root / "ca"
    _ca("init", str(ca))
    _ca("server", str(ca), "bes.example.org", "--name", "127.0.0.1")
    told = _ca("user", str(ca), "alice")
    subject = told.split("subject: ", 1)[1].splitlines()[0]
    _ca("user", str(ca), "bob")
    _ca("revoke", str(ca), str(ca / "bob.pem"))
    other = root / "other"
    _ca("init", str(other), "--name", "Another CA")
    _ca("user", str(other), "mallory")
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    now = dt.datetime.now(dt.UTC)
    expired = _write(
        root / "expired",
        _cert(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")]),
            ca_cert.subject,
            ca_key,
            start=now - dt.timedelta(days=10),
            end=now - dt.timedelta(days=1),
        ),
    )
    alice_cert = x509.load_pem_x509_certificate((ca / "alice.pem").read_bytes())
    alice_key = serialization.load_pem_private_key((ca / "alice.key").read_bytes(), None)
    assert isinstance(alice_key, rsa.RSAPrivateKey)
    proxy_subject = x509.Name(
        [
            *alice_cert.subject.rdns,
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "1234567")]),
        ]
    )
    proxy = _write(
        root / "proxy",
        _cert(
            proxy_subject,
            alice_cert.subject,
            alice_key,
            start=now - dt.timedelta(minutes=5),
            end=now + dt.timedelta(hours=12),
            proxy=True,
        ),
        chain=alice_cert,
    )
    return Site(dir=ca, alice_subject=subject, other=other, expired=expired, proxy=proxy)


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    *,
    start: dt.datetime,
    end: dt.datetime,
    proxy: bool = False,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if proxy:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(PROXY_CERT_INFO, _INHERIT_ALL), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write(
    stem: Path,
    made: tuple[x509.Certificate, rsa.RSAPrivateKey],
    *,
    chain: x509.Certificate | None = None,
) -> tuple[Path, Path]:
    cert, key = made
    pem = cert.public_bytes(serialization.Encoding.PEM)
    if chain is not None:
        pem += chain.public_bytes(serialization.Encoding.PEM)
    stem.with_suffix(".pem").write_bytes(pem)
    stem.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return stem.with_suffix(".pem"), stem.with_suffix(".key")


def _tls_args(site: Site) -> list[str]:
    return [
        "--tls-cert",
        str(site.dir / "bes.example.org.pem"),
        "--tls-key",
        str(site.dir / "bes.example.org.key"),
        "--tls-client-ca",
        str(site.dir / "ca.pem"),
        "--tls-crl",
        str(site.dir / "crl.pem"),
    ]


@pytest.fixture(scope="module")
def server(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("tls") / "data"
    live = LiveServer(data, extra=_tls_args(site), ca_file=site.dir / "ca.pem").start()
    try:
        yield live
    finally:
        live.stop()


def _health(url: str, context: ssl.SSLContext) -> httpx.Response:
    return httpx.get(url + "/healthz", verify=context, timeout=10.0)


# ---------------------------------------------------------------------- bes ca


def test_bes_ca_writes_keys_for_their_owner_only_and_refuses_a_second_ca(site: Site) -> None:
    for key in ("ca.key", "alice.key", "bes.example.org.key"):
        assert stat.S_IMODE((site.dir / key).stat().st_mode) == 0o600
    assert site.alice_subject == "CN=alice,O=bes test CA"
    assert normalize_dn("/O=bes test CA/CN=alice") == site.alice_subject
    again = bes_cli("ca", "init", str(site.dir))
    assert again.returncode != 0
    assert "holds a CA already" in again.stderr
    served = x509.load_pem_x509_certificates((site.dir / "bes.example.org.pem").read_bytes())
    assert len(served) == 2  # the server's certificate, then the CA's
    names = served[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["bes.example.org"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


# ---------------------------------------------------------------------- bes serve --tls-cert


def test_the_service_speaks_https_only(server: LiveServer, site: Site) -> None:
    assert server.url.startswith("https://")
    assert _health(server.url, site.client()).status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url.replace("https://", "http://") + "/healthz", timeout=5.0)
    assert "BES endpoint https://127.0.0.1" in server.log.read_text()


def test_tls_1_1_is_refused_and_1_2_is_taken(server: LiveServer, site: Site) -> None:
    def handshake(version: ssl.TLSVersion) -> str:
        context = site.client()
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer TLS 1.1 at all
        with warnings.catch_warnings():  # as old clients do
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1_1
            context.maximum_version = version
        with (
            contextlib.closing(_connect(server.port)) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
        ):
            return str(wrapped.version())

    assert handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    with pytest.raises(ssl.SSLError, match=r"(?i)protocol.version|unsupported protocol|EOF"):
        handshake(ssl.TLSVersion.TLSv1_1)


def test_client_certificates_from_the_ca_are_taken_and_others_refused(
    server: LiveServer, site: Site
) -> None:
    assert _health(server.url, site.user("alice")).status_code == 200
    mallory = site.client(site.other / "mallory.pem", site.other / "mallory.key")
    refusals = {
        "another CA": mallory,
        "revoked": site.user("bob"),
        "expired": site.client(*site.expired),
    }
    # The server closes the connection without an alert (asyncio's TLS), so the client
    # sees no reason; the same request with alice's certificate went through above.
    for why, context in refusals.items():
        with pytest.raises(httpx.TransportError):
            _health(server.url, context)
            pytest.fail(f"the {why} certificate was taken")


def test_an_rfc3820_proxy_of_a_user_certificate_is_taken(server: LiveServer, site: Site) -> None:
    """Python's ssl (OpenSSL with VERIFY_ALLOW_PROXY_CERTS) verifies the proxy chain."""
    assert _health(server.url, site.client(*site.proxy)).status_code == 200


# ---------------------------------------------------------------------- what reaches the app


@contextlib.contextmanager
def _echo(
    context: ssl.SSLContext, protocol: type[Any], trusted: frozenset[str] = frozenset()
) -> Iterator[int]:
    """An ASGI app behind bes.tls's protocol that answers with what transport_of saw."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        seen = transport_of(scope, headers, trusted_proxies=trusted)
        body = json.dumps(
            {
                "client": seen.client,
                "scheme": seen.scheme,
                "subject": seen.peer_subject,
                "chain": len(seen.peer_chain),
                "tls": scope.get("extensions", {}).get("tls"),
            }
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    port = free_port()
    config = tls.server_config(app, host="0.0.0.0", port=port, context=context, http=protocol)
    config.lifespan = "off"
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def _see(port: int, context: ssl.SSLContext, *, source: str = "127.0.0.1", **headers: str) -> Any:
    transport = httpx.HTTPTransport(verify=context, local_address=source)
    with httpx.Client(transport=transport, timeout=10.0) as client:
        answer = client.get(f"https://127.0.0.1:{port}/", headers=headers)
    assert answer.status_code == 200
    return answer.json()


@pytest.fixture(scope="module")
def server_context(site: Site) -> ssl.SSLContext:
    return tls.server_context(
        site.dir / "bes.example.org.pem",
        site.dir / "bes.example.org.key",
        client_ca=site.dir / "ca.pem",
        crl=site.dir / "crl.pem",
    )


@pytest.mark.parametrize("protocol", [tls.TlsHttpToolsProtocol, tls.TlsH11Protocol])
def test_the_client_certificate_reaches_the_app(
    site: Site, server_context: ssl.SSLContext, protocol: type[Any]
) -> None:
    with _echo(server_context, protocol) as port:
        alice = _see(port, site.user("alice"))
        proxy = _see(port, site.client(*site.proxy))
        nobody = _see(port, site.client())
    assert alice["scheme"] == "https"
    assert alice["subject"] == site.alice_subject
    assert alice["chain"] == 2  # alice, the CA
    assert alice["tls"]["client_cert_name"] == site.alice_subject
    assert alice["tls"]["tls_version"] in (0x0303, 0x0304)
    assert isinstance(alice["tls"]["cipher_suite"], int)
    assert alice["tls"]["client_cert_error"] is None
    # The proxy is the leaf; the identity is the user certificate's subject.
    assert proxy["tls"]["client_cert_name"].startswith("CN=1234567,")
    assert proxy["subject"] == site.alice_subject
    assert proxy["chain"] == 3
    assert nobody["subject"] is None
    assert nobody["tls"]["client_cert_chain"] == []


def test_a_trusted_proxys_headers_count_and_nobody_elses(
    site: Site, server_context: ssl.SSLContext
) -> None:
    """nginx: proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;
    X-SSL-Client-Verify $ssl_client_verify; X-Forwarded-For; X-Forwarded-Proto $scheme."""
    pem = (site.dir / "alice.pem").read_text()
    forwarded = {
        "x-forwarded-for": "203.0.113.9, 198.51.100.7",
        "x-forwarded-proto": "https",
        "x-ssl-client-cert": urllib.parse.quote(pem, safe=""),
        "x-ssl-client-verify": "SUCCESS",
    }
    with _echo(server_context, tls.TlsHttpToolsProtocol, frozenset({"127.0.0.2"})) as port:
        proxied = _see(port, site.client(), source="127.0.0.2", **forwarded)
        failed = _see(
            port, site.client(), source="127.0.0.2", **forwarded | {"x-ssl-client-verify": "NONE"}
        )
        forged = _see(port, site.client(), source="127.0.0.1", **forwarded)
    assert proxied["client"] == "198.51.100.7:0"
    assert proxied["subject"] == site.alice_subject
    assert failed["subject"] is None
    assert forged["client"].startswith("127.0.0.1:")
    assert forged["subject"] is None


# ---------------------------------------------------------------------- WS-Security signers


def test_certificate_trust_checks_chain_dates_revocation_and_proxies(site: Site) -> None:
    trust = CertificateTrust.from_files(site.dir / "ca.pem", crl_file=site.dir / "crl.pem")

    def der(path: Path) -> list[bytes]:
        return [
            c.public_bytes(serialization.Encoding.DER)
            for c in x509.load_pem_x509_certificates(path.read_bytes())
        ]

    assert trust.verify(der(site.dir / "alice.pem")[0]) == site.alice_subject
    proxy, alice = der(site.proxy[0])
    assert trust.verify(proxy, intermediates=[alice]) == site.alice_subject
    refused = {
        "no trusted CA": der(site.other / "mallory.pem")[0],
        "revoked": der(site.dir / "bob.pem")[0],
        "not now": der(site.expired[0])[0],
    }
    for reason, cert in refused.items():
        with pytest.raises(UntrustedCertificate, match=reason):
            trust.verify(cert)
    fresh = CertificateTrust.from_files(site.dir / "ca.pem", crl_file=site.dir / "crl.pem")
    with pytest.raises(UntrustedCertificate, match="no trusted CA"):
        fresh.verify(proxy)  # its issuer (alice) is not given (nor verified a moment ago)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    with pytest.raises(UntrustedCertificate, match="not now"):
        trust.verify(der(site.dir / "alice.pem")[0], now=later)


# ---------------------------------------------------------------------- workers over HTTPS


def test_a_worker_with_the_ca_file_registers_over_https(site: Site, tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", extra=_tls_args(site), ca_file=site.dir / "ca.pem")
    server.start()
    token = issue_token(server.data_dir, "volunteer")
    worker = WorkerProcess(
        server.url,
        token,
        tmp_path / "worker",
        "--accel",
        "tcg",
        "--ca-file",
        str(site.dir / "ca.pem"),
    ).start()
    try:
        worker.wait_for_log(f"registered with {server.url}", timeout_s=60)
    finally:
        worker.kill()  # no job runs: nothing to hand back
        server.kill()  # its stop would wait for the dead worker's long-polling claim


def test_the_local_worker_of_an_https_service_registers(site: Site, tmp_path: Path) -> None:
    """The certificate names a public host only, not 127.0.0.1: the local worker still
    verifies it (it trusts the service's certificate file and checks the name in it)."""
    _ca("server", str(site.dir), "public.example.org")
    tls_args = _tls_args(site)
    tls_args[1] = str(site.dir / "public.example.org.pem")
    tls_args[3] = str(site.dir / "public.example.org.key")
    live = LiveServer(
        tmp_path / "data",
        extra=[*tls_args, "--worker-option=--hypervisor=qemu", "--worker-option=--accel=tcg"],
        ca_file=site.dir / "ca.pem",
        local_worker=True,
    )
    assert live.tls is not None
    live.tls.check_hostname = False  # the test's own health check: the chain is still verified
    live.start()
    try:
        deadline = time.monotonic() + 60
        while "registered with https://127.0.0.1" not in live.log.read_text():
            assert time.monotonic() < deadline, live.log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        # A SIGKILL spares the wait for the worker's open claim; the worker sees its parent
        # gone and stops by itself.
        pid = int(live.log.read_text().split("started the local worker (pid ", 1)[1].split(")")[0])
        live.kill()
        _wait_gone(pid, timeout_s=30)


def _wait_gone(pid: int, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)
