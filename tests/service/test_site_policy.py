"""The site policy (bes.authn) on its own: real users in a real database, a real client CA,
messages signed by zeep's BinarySignature, TLS client certificates as the transport reports
them. Which user each credential stands for, and every way it is refused."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import xmlsec
from argon2 import PasswordHasher
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from zeep.wsse.signature import BinarySignature
from zeep.wsse.username import UsernameToken as ZeepUsernameToken
from zeep.wsse.utils import WSU, get_security_header

from bes.accounts import Accounts
from bes.authn import SitePolicy
from bes.certs import CertificateTrust, fingerprint, subject_of
from bes.cli import SIGNATURE_ALGORITHMS, _signature_methods
from bes.db import user_rows
from bes.db.store import Database
from bes.errors import NotAuthorized
from bes.identity import Transport
from bes.metrics import Metrics
from bes.principal import ANONYMOUS
from bes.sealing import Sealer
from bes.soap import parse_request
from bes.wssecurity import SECURITY_HEADERS
from bes.xmlsignature import ALGORITHMS_BY_NAME
from tests.support import soap
from tests.support.pki import Pki, make_pki

pytestmark = pytest.mark.anyio

FAST_HASH = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def der(path: Path) -> bytes:
    return x509.load_pem_x509_certificates(path.read_bytes())[0].public_bytes(Encoding.DER)


@pytest.fixture
async def accounts(tmp_path: Path, pki: Pki) -> AsyncIterator[Accounts]:
    db = Database(f"sqlite:///{tmp_path / 'bes.sqlite3'}")
    db.migrate()
    found = Accounts(db, Sealer.from_file(tmp_path / "secret.key", create=True), hasher=FAST_HASH)
    now = dt.datetime.now(dt.UTC)
    rows = [
        found.new_user("alice", password="alice-pw", certificate_subject=pki.alice_subject),
        found.new_user("bob", password="bob-pw"),
        found.new_user(
            "mallory-pinned",
            certificate_subject=subject_of(der(pki.stranger.cert)),
            certificate_fingerprint=fingerprint(der(pki.stranger.cert)),
        ),
    ]
    for row in rows:
        await db.write(user_rows.add_user, (row, now))
    try:
        yield found
    finally:
        db.close()


def policy(accounts: Accounts, pki: Pki, *, trust: bool = True) -> SitePolicy:
    return SitePolicy(
        accounts,
        trust=CertificateTrust.from_files(pki.ca.cert) if trust else None,
        always=True,
        metrics=Metrics(),
    )


def signed(
    key: Path,
    cert: Path,
    *,
    token: ZeepUsernameToken | None = None,
    method: object = xmlsec.constants.TransformRsaSha256,
) -> bytes:
    """A CreateActivity signed as zeep signs (with a fresh Timestamp, and a token if given)."""
    envelope = etree.fromstring(soap.envelope(soap.create_activity()))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    stamp = WSU.Timestamp()
    stamp.append(WSU.Created(now.strftime("%Y-%m-%dT%H:%M:%SZ")))
    stamp.append(WSU.Expires((now + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")))
    get_security_header(envelope).append(stamp)
    if token is not None:
        token.apply(envelope, {})
    signature = BinarySignature(
        str(key),
        str(cert),
        signature_method=method,
        digest_method=xmlsec.constants.TransformSha256,
    )
    signature.apply(envelope, {})
    return etree.tostring(envelope)


async def who(
    policy_: SitePolicy, message: bytes | None, transport: Transport | None = None
) -> str:
    request = parse_request(message, understood=SECURITY_HEADERS) if message else None
    caller = await policy_.identify(transport or Transport(client="127.0.0.1:1"), request)
    return caller.name


def refused(policy_: SitePolicy, reason: str) -> float:
    assert policy_.metrics is not None
    value = policy_.metrics.registry.get_sample_value("bes_auth_failures_total", {"reason": reason})
    return value or 0.0


async def test_a_signature_by_a_certificate_of_the_ca_signs_its_subject_in_once(
    accounts: Accounts, pki: Pki
) -> None:
    site = policy(accounts, pki)
    message = signed(pki.alice.key, pki.alice.cert)
    assert await who(site, message) == "alice"
    with pytest.raises(NotAuthorized, match=r"^not authorized$"):
        await who(site, message)
    assert refused(site, "replay") == 1


async def test_a_certificate_of_another_ca_counts_only_where_it_was_registered(
    accounts: Accounts, pki: Pki
) -> None:
    site = policy(accounts, pki)
    assert await who(site, signed(pki.stranger.key, pki.stranger.cert)) == "mallory-pinned"
    async with remove_user(accounts, "mallory-pinned"):
        with pytest.raises(NotAuthorized):
            await who(site, signed(pki.stranger.key, pki.stranger.cert))
    assert refused(site, "untrusted_certificate") == 1


async def test_without_a_client_ca_only_registered_certificates_count(
    accounts: Accounts, pki: Pki
) -> None:
    site = policy(accounts, pki, trust=False)
    with pytest.raises(NotAuthorized):
        await who(site, signed(pki.alice.key, pki.alice.cert))
    assert refused(site, "untrusted_certificate") == 1
    assert await who(site, signed(pki.stranger.key, pki.stranger.cert)) == "mallory-pinned"


async def test_a_signature_and_a_token_must_name_the_same_user(
    accounts: Accounts, pki: Pki
) -> None:
    site = policy(accounts, pki)
    same = ZeepUsernameToken("alice", "alice-pw", use_digest=True)
    assert await who(site, signed(pki.alice.key, pki.alice.cert, token=same)) == "alice"
    other = ZeepUsernameToken("bob", "bob-pw", use_digest=True)
    with pytest.raises(NotAuthorized):
        await who(site, signed(pki.alice.key, pki.alice.cert, token=other))
    assert refused(site, "conflicting_credentials") == 1


async def test_a_tls_client_certificate_maps_by_subject_then_basic_is_tried(
    accounts: Accounts, pki: Pki
) -> None:
    site = policy(accounts, pki)
    alice = der(pki.alice.cert)
    tls = Transport(
        client="192.0.2.1:5000",
        scheme="https",
        peer_certificate=alice,
        peer_subject=pki.alice_subject,
    )
    assert await who(site, None, tls) == "alice"
    unknown = Transport(
        client="192.0.2.1:5000",
        scheme="https",
        peer_certificate=der(pki.server.cert),
        peer_subject="CN=127.0.0.1,O=Test Grid CA",
        headers={"authorization": "Basic Ym9iOmJvYi1wdw=="},  # bob:bob-pw
    )
    assert await who(site, None, unknown) == "bob"
    alone = Transport(
        client="192.0.2.1:5000",
        scheme="https",
        peer_certificate=der(pki.server.cert),
        peer_subject="CN=127.0.0.1,O=Test Grid CA",
    )
    with pytest.raises(NotAuthorized):
        await who(site, None, alone)
    assert refused(site, "unknown_certificate") == 1


async def test_a_loopback_service_without_users_is_anonymous(tmp_path: Path, pki: Pki) -> None:
    db = Database(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    db.migrate()
    try:
        empty = Accounts(db, Sealer.from_file(tmp_path / "k", create=True), hasher=FAST_HASH)
        loopback = SitePolicy(empty, trust=None, always=False)
        assert await loopback.identify(Transport(client="127.0.0.1:1"), None) is ANONYMOUS
        assert await loopback.understood_headers() == frozenset()
        exposed = SitePolicy(empty, trust=None, always=True)
        with pytest.raises(NotAuthorized):
            await exposed.identify(Transport(client="127.0.0.1:1"), None)
        assert await exposed.understood_headers() == SECURITY_HEADERS
    finally:
        db.close()


class remove_user:
    """Remove a user for the length of a block (and forget cached lookups)."""

    def __init__(self, accounts: Accounts, name: str) -> None:
        self.accounts = accounts
        self.name = name
        self.row: user_rows.UserRow | None = None

    async def __aenter__(self) -> None:
        self.row = await self.accounts.user(self.name)
        await self.accounts.db.write(user_rows.remove_user, self.name)
        self.accounts.forget_cached()

    async def __aexit__(self, *exc: object) -> None:
        assert self.row is not None
        await self.accounts.db.write(user_rows.add_user, (self.row, dt.datetime.now(dt.UTC)))
        self.accounts.forget_cached()


async def test_the_accepted_signature_methods_are_the_sites_choice(
    accounts: Accounts, pki: Pki
) -> None:
    """``bes serve --signature-algorithm rsa-sha256`` leaves out the RSA-SHA1 of old clients."""
    names = _signature_methods(("rsa-sha256", "rsa-sha512"))
    assert names == {ALGORITHMS_BY_NAME["rsa-sha256"], ALGORITHMS_BY_NAME["rsa-sha512"]}
    assert sorted(SIGNATURE_ALGORITHMS) == sorted(ALGORITHMS_BY_NAME)
    strict = SitePolicy(
        accounts, trust=CertificateTrust.from_files(pki.ca.cert), always=True, algorithms=names,
        metrics=Metrics(),
    )  # fmt: skip
    old = signed(pki.alice.key, pki.alice.cert, method=xmlsec.constants.TransformRsaSha1)
    with pytest.raises(NotAuthorized):
        await who(strict, old)
    assert refused(strict, "weak_algorithm") == 1
    assert await who(strict, signed(pki.alice.key, pki.alice.cert)) == "alice"
    assert await who(policy(accounts, pki), old) == "alice"  # the default takes it
