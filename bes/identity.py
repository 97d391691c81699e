"""Who is calling: the one place where a request's identity is decided.

Every SOAP request passes through :meth:`IdentityPolicy.identify` after its envelope is parsed
and before any operation runs. The embedded default trusts everyone as the same anonymous
administrator, which is safe only because it listens on loopback; TLS client certificates and
WS-Security tokens plug in here as further policies.
"""

from __future__ import annotations

import logging
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from bes.certs import identity_subject
from bes.errors import BesError
from bes.principal import ANONYMOUS, Principal
from bes.soap import SoapRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Transport:
    """What the HTTP layer knows about a request.

    Attributes:
        client: ``host:port`` of the peer (behind a trusted proxy: the address it forwarded,
            port 0).
        scheme: ``http`` or ``https`` (behind a trusted proxy: its ``X-Forwarded-Proto``).
        headers: Request headers, names in lower case.
        peer_certificate: The client's verified certificate (DER), from the TLS handshake or
            from a trusted proxy's header; None without one.
        peer_chain: Its chain as verified, DER, leaf first (the leaf alone from a proxy).
        peer_subject: Whom the certificate stands for, canonical (:func:`bes.certs.normalize_dn`):
            its subject, or for an RFC 3820 proxy certificate its end-entity certificate's.
    """

    client: str
    scheme: str = "http"
    headers: Mapping[str, str] = field(default_factory=dict)
    peer_certificate: bytes | None = None
    peer_chain: tuple[bytes, ...] = ()
    peer_subject: str | None = None

    @property
    def address(self) -> str:
        """The client's address without the port."""
        host = self.client.rpartition(":")[0]
        return host.strip("[]")


FORWARDED_PROTO: Final = "x-forwarded-proto"
FORWARDED_FOR: Final = "x-forwarded-for"
CLIENT_CERT: Final = "x-ssl-client-cert"
"""A trusted proxy's client certificate header: URL-escaped PEM (nginx's
``$ssl_client_escaped_cert``) or plain PEM."""
CLIENT_VERIFY: Final = "x-ssl-client-verify"
"""A trusted proxy's verification result; the certificate counts only if it is ``SUCCESS``
(nginx's ``$ssl_client_verify``)."""


_HTTP_SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
"""A WebSocket's scheme as the HTTP one it was upgraded from (the same TLS, or none)."""


def transport_of(
    scope: Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    trusted_proxies: frozenset[str] = frozenset(),
) -> Transport:
    """What an ASGI request's scope tells of its transport (``headers`` as the HTTP layer
    decoded them, names in lower case).

    The client certificate comes from the ASGI TLS extension (:mod:`bes.tls`). When the peer
    is one of ``trusted_proxies``, the scheme, the client's address and certificate come from
    its headers instead (:data:`FORWARDED_PROTO`, the last hop of :data:`FORWARDED_FOR`,
    :data:`CLIENT_CERT` if :data:`CLIENT_VERIFY` is ``SUCCESS``); from anyone else those
    headers mean nothing.
    """
    client = scope.get("client") or ("", 0)
    if client[0] in trusted_proxies:
        return _forwarded(client, headers)
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tuple(ssl.PEM_cert_to_DER_cert(pem) for pem in tls.get("client_cert_chain") or ())
    return Transport(
        client=f"{client[0]}:{client[1]}",
        scheme=_HTTP_SCHEMES.get(scope.get("scheme", "http"), "http"),
        headers=headers,
        peer_certificate=chain[0] if chain else None,
        peer_chain=chain,
        peer_subject=_subject(chain),
    )


def request_scheme(
    scope: Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    trusted_proxies: frozenset[str] = frozenset(),
) -> str:
    """``http`` or ``https``: as the client reached us (through a trusted proxy, as it says)."""
    client = scope.get("client") or ("", 0)
    if client[0] in trusted_proxies:
        return _forwarded_scheme(headers)
    return _HTTP_SCHEMES.get(scope.get("scheme", "http"), "http")


def _forwarded(client: Sequence[Any], headers: Mapping[str, str]) -> Transport:
    hops = [hop.strip() for hop in headers.get(FORWARDED_FOR, "").split(",") if hop.strip()]
    address = hops[-1] if hops else str(client[0])  # the hop the proxy itself appended
    chain: tuple[bytes, ...] = ()
    pem = headers.get(CLIENT_CERT, "").strip()
    if pem and headers.get(CLIENT_VERIFY, "").strip().upper() == "SUCCESS":
        try:
            chain = (ssl.PEM_cert_to_DER_cert(_unescape(pem)),)
        except ValueError:
            log.warning("trusted proxy %s sent an unreadable client certificate", client[0])
    return Transport(
        client=f"{address}:0",
        scheme=_forwarded_scheme(headers),
        headers=headers,
        peer_certificate=chain[0] if chain else None,
        peer_chain=chain,
        peer_subject=_subject(chain),
    )


def _forwarded_scheme(headers: Mapping[str, str]) -> str:
    proto = headers.get(FORWARDED_PROTO, "http").split(",")[0].strip().lower()
    return "https" if proto == "https" else "http"


def _unescape(pem: str) -> str:
    # nginx escapes the PEM as a URL component; HAProxy-style and older nginx send it with
    # the line breaks replaced by spaces or tabs.
    if "%" in pem:
        pem = urllib.parse.unquote(pem)
    body = pem.replace("-----BEGIN CERTIFICATE-----", "").replace("-----END CERTIFICATE-----", "")
    return "-----BEGIN CERTIFICATE-----\n" + "".join(body.split()) + "\n-----END CERTIFICATE-----\n"


def _subject(chain: tuple[bytes, ...]) -> str | None:
    if not chain:
        return None
    try:
        return identity_subject(chain)
    except BesError:
        log.warning("a client certificate cannot be read", exc_info=True)
        return None


class IdentityPolicy(Protocol):
    """Decides the principal of a request, or refuses it."""

    async def understood_headers(self) -> frozenset[str]:
        """SOAP header blocks (Clark names) the policy processes for the next request, so
        ``mustUnderstand`` on them is honoured (``wsse:Security`` once WS-Security is
        checked)."""
        ...

    async def identify(self, transport: Transport, request: SoapRequest | None) -> Principal:
        """Return the caller, or raise :class:`~bes.errors.NotAuthorized`.

        ``request`` is None for plain HTTP requests (documents, status pages).
        """
        ...


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The credential of an ``Authorization: Bearer TOKEN`` header (how workers sign in)."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class AnonymousPolicy:
    """No authentication: every caller is the anonymous administrator (loopback default)."""

    async def understood_headers(self) -> frozenset[str]:
        return frozenset()

    async def identify(self, transport: Transport, request: SoapRequest | None) -> Principal:
        return ANONYMOUS
