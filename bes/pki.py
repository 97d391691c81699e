"""A certificate authority for a test deployment (``bes ca``): a CA, server and user
certificates and a CRL, as PEM files in one directory, written with ``cryptography``.

Files, for a directory ``DIR``:

- ``ca.pem``, ``ca.key``: the CA (``--tls-client-ca DIR/ca.pem`` on the service, ``--ca-file``
  on clients and workers);
- ``HOST.pem``, ``HOST.key``: a server certificate followed by the CA's (a chain, for
  ``--tls-cert``/``--tls-key``);
- ``NAME.pem``, ``NAME.key``: a user's certificate (clientAuth) for TLS and WS-Security;
- ``crl.pem``: the CRL, rewritten by each revocation (``--tls-crl``).

Keys are RSA (WS-Security signatures use RSA-SHA256) and written readable by their owner only.
This is no production CA: it keeps no database beyond the CRL, and its key lies unencrypted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bes.certs import canonical
from bes.errors import BesError

CA_CERT: Final = "ca.pem"
CA_KEY: Final = "ca.key"
CRL: Final = "crl.pem"

_KEY_BITS: Final = 2048
_BACKDATE: Final = dt.timedelta(minutes=5)  # clocks of clients a little behind still accept
_CRL_DAYS: Final = 365
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")


class PkiError(BesError):
    """A CA file is missing, would be overwritten, or is unreadable."""


def init_ca(directory: Path, *, name: str = "bes test CA", days: int = 3650) -> Path:
    """Create a CA (``ca.pem``, ``ca.key``) in ``directory`` (created if missing); returns the
    certificate's path. Its subject is ``CN=<name>,O=<name>``.

    Raises:
        PkiError: The directory holds a CA already.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CA_CERT).exists() or (directory / CA_KEY).exists():
        raise PkiError(f"{directory} holds a CA already ({CA_CERT}); not overwriting it")
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        _builder(subject, subject, key, key, now=now, days=days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_key(directory / CA_KEY, key)
    (directory / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return directory / CA_CERT


def issue_server(
    directory: Path, hostname: str, *, extra_names: Sequence[str] = (), days: int = 825
) -> Path:
    """A server certificate for ``hostname`` (and ``extra_names``; IP addresses become IP
    subjectAltNames), written as ``<hostname>.pem`` (followed by the CA certificate) and
    ``<hostname>.key``; returns the certificate's path.

    Raises:
        PkiError: No CA in ``directory``, or the files exist.
    """
    names = [hostname, *(n for n in extra_names if n != hostname)]
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    return _issue(
        directory,
        hostname,
        subject,
        days=days,
        extensions=[
            x509.SubjectAlternativeName(alt_names),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        ],
        chain=True,
    )


def issue_user(
    directory: Path, name: str, *, common_name: str | None = None, days: int = 365
) -> str:
    """A user certificate (clientAuth, also good for signing SOAP messages) written as
    ``<name>.pem`` (the certificate alone, as grid tools expect) and ``<name>.key``; returns
    its subject as users register it (``CN=<common_name or name>,O=<the CA's organization>``).

    Raises:
        PkiError: No CA in ``directory``, or the files exist.
    """
    ca_cert, _ = _load_ca(directory)
    organization = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(a.value)) for a in organization]
        + [x509.NameAttribute(NameOID.COMMON_NAME, common_name or name)]
    )
    _issue(
        directory,
        name,
        subject,
        days=days,
        extensions=[x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])],
    )
    return canonical(subject)


def revoke(directory: Path, cert_file: Path) -> Path:
    """Add a certificate this CA issued to its CRL and (re)write ``crl.pem`` (valid for a
    year); returns the CRL's path.

    Raises:
        PkiError: No CA, or the certificate is not one of this CA's.
    """
    ca_cert, ca_key = _load_ca(directory)
    try:
        cert = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read {cert_file}: {exc}") from exc
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception as exc:  # ValueError, TypeError, InvalidSignature: not ours either way
        raise PkiError(f"{cert_file} was not issued by the CA in {directory}") from exc
    now = dt.datetime.now(dt.UTC)
    revoked: list[x509.RevokedCertificate] = []
    number = 1
    crl_file = directory / CRL
    if crl_file.exists():
        old = x509.load_pem_x509_crl(crl_file.read_bytes())
        revoked = [r for r in old if r.serial_number != cert.serial_number]
        with contextlib.suppress(x509.ExtensionNotFound):
            number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    revoked.append(
        x509.RevokedCertificateBuilder()
        .serial_number(cert.serial_number)
        .revocation_date(now)
        .build()
    )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + dt.timedelta(days=_CRL_DAYS))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    crl_file.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return crl_file


def cert_file(directory: Path, name: str) -> Path:
    """Where ``issue_server`` or ``issue_user`` writes the certificate of ``name``."""
    return directory / f"{name}.pem"


def key_file(directory: Path, name: str) -> Path:
    """Where ``issue_server`` or ``issue_user`` writes the key of ``name``."""
    return directory / f"{name}.key"


# ---------------------------------------------------------------------- plumbing


def _issue(
    directory: Path,
    name: str,
    subject: x509.Name,
    *,
    days: int,
    extensions: Sequence[x509.ExtensionType],
    chain: bool = False,
) -> Path:
    if not _FILE_NAME.fullmatch(name) or name in ("ca", "crl"):
        raise PkiError(
            f"{name!r} cannot name a file here: use letters, digits and . _ @ -, not ca or crl"
        )
    cert_path, key_path = cert_file(directory, name), key_file(directory, name)
    for path in (cert_path, key_path):
        if path.exists():
            raise PkiError(f"{path} exists; remove it first to issue a new one")
    ca_cert, ca_key = _load_ca(directory)
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    days = max(1, min(days, (ca_cert.not_valid_after_utc - now).days))
    builder = _builder(subject, ca_cert.subject, key, ca_key, now=now, days=days)
    builder = builder.add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    ).add_extension(_usage(ca=False), critical=True)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(key_path, key)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(pem + ca_cert.public_bytes(serialization.Encoding.PEM) if chain else pem)
    return cert_path


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer_key: rsa.RSAPrivateKey,
    *,
    now: dt.datetime,
    days: int,
) -> x509.CertificateBuilder:
    # Key identifiers: strict X.509 checking (Python 3.13's default) asks for them.
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)


def _load_ca(directory: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except FileNotFoundError as exc:
        raise PkiError(f"no CA in {directory}; create one with: bes ca init {directory}") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot read the CA in {directory}: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PkiError(f"{directory / CA_KEY} is not an RSA key")
    return cert, key
