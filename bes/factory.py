"""The BES-Factory and BES-Management operations: decode the request, call the activity
registry, encode the answer. One method per operation; no business rules here.

Vector operations (GetActivityStatuses, TerminateActivities, GetActivityDocuments) answer one
``Response`` per identifier, in request order, with a per-item ``bes-factory:Fault`` where that
item failed (GFD.108 §6.2). Whole-call faults are reserved for failures that apply to all items.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Final

from lxml import etree

from bes.activities import Activities, TerminateOutcome
from bes.errors import InvalidRequest, JsdlError, UnsupportedFeature
from bes.identity import IdentityPolicy, Transport
from bes.ids import ActivityId
from bes.jsdl import schema
from bes.jsdl.model import JobDefinition
from bes.jsdl.normalize import normalize
from bes.jsdl.parse import JOB_DEFINITION, parse_job_definition
from bes.jsdl.sweep import expand, has_sweep
from bes.jsdl.xml import parse_stored, tag
from bes.ns import BES_FACTORY, BES_MANAGEMENT, WSA, WSA_FAULT_ACTION, XSI, qname
from bes.principal import Principal
from bes.soap import (
    CLIENT,
    SoapFault,
    SoapRequest,
    fault_for,
    parse_request,
    render_fault,
    render_response,
)
from bes.wire import (
    FINAL,
    Dialect,
    ResourceDescription,
    activity_id_of,
    activity_status,
    bes,
    create_activity_response,
    element,
    factory_attributes,
    item_fault,
    state_fault,
    sub,
    unknown_activity,
)

log = logging.getLogger(__name__)

FACTORY_ACTIONS: Final = BES_FACTORY + "/BESFactoryPortType/"
MANAGEMENT_ACTIONS: Final = BES_MANAGEMENT + "/BESManagementPortType/"
_ACTIVITY_IDENTIFIER: Final = bes("ActivityIdentifier")
_ACTIVITY_DOCUMENT: Final = bes("ActivityDocument")
_XSI_TYPE: Final = qname(XSI, "type")
_VECTOR_OPERATIONS: Final = frozenset(
    bes(name) for name in ("GetActivityStatuses", "TerminateActivities", "GetActivityDocuments")
)
_OPAQUE_EPR_PARTS: Final = frozenset({qname(WSA, "ReferenceParameters"), qname(WSA, "Metadata")})


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """Everything an operation needs about the request it serves."""

    request: SoapRequest
    caller: Principal
    endpoint: str
    """Base URL of this service as the client reached it, e.g. ``http://127.0.0.1:8080``."""
    dialect: Dialect
    submitted: str | None = None
    """CreateActivity: the JobDefinition as it was sent (before normalization)."""
    warnings: tuple[str, ...] = ()
    """CreateActivity: what normalization rewrote in it."""


