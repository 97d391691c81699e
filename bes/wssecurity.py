"""WS-Security at the message level: what a ``wsse:Security`` header proves, and nothing more.

:func:`read_security` reads the one Security header addressed to us (OASIS WS-Security 1.0,
2004 namespace) from a parsed request and checks everything that needs neither users nor a
database: the ``wsu:Timestamp`` against the clock, the UsernameToken's form and freshness, and an
X.509 signature (X.509 Token Profile: a ``BinarySecurityToken`` and a ``ds:Signature``, verified
by :mod:`bes.xmlsignature`, which also explains how XML Signature Wrapping is closed). Who the
user is, whether the password or the certificate is good and whether a nonce or a signature was
seen before is the caller's policy (:mod:`bes.authn`); this module hands it the facts
(:class:`Security`) or raises :class:`SecurityRefused`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Final, Protocol

from lxml import etree

from bes.jsdl.xml import tag
from bes.ns import DS, SOAP_ACTOR_NEXT, SOAP_ENV, WSS_USERNAME_PROFILE, WSSE, WSSE11, WSU, qname
from bes.xmlsignature import (
    BASE64_BINARY,
    DEFAULT_ALGORITHMS,
    ECDSA_SHA256,
    ECDSA_SHA384,
    ECDSA_SHA512,
    RSA_SHA1,
    RSA_SHA256,
    RSA_SHA384,
    RSA_SHA512,
    SecurityRefused,
    Signed,
    decode_base64,
    verify_signature,
)

__all__ = [
    "DEFAULT_ALGORITHMS",
    "ECDSA_SHA256",
    "ECDSA_SHA384",
    "ECDSA_SHA512",
    "MAX_LIFETIME_S",
    "MAX_NONCE_BYTES",
    "RSA_SHA1",
    "RSA_SHA256",
    "RSA_SHA384",
    "RSA_SHA512",
    "SECURITY_HEADERS",
    "Security",
    "SecurityRefused",
    "Signed",
    "SoapMessage",
    "UsernameToken",
    "digest_matches",
    "read_security",
]

# ------------------------------------------------------------------------------ the interface


@dataclass(frozen=True, slots=True, kw_only=True)
class UsernameToken:
    """A ``wsse:UsernameToken`` (UsernameToken Profile 1.0), checked for form and freshness only.

    Attributes:
        username: ``wsse:Username``, surrounding whitespace removed.
        password: The PasswordText, exactly as sent; None for a digest or no password.
        digest: The PasswordDigest, base64-decoded (20 bytes); None otherwise.
        nonce: ``wsse:Nonce``, decoded; required with a digest. A replay cache should remember
            it until ``created`` + window: later, the token is refused as stale anyway.
        created_text: ``wsu:Created`` exactly as sent (the digest covers these characters).
        created: ``wsu:Created`` parsed, aware, UTC.
    """

    username: str
    password: str | None = field(default=None, repr=False)
    digest: bytes | None = field(default=None, repr=False)
    nonce: bytes | None = None
    created_text: str | None = None
    created: dt.datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Security:
    """What the Security header addressed to us holds, all checks passed.

    Attributes:
        username_token: The UsernameToken, if any.
        signed: The verified signature, if any (it covers the Body and the Timestamp).
        timestamp: ``wsu:Timestamp`` Created and Expires (None when absent), if any.
    """

    username_token: UsernameToken | None = None
    signed: Signed | None = None
    timestamp: tuple[dt.datetime, dt.datetime | None] | None = None


class SoapMessage(Protocol):
    """What :func:`read_security` needs of :class:`bes.soap.SoapRequest`."""

    @property
    def body(self) -> etree._Element: ...

    @property
    def headers(self) -> tuple[etree._Element, ...]: ...


_SECURITY: Final = qname(WSSE, "Security")
SECURITY_HEADERS: Final[frozenset[str]] = frozenset({_SECURITY})
"""Header blocks this module processes (for ``parse_request(understood=...)``). The 2002/07
pre-standard secext namespace is not supported: such a header is not ours."""

MAX_NONCE_BYTES: Final = 256
MAX_LIFETIME_S: Final = 3600.0
_SHA1_BYTES: Final = 20

_ACTOR: Final = qname(SOAP_ENV, "actor")
_TIMESTAMP: Final = qname(WSU, "Timestamp")
_CREATED: Final = qname(WSU, "Created")
_EXPIRES: Final = qname(WSU, "Expires")
_USERNAME_TOKEN: Final = qname(WSSE, "UsernameToken")
_USERNAME: Final = qname(WSSE, "Username")
_PASSWORD: Final = qname(WSSE, "Password")
_NONCE: Final = qname(WSSE, "Nonce")
_SIGNATURE: Final = qname(DS, "Signature")

_PASSWORD_TEXT: Final = WSS_USERNAME_PROFILE + "#PasswordText"
_PASSWORD_DIGEST: Final = WSS_USERNAME_PROFILE + "#PasswordDigest"

# xsd:dateTime with a mandatory time zone (WS-Security §10 asks for UTC; we take any offset).
_DATETIME: Final = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", re.ASCII
)


# ------------------------------------------------------------------------------ reading


def read_security(
    request: SoapMessage,
    *,
    now: dt.datetime,
    window_s: float,
    algorithms: frozenset[str] | None = None,
    max_lifetime_s: float = MAX_LIFETIME_S,
) -> Security | None:
    """Read and check the ``wsse:Security`` header addressed to this service.

    Args:
        request: The parsed request (:func:`bes.soap.parse_request`); its tree is verified as
            it is, and its ``body`` is the element a signature must cover.
        now: The current time (aware).
        window_s: Allowed clock skew, and the lifetime of a UsernameToken's Created.
        algorithms: Accepted SignatureMethod URIs; :data:`DEFAULT_ALGORITHMS` if None. HMAC
            and MD5 are refused whatever this says.
        max_lifetime_s: A Timestamp is taken to expire at most this long after its Created,
            whatever its Expires says (it bounds how long a replay cache must remember).

    Returns:
        None if no Security header is addressed to us (none, or only for other actors).

    Raises:
        SecurityRefused: Two Security headers for us, a malformed token, a stale or future
            time, or a signature that does not verify or does not cover the Body and the
            Timestamp of this header.
    """
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    now = now.astimezone(dt.UTC)
    blocks = [h for h in request.headers if h.tag == _SECURITY and _addressed_to_us(h)]
    if not blocks:
        return None
    if len(blocks) > 1:
        raise SecurityRefused("duplicate_header", f"{len(blocks)} Security headers for us")
    security = blocks[0]
    window = dt.timedelta(seconds=window_s)
    stamp_element = _at_most_one(security, _TIMESTAMP)
    stamp = (
        _read_timestamp(stamp_element, now, window, dt.timedelta(seconds=max_lifetime_s))
        if stamp_element is not None
        else None
    )
    token_element = _at_most_one(security, _USERNAME_TOKEN)
    token = _read_username_token(token_element, now, window) if token_element is not None else None
    signatures = list(security.iter(_SIGNATURE))
    signed: Signed | None = None
    if len(signatures) > 1:
        raise SecurityRefused("malformed", f"{len(signatures)} ds:Signature in the header")
    if signatures:
        if signatures[0].getparent() is not security:
            raise SecurityRefused("malformed", "ds:Signature is not a child of wsse:Security")
        if stamp_element is None or stamp is None:
            raise SecurityRefused("no_timestamp", "a signed message needs a signed wsu:Timestamp")
        signed = verify_signature(
            signatures[0],
            request_body=request.body,
            security=security,
            timestamp=stamp_element,
            expires=stamp.until + window,
            algorithms=DEFAULT_ALGORITHMS if algorithms is None else algorithms,
        )
    return Security(
        username_token=token,
        signed=signed,
        timestamp=(stamp.created, stamp.expires) if stamp is not None else None,
    )


def digest_matches(token: UsernameToken, password: str) -> bool:
    """True if ``token`` carries the PasswordDigest of ``password``:
    Base64(SHA-1(nonce + created + password)) (UsernameToken Profile 1.0 §3.1), compared in
    constant time. False for a token without digest, nonce or Created."""
    if token.digest is None or token.nonce is None or token.created_text is None:
        return False
    expected = hashlib.sha1(  # noqa: S324 - the profile's algorithm, not our choice
        token.nonce + token.created_text.encode("utf-8") + password.encode("utf-8")
    ).digest()
    return hmac.compare_digest(expected, token.digest)


# ------------------------------------------------------------------------------ tokens


@dataclass(frozen=True, slots=True)
class _Stamp:
    created: dt.datetime
    expires: dt.datetime | None
    until: dt.datetime  # Expires, or Created + window; at most Created + max lifetime


def _addressed_to_us(header: etree._Element) -> bool:
    actor = header.get(_ACTOR)
    return actor is None or actor.strip() in ("", SOAP_ACTOR_NEXT)


def _at_most_one(parent: etree._Element, name: str) -> etree._Element | None:
    found = [c for c in parent.iterchildren(etree.Element) if c.tag == name]
    if len(found) > 1:
        raise SecurityRefused(
            "malformed", f"{len(found)} {_short(name)} in one {etree.QName(parent).localname}"
        )
    return found[0] if found else None


def _read_timestamp(
    element: etree._Element, now: dt.datetime, window: dt.timedelta, max_lifetime: dt.timedelta
) -> _Stamp:
    created_el = _at_most_one(element, _CREATED)
    expires_el = _at_most_one(element, _EXPIRES)
    if created_el is None:
        raise SecurityRefused("malformed", "wsu:Timestamp without wsu:Created")
    created = _datetime(created_el.text, "wsu:Timestamp/wsu:Created")
    if created > now + window:
        raise SecurityRefused("future", f"Timestamp Created {created.isoformat()} is ahead")
    expires = (
        _datetime(expires_el.text, "wsu:Timestamp/wsu:Expires") if expires_el is not None else None
    )
    if expires is not None and expires < created:
        raise SecurityRefused("malformed", "Timestamp Expires is before its Created")
    until = min(expires if expires is not None else created + window, created + max_lifetime)
    if until < now - window:
        raise SecurityRefused("stale", f"Timestamp expired at {until.isoformat()}")
    return _Stamp(created=created, expires=expires, until=until)


def _read_username_token(
    element: etree._Element, now: dt.datetime, window: dt.timedelta
) -> UsernameToken:
    parts: dict[str, etree._Element] = {}
    for child in element.iterchildren(etree.Element):
        name = tag(child)
        if name in (_USERNAME, _PASSWORD, _NONCE, _CREATED):
            if name in parts:
                raise SecurityRefused("malformed", f"two {_short(name)} in the UsernameToken")
            parts[name] = child
        elif etree.QName(child).namespace in (WSSE, WSU, WSSE11):
            raise SecurityRefused("bad_token", f"{_short(name)} in a UsernameToken")
    username = (parts[_USERNAME].text or "").strip() if _USERNAME in parts else ""
    if not username:
        raise SecurityRefused("malformed", "UsernameToken without a Username")
    nonce: bytes | None = None
    if _NONCE in parts:
        encoding = parts[_NONCE].get("EncodingType", BASE64_BINARY)
        if encoding != BASE64_BINARY:
            raise SecurityRefused("bad_token", f"Nonce EncodingType {encoding!r}")
        nonce = decode_base64(parts[_NONCE].text, "wsse:Nonce")
        if not nonce or len(nonce) > MAX_NONCE_BYTES:
            raise SecurityRefused("malformed", f"a Nonce of {len(nonce)} bytes")
    created_text: str | None = None
    created: dt.datetime | None = None
    if _CREATED in parts:
        created_text = parts[_CREATED].text or ""
        created = _datetime(created_text, "UsernameToken/wsu:Created")
        if created > now + window:
            raise SecurityRefused("future", f"UsernameToken Created {created_text!r} is ahead")
        if created < now - window:
            raise SecurityRefused("stale", f"UsernameToken Created {created_text!r} is too old")
    password: str | None = None
    digest: bytes | None = None
    if _PASSWORD in parts:
        kind = parts[_PASSWORD].get("Type", _PASSWORD_TEXT)
        if kind == _PASSWORD_TEXT:
            password = parts[_PASSWORD].text or ""
        elif kind == _PASSWORD_DIGEST:
            digest = decode_base64(parts[_PASSWORD].text, "PasswordDigest")
            if len(digest) != _SHA1_BYTES:
                raise SecurityRefused("malformed", f"a PasswordDigest of {len(digest)} bytes")
            if nonce is None or created is None:
                raise SecurityRefused("malformed", "a PasswordDigest needs a Nonce and a Created")
        else:
            raise SecurityRefused("bad_token", f"password Type {kind!r}")
    return UsernameToken(
        username=username,
        password=password,
        digest=digest,
        nonce=nonce,
        created_text=created_text,
        created=created,
    )


def _datetime(text: str | None, where: str) -> dt.datetime:
    match = _DATETIME.fullmatch((text or "").strip())
    if match is None:
        raise SecurityRefused("malformed", f"{where} {text!r} is not a dateTime with a time zone")
    base, fraction, zone = match.groups()
    micro = f".{(fraction or '')[:6]:0<6}"
    try:
        value = dt.datetime.fromisoformat(base + micro + ("+00:00" if zone == "Z" else zone))
        return value.astimezone(dt.UTC)
    except (ValueError, OverflowError) as exc:
        raise SecurityRefused("malformed", f"{where} {text!r}: {exc}") from exc


def _short(clark: str) -> str:
    return etree.QName(clark).localname
