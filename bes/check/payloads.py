"""BES request payloads built by hand, and the parts of answers the checks read.

Identifiers go back exactly as the endpoint minted them: an ``ActivityIdentifier`` is kept as
its own serialization (every namespace in scope declared on it, so prefixed values inside,
as Genesis II's WS-Naming metadata has, still resolve) and parsed again into each request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from lxml import etree

from bes.jsdl.xml import parse_untrusted
from bes.ns import BES_FACTORY, BES_MANAGEMENT, WSA

_F: Final = "{" + BES_FACTORY + "}"
EPR_TAG: Final = _F + "ActivityIdentifier"


def factory(local: str) -> etree._Element:
    return etree.Element(_F + local, nsmap={"bes-factory": BES_FACTORY})


def create_activity(document: bytes) -> etree._Element:
    payload = factory("CreateActivity")
    holder = etree.SubElement(payload, _F + "ActivityDocument")
    holder.append(parse_untrusted(document))
    return payload


def attributes() -> etree._Element:
    return factory("GetFactoryAttributesDocument")


def management(operation: str) -> etree._Element:
    return etree.Element(
        f"{{{BES_MANAGEMENT}}}{operation}", nsmap={"bes-management": BES_MANAGEMENT}
    )


def vector(operation: str, eprs: Sequence[bytes]) -> etree._Element:
    """A vector operation naming each identifier (as kept by :func:`kept`)."""
    payload = factory(operation)
    for epr in eprs:
        element = etree.fromstring(epr)
        element.tag = EPR_TAG
        payload.append(element)
    return payload


def kept(epr: etree._Element) -> bytes:
    """An identifier as the endpoint sent it, to be sent back."""
    return etree.tostring(epr)


def create_activity_without_document() -> etree._Element:
    """A CreateActivity whose ActivityDocument holds no JobDefinition (schema-invalid)."""
    payload = factory("CreateActivity")
    etree.SubElement(payload, _F + "ActivityDocument")
    return payload


def foreign_epr(url: str) -> bytes:
    """An identifier this endpoint never minted (its own address, an unknown path; without
    the factory URL's query, such as UNICORE's ``?res=``)."""
    epr = etree.Element(EPR_TAG, nsmap={"wsa": WSA, "bes-factory": BES_FACTORY})
    base = urlunsplit(urlsplit(url)._replace(query="", fragment=""))
    address = base.rstrip("/") + "/activities/bes-check-no-such-activity"
    etree.SubElement(epr, f"{{{WSA}}}Address").text = address
    return etree.tostring(epr)


def address_of(epr: bytes) -> str:
    found = etree.fromstring(epr).find(f"{{{WSA}}}Address")
    return (found.text or "").strip() if found is not None else ""


def created_epr(body: etree._Element | None) -> etree._Element | None:
    """The ActivityIdentifier of a CreateActivityResponse."""
    if body is None or body.tag != _F + "CreateActivityResponse":
        return None
    return body.find(EPR_TAG)


def responses(body: etree._Element | None) -> list[etree._Element]:
    """The Response children of a vector answer."""
    if body is None:
        return []
    return [c for c in body.iterchildren(etree.Element) if etree.QName(c).localname == "Response"]


def state_of(response: etree._Element) -> str | None:
    """The ``state`` attribute of a Response's ActivityStatus, if it has one."""
    for element in response.iterchildren(etree.Element):
        if etree.QName(element).localname == "ActivityStatus":
            return (element.get("state") or "").strip()
    return None


def item_fault(response: etree._Element) -> tuple[str, str] | None:
    """A per-item fault: (its detail's local name, its faultstring), whatever namespace the
    Fault element is in (bes-factory:Fault, or soap:Fault as some send)."""
    for element in response.iterchildren(etree.Element):
        if etree.QName(element).localname != "Fault":
            continue
        detail = element.find("detail")
        first = next(detail.iterchildren(etree.Element), None) if detail is not None else None
        name = etree.QName(first).localname if first is not None else ""
        return name, (element.findtext("faultstring") or "").strip()
    return None


def child_text(element: etree._Element, local: str) -> str | None:
    for child in element.iterchildren(etree.Element):
        if etree.QName(child).localname == local:
            return (child.text or "").strip()
    return None
