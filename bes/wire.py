"""The BES vocabulary on the wire: endpoint references, activity statuses, per-item faults and
the factory attributes document (GFD.108 §5, §6).

Two dialects are spoken. :data:`FINAL` is GFD.108 as published (``Terminated``,
``UnknownActivityIdentifierFault``); :data:`DRAFT_2007` is the May 2007 draft that JSAGA and
early ARC clients were generated from (``Cancelled``, ``InvalidActivityIdentifierFault``). Their
request messages are identical, so the dialect is chosen by the endpoint the client talks to.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from lxml import etree

from bes.db.activity_rows import ActivityRecord
from bes.ids import ActivityId, parse_activity_id
from bes.ns import (
    BES_ACTIVITY,
    BES_FACTORY,
    BES_NAMING_BASIC_WSA,
    HPCP_FS,
    JSDL,
    WSA,
    qname,
)
from bes.soap import CLIENT, SERVER, SoapFault, fault_element
from bes.states import ActivityState, SubState
from bes.tunnel.websocket import websocket_url

ACTIVITY_PATH: Final = "/bes/activities/"
"""Path prefix of every activity's own URL (its EPR Address)."""

_NSMAP: Final = {"bes-factory": BES_FACTORY, "wsa": WSA, "besa": BES_ACTIVITY, "fs": HPCP_FS}
_ADDRESS: Final = qname(WSA, "Address")
_REFERENCE_PARAMETERS: Final = qname(WSA, "ReferenceParameters")
_ACTIVITY_ID_NAME: Final = "ActivityId"
_ACTIVITY_ID: Final = qname(BES_ACTIVITY, _ACTIVITY_ID_NAME)
_ACTIVITY_STATUS: Final = qname(BES_FACTORY, "ActivityStatus")
_EXIT_CODE: Final = qname(BES_ACTIVITY, "ExitCode")
_MESSAGE: Final = qname(BES_ACTIVITY, "Message")
_CHANGED: Final = qname(BES_ACTIVITY, "Changed")
_POOL: Final = qname(BES_ACTIVITY, "Pool")
_ACCESS: Final = qname(BES_ACTIVITY, "Access")
_ACCESS_USER: Final = qname(BES_ACTIVITY, "User")
_ACCESS_HOST_KEY: Final = qname(BES_ACTIVITY, "HostKey")
_ACCESS_PORT: Final = qname(BES_ACTIVITY, "Port")
_ACCESS_TUNNEL: Final = qname(BES_ACTIVITY, "Tunnel")
_OUTPUTS: Final = qname(BES_ACTIVITY, "Outputs")
_WARNING: Final = qname(BES_ACTIVITY, "Warning")
_COUNT: Final = qname(BES_ACTIVITY, "ActivityCount")
_CHILD: Final = qname(BES_ACTIVITY, "Child")
# Sub-state -> element name: HPC File Staging Profile names for staging, ours for the rest.
_SUBSTATE_ELEMENTS: Final = {
    s: qname(HPCP_FS if s in (SubState.STAGING_IN, SubState.STAGING_OUT) else BES_ACTIVITY, s.value)
    for s in SubState
}


@dataclass(frozen=True, slots=True)
class Dialect:
    """Element names that differ between the BES draft of 2007 and GFD.108."""

    name: str
    terminated: str
    """Child of a TerminateActivities Response that says whether it worked."""
    unknown_activity_fault: str
    """Fault detail element for an identifier that names no activity."""


FINAL: Final = Dialect("GFD.108", "Terminated", "UnknownActivityIdentifierFault")
DRAFT_2007: Final = Dialect("draft-2007", "Cancelled", "InvalidActivityIdentifierFault")


def bes(local: str) -> str:
    """Clark name of a bes-factory element."""
    return qname(BES_FACTORY, local)


def element(local: str, text: str | None = None) -> etree._Element:
    """A new bes-factory element (the root of a payload) with our usual prefixes declared."""
    e = etree.Element(bes(local), nsmap=_NSMAP)
    if text is not None:
        e.text = text
    return e


def sub(parent: etree._Element, local: str, text: str | None = None) -> etree._Element:
    """A bes-factory child element."""
    e = etree.SubElement(parent, bes(local))
    if text is not None:
        e.text = text
    return e


# ------------------------------------------------------------------------------ EPRs


def activity_epr(
    parent: etree._Element, local: str, endpoint: str, activity_id: ActivityId
) -> etree._Element:
    """Append an activity's EndpointReference as ``bes-factory:<local>``.

    ``endpoint`` is the factory URL (``http://host:port``); the Address is the activity's
    own URL and ReferenceParameters carry our id, so clients that keep either can find it.
    """
    epr = etree.SubElement(parent, bes(local))
    etree.SubElement(epr, _ADDRESS).text = endpoint + ACTIVITY_PATH + activity_id
    params = etree.SubElement(epr, _REFERENCE_PARAMETERS)
    etree.SubElement(params, _ACTIVITY_ID).text = activity_id
    return epr


