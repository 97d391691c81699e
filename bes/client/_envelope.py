"""Reading BES answers, liberally: elements are matched by local name in any namespace, extra
elements are skipped, optional ones may be missing, SOAP 1.1 and 1.2 faults are both read.

Real services differ (research/bes-jsdl-standard.md): ARC leaves ``Terminated`` out and adds
its own status elements, UNICORE and Genesis II put their identifiers in ReferenceParameters,
the May 2007 draft says ``Terminated`` for Cancelled and ``InvalidActivityIdentifierFault``.
What this module returns is the typed model of :mod:`bes.client.model`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from lxml import etree

from bes.client.faults import BES_FAULTS, ProtocolProblem, SoapFault
from bes.client.model import (
    ActivityCount,
    ActivityRef,
    ActivityStatus,
    FactoryAttributes,
    LeaseAccess,
    State,
    TerminateResult,
)
from bes.ids import parse_activity_id
from bes.ns import BES_ACTIVITY, HPCP_FS, JSDL, SOAP12_ENV, SOAP_ENV, qname

_KNOWN_SUBSTATE_NAMESPACES: Final = frozenset({BES_ACTIVITY, HPCP_FS})
_DETAILS: Final = frozenset(
    {
        "ExitCode",
        "Message",
        "Outputs",
        "Warning",
        "ActivityCount",
        "Child",
        "Changed",
        "Pool",
        "Access",
    }
)


def local(element: etree._Element) -> str:
    return etree.QName(element).localname


def children(element: etree._Element, name: str) -> Iterator[etree._Element]:
    for child in element.iterchildren(etree.Element):
        if local(child) == name:
            yield child


def child(element: etree._Element, name: str) -> etree._Element | None:
    return next(children(element, name), None)


def text_of(element: etree._Element | None) -> str | None:
    if element is None:
        return None
    value = "".join(element.itertext()).strip()
    return value or None


def body_payload(envelope: etree._Element) -> etree._Element:
    """The one element in the Body; a fault there is raised as :class:`SoapFault`.

    Raises:
        SoapFault: The Body holds a fault (a :class:`~bes.client.faults.BesFault` subclass
            when its detail names one).
        ProtocolProblem: Not a SOAP envelope, or an empty Body.
    """
    namespace = etree.QName(envelope).namespace
    if local(envelope) != "Envelope" or namespace not in (SOAP_ENV, SOAP12_ENV):
        raise ProtocolProblem(f"the answer is not a SOAP envelope but {envelope.tag!r}")
    body = envelope.find(f"{{{namespace}}}Body")
    payload = next(body.iterchildren(etree.Element), None) if body is not None else None
    if payload is None:
        raise ProtocolProblem("the SOAP answer has an empty Body")
    if local(payload) == "Fault" and etree.QName(payload).namespace == namespace:
        raise to_fault(payload)
    return payload


def to_fault(fault: etree._Element) -> SoapFault:
    """The exception for a ``soap:Fault`` (1.1 or 1.2) or a BES per-item ``Fault`` element."""
    code = text_of(child(fault, "faultcode"))
    reason = text_of(child(fault, "faultstring"))
    detail = child(fault, "detail")
    if code is None:  # SOAP 1.2: Code/Value, Reason/Text, Detail
        code_element = child(fault, "Code")
        code = text_of(child(code_element, "Value")) if code_element is not None else None
        reason_element = child(fault, "Reason")
        reason = text_of(child(reason_element, "Text")) if reason_element is not None else None
        detail = child(fault, "Detail")
    entry = next(detail.iterchildren(etree.Element), None) if detail is not None else None
    cls = BES_FAULTS.get(local(entry), SoapFault) if entry is not None else SoapFault
    explanation = None
    if entry is not None:
        explanation = text_of(child(entry, "Message")) or text_of(child(entry, "Description"))
    return cls(reason or "(no faultstring)", code=code or "", detail=explanation)


def standalone(element: etree._Element) -> bytes:
    """``element`` serialized on its own. lxml declares every namespace in scope on it, so
    prefixed values inside (``xsi:type="ns2:…"``, as Genesis II sends) stay resolvable, and
    the subtree is otherwise untouched: prefixes and declarations as the service wrote them."""
    return etree.tostring(element)


def to_ref(epr: etree._Element) -> ActivityRef:
    """An endpoint reference as the client keeps it.

    Raises:
        ProtocolProblem: It has no ``wsa:Address``.
    """
    address = text_of(child(epr, "Address"))
    if address is None:
        raise ProtocolProblem("an activity identifier in the answer has no wsa:Address")
    activity_id = None
    parameters = child(epr, "ReferenceParameters")
    if parameters is not None:
        for parameter in parameters.iterchildren(etree.Element):
            if local(parameter) == "ActivityId" and etree.QName(parameter).namespace == (
                BES_ACTIVITY
            ):
                activity_id = parse_activity_id(parameter.text or "")
    return ActivityRef(address=address, epr=standalone(epr), activity_id=activity_id)


def created(payload: etree._Element) -> ActivityRef:
    """The identifier of a CreateActivityResponse."""
    _expect(payload, "CreateActivityResponse")
    epr = child(payload, "ActivityIdentifier")
    if epr is None:
        raise ProtocolProblem("CreateActivityResponse carries no ActivityIdentifier")
    return to_ref(epr)


def statuses(payload: etree._Element, asked: list[ActivityRef]) -> list[ActivityStatus]:
    """The Responses of a GetActivityStatusesResponse, one per identifier asked, in order."""
    _expect(payload, "GetActivityStatusesResponse")
    found = []
    for response, ref in _responses(payload, asked):
        fault = child(response, "Fault")
        if fault is not None:
            found.append(ActivityStatus(ref=ref, state=State.UNKNOWN, fault=to_fault(fault)))
            continue
        status = child(response, "ActivityStatus")
        if status is None:
            raise ProtocolProblem("a Response carries neither an ActivityStatus nor a Fault")
        found.append(_status(status, ref))
    return found


def terminated(payload: etree._Element, asked: list[ActivityRef]) -> list[TerminateResult]:
    """The Responses of a TerminateActivitiesResponse."""
    _expect(payload, "TerminateActivitiesResponse")
    results = []
    for response, ref in _responses(payload, asked):
        fault = child(response, "Fault")
        flag = text_of(child(response, "Terminated"))
        results.append(
            TerminateResult(
                ref=ref,
                # ARC sends no Terminated element: without a fault, it was accepted.
                terminated=(flag in ("true", "1")) if flag is not None else fault is None,
                fault=to_fault(fault) if fault is not None else None,
            )
        )
    return results


def documents(payload: etree._Element, asked: list[ActivityRef]) -> list[bytes | SoapFault]:
    """The JobDefinitions (serialized) of a GetActivityDocumentsResponse, or per-item faults."""
    _expect(payload, "GetActivityDocumentsResponse")
    found: list[bytes | SoapFault] = []
    for response, _ in _responses(payload, asked):
        fault = child(response, "Fault")
        job = child(response, "JobDefinition")
        if fault is not None:
            found.append(to_fault(fault))
        elif job is not None:
            # GFD.108 declares the answer's JobDefinition locally, in the BES namespace; the
            # caller gets a JSDL document.
            job.tag = qname(JSDL, "JobDefinition")
            found.append(standalone(job))
        else:
            raise ProtocolProblem("a Response carries neither a JobDefinition nor a Fault")
    return found


def attributes(payload: etree._Element) -> FactoryAttributes:
    """The FactoryResourceAttributesDocument of a GetFactoryAttributesDocumentResponse."""
    _expect(payload, "GetFactoryAttributesDocumentResponse")
    document = child(payload, "FactoryResourceAttributesDocument")
    if document is None:
        raise ProtocolProblem("the answer carries no FactoryResourceAttributesDocument")
    basic = child(document, "BasicResourceAttributesDocument")
    operating_system = child(basic, "OperatingSystem") if basic is not None else None
    architecture = child(basic, "CPUArchitecture") if basic is not None else None
    return FactoryAttributes(
        accepting=_boolean(text_of(child(document, "IsAcceptingNewActivities"))),
        name=text_of(child(document, "CommonName")),
        description=text_of(child(document, "LongDescription")),
        total_activities=_integer(text_of(child(document, "TotalNumberOfActivities"))),
        activity_refs=tuple(to_ref(e) for e in children(document, "ActivityReference")),
        contained_resources=_integer(text_of(child(document, "TotalNumberOfContainedResources"))),
        naming_profiles=tuple(
            t for e in children(document, "NamingProfile") if (t := text_of(e)) is not None
        ),
        extensions=tuple(
            t for e in children(document, "BESExtension") if (t := text_of(e)) is not None
        ),
        resource_manager=text_of(child(document, "LocalResourceManagerType")),
        cpu_count=_number(text_of(child(basic, "CPUCount"))) if basic is not None else None,
        memory_bytes=(
            _number(text_of(child(basic, "PhysicalMemory"))) if basic is not None else None
        ),
        operating_system=text_of(operating_system),
        cpu_architecture=text_of(architecture),
    )


def _status(status: etree._Element, ref: ActivityRef) -> ActivityStatus:
    raw = (status.get("state") or "").strip()
    substates: list[str] = []
    warnings: list[str] = []
    counts: list[ActivityCount] = []
    details: dict[str, str] = {}
    refs: list[ActivityRef] = []
    access: LeaseAccess | None = None
    for element in status.iterchildren(etree.Element):
        name = local(element)
        namespace = etree.QName(element).namespace
        if namespace == BES_ACTIVITY and name in _DETAILS:
            value = text_of(element)
            if name == "Warning" and value:
                warnings.append(value)
            elif name == "ActivityCount":
                counts.append(
                    ActivityCount(
                        state=State.parse(element.get("state") or ""),
                        count=_integer(value) or 0,
                    )
                )
            elif name == "Child":
                refs.append(to_ref(element))
            elif name == "Access":
                access = _access(element)
            elif value is not None:
                details[name] = value
        elif namespace in _KNOWN_SUBSTATE_NAMESPACES:
            substates.append(name)
        else:  # a foreign status element (ARC's a-rex:State, glue:State): keep it readable
            value = text_of(element)
            substates.append(f"{name}={value}" if value else name)
    return ActivityStatus(
        ref=ref,
        state=State.parse(raw),
        raw_state=raw,
        substates=tuple(substates),
        exit_code=_integer(details.get("ExitCode")),
        message=details.get("Message"),
        outputs_url=details.get("Outputs"),
        changed=details.get("Changed"),
        pool=details.get("Pool"),
        warnings=tuple(warnings),
        counts=tuple(counts),
        children=tuple(refs),
        access=access,
    )


def _access(element: etree._Element) -> LeaseAccess:
    """``besa:Access``: its login, host keys, ports and tunnel URL."""
    keys, ports = [], []
    user = tunnel = None
    for child in element.iterchildren(etree.Element):
        name = local(child)
        if name == "User":
            user = text_of(child)
        elif name == "HostKey" and text_of(child):
            keys.append(text_of(child) or "")
        elif name == "Port":
            guest, host = _integer(child.get("guestPort")), _integer(child.get("hostPort"))
            if guest is not None and host is not None:
                ports.append((guest, host))
        elif name == "Tunnel":
            tunnel = text_of(child)
    return LeaseAccess(user=user, host_keys=tuple(keys), ports=tuple(ports), tunnel=tunnel)


def _responses(
    payload: etree._Element, asked: list[ActivityRef]
) -> Iterator[tuple[etree._Element, ActivityRef]]:
    """Each Response with the identifier it answers. GFD.108 keeps the request's order; the
    reference the caller holds is returned, not the echo (services rewrite echoes)."""
    responses = list(children(payload, "Response"))
    if len(responses) != len(asked):
        raise ProtocolProblem(
            f"{len(asked)} identifiers were sent but {len(responses)} Responses came back"
        )
    yield from zip(responses, asked, strict=True)


def _expect(payload: etree._Element, name: str) -> None:
    if local(payload) != name:
        raise ProtocolProblem(f"expected a {name} but the service answered {local(payload)!r}")


def _boolean(value: str | None) -> bool | None:
    return None if value is None else value in ("true", "1")


def _integer(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
