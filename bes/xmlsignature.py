"""XML Signature over a WS-Security message: verify it, and prove it covers what we process.

:func:`verify_signature` checks the ``ds:Signature`` of a ``wsse:Security`` header (X.509 Token
Profile: a ``BinarySecurityToken`` and a ``ds:Signature``, verified with xmlsec) and returns the
facts (:class:`Signed`) or raises :class:`SecurityRefused`. Reading the rest of the header (the
Timestamp, UsernameTokens, which header is ours) is :mod:`bes.wssecurity`'s.

The signature rules close XML Signature Wrapping (McIntosh and Austel 2005; Somorovsky et al.
2011) by structure, not by searching:

* every ``wsu:Id``, ``Id`` and ``ID`` value in the whole document is unique, and only the
  elements the References name are registered with xmlsec, from our own map;
* the ``soap:Body`` that will be dispatched (the direct child of the Envelope that
  :func:`bes.soap.parse_request` found) and the ``wsu:Timestamp`` that is a direct child of
  *this* Security header must both be among the referenced elements, compared by identity;
* the tree is verified exactly as parsed (never re-serialised), so what was verified is what is
  processed;
* one Signature, exc-c14n only, bare ``#id`` References, no XPointer, no enveloped-signature, no
  ``ds:Object``, no MD5, no HMAC; the SignatureMethod must be in a configurable set.

Comments are outside the exc-c14n digest, so the hardened parser's comment removal is harmless.
It also drops processing instructions, which WS-I Basic Profile R1009 forbids in SOAP
messages: a signed message carrying one inside signed content fails verification (refused,
never accepted unsigned).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from lxml import etree

from bes.errors import NotAuthorized
from bes.jsdl.xml import tag
from bes.ns import (
    DS,
    EXC_C14N,
    SOAP_ENV,
    WSS_SOAP_MESSAGE_SECURITY,
    WSS_X509_PROFILE,
    WSSE,
    WSU,
    XMLDSIG_MORE,
    XMLENC,
    qname,
)

# ------------------------------------------------------------------------------ the interface


class SecurityRefused(NotAuthorized):
    """The Security header is malformed, stale, or its signature does not hold.

    ``str()`` is for the operator's log; the wire must only ever say "not authorized".

    Attributes:
        reason: A short label for metrics: ``malformed``, ``stale``, ``future``,
            ``duplicate_header``, ``weak_algorithm``, ``bad_reference``, ``duplicate_id``,
            ``not_signed``, ``wrapped``, ``no_timestamp``, ``bad_token``, ``bad_signature``.
        detail: What exactly was wrong, for the log.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"WS-Security refused ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True, kw_only=True)
class Signed:
    """A verified X.509 signature over the Body and the Timestamp. Its key is verified, its
    certificate is NOT trusted yet: chain or fingerprint checks are the caller's.

    Attributes:
        certificate: DER of the certificate whose key verified the signature (the end entity
            of a PKIPath token).
        intermediates: The other certificates of a ``X509PKIPathv1`` token, end entity's
            issuer first; () for a single ``X509v3`` token.
        signature_id: SHA-256 (hex) of what was signed: the References' URIs, digest methods and
            digest values. A replay carries the same id even with a re-encoded or (ECDSA)
            re-randomised SignatureValue. Remember it until ``expires``.
        expires: When :func:`bes.wssecurity.read_security` stops accepting this message: the
            Timestamp's Expires (or Created + window, capped at Created + max lifetime) plus the
            clock-skew window.
        algorithm: The SignatureMethod URI.
    """

    certificate: bytes = field(repr=False)
    intermediates: tuple[bytes, ...] = field(default=(), repr=False)
    signature_id: str
    expires: dt.datetime
    algorithm: str


RSA_SHA1: Final = DS + "rsa-sha1"
RSA_SHA256: Final = XMLDSIG_MORE + "#rsa-sha256"
RSA_SHA384: Final = XMLDSIG_MORE + "#rsa-sha384"
RSA_SHA512: Final = XMLDSIG_MORE + "#rsa-sha512"
ECDSA_SHA256: Final = XMLDSIG_MORE + "#ecdsa-sha256"
ECDSA_SHA384: Final = XMLDSIG_MORE + "#ecdsa-sha384"
ECDSA_SHA512: Final = XMLDSIG_MORE + "#ecdsa-sha512"

