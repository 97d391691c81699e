"""Two ``bes serve`` processes on one PostgreSQL database, as a site runs replicas behind a
load balancer: a user added once signs in on both, and a PasswordDigest nonce or a signed
message used on one is refused on the other, and after both restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.test_authorization import digest_header
from tests.service.test_site_policy import signed
from tests.support import soap
from tests.support.pki import make_pki
from tests.support.postgres import fresh_database
from tests.support.server import LiveServer, live_server
from tests.support.worker import bes_cli

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def digest_message(user: str, password: str) -> bytes:
    return soap.envelope(soap.create_activity(), headers=digest_header(user, password))


def accepted(server: LiveServer, message: bytes) -> bool:
    answer = server.post(message, "CreateActivity")
    if answer.status_code == 200:
        return True
    assert soap.fault_of(answer.content).findtext("faultstring") == "not authorized"
    return False


def test_replicas_share_users_nonces_and_signatures(
    tmp_path: Path, postgres_admin_url: str
) -> None:
    url = fresh_database(postgres_admin_url, "replicas")
    pki = make_pki(tmp_path / "pki")
    key = tmp_path / "secret.key"  # one sealing key for every replica
    password = tmp_path / "alice.pw"
    password.write_text("alice-Secret-9\n")
    added = bes_cli(
        "user", "add", "alice", "--password-file", str(password),
        "--certificate-subject", pki.alice_subject,
        "--database-url", url, "--secret-key-file", str(key), "--data-dir", str(tmp_path / "a"),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    options = ["--backend", "none", "--database-url", url, "--secret-key-file", str(key)]
    options += ["--tls-client-ca", str(pki.ca.cert)]  # trusted signers (HTTP here: digests)
    message = digest_message("alice", "alice-Secret-9")
    signed_message = signed(pki.alice.key, pki.alice.cert)
    with (
        live_server(tmp_path / "a", extra=options) as a,
        live_server(tmp_path / "b", extra=options) as b,
    ):
        assert accepted(a, message)
        assert not accepted(b, message)  # the nonce was used, on the other replica
        assert accepted(b, digest_message("alice", "alice-Secret-9"))
        assert accepted(b, signed_message)
        assert not accepted(a, signed_message)
    with live_server(tmp_path / "c", extra=options) as c:  # after a restart
        assert not accepted(c, message)
        assert not accepted(c, signed_message)
