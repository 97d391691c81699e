"""X.509 identities: distinguished names, RFC 3820 proxy certificates, and chains checked
against the site's CAs.

Users register a subject DN in either of the forms grid people write (OpenSSL's one-line
``/C=CH/O=CERN/CN=Alice`` or RFC 4514's ``CN=Alice,O=CERN,C=CH``); :func:`normalize_dn` turns
both into one canonical string, the RFC 4514 form of :meth:`cryptography.x509.Name.rfc4514_string`
(most specific RDN first, upper-case short names), which is also what :func:`subject_of` gives
for a certificate. A proxy certificate (RFC 3820, ARC's and Globus' default credential) stands
for the end-entity certificate that signed it: :func:`identity_subject` walks the chain up to it.

:class:`CertificateTrust` verifies a certificate that no TLS handshake verified (the signer of a
WS-Security X.509 signature): signatures along the chain, validity dates, CA flags and path
lengths, the proxy rules of RFC 3820 section 3, and CRLs.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID, ObjectIdentifier

from bes.errors import BesError, ConfigError, UntrustedCertificate

log = logging.getLogger(__name__)

PROXY_CERT_INFO: Final = ObjectIdentifier("1.3.6.1.5.5.7.1.14")
"""The proxyCertInfo extension that marks an RFC 3820 proxy certificate."""

_MAX_DEPTH: Final = 10
_CACHE_S: Final = 60.0
_CACHE_MAX: Final = 4096

# Attribute type names (upper case) as both DN forms write them.
_TYPES: Final[dict[str, ObjectIdentifier]] = {
    "CN": NameOID.COMMON_NAME,
    "C": NameOID.COUNTRY_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "S": NameOID.STATE_OR_PROVINCE_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "STREET": NameOID.STREET_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "USERID": NameOID.USER_ID,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "EMAIL": NameOID.EMAIL_ADDRESS,
    "E": NameOID.EMAIL_ADDRESS,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "SN": NameOID.SURNAME,
    "SURNAME": NameOID.SURNAME,
    "GN": NameOID.GIVEN_NAME,
    "GIVENNAME": NameOID.GIVEN_NAME,
    "T": NameOID.TITLE,
    "TITLE": NameOID.TITLE,
    "INITIALS": NameOID.INITIALS,
    "PSEUDONYM": NameOID.PSEUDONYM,
    "GENERATIONQUALIFIER": NameOID.GENERATION_QUALIFIER,
    "DNQUALIFIER": NameOID.DN_QUALIFIER,
    "POSTALCODE": NameOID.POSTAL_CODE,
    "BUSINESSCATEGORY": NameOID.BUSINESS_CATEGORY,
    "NAME": x509.ObjectIdentifier("2.5.4.41"),
}
# Short names in the canonical form beyond those cryptography writes itself.
_SHORT: Final[dict[ObjectIdentifier, str]] = {
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.SURNAME: "SN",
    NameOID.GIVEN_NAME: "GN",
    NameOID.TITLE: "title",
    NameOID.POSTAL_CODE: "postalCode",
}
_SLASH_TYPE = re.compile(r"\s*([A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)\s*=")


class MalformedName(BesError):
    """A distinguished name that neither DN form can read."""


def fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, lower-case hex without colons."""
    return hashlib.sha256(der).hexdigest()


def canonical(name: x509.Name) -> str:
    """The canonical string of a name (what :func:`normalize_dn` returns)."""
    return name.rfc4514_string(_SHORT)


def normalize_dn(text: str) -> str:
    """One canonical string for a DN written either way, so users registered with one form
    match certificates and registrations in the other.

    ``/C=CH/O=CERN/CN=Alice Smith`` and ``cn=Alice Smith, o=CERN, c=CH`` both give
    ``CN=Alice Smith,O=CERN,C=CH``. Attribute names are case-insensitive; values are kept as
    written. In the slash form a ``/`` belongs to the value unless a known attribute name
    follows it (``/CN=host/bes.example.org`` is one RDN, as Globus writes host certificates).

    Raises:
        MalformedName: The text is no DN.
    """
    text = text.strip()
    if not text:
        raise MalformedName("an empty distinguished name")
    try:
        name = _parse_slash(text) if text.startswith("/") else _parse_rfc4514(text)
    except ValueError as exc:
        raise MalformedName(f"{text!r} is not a distinguished name: {exc}") from exc
    return canonical(name)


def _parse_slash(text: str) -> x509.Name:
    attributes: list[tuple[str, str]] = []
    for part in text[1:].split("/"):
        match = _SLASH_TYPE.match(part)
        if match and (match.group(1).upper() in _TYPES or "." in match.group(1)):
            attributes.append((match.group(1), part[match.end() :]))
        elif attributes:
            name, value = attributes[-1]
            attributes[-1] = (name, value + "/" + part)
        else:
            raise ValueError(f"{part!r} names no attribute")
    return x509.Name([x509.NameAttribute(_oid(t), v.strip()) for t, v in attributes])


