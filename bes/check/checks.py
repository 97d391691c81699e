"""The checks, in the order they run. Each takes the :class:`Session` and returns one
:class:`Result` (or several, for the checks that come in steps), never raises for anything an
endpoint can do, and cites the rule it is about.

Rules cited: GFD.108 (OGSA-BES 1.0), GFD.56 (JSDL 1.0), GFD.114 (HPC Basic Profile), GFD.111
(HPCP Application), GFD.135 (HPC File Staging), GFD.115 (SPMD), GFD.149 (Parameter Sweep),
SOAP 1.1, WS-Addressing 1.0, WS-I Basic Profile 1.1.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Final
from urllib.parse import urljoin, urlsplit, urlunsplit

from lxml import etree

from bes.check import deviations, documents, payloads
from bes.check.model import Result, Verdict
from bes.check.session import DRAFT, FINAL, TERMINAL, Session, Verdicts, text
from bes.check.transport import Reply, action_of
from bes.ns import BES_FACTORY, WSA

_F: Final = "{" + BES_FACTORY + "}"
_WSDL: Final = "http://schemas.xmlsoap.org/wsdl/"
_OPERATIONS: Final = (
    "CreateActivity",
    "GetActivityStatuses",
    "TerminateActivities",
    "GetActivityDocuments",
    "GetFactoryAttributesDocument",
)
_WSDL_DEPTH: Final = 3
_PARSER: Final = etree.XMLParser(resolve_entities=False, no_network=True)
Check = Callable[[Session], list[Result]]


def wsdl(s: Session) -> list[Result]:
    v = Verdicts("wsdl", "WSDL at ?wsdl", "GFD.108 §8 (the port types); WS-I BP 1.1 §4")
    exchange = s.endpoint.get("wsdl", wsdl_url(s.endpoint.url))
    v.keep(exchange)
    if exchange.status is None:
        return [v.failed(f"no answer: {exchange.error}")]
    if exchange.status in (404, 405, 501):
        return [v.skipped(f"not offered (HTTP {exchange.status} at ?wsdl)")]
    kind = _content_type(exchange.response_headers)
    if kind == "text/html":
        # A-REX answers any GET on its URL with an HTML job list: no WSDL is offered, and no
        # rule asks for one at ?wsdl.
        return [v.skipped(f"not offered (?wsdl answers an HTML page, HTTP {exchange.status})")]
    declared: set[str] = set()
    namespaces: set[str] = set()
    pending, seen = [(exchange, 0)], {exchange.url}
    while pending:
        current, depth = pending.pop()
        try:
            root = etree.fromstring(current.response, _PARSER)
        except etree.XMLSyntaxError as exc:
            return [v.failed(f"{current.url}: HTTP {current.status}, but not XML: {exc}")]
        if root.tag != f"{{{_WSDL}}}definitions":
            return [v.failed(f"{current.url} is not WSDL 1.1 (root {etree.QName(root).text})")]
        namespaces.add(root.get("targetNamespace") or "")
        namespaces.update(i.get("namespace") or "" for i in root.iter(f"{{{_WSDL}}}import"))
        declared.update(op.get("name") or "" for op in root.iter(f"{{{_WSDL}}}operation"))
        for imported in root.iter(f"{{{_WSDL}}}import"):  # WSDL 1.1 §2.1.1
            given = imported.get("location") or ""
            location = urljoin(current.url, given)  # relative to the importing document
            if given.endswith(".wsdl") and location not in seen and depth < _WSDL_DEPTH:
                seen.add(location)
                fetched = s.endpoint.get("wsdl-import", location)
                v.keep(fetched)
                if fetched.status != 200:
                    return [v.failed(f"the imported {location} answers HTTP {fetched.status}")]
                pending.append((fetched, depth + 1))
    missing = [op for op in _OPERATIONS if op not in declared]
    if BES_FACTORY not in namespaces:
        return [v.failed("the WSDL does not use the bes-factory namespace of GFD.108")]
    if missing:
        return [v.failed("operations missing from the WSDL: " + ", ".join(missing))]
    return [v.passed(f"{len(declared)} operations, {len(seen)} WSDL documents")]


def wsdl_url(url: str) -> str:
    """The endpoint URL with ``wsdl`` added to its query (``?wsdl``, or ``?res=x&wsdl`` for
    a URL that has a query already, as UNICORE's do)."""
    parts = urlsplit(url)
    query = f"{parts.query}&wsdl" if parts.query else "wsdl"
    return urlunsplit(parts._replace(query=query, fragment=""))


def _content_type(headers: Mapping[str, str]) -> str:
    found = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    return found.split(";")[0].strip().lower()


def attributes(s: Session) -> list[Result]:
    """GetFactoryAttributesDocument, valid, with WS-Addressing answered; and the same with
    the SOAPAction header alone."""
    out = []
    v = Verdicts(
        "factory-attributes",
        "GetFactoryAttributesDocument",
        "GFD.108 §5 (factory attributes, in schema order)",
    )
    message_id = f"urn:uuid:{uuid.uuid4()}"
    reply = s.endpoint.soap(
        "attributes", "GetFactoryAttributesDocument", payloads.attributes(), message_id=message_id
    )
    v.keep(reply)
    document = (
        reply.body.find(_F + "FactoryResourceAttributesDocument")
        if reply.body is not None
        else None
    )
    if reply.envelope is None:
        out.append(v.no_soap(reply, "GetFactoryAttributesDocument"))
    elif reply.fault is not None:
        out.append(v.failed(f"a fault: {reply.fault_detail() or reply.fault_string()}"))
    elif document is None:
        out.append(v.failed("no FactoryResourceAttributesDocument in the answer"))
    else:
        s.notes["accepting"] = text(document.find(_F + "IsAcceptingNewActivities")) == "true"
        s.notes["total_before"] = _number(text(document.find(_F + "TotalNumberOfActivities")))
        problems = s.schema_problems(reply)
        extra = deviations.arc_operating_system(document) if problems else ""
        if extra and reply.envelope is not None:
            # What is wrong besides ARC's stray element, if anything.
            problems = s.envelope_problems(deviations.without_operating_system(reply.envelope))
        if extra and not problems:
            out.append(v.warned(extra, deviation=deviations.ARC_OPERATING_SYSTEM))
        elif problems:
            out.append(v.failed("not schema-valid: " + "; ".join(problems[:3])))
        elif not s.notes["accepting"]:
            out.append(v.warned("IsAcceptingNewActivities is false: the creation checks fail"))
        else:
            out.append(v.passed(f"TotalNumberOfActivities {s.notes['total_before']}"))
    out.append(_addressing(s, reply, message_id))
    w = Verdicts(
        "soapaction-only",
        "A request with the SOAPAction header alone (no WS-Addressing)",
        "WS-I BP 1.1 §3.6 (SOAPAction); GFD.108 §7 (dispatch on the body)",
    )
    plain = s.endpoint.soap(
        "attributes-soapaction-only",
        "GetFactoryAttributesDocument",
        payloads.attributes(),
        addressing=False,
    )
    w.keep(plain)
    if plain.envelope is None:
        out.append(w.no_soap(plain, "GetFactoryAttributesDocument without WS-Addressing"))
    elif (
        plain.fault is not None
        or plain.body is None
        or etree.QName(plain.body).localname != "GetFactoryAttributesDocumentResponse"
    ):
        out.append(
            w.failed(
                f"refused: {plain.fault_string() or 'no response element'} (JSAGA and .NET "
                "clients send no WS-Addressing)"
            )
        )
    else:
        out.append(w.passed())
    return out


def _addressing(s: Session, reply: Reply, message_id: str) -> Result:
    v = Verdicts(
        "ws-addressing",
        "wsa:MessageID answered with wsa:RelatesTo and the output wsa:Action",
        "WS-Addressing 1.0 SOAP Binding §3 and Core §3.4 (replies)",
    )
    v.keep(reply)
    if reply.envelope is None:
        return v.skipped("no SOAP answer to look at (see factory-attributes)")
    relates = reply.header(WSA, "RelatesTo")
    action = reply.header(WSA, "Action")
    expected = action_of("GetFactoryAttributesDocument") + "Response"
    if relates is None and action is None:
        return v.warned(
            "the answer carries no WS-Addressing headers at all (clients that correlate by "
            "RelatesTo cannot)"
        )
    if relates is None and action == expected:
        return v.warned(
            f"the output wsa:Action is there, but no wsa:RelatesTo for MessageID {message_id} "
            "(clients that correlate by RelatesTo cannot)",
            deviation=deviations.ARC_NO_RELATES_TO,
        )
    if relates != message_id:
        return v.failed(f"wsa:RelatesTo is {relates!r}, not the request's MessageID {message_id}")
    if action != expected:
        return v.failed(f"wsa:Action is {action!r}, not {expected}")
    return v.passed()


def create(s: Session) -> list[Result]:
    out = []
    for key, title, rule, document in (
        (
            "create-hpcp",
            "CreateActivity with an HPC Basic Profile job (HPCProfileApplication)",
            "GFD.114 §3 (HPC Basic Profile); GFD.111 (HPCP Application); GFD.108 §6.1",
            documents.hpcp_job(s.name("hpcp")),
        ),
        (
            "create-posix",
            "CreateActivity with a POSIX job",
            "GFD.56 §8.1 (POSIXApplication); GFD.108 §6.1",
            documents.posix_job(s.name("posix")),
        ),
    ):
        v = Verdicts(key, title, rule)
        reply, epr = s.create(key, document)
        v.keep(reply)
        out.append(_created(s, v, reply, epr))
        if epr is not None:
            s.notes[key] = epr
    return out


def _created(s: Session, v: Verdicts, reply: Reply, epr: bytes | None) -> Result:
    if reply.envelope is None:
        return v.no_soap(reply, "CreateActivity")
    if reply.fault is not None:
        return v.failed(f"refused: {reply.fault_detail() or 'a fault'}: {reply.fault_string()}")
    if epr is None:
        return v.failed("CreateActivityResponse without an ActivityIdentifier")
    if not payloads.address_of(epr):
        return v.failed(
            "the ActivityIdentifier has no wsa:Address", rule="WS-Addressing 1.0 Core §2.1"
        )
    judged = _schema(s, v, reply)
    if judged is not None:
        return judged
    note = deviations.describe_epr(etree.fromstring(epr))
    if note:
        return v.warned(note, deviation=deviations.GENESIS_EPR)
    return v.passed()


def staging(s: Session) -> list[Result]:
    """A job with an input staged in over HTTP and its output staged out, to its end."""
    v = Verdicts(
        "create-staging",
        "A job with data staging: input fetched, output delivered",
        "GFD.56 §6.6 (DataStaging); GFD.135 (HPC File Staging)",
    )
    place = s.place
    if place is None:
        return [
            v.skipped(
                "needs a place the endpoint can reach: --staging-url URL (an endpoint on this "
                "machine gets one on loopback)"
            )
        ]
    data = f"bes check {s.run}\n".encode()
    source, target = f"input-{s.run}.txt", f"output-{s.run}.txt"
    try:
        place.put(source, data)
    except Exception as exc:  # noqa: BLE001 - any failure to write there is the user's to see
        return [v.skipped(f"cannot write the input to {place.url(source)}: {exc}")]
    reply, epr = s.create(
        "create-staging",
        documents.staging_job(s.name("staging"), place.url(source), place.url(target)),
    )
    v.keep(reply)
    if epr is None:
        return [_created(s, v, reply, epr)]
    ended, polled = s.wait_state(epr, TERMINAL)
    v.keep(*polled)
    if ended == "Finished":
        delivered = place.get(target)
        if delivered == data:
            return [v.passed("staged in and out")]
        return [v.failed(f"Finished, but {place.url(target)} holds {delivered!r}")]
    if ended in TERMINAL:
        return [v.failed(f"the job ended {ended}")]
    return [v.warned(f"still {ended} after {s.options.wait_s:g} s (does the endpoint run jobs?)")]


def status_vector(s: Session) -> list[Result]:
    v = Verdicts(
        "status-vector",
        "GetActivityStatuses for [good, foreign, good]: three Responses in order, a fault for "
        "the foreign one",
        "GFD.108 §6.2 (vector operations: one Response per identifier, in order)",
    )
    good = [
        e for e in (s.notes.get("create-hpcp"), s.notes.get("create-posix")) if isinstance(e, bytes)
    ]
    if len(good) < 2:
        return [v.skipped("needs the two activities of create-hpcp and create-posix")]
    asked = [good[0], payloads.foreign_epr(s.endpoint.url), good[1]]
    reply = s.statuses("status-vector", asked)
    v.keep(reply)
    found = _vector(v, reply, "GetActivityStatuses", 3)
    if isinstance(found, Result):
        return [found]
    for index in (0, 2):
        state = payloads.state_of(found[index])
        if state is None:
            return [
                v.failed(
                    f"Response {index + 1} has no ActivityStatus: "
                    f"{payloads.item_fault(found[index])}"
                )
            ]
        if state not in ("Pending", "Running", "Finished", "Failed", "Cancelled"):
            return [
                v.failed(
                    f"Response {index + 1}: state {state!r} is not a GFD.108 state (Terminated is "
                    "sent as Cancelled)"
                )
            ]
    fault = payloads.item_fault(found[1])
    if fault is None:
        return [v.failed("no per-item Fault for the identifier the endpoint never minted")]
    if fault[0] == "InvalidActivityIdentifierFault":
        s.saw_dialect(DRAFT)
    elif fault[0] == "UnknownActivityIdentifierFault":
        s.saw_dialect(FINAL)
    else:
        return [
            v.failed(
                f"the per-item fault is {fault[0] or 'without detail'}, not "
                "UnknownActivityIdentifierFault"
            )
        ]
    for index, epr in enumerate(asked):
        echoed = found[index].find(_F + "ActivityIdentifier")
        if echoed is not None and payloads.address_of(
            etree.tostring(echoed)
        ) != payloads.address_of(epr):
            return [
                v.failed(
                    f"Response {index + 1} names another activity than identifier {index + 1}: "
                    "the order is not kept"
                )
            ]
    judged = _schema(s, v, reply)
    if judged is not None:
        return [judged]
    return [
        v.passed(f"fault {fault[0]}" + (" (the 2007 draft's name)" if s.dialect == DRAFT else ""))
    ]


def _vector(v: Verdicts, reply: Reply, operation: str, count: int) -> Result | list[etree._Element]:
    """The Responses of a vector answer naming one unknown identifier among ``count``, or
    the FAIL that says why there are none to judge."""
    if reply.envelope is None:
        return v.no_soap(reply, operation)
    if reply.fault is not None:
        return v.failed(
            f"a whole-call fault for one unknown identifier: {reply.fault_detail()}: "
            f"{reply.fault_string()}"
        )
    found = payloads.responses(reply.body)
    if len(found) != count:
        return v.failed(f"{len(found)} Responses for {count} identifiers")
    return found


def _schema(s: Session, v: Verdicts, reply: Reply) -> Result | None:
    """FAIL an answer that is not schema-valid, WARN one whose every problem a known
    deviation explains (named), None for a valid one."""
    problems = s.schema_problems(reply)
    if not problems:
        return None
    known = deviations.explained(problems)
    if known is not None:
        return v.warned(known[1], deviation=known[0])
    return v.failed("not schema-valid: " + "; ".join(problems[:3]))


def documents_round_trip(s: Session) -> list[Result]:
    v = Verdicts(
        "documents",
        "GetActivityDocuments returns the JobDefinition submitted",
        "GFD.108 §6.4 (GetActivityDocuments: bes-factory:JobDefinition of jsdl:JobDefinition_Type)",
    )
    epr = s.notes.get("create-posix")
    if not isinstance(epr, bytes):
        return [v.skipped("needs the activity of create-posix")]
    reply = s.endpoint.soap(
        "documents", "GetActivityDocuments", payloads.vector("GetActivityDocuments", [epr])
    )
    v.keep(reply)
    if reply.envelope is None:
        return [v.no_soap(reply, "GetActivityDocuments")]
    found = payloads.responses(reply.body)
    if len(found) != 1:
        return [v.failed(f"{len(found)} Responses for 1 identifier")]
    definition = next(
        (
            c
            for c in found[0].iterchildren(etree.Element)
            if etree.QName(c).localname == "JobDefinition"
        ),
        None,
    )
    if definition is None:
        return [v.failed(f"no JobDefinition in the Response: {payloads.item_fault(found[0])}")]
    names = [text(e) for e in definition.iter("{http://schemas.ggf.org/jsdl/2005/11/jsdl}JobName")]
    if s.name("posix") not in names:
        return [v.failed(f"the document came back with JobName {names}, not {s.name('posix')}")]
    if definition.tag != _F + "JobDefinition":
        return [
            v.warned(
                f"the document is {etree.QName(definition).text}, not bes-factory:JobDefinition "
                "(schema-invalid, most clients cope)"
            )
        ]
    judged = _schema(s, v, reply)
    return [judged if judged is not None else v.passed()]


def terminate(s: Session) -> list[Result]:
    """Terminate a job (Running if the endpoint runs it soon), see it end, terminate again."""
    out = []
    v = Verdicts(
        "terminate",
        "TerminateActivities on a live activity: Terminated true, or false with "
        "OperationWillBeAppliedEventuallyFault",
        "GFD.108 §6.3 (TerminateActivities)",
    )
    reply, epr = s.create("terminate-create", documents.posix_job(s.name("terminate"), seconds=300))
    v.keep(reply)
    if epr is None:
        return [
            v.failed(
                "could not create the activity to terminate: "
                f"{reply.problem or reply.fault_string() or 'no identifier'}"
            )
        ]
    state, polled = s.wait_state(
        epr, frozenset({"Running", *TERMINAL}), timeout_s=min(60.0, s.options.wait_s)
    )
    v.keep(*polled)
    answer = s.terminate("terminate", [epr])
    v.keep(answer)
    found = payloads.responses(answer.body)
    if answer.envelope is None:
        return [v.no_soap(answer, "TerminateActivities")]
    if len(found) != 1:
        return [v.failed(f"{len(found)} Responses for 1 identifier")]
    verdict = deviations.terminated(found[0])
    if verdict.element == "Cancelled":
        s.saw_dialect(DRAFT)
    if verdict.missing:
        out.append(_no_terminated(v, verdict))
    elif verdict.value is True or (
        verdict.value is False and verdict.fault == "OperationWillBeAppliedEventuallyFault"
    ):
        judged = _schema(s, v, answer)
        out.append(
            judged
            if judged is not None
            else v.passed(
                f"while {state}: {verdict.element} {str(verdict.value).lower()}"
                + (f" with {verdict.fault}" if verdict.fault else "")
            )
        )
    else:
        out.append(
            v.failed(
                f"while {state}: Terminated {verdict.value} with {verdict.fault or 'no fault'}"
            )
        )
    out.append(_terminate_state(s, epr, state))
    out.append(_terminate_again(s, epr))
    return out


def _no_terminated(v: Verdicts, verdict: deviations.Terminated) -> Result:
    """A Response without Terminated: ARC's way when it faults the item, else broken."""
    if verdict.fault:
        return v.warned(
            f"the Response carries {verdict.fault} but no Terminated element (schema-invalid)",
            deviation=deviations.ARC_NO_TERMINATED,
        )
    return v.failed(
        "the Response has neither Terminated nor a fault: whether it was terminated is not said",
        rule="GFD.108 §6.3 (Terminated is required in every Response)",
    )


def _terminate_state(s: Session, epr: bytes, state: str | None) -> Result:
    w = Verdicts(
        "terminate-state",
        "After TerminateActivities the activity ends Cancelled",
        "GFD.108 §4 (state model: Terminated, on the wire Cancelled)",
    )
    ended, polled = s.wait_state(epr, TERMINAL)
    w.keep(*polled)
    if ended == "Cancelled":
        return w.passed(f"Cancelled (it was {state} when terminated)")
    if ended == "Failed":
        return w.warned(
            "a terminated activity ended Failed, not Cancelled",
            deviation=deviations.ARC_KILLED_FAILED,
        )
    if ended == "Terminated":
        return w.failed('state "Terminated": GFD.108\'s wire value is Cancelled (schema-invalid)')
    return w.failed(f"still {ended} {s.options.wait_s:g} s after TerminateActivities")


def _terminate_again(s: Session, epr: bytes) -> Result:
    x = Verdicts(
        "terminate-again",
        "TerminateActivities on an ended activity: Terminated true, or "
        "CantApplyOperationToCurrentStateFault",
        "GFD.108 §6.3 (and §3: CantApplyOperationToCurrentStateFault)",
    )
    again = s.terminate("terminate-again", [epr])
    x.keep(again)
    found = payloads.responses(again.body)
    if again.envelope is None:
        return x.no_soap(again, "TerminateActivities")
    if len(found) != 1:
        return x.failed(f"{len(found)} Responses for 1 identifier")
    verdict = deviations.terminated(found[0])
    if verdict.missing:
        return _no_terminated(x, verdict)
    if verdict.value is True or verdict.fault == "CantApplyOperationToCurrentStateFault":
        return x.passed(verdict.fault or f"{verdict.element} true")
    return x.failed(f"{verdict.element} {verdict.value} with {verdict.fault or 'no fault'}")


def terminate_unknown(s: Session) -> list[Result]:
    """TerminateActivities for an identifier the endpoint never minted."""
    v = Verdicts(
        "terminate-unknown",
        "TerminateActivities for an identifier the endpoint never minted: Terminated false "
        "with UnknownActivityIdentifierFault",
        "GFD.108 §6.3 (Terminated in every Response) and §6.2 (per-item faults)",
    )
    reply = s.terminate("terminate-unknown", [payloads.foreign_epr(s.endpoint.url)])
    v.keep(reply)
    found = _vector(v, reply, "TerminateActivities", 1)
    if isinstance(found, Result):
        return [found]
    verdict = deviations.terminated(found[0])
    if verdict.fault == "InvalidActivityIdentifierFault":
        s.saw_dialect(DRAFT)
    elif verdict.fault not in ("UnknownActivityIdentifierFault", ""):
        return [
            v.failed(f"the per-item fault is {verdict.fault}, not UnknownActivityIdentifierFault")
        ]
    if verdict.value is True:
        return [v.failed(f"{verdict.element} true for an activity that does not exist")]
    if not verdict.fault:
        return [v.failed("no per-item fault for the identifier the endpoint never minted")]
    if verdict.missing:
        return [_no_terminated(v, verdict)]
    judged = _schema(s, v, reply)
    return [judged if judged is not None else v.passed(f"{verdict.element} false, {verdict.fault}")]


def faults(s: Session) -> list[Result]:
    out = []
    for key, title, document, expected, rule in (
        (
            "fault-invalid-request",
            "A schema-invalid JSDL document: InvalidRequestMessageFault",
            documents.invalid_job(s.name("invalid")),
            "InvalidRequestMessageFault",
            "GFD.108 §6.1 and §3 (InvalidRequestMessageFault); GFD.56 (JSDL 1.0 schema)",
        ),
        (
            "fault-unsupported-feature",
            "An extension element no BES knows: UnsupportedFeatureFault, not ignored",
            documents.unsupported_job(s.name("unsupported")),
            "UnsupportedFeatureFault",
            "GFD.108 §6.1 and §3 (UnsupportedFeatureFault); GFD.114 §3.3",
        ),
    ):
        v = Verdicts(key, title, rule)
        reply, epr = s.create(key, document)
        v.keep(reply)
        if reply.envelope is None:
            out.append(v.no_soap(reply, "CreateActivity"))
        elif epr is not None:
            s.notes[key] = "accepted"
            out.append(v.failed("accepted (an activity was created)"))
        elif reply.fault is None:
            out.append(v.failed("neither an activity nor a fault"))
        else:
            out.append(_fault_shape(v, reply, expected))
    out.append(_no_document(s))
    v = Verdicts(
        "fault-malformed",
        "A request that is not XML: a SOAP fault (HTTP 500), not an HTML page",
        "SOAP 1.1 §4.4 and §6.2 (faults: HTTP 500 with a SOAP envelope)",
    )
    broken = s.endpoint.post_raw(
        "malformed",
        b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>',
        {
            "Content-Type": "text/xml; charset=utf-8",
            "SOAPAction": f'"{action_of("CreateActivity")}"',
        },
    )
    v.keep(broken)
    if broken.envelope is None:
        out.append(v.no_soap(broken, "a malformed request"))
    elif broken.fault is None:
        out.append(v.failed("an answer that is not a fault"))
    elif broken.exchange.status != 500:
        out.append(
            v.failed(f"a fault with HTTP {broken.exchange.status} (SOAP 1.1 sends faults with 500)")
        )
    else:
        out.append(v.passed(broken.fault_string()[:80]))
    return out


def _no_document(s: Session) -> Result:
    v = Verdicts(
        "fault-no-document",
        "A CreateActivity without a JobDefinition: InvalidRequestMessageFault",
        "GFD.108 §6.1 and §3 (InvalidRequestMessageFault; ActivityDocument holds a "
        "jsdl:JobDefinition)",
    )
    reply = s.endpoint.soap(
        "fault-no-document", "CreateActivity", payloads.create_activity_without_document()
    )
    v.keep(reply)
    epr = payloads.created_epr(reply.body)
    if epr is not None:
        s.created.append(payloads.kept(epr))
        return v.failed("accepted (an activity was created from no document)")
    if reply.envelope is None:
        return v.no_soap(reply, "CreateActivity")
    if reply.fault is None:
        return v.failed("neither an activity nor a fault")
    return _fault_shape(v, reply, "InvalidRequestMessageFault")


def _fault_shape(v: Verdicts, reply: Reply, expected: str) -> Result:
    detail = reply.fault_detail()
    code = text(reply.fault.find("faultcode")) if reply.fault is not None else ""
    if detail == expected:
        if reply.exchange.status != 500:
            return v.failed(
                f"{detail} with HTTP {reply.exchange.status} (SOAP 1.1 sends faults with 500)"
            )
        if not reply.fault_string():
            return v.failed(f"{detail} without a faultstring", rule="SOAP 1.1 §4.4")
        return v.passed(f"{code}: {reply.fault_string()[:80]}")
    if detail == deviations.ARC_INVALID_REQUEST_NAME and expected == "InvalidRequestMessageFault":
        return v.warned(f"the detail element is {detail}", deviation=deviations.ARC_FAULT_NAME)
    return v.failed(
        f"{detail or 'a fault without detail'} ({reply.fault_string()[:80]}), not {expected}"
    )


def management(s: Session) -> list[Result]:
    """Stop, see creation refused, Start (always), see it accepted again."""
    ids = ("management-stop", "management-refuses", "management-start")
    titles = (
        "StopAcceptingNewActivities: IsAcceptingNewActivities becomes false",
        "CreateActivity while not accepting: NotAcceptingNewActivitiesFault",
        "StartAcceptingNewActivities: accepting again",
    )
    rule = "GFD.108 §7 (BES-Management)"
    if not s.options.admin:
        return [
            Verdicts(i, t, rule).skipped("needs --admin (an administrator's credentials)")
            for i, t in zip(ids, titles, strict=True)
        ]
    out = []
    stop = Verdicts(ids[0], titles[0], rule)
    stopped = s.endpoint.soap(
        "stop", "StopAcceptingNewActivities", payloads.management("StopAcceptingNewActivities")
    )
    stop.keep(stopped)
    denied = stopped.fault_detail() == "NotAuthorizedFault"
    stopped_ok = False
    try:
        if stopped.envelope is None:
            out.append(stop.no_soap(stopped, "StopAcceptingNewActivities"))
        elif denied:
            # GFD.108 §7: management is for administrators; the credentials given are not one
            # here. That is the endpoint doing its job, not a failure of it.
            out.append(
                stop.skipped(
                    f"the endpoint refuses these credentials: NotAuthorizedFault "
                    f"({_fault_code(stopped)}: {stopped.fault_string()}); --admin needs an "
                    "administrator's credentials"
                )
            )
        elif stopped.fault is not None:
            out.append(stop.failed(f"refused: {stopped.fault_detail()}: {stopped.fault_string()}"))
        else:
            stopped_ok = True
            accepting, reply = _accepting(s)
            stop.keep(reply)
            out.append(
                stop.passed()
                if accepting is False
                else stop.failed(f"IsAcceptingNewActivities is {accepting} after Stop")
            )
            refuse = Verdicts(ids[1], titles[1], rule)
            reply, epr = s.create("while-stopped", documents.posix_job(s.name("while-stopped")))
            refuse.keep(reply)
            if epr is not None:
                out.append(refuse.failed("an activity was created while not accepting"))
            elif reply.fault_detail() == "NotAcceptingNewActivitiesFault":
                out.append(refuse.passed())
            else:
                out.append(
                    refuse.failed(
                        f"{reply.fault_detail() or reply.problem or 'no fault'}, not "
                        "NotAcceptingNewActivitiesFault"
                    )
                )
        if not stopped_ok:
            out.append(Verdicts(ids[1], titles[1], rule).skipped("needs management-stop"))
    finally:
        start = Verdicts(ids[2], titles[2], rule)
        started = s.endpoint.soap(
            "start",
            "StartAcceptingNewActivities",
            payloads.management("StartAcceptingNewActivities"),
        )
        start.keep(started)
        accepting, reply = _accepting(s)
        start.keep(reply)
        if denied and started.fault_detail() == "NotAuthorizedFault" and accepting is not False:
            out.append(
                start.skipped(
                    "refused to these credentials as well (NotAuthorizedFault); nothing was "
                    "stopped, and the endpoint is accepting"
                )
            )
        elif started.fault is not None or started.envelope is None:
            out.append(
                start.failed(
                    "StartAcceptingNewActivities failed: "
                    f"{started.problem or started.fault_string()} -- the endpoint may still "
                    "refuse new activities"
                )
            )
        elif accepting is not True:
            out.append(start.failed(f"IsAcceptingNewActivities is {accepting} after Start"))
        else:
            out.append(start.passed())
    return out


def _fault_code(reply: Reply) -> str:
    return text(reply.fault.find("faultcode")) if reply.fault is not None else ""


def _accepting(s: Session) -> tuple[bool | None, Reply]:
    reply = s.endpoint.soap("attributes", "GetFactoryAttributesDocument", payloads.attributes())
    document = (
        reply.body.find(_F + "FactoryResourceAttributesDocument")
        if reply.body is not None
        else None
    )
    if document is None:
        return None, reply
    return text(document.find(_F + "IsAcceptingNewActivities")) == "true", reply


def features(s: Session) -> list[Result]:
    out = []
    for feature, build in documents.PROBES.items():
        v = Verdicts(
            f"feature: {feature}",
            f"JSDL feature probe: {feature}",
            "GFD.108 §6.1 (UnsupportedFeatureFault for what a BES does not support)",
        )
        reply, epr = s.create(f"probe-{feature.split()[0]}", build(s.name("probe")))
        v.keep(reply)
        if epr is not None and s.notes.get("fault-unsupported-feature") == "accepted":
            s.features[feature] = "unknown (accepted, but so is an extension no BES knows)"
            out.append(
                v.skipped(
                    "cannot tell: accepted, but so was an extension element no BES knows "
                    "(see fault-unsupported-feature), so acceptance does not show support"
                )
            )
        elif epr is not None:
            s.features[feature] = "supported"
            out.append(v.passed("supported"))
        elif reply.fault_detail() == "UnsupportedFeatureFault":
            s.features[feature] = "not supported"
            out.append(
                v.skipped(
                    f"the endpoint declares it does not support it: {reply.fault_string()[:100]}"
                )
            )
        elif reply.envelope is None:
            s.features[feature] = "unknown"
            out.append(v.no_soap(reply, "CreateActivity"))
        else:
            s.features[feature] = f"refused ({reply.fault_detail() or 'fault'})"
            out.append(
                v.warned(
                    f"refused with {reply.fault_detail() or 'a fault'}, not "
                    f"UnsupportedFeatureFault: {reply.fault_string()[:100]}"
                )
            )
    return out


def user_documents(s: Session) -> list[Result]:
    out = []
    for path in s.options.jsdl:
        v = Verdicts(f"jsdl: {path.name}", f"CreateActivity with {path}", "GFD.108 §6.1")
        try:
            document = path.read_bytes()
        except OSError as exc:
            out.append(v.skipped(f"cannot read it: {exc.strerror}"))
            continue
        reply, epr = s.create(f"jsdl-{path.name}", document)
        v.keep(reply)
        if epr is not None:
            out.append(v.passed("created"))
        elif reply.envelope is None:
            out.append(v.no_soap(reply, "CreateActivity"))
        else:
            out.append(v.warned(f"refused: {reply.fault_detail()}: {reply.fault_string()[:120]}"))
    return out


def counts(s: Session) -> list[Result]:
    """The factory's counts against what the suite has open (other users' activities can
    only add to them: a shortfall on a shared endpoint is a WARN)."""
    v = Verdicts(
        "factory-counts",
        "TotalNumberOfActivities counts the suite's open activities",
        "GFD.108 §5 (TotalNumberOfActivities, ActivityReference)",
    )
    open_ = []
    if s.created:
        reply = s.statuses("counts-statuses", s.created)
        v.keep(reply)
        for response in payloads.responses(reply.body):
            state = payloads.state_of(response)
            if state is not None and state not in TERMINAL:
                open_.append(state)
    reply = s.endpoint.soap(
        "counts-attributes", "GetFactoryAttributesDocument", payloads.attributes()
    )
    v.keep(reply)
    document = (
        reply.body.find(_F + "FactoryResourceAttributesDocument")
        if reply.body is not None
        else None
    )
    if document is None:
        return [v.skipped("no attributes document to count from (see factory-attributes)")]
    total = _number(text(document.find(_F + "TotalNumberOfActivities")))
    references = len(document.findall(_F + "ActivityReference"))
    if total is None:
        return [v.failed("TotalNumberOfActivities is missing or not a number")]
    if total < len(open_):
        return [
            v.warned(
                f"TotalNumberOfActivities {total}, but the suite alone has {len(open_)} "
                "activities not ended"
            )
        ]
    if references > total:
        return [
            v.failed(f"{references} ActivityReference elements for TotalNumberOfActivities {total}")
        ]
    return [v.passed(f"{total} (the suite's open activities: {len(open_)})")]


def _number(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


SUITE: Final[tuple[Check, ...]] = (
    wsdl,
    attributes,
    create,
    staging,
    status_vector,
    documents_round_trip,
    terminate,
    terminate_unknown,
    faults,
    features,
    user_documents,
    counts,
    management,
)


def timed(check: Check, s: Session) -> list[Result]:
    """Run one check; an unexpected error of the checker itself becomes a FAIL that says so
    (an endpoint never crashes the run)."""
    started = time.perf_counter()
    try:
        return check(s)
    except Exception as exc:  # noqa: BLE001 - reported as the check's own failure
        return [
            Result(
                id=check.__name__.replace("_", "-"),
                title=check.__name__,
                verdict=Verdict.FAIL,
                reason=f"the check could not complete: {type(exc).__name__}: {exc}",
                seconds=time.perf_counter() - started,
            )
        ]
