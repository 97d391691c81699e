"""Who is calling, once a site has users: the policy every request passes through.

The rule an operator can predict:

* On a loopback address with no user defined, every caller is the anonymous administrator,
  as on the embedded default (``bes serve`` out of the box).
* As soon as a user exists, or the service listens on any other address, every request must
  authenticate (``/healthz``, the WSDL and its schemas stay public; workers use their tokens).

Ways in, in the order they are tried:

1. WS-Security in the SOAP message (bes.wssecurity): a UsernameToken (PasswordDigest with a
   nonce remembered in the database, so a replay is refused on every replica and after a
   restart; PasswordText only over TLS) and/or an X.509 signature over the Body and the
   Timestamp (the signer's certificate must chain to the client CA or be registered by
   fingerprint; a signature value is remembered like a nonce). When a message carries both,
   they must name the same user.
2. A TLS client certificate (verified in the handshake, or by a trusted proxy), mapped to a
   user by subject DN or fingerprint.
3. HTTP Basic (browsers, curl), over TLS only.

A refusal says "not authorized" and nothing more; the log says why. Every refusal is counted
by reason in ``bes_auth_failures_total``, and a source that keeps failing is slowed down.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Final

from bes.accounts import Accounts
from bes.certs import CertificateTrust, fingerprint
from bes.db.user_rows import UserRow
from bes.errors import ConfigError, NotAuthorized
from bes.identity import Transport
from bes.metrics import Metrics
from bes.principal import ANONYMOUS, Principal
from bes.soap import SoapRequest
from bes.wssecurity import (
    SECURITY_HEADERS,
    Security,
    Signed,
    UsernameToken,
    digest_matches,
    read_security,
)

log = logging.getLogger(__name__)

FAILURES_BEFORE_DELAY: Final = 5
"""Failures a source may have within :data:`FAILURE_WINDOW_S` before it is slowed down."""
FAILURE_WINDOW_S: Final = 300.0
MAX_DELAY_S: Final = 5.0
_SOURCES: Final = 10_000


class Refused(NotAuthorized):
    """Authentication failed; ``reason`` is a label for metrics, the message is for the log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Throttle:
    """Slows down sources that keep failing to authenticate: past
    :data:`FAILURES_BEFORE_DELAY` failures within the window, each further refusal to the
    source is answered late, twice as late for every further failure, up to
    :data:`MAX_DELAY_S`."""

    def __init__(self) -> None:
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def delay_s(self, source: str) -> float:
        """How long a request from ``source`` should wait before it is looked at."""
        recent = self._recent(source)
        excess = len(recent) - FAILURES_BEFORE_DELAY
        return 0.0 if excess <= 0 else min(MAX_DELAY_S, 0.1 * 2 ** (excess - 1))

    def failed(self, source: str) -> None:
        """Count a failure of ``source``."""
        self._recent(source).append(time.monotonic())
        self._failures.move_to_end(source)
        while len(self._failures) > _SOURCES:
            self._failures.popitem(last=False)

    def _recent(self, source: str) -> list[float]:
        since = time.monotonic() - FAILURE_WINDOW_S
        recent = [t for t in self._failures.get(source, ()) if t > since][-64:]
        self._failures[source] = recent
        return recent


