"""Who is calling: the one place where a request's identity is decided.

Every SOAP request passes through :meth:`IdentityPolicy.identify` after its envelope is parsed
and before any operation runs. The embedded default trusts everyone as the same anonymous
administrator, which is safe only because it listens on loopback; TLS client certificates and
WS-Security tokens plug in here as further policies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bes.principal import ANONYMOUS, Principal
from bes.soap import SoapRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class Transport:
    """What the HTTP layer knows about a request.

    Attributes:
        client: ``host:port`` of the peer.
        scheme: ``http`` or ``https``.
        headers: Request headers, names in lower case.
        peer_certificate: The TLS client certificate (DER), when TLS asked for one.
    """

    client: str
    scheme: str = "http"
    headers: Mapping[str, str] = field(default_factory=dict)
    peer_certificate: bytes | None = None


def transport_of(scope: Mapping[str, Any], headers: Mapping[str, str]) -> Transport:
    """What an ASGI request's scope tells of its transport (``headers`` as the HTTP layer
    decoded them, names in lower case)."""
    client = scope.get("client") or ("", 0)
    return Transport(
        client=f"{client[0]}:{client[1]}", scheme=scope.get("scheme", "http"), headers=headers
    )


class IdentityPolicy(Protocol):
    """Decides the principal of a request, or refuses it."""

    understood_headers: frozenset[str]
    """SOAP header blocks (Clark names) the policy processes, so ``mustUnderstand`` on
    them is honoured (``wsse:Security`` once WS-Security is checked)."""

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

    understood_headers: frozenset[str] = frozenset()

    async def identify(self, transport: Transport, request: SoapRequest | None) -> Principal:
        return ANONYMOUS
