"""Known deviations of deployed BES implementations from GFD.108, by name: ``bes check``
reports them as WARN with the name, so that an interop tester knows at once what they meet
(and a client author what to tolerate), instead of a bare schema error.

Each name says what the implementation does, and each is detected by the shape of the answer,
so an endpoint of another make that does the same gets the same name. Sources: ARC's A-REX
BES interface as it stood before its removal in 2019 (nordugrid/arc ``src/services/a-rex/``,
commit fd8def22b~1; file names below), the wire captures of ``../shared/corpus/soap``, and
the research notes (``../shared/research/bes-jsdl-standard.md`` §2-§7).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from lxml import etree

from bes.ns import BES_FACTORY, WS_NAMING, WS_NAMING_2006_03, WSA, XSI

ARC_NO_TERMINATED: Final = "ARC: TerminateActivities Response without Terminated"
"""A-REX answers an item it cannot terminate (an identifier it does not know) with a
soap-env:Fault in the Response and no Terminated element, which GFD.108 §6.3 requires in every
Response (schema-invalid). Source: ``terminate_activities.cpp``."""
ARC_FAULT_NAME: Final = "ARC: misnamed InvalidRequestMessageFault (InvalidRequestMessageFaultType)"
"""A-REX names the fault detail after its schema type, ``InvalidRequestMessageFaultType``
(``faults.cpp``), e.g. for a CreateActivity without a JobDefinition (``create_activity.cpp``)."""
ARC_INVALID_REQUEST_NAME: Final = "InvalidRequestMessageFaultType"
ARC_OPERATING_SYSTEM: Final = "ARC: bes-factory:OperatingSystem appended to the attributes"
"""A-REX adds an OperatingSystem element at the end of FactoryResourceAttributesDocument,
outside any place the schema allows one (extras must be in another namespace). Source:
``get_factory_attributes_document.cpp``."""
ARC_KILLED_FAILED: Final = "ARC: a terminated activity ends Failed (never Cancelled)"
"""A-REX reports a killed job as FINISHED with a failure, on the wire Failed; it never sends
Cancelled. Source: ``tools.cpp`` (convertActivityStatus)."""
ARC_NO_RELATES_TO: Final = "ARC: wsa:Action in replies, never wsa:RelatesTo"
"""A-REX sets the output wsa:Action of every reply but never answers a wsa:MessageID with
wsa:RelatesTo (WS-Addressing 1.0 Core §3.4). Source: ``arex.cpp`` (BESFactoryResponse)."""
GENESIS_EPR: Final = "Genesis II: activity identified by WS-Naming metadata"
"""Genesis II EPRs identify the activity by a WS-Naming EndpointIdentifier in wsa:Metadata
(with prefixed xsi:type values declared far above), not by the Address; a client must send
them back verbatim, with the namespace declarations those values need. Source:
``corpus/soap/saga-bes-genesis2-besfactory-epr.xml``."""
GENESIS_DUPLICATE_ID: Final = "Genesis II: the same wsu:Id in every EPR"
"""Every Genesis II EPR embeds its security token as a wsse:BinarySecurityToken with
``wsu:Id="RecipientMessageIdentity"``: one EPR is valid, but a message holding two (a vector
answer, a list of ActivityReferences) has a duplicate xs:ID and is schema-invalid. Source:
``corpus/soap/saga-bes-genesis2-besfactory-epr.xml``."""
BESPP_ADDRESS: Final = "BES++: activity Address that is not a URI ([fork://host]-[pid])"
"""Platform's BES++ (gSOAP) mints activity Addresses such as
``https://localhost/[fork://localhost]-[22380]``: brackets outside an IP literal, so not a URI
(RFC 3986) and not a valid wsa:Address. Harmless to a client that sends identifiers back as
they came and never dereferences them. Source: ``corpus/soap/saga-bespp-activityidentifier.xml``."""

_F: Final = "{" + BES_FACTORY + "}"
_WS_NAMING: Final = (WS_NAMING, WS_NAMING_2006_03)
_BAD_ADDRESS: Final = re.compile(r"/wsa:Address: .*'xs:anyURI'", re.DOTALL)
_DUPLICATE_ID: Final = re.compile(r"wsse:BinarySecurityToken: .*'wsu:Id'.*'xs:ID'", re.DOTALL)
_BESPP: Final = re.compile(r"\[[a-z]+://[^\]]*\]-\[\d+\]")


@dataclass(frozen=True, slots=True)
class Terminated:
    """What one TerminateActivities Response says."""

    value: bool | None
    element: str | None
    """``Terminated`` (GFD.108), ``Cancelled`` (the 2007 draft), or None when missing."""
    fault: str
    """The per-item fault's detail name, or ""."""

    @property
    def missing(self) -> bool:
        return self.element is None