DEFAULT_ALGORITHMS: Final[frozenset[str]] = frozenset(
    {RSA_SHA256, RSA_SHA384, RSA_SHA512, ECDSA_SHA256, ECDSA_SHA384, ECDSA_SHA512, RSA_SHA1}
)
"""Accepted SignatureMethods: RSA and ECDSA with SHA-2, and RSA-SHA1 (zeep's default, still sent
by deployed clients). Never HMAC (a shared key, and truncation attacks), never MD5."""

ALGORITHMS_BY_NAME: Final[dict[str, str]] = {
    uri.rpartition("#")[2] if "#" in uri else uri: uri for uri in DEFAULT_ALGORITHMS
}
"""Every SignatureMethod that may be accepted, by the short name the URIs end with
(``rsa-sha256``): what ``bes serve --signature-algorithm`` takes."""

_SIGNATURE_TRANSFORMS: Final[dict[str, Any]] = {
    RSA_SHA1: xmlsec.constants.TransformRsaSha1,
    RSA_SHA256: xmlsec.constants.TransformRsaSha256,
    RSA_SHA384: xmlsec.constants.TransformRsaSha384,
    RSA_SHA512: xmlsec.constants.TransformRsaSha512,
    ECDSA_SHA256: xmlsec.constants.TransformEcdsaSha256,
    ECDSA_SHA384: xmlsec.constants.TransformEcdsaSha384,
    ECDSA_SHA512: xmlsec.constants.TransformEcdsaSha512,
}
_DIGESTS: Final[dict[str, Any]] = {
    DS + "sha1": xmlsec.constants.TransformSha1,
    XMLENC + "#sha256": xmlsec.constants.TransformSha256,
    XMLDSIG_MORE + "#sha384": xmlsec.constants.TransformSha384,
    XMLENC + "#sha512": xmlsec.constants.TransformSha512,
}

BASE64_BINARY: Final = WSS_SOAP_MESSAGE_SECURITY + "#Base64Binary"
"""The one ``EncodingType`` we accept for tokens and nonces (and the default)."""

MAX_REFERENCES: Final = 16
_MAX_TOKEN_BYTES: Final = 64 * 1024
_KEY_CACHE_SIZE: Final = 256

_ENVELOPE: Final = qname(SOAP_ENV, "Envelope")
_BODY: Final = qname(SOAP_ENV, "Body")
_WSU_ID: Final = qname(WSU, "Id")
_XML_ID: Final = "{http://www.w3.org/XML/1998/namespace}id"
# xml:id is an ID to libxml2 whatever we register, so its values must be unique with the rest.
_ID_ATTRIBUTES: Final = (_WSU_ID, "Id", "ID", _XML_ID)
_TIMESTAMP: Final = qname(WSU, "Timestamp")
_BST: Final = qname(WSSE, "BinarySecurityToken")
_STR: Final = qname(WSSE, "SecurityTokenReference")
_STR_REFERENCE: Final = qname(WSSE, "Reference")
_SIGNED_INFO: Final = qname(DS, "SignedInfo")
_SIGNATURE_VALUE: Final = qname(DS, "SignatureValue")
_KEY_INFO: Final = qname(DS, "KeyInfo")
_C14N_METHOD: Final = qname(DS, "CanonicalizationMethod")
_SIGNATURE_METHOD: Final = qname(DS, "SignatureMethod")
_REFERENCE: Final = qname(DS, "Reference")
_TRANSFORMS: Final = qname(DS, "Transforms")
_TRANSFORM: Final = qname(DS, "Transform")
_DIGEST_METHOD: Final = qname(DS, "DigestMethod")
_DIGEST_VALUE: Final = qname(DS, "DigestValue")
_X509_DATA: Final = qname(DS, "X509Data")
_X509_CERTIFICATE: Final = qname(DS, "X509Certificate")
_INCLUSIVE_NAMESPACES: Final = qname(EXC_C14N, "InclusiveNamespaces")

_X509V3: Final = WSS_X509_PROFILE + "#X509v3"
_PKI_PATH: Final = WSS_X509_PROFILE + "#X509PKIPathv1"
_PKCS7: Final = WSS_X509_PROFILE + "#PKCS7"

_ID_REFERENCE: Final = re.compile(r"#([A-Za-z_][\w.\-]*)", re.ASCII)