_CREATE_ACTIVITY_RESPONSE: Final = element("CreateActivityResponse")
activity_epr(_CREATE_ACTIVITY_RESPONSE, "ActivityIdentifier", "", ActivityId(""))


def create_activity_response(endpoint: str, activity_id: ActivityId) -> etree._Element:
    """``CreateActivityResponse`` with the new activity's EndpointReference (see
    :func:`activity_epr`): a copy of one built once, its two texts filled in (it answers every
    CreateActivity; copying is about half the cost of building)."""
    response = copy.deepcopy(_CREATE_ACTIVITY_RESPONSE)
    epr = response[0]
    epr[0].text = endpoint + ACTIVITY_PATH + activity_id  # wsa:Address
    epr[1][0].text = activity_id  # wsa:ReferenceParameters/besa:ActivityId
    return response


def activity_id_of(epr: etree._Element) -> ActivityId | None:
    """Our activity id in an EndpointReference, from ReferenceParameters and the Address.

    SOAP stacks built from the official WSDL do not always send our EPRs back as we wrote
    them, so the reference parameter is any element named ``ActivityId`` (in any namespace,
    or none, at any depth) inside ``wsa:ReferenceParameters``; the Address counts when its
    path is an activity's (``.../bes/activities/<id>``), whatever the host.

    The parts must agree: a parameter or Address of the wrong shape (another service's
    identifier), two parameters naming different activities, or a parameter and an Address
    naming different ones give None (an unknown identifier), never one of the two activities.
    An Address that is not an activity path (the factory's ``/bes``, a proxy, another
    service) defers to the parameter; EPRs with neither give None.
    """
    named = _named(epr)
    if len(named) != 1:
        return None
    return parse_activity_id(next(iter(named)))


def _named(epr: etree._Element) -> set[str]:
    """Every identifier the EPR's parts name: its ActivityId parameters and its Address."""
    named: set[str] = set()
    params = epr.find(_REFERENCE_PARAMETERS)
    if params is not None:
        for node in params.iter(etree.Element):
            if node is not params and etree.QName(node).localname == _ACTIVITY_ID_NAME:
                named.add((node.text or "").strip())
    address = _activity_path_tail(epr)
    if address is not None:
        named.add(address)
    return named


def _activity_path_tail(epr: etree._Element) -> str | None:
    """The last step of the Address when its path is an activity's, else None."""
    address = epr.find(_ADDRESS)
    if address is None or not address.text:
        return None
    try:
        path = urlsplit(address.text.strip()).path
    except ValueError:
        return None
    head, _, tail = path.rstrip("/").rpartition("/")
    if not (head + "/").endswith(ACTIVITY_PATH):
        return None
    return tail


# ------------------------------------------------------------------------------ statuses


def activity_status(
    parent: etree._Element, record: ActivityRecord, *, endpoint: str | None = None
) -> etree._Element:
    """Append ``bes-factory:ActivityStatus`` for an activity: the basic state as ``@state``,
    then the sub-state element, then our details: exit code, message, time of change, the pool
    of workers it was routed to, where
    its kept files are (when it has some and ``endpoint`` is given), what normalization
    rewrote in its document, and for a parameter sweep its counts per state and children."""
    status = etree.SubElement(parent, _ACTIVITY_STATUS, state=record.state.value)
    if record.substate is not None and not record.state.terminal:
        etree.SubElement(status, _SUBSTATE_ELEMENTS[record.substate])
    if record.exit_code is not None:
        etree.SubElement(status, _EXIT_CODE).text = str(record.exit_code)
    if record.message:
        etree.SubElement(status, _MESSAGE).text = record.message
    etree.SubElement(status, _CHANGED).text = _xsd_datetime(record.changed_at)
    if record.pool is not None:
        etree.SubElement(status, _POOL).text = record.pool
    if record.access is not None:
        _access(status, record, endpoint)
    if record.outputs and endpoint is not None:
        etree.SubElement(status, _OUTPUTS).text = f"{endpoint}{ACTIVITY_PATH}{record.id}/outputs"
    for warning in record.warnings:
        etree.SubElement(status, _WARNING).text = warning
    if record.sweep is not None and endpoint is not None:
        for state in ActivityState:
            count = etree.SubElement(status, _COUNT, state=state.value)
            count.text = str(record.sweep.counts.get(state, 0))
        for child in record.sweep.children:
            child_epr = etree.SubElement(status, _CHILD)
            etree.SubElement(child_epr, _ADDRESS).text = endpoint + ACTIVITY_PATH + child
            params = etree.SubElement(child_epr, _REFERENCE_PARAMETERS)
            etree.SubElement(params, _ACTIVITY_ID).text = child
    return status


def _access(status: etree._Element, record: ActivityRecord, endpoint: str | None) -> None:
    """``besa:Access``: how the owner of a VM lease reaches it (while it is not over)."""
    access = record.access
    if access is None or record.state.terminal:
        return
    element = etree.SubElement(status, _ACCESS)
    etree.SubElement(element, _ACCESS_USER).text = access.user
    for key in access.host_keys:
        etree.SubElement(element, _ACCESS_HOST_KEY).text = key
    for guest, host in access.ports:
        etree.SubElement(element, _ACCESS_PORT, guestPort=str(guest), hostPort=str(host))
    if endpoint is not None:
        etree.SubElement(element, _ACCESS_TUNNEL).text = tunnel_url(endpoint, record.id)