def terminated(response: etree._Element) -> Terminated:
    value = element = None
    fault = ""
    for child in response.iterchildren(etree.Element):
        local = etree.QName(child).localname
        if local in ("Terminated", "Cancelled"):
            element = local
            value = (child.text or "").strip().lower() in ("true", "1")
        elif local == "Fault":
            detail = child.find("detail")
            first = next(detail.iterchildren(etree.Element), None) if detail is not None else None
            fault = etree.QName(first).localname if first is not None else "Fault"
    return Terminated(value=value, element=element, fault=fault)


def arc_operating_system(document: etree._Element) -> str:
    """The reason to give if the attributes carry ARC's stray OperatingSystem, else ""."""
    last = list(document.iterchildren(etree.Element))
    strays = [e for e in last if e.tag == _F + "OperatingSystem"]
    if not strays:
        return ""
    return "bes-factory:OperatingSystem after LocalResourceManagerType (schema-invalid)"


def without_operating_system(envelope: etree._Element) -> etree._Element:
    """A copy of an answer without ARC's stray OperatingSystem, to see whether anything else
    in it is wrong."""
    copy = etree.fromstring(etree.tostring(envelope))
    for stray in list(copy.iter(_F + "OperatingSystem")):
        parent = stray.getparent()
        if parent is not None and parent.tag == _F + "FactoryResourceAttributesDocument":
            parent.remove(stray)
    return copy


def describe_epr(epr: etree._Element) -> str:
    """The reason to give for a Genesis II-style identifier (WS-Naming), else ""."""
    metadata = epr.find(f"{{{WSA}}}Metadata")
    if metadata is None:
        return ""
    names = [
        e
        for e in metadata.iter(etree.Element)
        if etree.QName(e).namespace in _WS_NAMING
        and etree.QName(e).localname == "EndpointIdentifier"
    ]
    if not names:
        return ""
    typed = [
        value for e in epr.iter(etree.Element) if ":" in (value := e.get(f"{{{XSI}}}type") or "")
    ]
    reason = (
        f"a WS-Naming identifier: the EndpointIdentifier {(names[0].text or '').strip()} in "
        "wsa:Metadata names the activity"
    )
    if typed:
        reason += (
            f", and {len(typed)} xsi:type values ({typed[0]}, ...) use prefixes declared outside it"
        )
    return reason + "; it was sent back verbatim"


def explained(problems: Sequence[str]) -> tuple[str, str] | None:
    """If a known deviation explains every schema problem of an answer: its name and the
    reason to give; else None (the answer is simply invalid)."""
    if not problems:
        return None
    if all(_BAD_ADDRESS.search(p) for p in problems) and all(_BESPP.search(p) for p in problems):
        return BESPP_ADDRESS, "the activity's wsa:Address is not a URI: " + problems[0]
    if all(_DUPLICATE_ID.search(p) for p in problems):
        return GENESIS_DUPLICATE_ID, (
            "two identifiers in one answer carry the same wsu:Id (duplicate xs:ID, "
            "schema-invalid): " + problems[0]
        )
    return None