def _parse_rfc4514(text: str) -> x509.Name:
    # cryptography's parser knows upper-case names only: rewrite each attribute type (the
    # text up to '=' at the start of an AVA; types have no escapes) in its canonical spelling.
    out: list[str] = []
    at_type, escaped, start = True, False, 0
    for i, char in enumerate(text):
        if at_type:
            if char == "=":
                out.append(_oid(text[start:i].strip()).dotted_string + "=")
                at_type = False
            continue
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ",+":
            out[-1] += char
            at_type, start = True, i + 1
            continue
        out[-1] += char
    if at_type:
        raise ValueError("an attribute without a value")
    return x509.Name.from_rfc4514_string("".join(out))


def _oid(name: str) -> ObjectIdentifier:
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)+", name):
        return ObjectIdentifier(name)
    try:
        return _TYPES[name.upper()]
    except KeyError:
        raise ValueError(f"unknown attribute type {name!r}") from None


def is_proxy(cert: x509.Certificate) -> bool:
    """Whether ``cert`` is an RFC 3820 proxy certificate (it has proxyCertInfo)."""
    return any(ext.oid == PROXY_CERT_INFO for ext in cert.extensions)


def subject_of(der: bytes) -> str:
    """The canonical subject DN of a DER certificate.

    Raises:
        UntrustedCertificate: The bytes are no certificate.
    """
    return canonical(_load(der).subject)


def identity_subject(chain: Sequence[bytes]) -> str:
    """Whom a client certificate chain (DER, leaf first) stands for: the subject of its first
    certificate that is not an RFC 3820 proxy (the end-entity certificate).

    A proxy alone (no chain) stands for its issuer: exact for a one-level proxy (ARC's and
    Globus' default); a proxy of a proxy needs the chain, which a TLS handshake always has.

    Raises:
        UntrustedCertificate: The chain is empty or holds no certificate.
    """
    if not chain:
        raise UntrustedCertificate("no certificate")
    return _identity_subject(tuple(chain))


@functools.lru_cache(maxsize=1024)
def _identity_subject(chain: tuple[bytes, ...]) -> str:
    certs = [_load(der) for der in chain]
    for cert in certs:
        if not is_proxy(cert):
            return canonical(cert.subject)
    return canonical(certs[-1].issuer)