class SitePolicy:
    """The identity policy of ``bes serve``.

    Args:
        accounts: The users.
        trust: CAs that client certificates and WS-Security signers must chain to (None:
            only certificates registered by fingerprint are trusted).
        always: Authenticate even while no user exists (a non-loopback address).
        insecure: Allow passwords in clear (PasswordText, Basic) without TLS (a lab).
        window_s: How far a Created or Timestamp may be from now.
        algorithms: Accepted signature methods (None: bes.wssecurity's defaults).
        metrics: Where refusals are counted.
        clock: The current time (tests inject one).
    """

    def __init__(
        self,
        accounts: Accounts,
        *,
        trust: CertificateTrust | None,
        always: bool,
        insecure: bool = False,
        window_s: float = 300.0,
        algorithms: frozenset[str] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.accounts = accounts
        self.trust = trust
        self.always = always
        self.insecure = insecure
        self.window_s = window_s
        self.algorithms = algorithms
        self.metrics = metrics
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.throttle = Throttle()

    async def _secured(self) -> bool:
        return self.always or await self.accounts.any_users()

    async def understood_headers(self) -> frozenset[str]:
        """wsse:Security is processed (so ``mustUnderstand`` on it is honoured) once the
        service authenticates; the anonymous default processes no header, as before."""
        return SECURITY_HEADERS if await self._secured() else frozenset()

    async def identify(self, transport: Transport, request: SoapRequest | None) -> Principal:
        """The caller; raises NotAuthorized ("not authorized", nothing more)."""
        if not await self._secured():
            return ANONYMOUS
        source = transport.address
        try:
            return await self._authenticate(transport, request)
        except Refused as exc:
            reason, detail = exc.reason, str(exc)
        except NotAuthorized as exc:  # bes.wssecurity and bes.certs refusals
            reason, detail = getattr(exc, "reason", "refused"), str(exc)
        except ConfigError as exc:
            reason, detail = "misconfigured", str(exc)
            log.error("authentication from %s failed on the service's side: %s", source, exc)
        log.warning("not authorized (%s) from %s: %s", reason, source, detail)
        if self.metrics is not None:
            self.metrics.auth_failure(reason)
        self.throttle.failed(source)
        # A source that keeps failing waits for its refusals; those who sign in do not wait
        # (password guesses are also bounded by the argon2 verifications run at once).
        delay = self.throttle.delay_s(source)
        if delay:
            if self.metrics is not None:
                self.metrics.auth_throttled.inc()
            await asyncio.sleep(delay)
        raise NotAuthorized("not authorized")

    async def _authenticate(self, transport: Transport, request: SoapRequest | None) -> Principal:
        if request is not None:
            security = read_security(
                request, now=self.clock(), window_s=self.window_s, algorithms=self.algorithms
            )
            if security is not None and (security.username_token or security.signed):
                return await self._by_message(transport, security)
        unmapped = None
        if transport.peer_certificate is not None:
            user = await self.accounts.user_of_certificate(
                transport.peer_subject, fingerprint(transport.peer_certificate)
            )
            if user is not None:
                return _principal(user)
            unmapped = transport.peer_subject
        basic = basic_credentials(transport.headers)
        if basic is not None:
            user = await self._by_password(transport, basic[0], basic[1], how="HTTP Basic")
            return _principal(user)
        if unmapped is not None:
            raise Refused("unknown_certificate", f"no user has the certificate {unmapped!r}")
        raise Refused("no_credentials", "no credentials in the request")

    async def _by_message(self, transport: Transport, security: Security) -> Principal:
        users: list[UserRow] = []
        if security.signed is not None:
            users.append(await self._by_signature(security.signed))
        if security.username_token is not None:
            users.append(await self._by_token(transport, security.username_token))
        if len({u.name for u in users}) > 1:
            raise Refused(
                "conflicting_credentials",
                f"the signature and the UsernameToken name different users "
                f"({', '.join(u.name for u in users)})",
            )
        return _principal(users[0])

    async def _by_token(self, transport: Transport, token: UsernameToken) -> UserRow:
        if token.digest is None:
            return await self._by_password(
                transport, token.username, token.password or "", how="PasswordText"
            )
        user = await self.accounts.user(token.username)
        if user is None:
            raise Refused("unknown_user", f"no user {token.username!r}")
        password = self.accounts.digest_password(user)
        if password is None:
            raise Refused(
                "digest_unavailable",
                f"user {user.name} has no password kept for PasswordDigest (--no-digest)",
            )
        if not digest_matches(token, password):
            raise Refused("bad_password", f"wrong PasswordDigest for user {user.name}")
        created = token.created or self.clock()
        key = "n:" + hashlib.sha256(user.name.encode() + b"\0" + (token.nonce or b"")).hexdigest()
        expires = created + dt.timedelta(seconds=2 * self.window_s)
        if not await self.accounts.first_use(key, expires):
            raise Refused("replay", f"a nonce of user {user.name} was used again")
        return user

    async def _by_password(
        self, transport: Transport, name: str, password: str, *, how: str
    ) -> UserRow:
        if transport.scheme != "https" and not self.insecure:
            raise Refused("password_without_tls", f"{how} for {name!r} over plain HTTP")
        user = await self.accounts.user(name)
        if user is None:
            raise Refused("unknown_user", f"no user {name!r} ({how})")
        if not await self.accounts.password_matches(user, password):
            raise Refused("bad_password", f"wrong password for user {name} ({how})")
        return user

    async def _by_signature(self, signed: Signed) -> UserRow:
        pinned = fingerprint(signed.certificate)
        subject: str | None = None
        why_untrusted = "no client CA is configured"
        if self.trust is not None:
            try:
                subject = self.trust.verify(
                    signed.certificate, intermediates=signed.intermediates, now=self.clock()
                )
            except NotAuthorized as exc:
                why_untrusted = str(exc)
        user = await self.accounts.user_of_certificate(subject, pinned)
        if user is None:
            if subject is None:
                raise Refused("untrusted_certificate", f"signer certificate: {why_untrusted}")
            raise Refused("unknown_certificate", f"no user has the certificate {subject!r}")
        if subject is None and user.certificate_fingerprint != pinned:
            raise Refused("untrusted_certificate", f"signer certificate: {why_untrusted}")
        key = "s:" + signed.signature_id
        expires = signed.expires + dt.timedelta(seconds=self.window_s)
        if not await self.accounts.first_use(key, expires):
            raise Refused("replay", f"a signed message of user {user.name} was sent again")
        return user


def basic_credentials(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """``(name, password)`` of an ``Authorization: Basic`` header (RFC 7617), if any."""
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, password = decoded.partition(":")
    return (name, password) if sep else None


def is_loopback(host: str) -> bool:
    """Whether a listening address is loopback only (``127.0.0.0/8``, ``::1``, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _principal(user: UserRow) -> Principal:
    return Principal(name=user.name, admin=user.admin)
