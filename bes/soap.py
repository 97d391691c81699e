"""SOAP 1.1 envelopes in and out, WS-Addressing headers, and the one fault table.

Incoming: :func:`parse_request` runs the hardened parser, checks the envelope (SOAP 1.1 only;
a SOAP 1.2 envelope gets a VersionMismatch fault), enforces ``mustUnderstand`` for headers
addressed to us, reads WS-Addressing (2005/08, and the 2004/08 member submission some Axis
clients still send), and finds the single body element that names the operation. Dispatch is on
that element; the HTTP SOAPAction and ``wsa:Action`` are only cross-checked.

Outgoing: :func:`render_response` and :func:`render_fault` build envelopes. A request that
carried WS-Addressing gets ``wsa:Action``, ``wsa:MessageID`` and ``wsa:RelatesTo`` back; one
without gets a plain envelope. Faults are sent with HTTP 500 (SOAP 1.1 §6.2, WS-I BP R1126).

:data:`FAULT_TABLE` is the only place where exceptions become wire faults. Anything not in it
becomes a ``soap:Server`` fault whose text holds a reference number, never internals; the
traceback goes to the log under the same reference.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from lxml import etree

from bes.errors import (
    BackendError,
    BesError,
    ConfigError,
    InvalidRequest,
    NotAcceptingNewActivities,
    NotAuthorized,
    StoreError,
    UnknownActivity,
    UnsupportedFeature,
)
from bes.jsdl.xml import parse_untrusted, tag
from bes.ns import (
    BES_FACTORY,
    SOAP12_ENV,
    SOAP_ACTOR_NEXT,
    SOAP_ENV,
    WSA,
    WSA_2004,
    WSA_ANONYMOUS,
    WSA_FAULT_ACTION,
    WSA_NONE,
    qname,
)

log = logging.getLogger(__name__)

_ENVELOPE: Final = qname(SOAP_ENV, "Envelope")
_HEADER: Final = qname(SOAP_ENV, "Header")
_BODY: Final = qname(SOAP_ENV, "Body")
_FAULT: Final = qname(SOAP_ENV, "Fault")
_MUST_UNDERSTAND: Final = qname(SOAP_ENV, "mustUnderstand")
_ACTOR: Final = qname(SOAP_ENV, "actor")
_WSA_NAMESPACES: Final = (WSA, WSA_2004)
_WSA_2004_ANONYMOUS: Final = WSA_2004 + "/role/anonymous"
_ADDRESSING_HEADERS: Final = frozenset(
    qname(ns, local)
    for ns in _WSA_NAMESPACES
    for local in ("Action", "MessageID", "To", "ReplyTo", "From", "FaultTo", "RelatesTo")
)

CLIENT: Final = qname(SOAP_ENV, "Client")
SERVER: Final = qname(SOAP_ENV, "Server")
MUST_UNDERSTAND: Final = qname(SOAP_ENV, "MustUnderstand")
VERSION_MISMATCH: Final = qname(SOAP_ENV, "VersionMismatch")


# ------------------------------------------------------------------------------ requests


@dataclass(frozen=True, slots=True)
class Addressing:
    """The WS-Addressing headers of a request.

    Attributes:
        namespace: The WS-Addressing namespace the client used (we answer in the same).
    """

    namespace: str
    action: str | None = None
    message_id: str | None = None
    to: str | None = None


@dataclass(frozen=True, slots=True)
class SoapRequest:
    """A parsed SOAP 1.1 request.

    Attributes:
        body: The one element in ``soap:Body``; its name is the operation.
        headers: The header blocks, in order.
        addressing: WS-Addressing headers, or None if the client sent none.
        soap_action: The HTTP SOAPAction header without quotes, if any.
    """

    body: etree._Element
    headers: tuple[etree._Element, ...] = ()
    addressing: Addressing | None = None
    soap_action: str | None = None

    @property
    def operation(self) -> str:
        """The body element's name in Clark notation, e.g. ``{...bes-factory}CreateActivity``."""
        return tag(self.body)


@dataclass
class SoapFault(Exception):
    """A fault to send back.

    Attributes:
        code: The faultcode in Clark notation (``soap:Client``, ``soap:Server``, ...).
        string: The faultstring, for people.
        detail: Elements to put in ``detail``.
        action: The ``wsa:Action`` for the fault; None uses the operation's fault action.
    """

    code: str
    string: str
    detail: list[etree._Element] = field(default_factory=list)
    action: str | None = None

    def __str__(self) -> str:
        return f"{etree.QName(self.code).localname}: {self.string}"


