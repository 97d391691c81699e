"""Credentials a client presents: WS-Security tokens and signatures, TLS client certificates.

A :class:`BESClient` takes any combination::

    BESClient(url, auth=[UsernameToken("alice", "secret"), ClientCertificate("me.pem", "me.key")],
              ca_file="site-ca.pem")

WS-Security goes through zeep's own implementations (``zeep.wsse``: UsernameToken profile 1.0
with text or digest passwords and a ``wsu:Timestamp``; X.509 token profile signatures by xmlsec,
over the Body and the Timestamp). Client certificates are presented in the TLS handshake.
Passwords stay out of ``repr`` and of every message the client prints.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from zeep import wsse
from zeep.wsse.utils import WSU, get_security_header

from bes.client.faults import ClientError


class Credential(Protocol):
    """Something :class:`~bes.client.BESClient` knows how to present."""

    @property
    def kind(self) -> str:
        """A word for messages: ``username``, ``signature``, ``certificate``."""
        ...


@dataclass(frozen=True, slots=True)
class UsernameToken:
    """A WS-Security UsernameToken (OASIS UsernameToken Profile 1.0).

    Attributes:
        username: The user name.
        password: Sent as PasswordText, or as PasswordDigest with a nonce and creation time
            when ``digest`` is true.
        digest: Send the SHA-1 digest instead of the password.
    """

    username: str
    password: str | None = field(default=None, repr=False)
    digest: bool = False

    @property
    def kind(self) -> str:
        return "username"


@dataclass(frozen=True, slots=True)
class X509Signature:
    """Sign every request with a private key (X.509 Token Profile, BinarySecurityToken).

    Attributes:
        key_file: PEM private key.
        cert_file: PEM certificate that goes along as the BinarySecurityToken.
        key_password: For an encrypted key.
        verify_file: If given, responses must carry a signature by this certificate.
    """

    key_file: Path
    cert_file: Path
    key_password: str | None = field(default=None, repr=False)
    verify_file: Path | None = None

    @property
    def kind(self) -> str:
        return "signature"


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """Present a certificate in the TLS handshake (``https://`` endpoints).

    Attributes:
        cert_file: PEM certificate (it may hold the key too).
        key_file: PEM private key, if not in ``cert_file``.
    """

    cert_file: Path
    key_file: Path | None = None

    @property
    def kind(self) -> str:
        return "certificate"


def wsse_plugins(credentials: Sequence[Credential]) -> list[Any]:
    """zeep ``wsse`` objects for the WS-Security credentials, in the order they apply: the
    token first, the signature last (it covers the timestamp the token adds).

    Raises:
        ClientError: A signature is asked for but xmlsec is missing, or a key is unreadable.
    """
    plugins: list[Any] = []
    for credential in credentials:
        if isinstance(credential, UsernameToken):
            plugins.append(_TokenApplier(credential))
    for credential in credentials:
        if isinstance(credential, X509Signature):
            plugins.append(_signer(credential))
    return plugins


def tls_client_certificate(credentials: Sequence[Credential]) -> str | tuple[str, str] | None:
    """The ``cert`` argument of a requests session for the TLS client certificate, if any."""
    for credential in credentials:
        if isinstance(credential, ClientCertificate):
            _readable(credential.cert_file, "client certificate")
            if credential.key_file is None:
                return str(credential.cert_file)
            _readable(credential.key_file, "client certificate key")
            return (str(credential.cert_file), str(credential.key_file))
    return None


class _TokenApplier:
    """Adds a fresh UsernameToken (new nonce, creation time and timestamp) to each request."""

    def __init__(self, token: UsernameToken) -> None:
        self._token = token

    def apply(self, envelope: Any, headers: Any) -> Any:
        token = wsse.UsernameToken(
            self._token.username,
            self._token.password,
            use_digest=self._token.digest,
            timestamp_token=_timestamp(),
        )
        return token.apply(envelope, headers)

    def verify(self, envelope: Any) -> Any:
        return envelope


class _Signer:
    """zeep's ``BinarySignature`` for requests; responses are verified only when the caller
    named the certificate to verify them with (zeep would otherwise refuse every unsigned
    answer, and most BES services do not sign theirs)."""

    def __init__(self, signature: Any, verify_file: Path | None) -> None:
        self._signature = signature
        self._verify_file = verify_file

    def apply(self, envelope: Any, headers: Any) -> Any:
        # zeep signs the Timestamp only if one is there already, and services that check
        # signatures (this one included) require a signed Timestamp against replays.
        security = get_security_header(envelope)
        if security.find(WSU.Timestamp().tag) is None:
            security.append(_timestamp())
        return self._signature.apply(envelope, headers)

    def verify(self, envelope: Any) -> Any:
        if self._verify_file is None:
            return envelope
        from zeep.wsse.signature import verify_envelope  # noqa: PLC0415 - see _signer

        verify_envelope(envelope, str(self._verify_file))
        return envelope


def _signer(credential: X509Signature) -> _Signer:
    # Imported here: xmlsec refuses to load when its libxml2 differs from lxml's, and that
    # must not break the clients that do not sign.
    try:
        import xmlsec  # noqa: PLC0415 - zeep would only say so when signing
        from zeep.wsse.signature import BinarySignature  # noqa: PLC0415
    except Exception as exc:
        raise ClientError(
            f"signing needs a working xmlsec package ({exc}): pip install 'bes[sign]'"
        ) from exc
    _readable(credential.key_file, "signing key")
    _readable(credential.cert_file, "signing certificate")
    try:
        signature = BinarySignature(
            str(credential.key_file),
            str(credential.cert_file),
            credential.key_password,
            signature_method=xmlsec.constants.TransformRsaSha256,
            digest_method=xmlsec.constants.TransformSha256,
        )
    except Exception as exc:  # xmlsec raises its own Error types for unreadable keys
        raise ClientError(f"cannot load the signing key {credential.key_file}: {exc}") from exc
    return _Signer(signature, credential.verify_file)


def _timestamp() -> Any:
    """A ``wsu:Timestamp`` valid for five minutes, as WS-Security recommends against replay."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    expires = now + dt.timedelta(minutes=5)
    stamp = WSU.Timestamp()
    stamp.append(WSU.Created(now.strftime("%Y-%m-%dT%H:%M:%SZ")))
    stamp.append(WSU.Expires(expires.strftime("%Y-%m-%dT%H:%M:%SZ")))
    return stamp


def _readable(path: Path, what: str) -> None:
    if not path.is_file():
        raise ClientError(f"the {what} {path} does not exist or is not a file")