def tunnel_url(endpoint: str, activity_id: str) -> str:
    """The WebSocket URL of a VM lease's streams (add ``?port=N``)."""
    return websocket_url(f"{endpoint}{ACTIVITY_PATH}{activity_id}/tunnel")


def _xsd_datetime(value: dt.datetime) -> str:
    v = value.astimezone(dt.UTC)
    return (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:"
        f"{v.second:02d}.{v.microsecond // 1000:03d}Z"
    )


# ------------------------------------------------------------------------------ per-item faults


def item_fault(parent: etree._Element, fault: SoapFault) -> None:
    """Append a per-item ``bes-factory:Fault`` (type soap:Fault) to a vector Response."""
    parent.append(fault_element(bes("Fault"), fault))


def unknown_activity(dialect: Dialect, epr: etree._Element) -> SoapFault:
    """The fault for an identifier that names no activity of this caller."""
    address = epr.find(_ADDRESS)
    shown = (address.text or "").strip() if address is not None else "(no Address)"
    named = _named(epr)
    if len(named) > 1:  # says nothing about whether either activity exists
        message = f"the Address and reference parameters of {shown} name different activities"
    else:
        message = f"no activity {shown} here"
    detail = element(dialect.unknown_activity_fault)
    sub(detail, "Message", message)
    return SoapFault(CLIENT, message, [detail])


def state_fault(local: str, record: ActivityRecord, message: str) -> SoapFault:
    """CantApplyOperationToCurrentStateFault or OperationWillBeAppliedEventuallyFault."""
    detail = element(local)
    activity_status(detail, record)
    sub(detail, "Message", message)
    code = CLIENT if local.startswith("CantApply") else SERVER
    return SoapFault(code, message, [detail])


# ------------------------------------------------------------------------------ factory attributes


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceDescription:
    """What the factory says about the resources behind it (BasicResourceAttributesDocument).

    Units as in the BES schema: CPU speed in Hz, memory in bytes.
    """

    resource_name: str
    operating_system: str | None = "LINUX"
    cpu_architecture: str | None = None
    cpu_count: float | None = None
    cpu_speed_hz: float | None = None
    physical_memory_bytes: float | None = None
    virtual_memory_bytes: float | None = None
    common_name: str = "bes"
    long_description: str = ""
    local_resource_manager_type: str = "urn:bes-grid:resource-manager:queue"
    extensions: Sequence[str] = (BES_ACTIVITY,)


def factory_attributes(
    *,
    resource: ResourceDescription,
    accepting: bool,
    counts: Mapping[ActivityState, int],
    active: Sequence[ActivityId],
    endpoint: str,
) -> etree._Element:
    """The ``GetFactoryAttributesDocumentResponse`` payload, every element in schema order."""
    response = element("GetFactoryAttributesDocumentResponse")
    doc = sub(response, "FactoryResourceAttributesDocument")
    basic = sub(doc, "BasicResourceAttributesDocument")
    sub(basic, "ResourceName", resource.resource_name)
    if resource.operating_system:
        os_type = etree.SubElement(
            sub(basic, "OperatingSystem"), qname(JSDL, "OperatingSystemType")
        )
        etree.SubElement(
            os_type, qname(JSDL, "OperatingSystemName")
        ).text = resource.operating_system
    if resource.cpu_architecture:
        arch = sub(basic, "CPUArchitecture")
        etree.SubElement(arch, qname(JSDL, "CPUArchitectureName")).text = resource.cpu_architecture
    for local, value in (
        ("CPUCount", resource.cpu_count),
        ("CPUSpeed", resource.cpu_speed_hz),
        ("PhysicalMemory", resource.physical_memory_bytes),
        ("VirtualMemory", resource.virtual_memory_bytes),
    ):
        if value is not None:
            sub(basic, local, repr(float(value)))
    sub(doc, "IsAcceptingNewActivities", "true" if accepting else "false")
    sub(doc, "CommonName", resource.common_name)
    if resource.long_description:
        sub(doc, "LongDescription", resource.long_description)
    total_active = sum(n for state, n in counts.items() if not state.terminal)
    sub(doc, "TotalNumberOfActivities", str(total_active))
    for activity_id in active:
        activity_epr(doc, "ActivityReference", endpoint, activity_id)
    sub(doc, "TotalNumberOfContainedResources", "0")
    sub(doc, "NamingProfile", BES_NAMING_BASIC_WSA)
    for uri in resource.extensions:
        sub(doc, "BESExtension", uri)
    sub(doc, "LocalResourceManagerType", resource.local_resource_manager_type)
    for state in ActivityState:
        count = etree.SubElement(doc, qname(BES_ACTIVITY, "ActivityCount"), state=state.value)
        count.text = str(counts.get(state, 0))
    return response