def parse_request(
    data: bytes, *, soap_action: str | None = None, understood: Iterable[str] = ()
) -> SoapRequest:
    """Parse and check a SOAP 1.1 request.

    Args:
        data: The HTTP request body.
        soap_action: The SOAPAction HTTP header as received (quoted or not), if any.
        understood: Header element names (Clark) we process besides WS-Addressing.

    Raises:
        SoapFault: The request is not a usable SOAP 1.1 message (malformed XML, wrong envelope,
            a header we must but cannot understand, not exactly one body element).
    """
    try:
        envelope = parse_untrusted(data)
    except InvalidRequest as exc:
        raise SoapFault(CLIENT, exc.message) from exc
    if envelope.tag != _ENVELOPE:
        if envelope.tag == qname(SOAP12_ENV, "Envelope"):
            raise SoapFault(VERSION_MISMATCH, "this service speaks SOAP 1.1, not SOAP 1.2")
        if etree.QName(envelope).localname == "Envelope":
            raise SoapFault(
                VERSION_MISMATCH,
                f"unknown SOAP envelope namespace {etree.QName(envelope).namespace!r}",
            )
        raise SoapFault(
            CLIENT, f"expected a SOAP 1.1 Envelope, found {etree.QName(envelope).localname!r}"
        )
    header: etree._Element | None = None
    body: etree._Element | None = None
    for child in envelope.iterchildren(etree.Element):
        if child.tag == _HEADER and header is None and body is None:
            header = child
        elif child.tag == _BODY and body is None:
            body = child
        elif body is None:
            raise SoapFault(CLIENT, f"unexpected {etree.QName(child).localname!r} in the Envelope")
    if body is None:
        raise SoapFault(CLIENT, "the Envelope has no Body")
    headers = tuple(header.iterchildren(etree.Element)) if header is not None else ()
    _check_must_understand(headers, frozenset(understood) | _ADDRESSING_HEADERS)
    payload = list(body.iterchildren(etree.Element))
    if len(payload) != 1:
        raise SoapFault(
            CLIENT, f"the Body must hold exactly one element (the operation), found {len(payload)}"
        )
    action = soap_action.strip().strip('"').strip() if soap_action is not None else None
    return SoapRequest(
        body=payload[0], headers=headers, addressing=_addressing(headers), soap_action=action
    )


def _check_must_understand(headers: tuple[etree._Element, ...], understood: frozenset[str]) -> None:
    for h in headers:
        if (h.get(_MUST_UNDERSTAND) or "").strip() not in ("1", "true"):
            continue
        actor = h.get(_ACTOR)
        if actor is not None and actor.strip() not in ("", SOAP_ACTOR_NEXT):
            continue  # addressed to another node (SOAP 1.1 §4.2.2)
        if h.tag not in understood:
            raise SoapFault(
                MUST_UNDERSTAND,
                f"header {tag(h)} is marked mustUnderstand but this service does not process it",
            )


def _addressing(headers: tuple[etree._Element, ...]) -> Addressing | None:
    found: dict[str, str] = {}
    namespace: str | None = None
    for h in headers:
        q = etree.QName(h)
        if q.namespace not in _WSA_NAMESPACES:
            continue
        namespace = namespace or q.namespace
        if q.localname in ("Action", "MessageID", "To"):
            found[q.localname] = (h.text or "").strip()
        elif q.localname in ("ReplyTo", "FaultTo"):
            address = h.find(qname(q.namespace, "Address"))
            value = (address.text or "").strip() if address is not None else ""
            if value not in (WSA_ANONYMOUS, WSA_NONE, _WSA_2004_ANONYMOUS):
                raise SoapFault(
                    qname(WSA, "OnlyAnonymousAddressSupported"),
                    f"wsa:{q.localname} must be anonymous: replies go back on this connection",
                    action=WSA_FAULT_ACTION,
                )
    if namespace is None:
        return None
    return Addressing(
        namespace=namespace,
        action=found.get("Action"),
        message_id=found.get("MessageID"),
        to=found.get("To"),
    )


# ------------------------------------------------------------------------------ responses


