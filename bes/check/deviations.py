"""Known deviations of deployed BES implementations from GFD.108, by name: ``bes check``
reports them as WARN with the name, so that an interop tester knows at once what they meet
(and a client author what to tolerate), instead of a bare schema error.

Sources: ARC A-REX's BES interface and the client tests of ARC, JSAGA and Genesis II (see
the research notes and ``../shared/corpus``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from lxml import etree

from bes.ns import BES_FACTORY, WSA

ARC_NO_TERMINATED: Final = "ARC: TerminateActivities Response without Terminated"
"""A-REX omits the mandatory Terminated element (GFD.108 §6.3), which is schema-invalid."""
ARC_FAULT_NAME: Final = "ARC: misnamed InvalidRequestMessageFault (InvalidRequestMessageFaultType)"
ARC_INVALID_REQUEST_NAME: Final = "InvalidRequestMessageFaultType"
ARC_OPERATING_SYSTEM: Final = "ARC: bes-factory:OperatingSystem appended to the attributes"
"""A-REX adds an OperatingSystem element at the end of FactoryResourceAttributesDocument,
outside any place the schema allows one (extras must be in another namespace)."""
ARC_KILLED_FAILED: Final = "ARC: a terminated activity ends Failed (never Cancelled)"
GENESIS_EPR: Final = "Genesis II: activity identified by WS-Naming metadata"
"""Genesis II EPRs identify the activity by a WS-Naming EndpointIdentifier in wsa:Metadata
(with prefixed xsi:type values declared far above), not by the Address or reference
parameters; a client must send them back verbatim."""

_F: Final = "{" + BES_FACTORY + "}"
_WS_NAMING: Final = "http://schemas.ogf.org/naming/2006/08/naming"


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


def describe_epr(epr: etree._Element) -> str:
    """The reason to give for a Genesis II-style identifier, else ""."""
    metadata = epr.find(f"{{{WSA}}}Metadata")
    if metadata is None:
        return ""
    names = [e for e in metadata.iter() if etree.QName(e).namespace == _WS_NAMING]
    if not names or epr.find(f"{{{WSA}}}ReferenceParameters") is not None:
        return ""
    return (
        "the identifier names the activity by WS-Naming metadata only (an EndpointIdentifier "
        "in wsa:Metadata); it was sent back verbatim"
    )