def decode_base64(text: str | None, where: str) -> bytes:
    """The base64 content of an element, whitespace ignored.

    Args:
        text: The element's text.
        where: What it is, for the refusal's detail.

    Raises:
        SecurityRefused: ``malformed``: it is not base64.
    """
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SecurityRefused("malformed", f"{where} is not base64") from exc


def _short(clark: str) -> str:
    return etree.QName(clark).localname


# ------------------------------------------------------------------------------ verifying


def verify_signature(
    signature: etree._Element,
    *,
    request_body: etree._Element,
    security: etree._Element,
    timestamp: etree._Element,
    expires: dt.datetime,
    algorithms: frozenset[str],
) -> Signed:
    """Verify ``signature`` and that it covers the Body and the Timestamp we process.

    Args:
        signature: The one ``ds:Signature``, a child of ``security``.
        request_body: The request body element (:attr:`bes.soap.SoapRequest.body`); its parent
            ``soap:Body`` must be signed.
        security: The ``wsse:Security`` header addressed to us; the signing token must be in it.
        timestamp: That header's ``wsu:Timestamp``, which must be signed.
        expires: Reported as :attr:`Signed.expires`.
        algorithms: Accepted SignatureMethod URIs (HMAC and MD5 are never accepted).

    Raises:
        SecurityRefused: The signature is malformed, uses a refused algorithm, does not cover
            the Body and the Timestamp, names no usable token, or does not verify.
    """
    body = request_body.getparent()
    envelope = body.getparent() if body is not None else None
    if body is None or envelope is None or envelope.tag != _ENVELOPE or body.tag != _BODY:
        raise SecurityRefused("malformed", "the request body is not in a soap:Body")
    if envelope.getparent() is not None:
        raise SecurityRefused("malformed", "the Envelope is not the document root")
    signed_info, _value, key_info = _signature_parts(signature)
    method, references = _read_signed_info(signed_info, algorithms)
    ids = _unique_ids(envelope)
    referenced: list[tuple[etree._Element, str]] = []
    for uri, _digest in references:
        element, attribute = ids.get(uri[1:], (None, ""))
        if element is None:
            raise SecurityRefused("bad_reference", f"Reference {uri!r} names no element")
        if any(element is seen for seen, _ in referenced):
            raise SecurityRefused("bad_reference", f"{uri!r} is referenced twice")
        referenced.append((element, attribute))
    _require_covered(body, _BODY, referenced)
    _require_covered(timestamp, _TIMESTAMP, referenced)
    certificate, intermediates = _signing_token(key_info, security, ids)
    context = xmlsec.SignatureContext()
    try:
        context.key = _key(certificate)
        for element, attribute in referenced:
            if attribute == _WSU_ID:
                context.register_id(element, "Id", WSU)
            elif attribute != _XML_ID:  # libxml2 knows xml:id as an ID already
                context.register_id(element, attribute, None)
        context.enable_signature_transform(xmlsec.constants.TransformExclC14N)
        context.enable_signature_transform(_SIGNATURE_TRANSFORMS[method])
        context.enable_reference_transform(xmlsec.constants.TransformExclC14N)
        for transform in _DIGESTS.values():
            context.enable_reference_transform(transform)
        context.verify(signature)
    except SecurityRefused:
        raise
    except (xmlsec.Error, etree.LxmlError, ValueError, TypeError) as exc:
        raise SecurityRefused("bad_signature", f"xmlsec: {exc}") from exc
    fingerprint = hashlib.sha256()
    for uri, digest in references:
        fingerprint.update(f"{uri}\n{digest}\n".encode())
    return Signed(
        certificate=certificate,
        intermediates=intermediates,
        signature_id=fingerprint.hexdigest(),
        expires=expires,
        algorithm=method,
    )


def _signature_parts(
    signature: etree._Element,
) -> tuple[etree._Element, etree._Element, etree._Element]:
    """SignedInfo, SignatureValue, KeyInfo: nothing else (no ds:Object, no Manifest)."""
    parts = list(signature.iterchildren(etree.Element))
    if [p.tag for p in parts] != [_SIGNED_INFO, _SIGNATURE_VALUE, _KEY_INFO]:
        names = ", ".join(_short(tag(p)) for p in parts)
        raise SecurityRefused("malformed", f"ds:Signature holds {names}")
    return parts[0], parts[1], parts[2]