def render_response(payload: etree._Element, *, action: str, request: SoapRequest | None) -> bytes:
    """Wrap ``payload`` in an envelope, with addressing headers if the request used them."""
    envelope = _envelope(request, action)
    envelope[-1].append(payload)
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def render_fault(fault: SoapFault, *, default_action: str, request: SoapRequest | None) -> bytes:
    """An envelope holding ``soap:Fault``; the action is the fault's own or ``default_action``."""
    envelope = _envelope(request, fault.action or default_action)
    envelope[-1].append(fault_element(_FAULT, fault))
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def fault_element(tag: str, fault: SoapFault) -> etree._Element:
    """A fault structure under any name: ``soap:Fault`` or BES's per-item ``bes-factory:Fault``.

    The children are unqualified, as the SOAP 1.1 schema wants; the faultcode QName uses a
    prefix declared on the element itself so it resolves wherever the element is placed.
    """
    code = etree.QName(fault.code)
    prefix = "soap" if code.namespace == SOAP_ENV else "wsa" if code.namespace == WSA else "fc"
    element = etree.Element(tag, nsmap={prefix: code.namespace or SOAP_ENV})
    etree.SubElement(element, "faultcode").text = f"{prefix}:{code.localname}"
    etree.SubElement(element, "faultstring").text = fault.string
    if fault.detail:
        detail = etree.SubElement(element, "detail")
        for d in fault.detail:
            detail.append(d)
    return element


def _envelope(request: SoapRequest | None, action: str) -> etree._Element:
    addressing = request.addressing if request is not None else None
    if addressing is None:
        envelope = etree.Element(_ENVELOPE, nsmap={"soap": SOAP_ENV})
    else:
        wsa = addressing.namespace
        envelope = etree.Element(_ENVELOPE, nsmap={"soap": SOAP_ENV, "wsa": wsa})
        header = etree.SubElement(envelope, _HEADER)
        etree.SubElement(header, qname(wsa, "Action")).text = action
        etree.SubElement(header, qname(wsa, "MessageID")).text = f"urn:uuid:{uuid.uuid4()}"
        if addressing.message_id:
            etree.SubElement(header, qname(wsa, "RelatesTo")).text = addressing.message_id
        etree.SubElement(header, qname(wsa, "To")).text = (
            WSA_ANONYMOUS if wsa == WSA else _WSA_2004_ANONYMOUS
        )
    etree.SubElement(envelope, _BODY)
    return envelope


# ------------------------------------------------------------------------------ the fault table


def _bes(local: str) -> etree._Element:
    return etree.Element(qname(BES_FACTORY, local), nsmap={"bes-factory": BES_FACTORY})


def _child(parent: etree._Element, local: str, text: str) -> None:
    etree.SubElement(parent, qname(BES_FACTORY, local)).text = text


def _invalid_request(exc: InvalidRequest) -> SoapFault:
    detail = _bes("InvalidRequestMessageFault")
    for path in exc.invalid_elements:
        _child(detail, "InvalidElement", path)
    _child(detail, "Message", exc.message)
    return SoapFault(CLIENT, exc.message, [detail])


def _unsupported(exc: UnsupportedFeature) -> SoapFault:
    detail = _bes("UnsupportedFeatureFault")
    for feature in exc.features:
        _child(detail, "Feature", feature)
    return SoapFault(CLIENT, exc.message, [detail])


def _simple(code: str, local: str) -> Callable[[BesError], SoapFault]:
    return lambda exc: SoapFault(code, str(exc), [_bes(local)])


def _unknown_activity(exc: BesError) -> SoapFault:
    detail = _bes("UnknownActivityIdentifierFault")
    _child(detail, "Message", str(exc))
    return SoapFault(CLIENT, str(exc), [detail])


def _server(message: str) -> Callable[[BesError], SoapFault]:
    return lambda exc: SoapFault(SERVER, message)


# Each builder takes an instance of its key's class (Any keeps the table one dict).
FAULT_TABLE: Final[dict[type[BesError], Callable[[Any], SoapFault]]] = {
    InvalidRequest: _invalid_request,
    UnsupportedFeature: _unsupported,
    NotAuthorized: _simple(CLIENT, "NotAuthorizedFault"),
    NotAcceptingNewActivities: _simple(SERVER, "NotAcceptingNewActivitiesFault"),
    UnknownActivity: _unknown_activity,
    StoreError: _server("the activity store is unavailable; please try again later"),
    BackendError: _server("the execution backend is unavailable; please try again later"),
    ConfigError: _server("the service is misconfigured; the operator has been told"),
}
"""Exception class → fault builder. Looked up along the exception's MRO."""


def fault_for(exc: BaseException) -> SoapFault:
    """The wire fault for any exception (see the module docstring)."""
    if isinstance(exc, SoapFault):
        return exc
    if isinstance(exc, BesError):
        for cls in type(exc).__mro__:
            builder = FAULT_TABLE.get(cls)
            if builder is not None:
                if isinstance(exc, (StoreError, BackendError, ConfigError)):
                    log.error("request failed: %s", exc)
                return builder(exc)
    reference = secrets.token_hex(4)
    log.error("internal error %s", reference, exc_info=exc)
    return SoapFault(SERVER, f"internal error (reference {reference}); the operator has been told")