Handler = Callable[["Factory", Call], Awaitable[etree._Element]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """The HTTP answer to one SOAP request."""

    status: int
    envelope: bytes
    operation: str
    """The operation it asked for (``CreateActivity``, ...), or ``unknown`` if none was
    recognized (for the request timings)."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a BES port type."""

    name: str
    actions: str
    handler: Handler

    @property
    def input_action(self) -> str:
        """wsa:Action and SOAPAction of the request."""
        return self.actions + self.name

    @property
    def output_action(self) -> str:
        """wsa:Action of the response."""
        return self.actions + self.name + "Response"

    @property
    def fault_action(self) -> str:
        """wsa:Action of every fault of the port type."""
        return self.actions + "Fault"


class Factory:
    """Serves SOAP requests for the BES-Factory and BES-Management port types.

    Args:
        activities: The activity registry.
        identity: Decides who is calling.
        resource: What the factory attributes document says about the resources.
        strict: Validate JSDL as submitted, without normalizing real-world variants.
        sweep_limit: Most activities one parameter sweep may expand into.
    """

    def __init__(
        self,
        activities: Activities,
        *,
        identity: IdentityPolicy,
        resource: ResourceDescription,
        strict: bool = False,
        sweep_limit: int = 1000,
    ) -> None:
        self.activities = activities
        self.identity = identity
        self.resource = resource
        self.strict = strict
        """Validate JSDL as submitted: no normalization of real-world variants."""
        self.sweep_limit = sweep_limit
        """Most activities one parameter sweep may expand into."""

    async def handle(
        self,
        data: bytes,
        *,
        soap_action: str | None,
        endpoint: str,
        transport: Transport,
        dialect: Dialect = FINAL,
    ) -> Answer:
        """Answer one HTTP request body: its HTTP status and response envelope."""
        request: SoapRequest | None = None
        operation: Operation | None = None
        try:
            understood = await self.identity.understood_headers()
            request = parse_request(data, soap_action=soap_action, understood=understood)
            caller = await self.identity.identify(transport, request)  # before anything is revealed
            operation = _operation(request)
            submitted, warnings = self._normalized(request.body)
            _validate(request.body)
            call = Call(
                request=request,
                caller=caller,
                endpoint=endpoint,
                dialect=dialect,
                submitted=submitted,
                warnings=warnings,
            )
            payload = await operation.handler(self, call)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a SOAP fault (logged there)
            fault = fault_for(exc)
            default_action = operation.fault_action if operation else FACTORY_ACTIONS + "Fault"
            return Answer(
                status=500,
                envelope=render_fault(fault, default_action=default_action, request=request),
                operation=operation.name if operation else "unknown",
            )
        return Answer(
            status=200,
            envelope=render_response(payload, action=operation.output_action, request=request),
            operation=operation.name,
        )

    def _normalized(self, body: etree._Element) -> tuple[str | None, tuple[str, ...]]:
        """For CreateActivity: the JobDefinition as sent, then made canonical in place."""
        if body.tag != bes("CreateActivity"):
            return None, ()
        document = body.find(_ACTIVITY_DOCUMENT)
        job = document.find(JOB_DEFINITION) if document is not None else None
        if job is None:
            return None, ()
        submitted = etree.tostring(job, encoding="unicode")
        if self.strict:
            return submitted, ()
        warnings = tuple(normalize(job))
        if warnings:
            log.info("CreateActivity normalized: %s", "; ".join(warnings))
        return submitted, warnings

    # ------------------------------------------------------------------ BES-Factory

    async def create_activity(self, call: Call) -> etree._Element:
        """CreateActivity (GFD.108 §6.1.1)."""
        body = call.request.body
        document_element = body.find(_ACTIVITY_DOCUMENT)
        if document_element is None:  # unreachable after validation; kept for clarity
            raise InvalidRequest("CreateActivity has no ActivityDocument")
        job_element = document_element.find(JOB_DEFINITION)
        if job_element is None:
            raise InvalidRequest("ActivityDocument has no jsdl:JobDefinition")
        unsupported = _extensions(body, keep=document_element)
        unsupported += _extensions(document_element, keep=job_element)
        if unsupported:
            raise UnsupportedFeature(unsupported)
        document = call.submitted or etree.tostring(job_element, encoding="unicode")
        # A retried request (same caller, same wsa:MessageID) gets the activity it created.
        addressing = call.request.addressing
        request = addressing.message_id if addressing is not None else None
        if has_sweep(job_element):
            points = [
                (_point(i, point), etree.tostring(point, encoding="unicode"))
                for i, point in enumerate(expand(job_element, limit=self.sweep_limit), 1)
            ]
            activity_id = await self.activities.create_sweep(
                call.caller,
                document,
                points,
                warnings=call.warnings,
                endpoint=call.endpoint,
                request=request,
            )
        else:
            job = parse_job_definition(job_element, validated=True)
            activity_id = await self.activities.create(
                call.caller,
                job,
                document,
                warnings=call.warnings,
                endpoint=call.endpoint,
                request=request,
            )
        log.debug("%s created activity %s", call.caller.name, activity_id)
        return create_activity_response(call.endpoint, activity_id)

    async def get_activity_statuses(self, call: Call) -> etree._Element:
        """GetActivityStatuses (GFD.108 §6.1.2)."""
        eprs, ids = _identifiers(call.request.body)
        found = await self.activities.statuses(call.caller, [i for i in ids if i])
        response = element("GetActivityStatusesResponse")
        for item, epr, activity_id in _responses(response, eprs, ids):
            record = found.get(activity_id) if activity_id else None
            if record is None:
                item_fault(item, unknown_activity(call.dialect, epr))
            else:
                activity_status(item, record, endpoint=call.endpoint)
        return response

    async def terminate_activities(self, call: Call) -> etree._Element:
        """TerminateActivities (GFD.108 §6.1.3). ``Terminated`` is always present."""
        eprs, ids = _identifiers(call.request.body)
        results = await self.activities.terminate(call.caller, [i for i in ids if i])
        response = element("TerminateActivitiesResponse")
        for item, epr, activity_id in _responses(response, eprs, ids):
            result = results.get(activity_id) if activity_id else None
            if (
                result is None
                or result.record is None
                or result.outcome is TerminateOutcome.UNKNOWN
            ):
                sub(item, call.dialect.terminated, "false")
                item_fault(item, unknown_activity(call.dialect, epr))
            elif result.outcome is TerminateOutcome.TERMINATED:
                sub(item, call.dialect.terminated, "true")
            elif result.outcome is TerminateOutcome.WILL_APPLY_LATER:
                sub(item, call.dialect.terminated, "false")
                item_fault(
                    item,
                    state_fault(
                        "OperationWillBeAppliedEventuallyFault",
                        result.record,
                        "termination is under way; poll the status until it is Cancelled",
                    ),
                )
            else:
                sub(item, call.dialect.terminated, "false")
                item_fault(
                    item,
                    state_fault(
                        "CantApplyOperationToCurrentStateFault",
                        result.record,
                        f"the activity has already ended ({result.record.state.value})",
                    ),
                )
        return response

    async def get_activity_documents(self, call: Call) -> etree._Element:
        """GetActivityDocuments (GFD.108 §6.1.4): each document as it was submitted."""
        eprs, ids = _identifiers(call.request.body)
        documents = await self.activities.documents(call.caller, [i for i in ids if i])
        response = element("GetActivityDocumentsResponse")
        for item, epr, activity_id in _responses(response, eprs, ids):
            document = documents.get(activity_id) if activity_id else None
            if document is None:
                item_fault(item, unknown_activity(call.dialect, epr))
            else:
                stored = parse_stored(document)
                stored.tag = bes("JobDefinition")  # a local element of JSDL's type (§6.1.4)
                item.append(stored)
        return response

    async def get_factory_attributes_document(self, call: Call) -> etree._Element:
        """GetFactoryAttributesDocument (GFD.108 §6.1.5), with live counts."""
        _refuse_extensions(call.request.body)
        summary = await self.activities.summary(call.caller)
        return factory_attributes(
            resource=self.resource,
            accepting=summary.accepting,
            counts=summary.counts,
            active=summary.active,
            endpoint=call.endpoint,
        )

    # ------------------------------------------------------------------ BES-Management

    async def stop_accepting(self, call: Call) -> etree._Element:
        """StopAcceptingNewActivities (GFD.108 §7.1.1)."""
        _refuse_extensions(call.request.body)
        await self.activities.set_accepting(call.caller, False)
        return etree.Element(
            qname(BES_MANAGEMENT, "StopAcceptingNewActivitiesResponse"),
            nsmap={"bes-mgmt": BES_MANAGEMENT},
        )

    async def start_accepting(self, call: Call) -> etree._Element:
        """StartAcceptingNewActivities (GFD.108 §7.1.2)."""
        _refuse_extensions(call.request.body)
        await self.activities.set_accepting(call.caller, True)
        return etree.Element(
            qname(BES_MANAGEMENT, "StartAcceptingNewActivitiesResponse"),
            nsmap={"bes-mgmt": BES_MANAGEMENT},
        )


OPERATIONS: Final[dict[str, Operation]] = {
    bes("CreateActivity"): Operation("CreateActivity", FACTORY_ACTIONS, Factory.create_activity),
    bes("GetActivityStatuses"): Operation(
        "GetActivityStatuses", FACTORY_ACTIONS, Factory.get_activity_statuses
    ),
    bes("TerminateActivities"): Operation(
        "TerminateActivities", FACTORY_ACTIONS, Factory.terminate_activities
    ),
    bes("GetActivityDocuments"): Operation(
        "GetActivityDocuments", FACTORY_ACTIONS, Factory.get_activity_documents
    ),
    bes("GetFactoryAttributesDocument"): Operation(
        "GetFactoryAttributesDocument", FACTORY_ACTIONS, Factory.get_factory_attributes_document
    ),
    qname(BES_MANAGEMENT, "StopAcceptingNewActivities"): Operation(
        "StopAcceptingNewActivities", MANAGEMENT_ACTIONS, Factory.stop_accepting
    ),
    qname(BES_MANAGEMENT, "StartAcceptingNewActivities"): Operation(
        "StartAcceptingNewActivities", MANAGEMENT_ACTIONS, Factory.start_accepting
    ),
}
_BY_ACTION: Final = {op.input_action: op for op in OPERATIONS.values()}


def _operation(request: SoapRequest) -> Operation:
    """The operation named by the body element, cross-checked with the actions sent."""
    operation = OPERATIONS.get(request.operation)
    if operation is None:
        name = etree.QName(request.body)
        known = {etree.QName(q).localname for q in OPERATIONS}
        if name.localname in known:
            where = f"namespace {name.namespace!r}" if name.namespace else "no namespace"
            raise SoapFault(
                CLIENT,
                f"{name.localname} is in {where}; BES operations are in "
                f"{BES_FACTORY} or {BES_MANAGEMENT}",
            )
        raise SoapFault(CLIENT, f"unknown operation {request.operation}")
    addressing = request.addressing
    for sent, source in (
        (addressing.action if addressing else None, "wsa:Action"),
        (request.soap_action, "SOAPAction"),
    ):
        # An action naming a *different* operation is a contradiction; anything else (empty,
        # the bare operation name, a vendor URI) is tolerated, as many toolkits send those.
        other = _BY_ACTION.get(sent or "")
        if other is not None and other is not operation:
            if source == "wsa:Action":
                detail = etree.Element(qname(WSA, "ProblemAction"), nsmap={"wsa": WSA})
                etree.SubElement(detail, qname(WSA, "Action")).text = sent
                raise SoapFault(
                    qname(WSA, "ActionMismatch"),
                    f"wsa:Action {sent} does not match the body {operation.name}",
                    [detail],
                    action=WSA_FAULT_ACTION,
                )
            raise SoapFault(CLIENT, f"SOAPAction {sent} does not match the body {operation.name}")
    return operation


def _identifiers(body: etree._Element) -> tuple[list[etree._Element], list[ActivityId | None]]:
    """The ActivityIdentifier EPRs of a vector request, and our ids in them (None if not ours)."""
    eprs = [e for e in body.iterchildren(etree.Element) if e.tag == _ACTIVITY_IDENTIFIER]
    unsupported = [f for f in _extensions(body) if not f.startswith(_ACTIVITY_IDENTIFIER + " ")]
    if unsupported:
        raise UnsupportedFeature(unsupported)
    return eprs, [activity_id_of(epr) for epr in eprs]


def _responses(
    response: etree._Element, eprs: list[etree._Element], ids: list[ActivityId | None]
) -> Iterator[tuple[etree._Element, etree._Element, ActivityId | None]]:
    """One ``Response`` per identifier, in request order, each starting with the client's EPR
    echoed as sent (moved out of the request, which is done with)."""
    for epr, activity_id in zip(eprs, ids, strict=True):
        item = sub(response, "Response")
        echoed, typed = _typed(epr)
        item.append(echoed)
        _retyped(echoed, typed)
        yield item, echoed, activity_id


def _typed(epr: etree._Element) -> tuple[etree._Element, list[tuple[etree._Element, str, str]]]:
    """The EPR and its ``xsi:type`` values resolved, to move into the response intact.

    Values such as ``xsi:type="ns2:AttributedURIType"`` (Genesis II's EPRs) are QNames whose
    prefix must stay bound to its namespace; lxml renames prefixes when an element moves into
    another document, so each such value is resolved first and re-prefixed after the move."""
    typed = []
    for node in epr.iter(etree.Element):
        value = node.get(_XSI_TYPE)
        if value and ":" in value:
            prefix, _, local = value.partition(":")
            namespace = node.nsmap.get(prefix)
            if namespace is not None:
                typed.append((node, namespace, local))
    return epr, typed


def _retyped(epr: etree._Element, typed: list[tuple[etree._Element, str, str]]) -> etree._Element:
    for node, namespace, local in typed:
        prefixes = [p for p, uri in node.nsmap.items() if uri == namespace and p]
        if prefixes:
            node.set(_XSI_TYPE, f"{prefixes[0]}:{local}")
    return epr


def _extensions(parent: etree._Element, *, keep: etree._Element | None = None) -> list[str]:
    """Feature names for the extension elements of ``parent`` (every child but ``keep``)."""
    extras = [e for e in parent.iterchildren(etree.Element) if e is not keep]
    if not extras:
        return []
    where = schema.element_path(parent)
    return [f"{tag(e)} in {where}" for e in extras]


def _refuse_extensions(body: etree._Element) -> None:
    unsupported = _extensions(body)
    if unsupported:
        raise UnsupportedFeature(unsupported)


def _point(index: int, point: etree._Element) -> JobDefinition:
    """One point of a parameter sweep, validated and parsed on its own."""
    try:
        return parse_job_definition(point)
    except JsdlError as exc:
        raise JsdlError(
            f"point {index} of the parameter sweep: {exc}", exc.invalid_elements, line=exc.line
        ) from exc
    except UnsupportedFeature as exc:
        raise UnsupportedFeature(
            exc.features, f"point {index} of the parameter sweep: {exc.message}"
        ) from exc


def _validate(body: etree._Element) -> None:
    """Every request body must be valid against our schemas before anything reads it.

    The identifiers of the vector operations are validated leniently: an EPR is opaque to its
    holder, and wsa:EndpointReferenceType admits anything in ReferenceParameters, Metadata
    and its trailing extensions. Our schemas declare ``besa:ActivityId`` strictly (for what
    we send), so lax validation would turn another service's identifier there into a
    whole-call fault; it is an unknown identifier instead, answered per item
    (:func:`bes.wire.activity_id_of`).
    """
    problems = schema.validate(_opaque_identifiers_emptied(body))
    if problems:
        raise InvalidRequest(
            "the request is not valid: "
            + "; ".join(f"line {p.line}: {p.message}" if p.line else p.message for p in problems),
            [p.path for p in problems],
        )


def _opaque_identifiers_emptied(body: etree._Element) -> etree._Element:
    """``body`` itself, or for a vector operation a copy of it in which each identifier keeps
    its wsa:Address and empty ReferenceParameters and Metadata."""
    if body.tag not in _VECTOR_OPERATIONS:
        return body
    shown = copy.deepcopy(body)
    for epr in shown.iterchildren(_ACTIVITY_IDENTIFIER):
        for part in list(epr.iterchildren(etree.Element)):
            if part.tag in _OPAQUE_EPR_PARTS:
                for inner in list(part):
                    part.remove(inner)
            elif etree.QName(part).namespace != WSA:
                epr.remove(part)
    return shown