def _read_signed_info(
    signed_info: etree._Element, algorithms: frozenset[str]
) -> tuple[str, list[tuple[str, str]]]:
    """The SignatureMethod and each Reference's (URI, "digest-method base64-digest")."""
    children = list(signed_info.iterchildren(etree.Element))
    if (
        len(children) < 3
        or children[0].tag != _C14N_METHOD
        or children[1].tag != _SIGNATURE_METHOD
        or any(c.tag != _REFERENCE for c in children[2:])
    ):
        raise SecurityRefused("malformed", "SignedInfo is not c14n method, method, references")
    if len(children) - 2 > MAX_REFERENCES:
        raise SecurityRefused("malformed", f"{len(children) - 2} References")
    _exc_c14n(children[0], "CanonicalizationMethod")
    method = children[1].get("Algorithm", "")
    if method not in algorithms or method not in _SIGNATURE_TRANSFORMS:
        raise SecurityRefused("weak_algorithm", f"SignatureMethod {method!r}")
    if len(children[1]):
        raise SecurityRefused("malformed", "SignatureMethod has parameters (HMACOutputLength?)")
    references = [_read_reference(r) for r in children[2:]]
    return method, references


def _read_reference(reference: etree._Element) -> tuple[str, str]:
    uri = reference.get("URI")
    if uri is None or _ID_REFERENCE.fullmatch(uri) is None:
        raise SecurityRefused("bad_reference", f"Reference URI {uri!r} is not a bare '#id'")
    parts = list(reference.iterchildren(etree.Element))
    if parts and parts[0].tag == _TRANSFORMS:
        transforms, parts = parts[0], parts[1:]
        for transform in transforms.iterchildren(etree.Element):
            if transform.tag != _TRANSFORM:
                raise SecurityRefused("malformed", f"{_short(tag(transform))} in Transforms")
            _exc_c14n(transform, f"Transform of {uri}")
    if [p.tag for p in parts] != [_DIGEST_METHOD, _DIGEST_VALUE]:
        raise SecurityRefused("malformed", f"Reference {uri} lacks DigestMethod, DigestValue")
    digest_method = parts[0].get("Algorithm", "")
    if digest_method not in _DIGESTS:
        raise SecurityRefused("weak_algorithm", f"DigestMethod {digest_method!r}")
    digest = base64.b64encode(decode_base64(parts[1].text, "DigestValue")).decode()
    return uri, f"{digest_method} {digest}"


def _exc_c14n(element: etree._Element, where: str) -> None:
    algorithm = element.get("Algorithm")
    if algorithm != EXC_C14N:
        raise SecurityRefused("weak_algorithm", f"{where} {algorithm!r}: only exc-c14n")
    if any(c.tag != _INCLUSIVE_NAMESPACES for c in element.iterchildren(etree.Element)):
        raise SecurityRefused("malformed", f"{where} has unknown parameters")


def _unique_ids(envelope: etree._Element) -> dict[str, tuple[etree._Element, str]]:
    ids: dict[str, tuple[etree._Element, str]] = {}
    for element in envelope.iter(etree.Element):
        for attribute in _ID_ATTRIBUTES:
            value = element.get(attribute)
            if value is None:
                continue
            seen = ids.get(value)
            if seen is not None and seen[0] is not element:
                raise SecurityRefused("duplicate_id", f"the Id {value!r} is used twice")
            ids.setdefault(value, (element, attribute))
    return ids


def _require_covered(
    element: etree._Element, name: str, referenced: list[tuple[etree._Element, str]]
) -> None:
    if any(r is element for r, _ in referenced):
        return
    if any(r.tag == name for r, _ in referenced):
        raise SecurityRefused("wrapped", f"a signed {_short(name)} is not the one processed")
    raise SecurityRefused("not_signed", f"the {_short(name)} is not signed")


