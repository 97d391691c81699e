"""What an operator does before opening the service: users and worker tokens on a fresh data
directory, and ``bes serve`` refusing to go on a network without users or TLS."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bes.client import BESClient
from bes.client.files import UploadRefused
from tests.support.server import live_server
from tests.support.worker import bes_cli

# A documentation address (RFC 5737): never this machine's, so nothing is ever exposed even
# if a check failed; a server that got past the checks could not bind it.
NOT_LOOPBACK = "192.0.2.10"


def ok(*args: str) -> subprocess.CompletedProcess[str]:
    done = bes_cli(*args)
    assert done.returncode == 0, f"bes {' '.join(args)}\n{done.stdout}\n{done.stderr}"
    return done


def test_users_and_worker_tokens_before_the_first_start(tmp_path: Path) -> None:
    data = tmp_path / "fresh"  # does not exist yet
    password = tmp_path / "pw"
    password.write_text("correct horse battery staple\n")
    ok("user", "add", "root", "--admin", "--password-file", str(password), "--data-dir", str(data))
    ok(
        "user",
        "add",
        "alice",
        "--no-digest",
        "--password-file",
        str(password),
        "--data-dir",
        str(data),
    )
    ok(
        "user", "add", "carol", "--no-password",
        "--certificate-subject", "/C=CH/O=CERN/CN=Carol", "--data-dir", str(data),
    )  # fmt: skip
    token = ok("worker-token", "create", "node1", "--data-dir", str(data)).stdout.strip()
    assert token.startswith("besw_")
    listed = ok("user", "list", "--data-dir", str(data)).stdout.splitlines()
    assert [line.split()[:2] for line in listed] == [
        ["alice", "user"],
        ["carol", "user"],
        ["root", "admin"],
    ]
    assert "password+digest" in listed[2] and "password+digest" not in listed[0]
    assert "subject:CN=Carol,O=CERN,C=CH" in listed[1]  # one canonical form for either notation
    duplicate = bes_cli(
        "user", "add", "root", "--password-file", str(password), "--data-dir", str(data)
    )
    assert duplicate.returncode != 0 and "exists already" in duplicate.stderr
    nothing = bes_cli("user", "add", "dave", "--no-password", "--data-dir", str(data))
    assert nothing.returncode != 0 and "password or a certificate" in nothing.stderr
    ok("user", "passwd", "alice", "--password-file", str(password), "--data-dir", str(data))
    ok("user", "remove", "carol", "--data-dir", str(data))
    missing = bes_cli("user", "remove", "carol", "--data-dir", str(data))
    assert missing.returncode != 0 and "no user named 'carol'" in missing.stderr
    # Nothing of the password is in the database in clear; the key is the owner's alone.
    with contextlib.closing(sqlite3.connect(data / "bes.sqlite3")) as db:
        rows = db.execute("SELECT password_hash, password_sealed FROM service_user").fetchall()
    assert all("correct horse" not in str(row) for row in rows)
    assert rows and all(h.startswith("$argon2id$") for h, _ in rows)
    assert (data / "secret.key").stat().st_mode & 0o077 == 0


def serve(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bes", "serve", "--data-dir", str(data), "--no-local-worker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_network_address_needs_tls_and_users(tmp_path: Path) -> None:
    data = tmp_path / "data"
    no_tls = serve(data, "--host", NOT_LOOPBACK)
    assert no_tls.returncode != 0
    assert "without TLS" in no_tls.stderr and "--tls-cert" in no_tls.stderr
    assert "--insecure" in no_tls.stderr
    no_users = serve(data, "--host", NOT_LOOPBACK, "--insecure")
    assert no_users.returncode != 0
    assert "needs users first" in no_users.stderr and "bes user add" in no_users.stderr


@pytest.mark.slow
def test_insecure_is_said_in_the_log_at_every_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    password = tmp_path / "pw"
    password.write_text("pw\n")
    ok("user", "add", "root", "--admin", "--password-file", str(password), "--data-dir", str(data))
    started = serve(data, "--host", NOT_LOOPBACK, "--port", "0", "--insecure")
    # It got past the checks (it cannot bind an address that is not this machine's).
    assert "needs users" not in started.stderr and "without TLS" not in started.stderr
    assert "INSECURE" in started.stderr


def test_a_user_registered_by_certificate_file(tmp_path: Path) -> None:
    from bes import pki
    from bes.certs import certificate_der, fingerprint

    pki.init_ca(tmp_path / "ca")
    subject = pki.issue_user(tmp_path / "ca", "carol")
    cert = pki.cert_file(tmp_path / "ca", "carol")
    data = tmp_path / "data"
    ok("user", "add", "carol", "--no-password", "--certificate", str(cert), "--data-dir", str(data))
    [line] = ok("user", "list", "--data-dir", str(data)).stdout.splitlines()
    assert f"certificate:{fingerprint(certificate_der(cert))[:16]}" in line
    assert f"subject:{subject}" in line
    garbage = tmp_path / "not-a-cert.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    refused = bes_cli("user", "add", "dave", "--certificate", str(garbage), "--data-dir", str(data))
    assert refused.returncode != 0 and "not a certificate" in refused.stderr


def test_a_quota_set_with_bes_user_quota_holds_on_the_running_service(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok("user", "quota", "anonymous", "1000", "--data-dir", str(data))
    with live_server(data, extra=["--backend", "none"]) as server:
        client = BESClient(server.endpoint)
        big = tmp_path / "big.bin"
        big.write_bytes(b"x" * 2000)
        with pytest.raises(UploadRefused, match="exceed your quota: 0 of 1000 bytes") as refused:
            client.upload_file(big)
        assert refused.value.status == 507
        # Raised while the service runs: the next upload sees it (the quota is in the database).
        shown = ok("user", "quota", "anonymous", "1M", "--data-dir", str(data)).stdout
        assert "quota 1048576 bytes" in shown
        assert client.upload_file(big).sent_bytes == 2000
        shown = ok("user", "quota", "anonymous", "--data-dir", str(data)).stdout
        assert shown.startswith("anonymous: 2000 bytes stored; quota 1048576 bytes")