def _load(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise UntrustedCertificate(f"not a DER certificate: {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class _Verified:
    subject: str
    since: float
    until: float


class CertificateTrust:
    """The CAs (and their CRLs) that client certificates must chain to.

    Args:
        anchors: Trusted CA certificates.
        crls: Their CRLs. When given (even empty), every CA that issues an end-entity or
            intermediate certificate must have a CRL here (as OpenSSL's CRL check demands).
    """

    def __init__(
        self,
        anchors: Sequence[x509.Certificate],
        crls: Sequence[x509.CertificateRevocationList] | None = None,
    ) -> None:
        self.anchors = list(anchors)
        self.crls = None if crls is None else list(crls)
        self._cache: dict[str, _Verified] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_files(cls, ca_file: Path, *, crl_file: Path | None = None) -> CertificateTrust:
        """Trust from a PEM CA bundle (every certificate in it is an anchor) and PEM CRLs.

        Raises:
            ConfigError: A file is missing or unreadable.
        """
        try:
            anchors = x509.load_pem_x509_certificates(ca_file.read_bytes())
            crls = _load_crls(crl_file.read_bytes()) if crl_file is not None else None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the client CAs or CRLs: {exc}") from exc
        return cls(anchors, crls)

    def verify(
        self, der: bytes, *, intermediates: Sequence[bytes] = (), now: dt.datetime | None = None
    ) -> str:
        """Check a certificate and return the canonical subject it stands for (the end-entity
        subject for a proxy). A success is remembered for a minute by the certificate's
        fingerprint (never past the chain's expiry).

        Args:
            der: The certificate (DER).
            intermediates: Certificates that may complete its chain (DER, any order).
            now: The time to check validity at (default: the clock's).

        Raises:
            UntrustedCertificate: Why it is not trusted (for the log, not the caller).
        """
        key = fingerprint(der)
        moment = now or dt.datetime.now(dt.UTC)
        with self._lock:
            known = self._cache.get(key)
        if known is not None and known.since <= moment.timestamp() < known.until:
            return known.subject
        leaf = _load(der)
        chain = self._build([leaf], [_load(d) for d in intermediates])
        self._check(chain, moment)
        subject = next(
            (canonical(c.subject) for c in chain if not is_proxy(c)), canonical(leaf.subject)
        )
        since = max(c.not_valid_before_utc for c in chain).timestamp()
        until = min(c.not_valid_after_utc for c in chain).timestamp()
        with self._lock:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = _Verified(
                subject=subject, since=since, until=min(moment.timestamp() + _CACHE_S, until)
            )
        return subject

    def _build(
        self, chain: list[x509.Certificate], pool: list[x509.Certificate]
    ) -> list[x509.Certificate]:
        """Leaf first, up to and including a trust anchor."""
        while len(chain) <= _MAX_DEPTH:
            current = chain[-1]
            for anchor in self.anchors:
                if _issued_by(current, anchor):
                    return [*chain, anchor]
            parent = next((c for c in pool if c not in chain and _issued_by(current, c)), None)
            if parent is None:
                raise UntrustedCertificate(
                    f"{canonical(chain[0].subject)}: no trusted CA issued "
                    f"{canonical(current.subject)} (issuer {canonical(current.issuer)})"
                )
            chain.append(parent)
        raise UntrustedCertificate(f"{canonical(chain[0].subject)}: the chain is too long")

    def _check(self, chain: list[x509.Certificate], now: dt.datetime) -> None:
        who = canonical(chain[0].subject)
        for cert in chain:
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise UntrustedCertificate(
                    f"{who}: {canonical(cert.subject)} is valid from "
                    f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                    f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now"
                )
        proxies = 0  # the leading proxies; chain[proxies] is the end-entity certificate
        while proxies < len(chain) - 1 and is_proxy(chain[proxies]):
            _check_proxy(who, chain[proxies], chain[proxies + 1])
            proxies += 1
        for depth, issuer in enumerate(chain[proxies + 1 :]):
            _check_ca(who, issuer, below=depth)
        if self.crls is not None:
            for cert, issuer in zip(chain[proxies:], chain[proxies + 1 :], strict=False):
                self._check_revocation(who, cert, issuer)

    def _check_revocation(self, who: str, cert: x509.Certificate, issuer: x509.Certificate) -> None:
        assert self.crls is not None
        crl = next(
            (
                c
                for c in self.crls
                if c.issuer == issuer.subject and c.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            ),
            None,
        )
        if crl is None:
            raise UntrustedCertificate(f"{who}: no CRL of {canonical(issuer.subject)}")
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise UntrustedCertificate(f"{who}: {canonical(cert.subject)} is revoked")


def _load_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    blocks = re.findall(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", data, re.DOTALL)
    if not blocks:
        raise ValueError("no PEM CRL in the file")
    return [x509.load_pem_x509_crl(block) for block in blocks]


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_proxy(who: str, proxy: x509.Certificate, issuer: x509.Certificate) -> None:
    """RFC 3820 section 3: a proxy is issued by an end entity or another proxy, and its
    subject is its issuer's plus one CN."""
    if _is_ca(issuer):
        raise UntrustedCertificate(f"{who}: a CA issued a proxy certificate")
    rdns = list(proxy.subject.rdns)
    if (
        not rdns
        or x509.Name(rdns[:-1]) != issuer.subject
        or rdns[-1].get_attributes_for_oid(NameOID.COMMON_NAME) == []
    ):
        raise UntrustedCertificate(
            f"{who}: the proxy's subject is not its issuer's subject plus one CN"
        )


def _check_ca(who: str, cert: x509.Certificate, *, below: int) -> None:
    """An issuer of end-entity or CA certificates: basicConstraints CA (path length counts
    the CAs ``below`` it), keyCertSign if it has a key usage."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise UntrustedCertificate(f"{who}: {canonical(cert.subject)} is not a CA")
    if constraints.path_length is not None and below > constraints.path_length:
        raise UntrustedCertificate(f"{who}: the path length of {canonical(cert.subject)}")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise UntrustedCertificate(f"{who}: {canonical(cert.subject)} may not sign certificates")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def certificate_der(cert_file: Path) -> bytes:
    """The (first) certificate of a PEM or DER file, as DER.

    Raises:
        BesError: The file is unreadable or holds no certificate.
    """
    try:
        data = cert_file.read_bytes()
        cert = (
            x509.load_pem_x509_certificates(data)[0]
            if b"-----BEGIN" in data
            else x509.load_der_x509_certificate(data)
        )
    except (OSError, ValueError) as exc:
        raise BesError(f"{cert_file}: not a certificate ({exc})") from exc
    return cert.public_bytes(Encoding.DER)


def server_names(cert_file: Path) -> list[str]:
    """The names a server certificate (the first in a PEM file) is valid for: DNS names and IP
    addresses of its subjectAltName, wildcards left out.

    Raises:
        BesError: The file holds no certificate.
    """
    try:
        cert = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    except (OSError, ValueError) as exc:
        raise BesError(f"cannot read {cert_file}: {exc}") from exc
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    names = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    names += [n for n in san.get_values_for_type(x509.DNSName) if "*" not in n]
    return names