def _signing_token(
    key_info: etree._Element,
    security: etree._Element,
    ids: dict[str, tuple[etree._Element, str]],
) -> tuple[bytes, tuple[bytes, ...]]:
    """The certificate (and PKIPath intermediates) named by KeyInfo, from this header."""
    reference: etree._Element | None = None
    token_ref = list(key_info.iterchildren(etree.Element))
    if len(token_ref) == 1 and token_ref[0].tag == _STR:
        inner = list(token_ref[0].iterchildren(etree.Element))
        if len(inner) == 1 and inner[0].tag == _STR_REFERENCE:
            reference = inner[0]
        elif len(inner) == 1 and inner[0].tag == _X509_DATA:
            # zeep's plain Signature: the certificate inside the reference itself.
            certificates = [
                c for c in inner[0].iterchildren(etree.Element) if c.tag == _X509_CERTIFICATE
            ]
            if len(certificates) == 1:
                return decode_base64(certificates[0].text, "X509Certificate"), ()
    if reference is None:
        raise SecurityRefused(
            "bad_token",
            "KeyInfo must hold a SecurityTokenReference to a BinarySecurityToken in this header"
            " (or one X509Certificate)",
        )
    uri = reference.get("URI") or ""
    if _ID_REFERENCE.fullmatch(uri) is None:
        raise SecurityRefused("bad_token", f"token reference {uri!r} is not a bare '#id'")
    token, _ = ids.get(uri[1:], (None, ""))
    if token is None or token.tag != _BST or token.getparent() is not security:
        raise SecurityRefused("bad_token", f"{uri!r} is no BinarySecurityToken in this header")
    value_type = token.get("ValueType", "")
    if reference.get("ValueType") not in (None, value_type):
        raise SecurityRefused("bad_token", "token reference and token disagree on ValueType")
    if token.get("EncodingType", BASE64_BINARY) != BASE64_BINARY:
        raise SecurityRefused("bad_token", f"token EncodingType {token.get('EncodingType')!r}")
    data = decode_base64(token.text, "BinarySecurityToken")
    if len(data) > _MAX_TOKEN_BYTES:
        raise SecurityRefused("bad_token", f"a BinarySecurityToken of {len(data)} bytes")
    if value_type == _X509V3:
        return data, ()
    if value_type == _PKI_PATH:
        path = _der_sequence(data)
        if not path:
            raise SecurityRefused("bad_token", "an empty X509PKIPathv1")
        return path[-1], tuple(reversed(path[:-1]))
    if value_type == _PKCS7:
        raise SecurityRefused("bad_token", "PKCS7 tokens are not supported: send X509v3")
    raise SecurityRefused("bad_token", f"token ValueType {value_type!r}")


def _der_sequence(data: bytes) -> list[bytes]:
    """The elements of a DER ``SEQUENCE OF Certificate`` (a PkiPath), each a complete TLV."""
    kind, body, rest = _der_split(data)
    if kind != 0x30 or rest:
        raise SecurityRefused("bad_token", "X509PKIPathv1 is not one DER SEQUENCE")
    items: list[bytes] = []
    while body:
        kind, _content, after = _der_split(body)
        if kind != 0x30:
            raise SecurityRefused("bad_token", "X509PKIPathv1 holds a non-certificate")
        items.append(body[: len(body) - len(after)])
        body = after
    return items


def _der_split(data: bytes) -> tuple[int, bytes, bytes]:
    if len(data) < 2:
        raise SecurityRefused("bad_token", "truncated DER")
    kind, length, offset = data[0], data[1], 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or len(data) < 2 + count:
            raise SecurityRefused("bad_token", "bad DER length")
        length, offset = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
    if len(data) < offset + length:
        raise SecurityRefused("bad_token", "truncated DER")
    return kind, data[offset : offset + length], data[offset + length :]


_keys: OrderedDict[bytes, xmlsec.Key] = OrderedDict()
_keys_lock = threading.Lock()


def _key(certificate: bytes) -> xmlsec.Key:
    """The certificate's public key for xmlsec, cached by the certificate's SHA-256 fingerprint
    (LRU, bounded): parsing it costs more than a verification's digests."""
    fingerprint = hashlib.sha256(certificate).digest()
    with _keys_lock:
        key = _keys.get(fingerprint)
        if key is not None:
            _keys.move_to_end(fingerprint)
            return key
    try:
        # The bare public key: xmlsec copies a key into every context, and a key loaded
        # from a certificate drags a copy of the certificate along (about 40 us each time).
        public_key = x509.load_der_x509_certificate(certificate).public_key()
        spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        key = xmlsec.Key.from_memory(spki, xmlsec.constants.KeyDataFormatDer, None)
    except (ValueError, TypeError, xmlsec.Error) as exc:
        raise SecurityRefused("bad_token", f"unreadable certificate: {exc}") from exc
    with _keys_lock:
        _keys[fingerprint] = key
        while len(_keys) > _KEY_CACHE_SIZE:
            _keys.popitem(last=False)
    return key
