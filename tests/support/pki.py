"""A throwaway certificate authority for the TLS and WS-Security tests: a CA, a server
certificate for 127.0.0.1, and user certificates, as PEM files (made by :mod:`bes.pki`, as
``bes ca`` makes them)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from bes import pki


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Identity
    server: Identity  # the certificate file holds the chain: server, then CA
    alice: Identity
    stranger: Identity  # signed by another CA
    alice_subject: str = "CN=Alice Physicist,O=Test Grid CA"

    def server_context(self, *, require_client_certificate: bool) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server.cert, self.server.key)
        if require_client_certificate:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca.cert)
        return context


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    pki.init_ca(folder, name="Test Grid CA")
    pki.issue_server(folder, "127.0.0.1", extra_names=["localhost"])
    alice = pki.issue_user(folder, "alice", common_name="Alice Physicist")
    other = folder / "other-ca"
    pki.init_ca(other, name="Another CA")
    pki.issue_user(other, "stranger", common_name="Mallory")
    return Pki(
        ca=Identity(cert=folder / pki.CA_CERT, key=folder / pki.CA_KEY),
        server=_files(folder, "127.0.0.1"),
        alice=_files(folder, "alice"),
        stranger=_files(other, "stranger"),
        alice_subject=alice,
    )


def _files(folder: Path, name: str) -> Identity:
    return Identity(cert=pki.cert_file(folder, name), key=pki.key_file(folder, name))
