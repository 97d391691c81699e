"""Foreign BES endpoints replayed on loopback, for ``bes check``: stateful scripted peers that
answer every operation the way another middleware's BES does, consistently enough that a whole
suite runs through (the identifiers they mint are found again, jobs move through their states,
staging really fetches and delivers files over HTTP, a terminated job ends).

Each peer keeps to what its implementation is known to send. Where that knowledge comes from:

* :class:`ArcPeer`: NorduGrid ARC's A-REX BES interface as it stood before it was removed in
  2019 (nordugrid/arc ``src/services/a-rex/``, commit fd8def22b~1): ``create_activity.cpp``
  (a-rex:JobID and JobSessionDir in ReferenceParameters, the document echoed back),
  ``tools.cpp`` (a-rex:State sub-states; a killed job is FINISHED with a failure, reported
  Failed), ``terminate_activities.cpp`` (Terminated true; a per-item fault *without* Terminated),
  ``faults.cpp`` (``InvalidRequestMessageFaultType``), ``get_factory_attributes_document.cpp``
  (IsAcceptingNewActivities always true, OperatingSystem appended), ``arex.cpp`` (wsa:Action in
  replies, never RelatesTo; Stop/StartAcceptingNewActivities answered but not implemented;
  GET on the service URL is an HTML job list) and ``get.cpp``. Its JSDL parser
  (``src/hed/acc/JobDescriptionParser/ARCJSDLParser.cpp``) reads the elements it knows and
  ignores the rest.
* :class:`UnicorePeer`: the client's UNICORE 6 fixtures (``tests/fixtures/client/unicore-*``):
  one resource per activity (``BESActivity?res=``), the HPC File Staging sub-states, per-item
  faults with WS-BaseFaults elements (and the bes-factory:Message GFD.108 requires, which the
  fixture leaves out: nothing says UNICORE did), whole-call ``soapenv:Client``
  NotAuthorizedFault (here for the management operations, which a normal user may not call);
  its WSDL imports the port types by relative location, as Java toolkits publish them
  (GridSAM's files from ``standards/gridsam-bes/wsdl``); otherwise correct.
* :class:`GenesisPeer`: the Genesis II EPR of ``corpus/soap/saga-bes-genesis2-besfactory-epr.xml``
  (WS-Naming EndpointIdentifier in wsa:Metadata, prefixed ``xsi:type`` values whose prefixes are
  declared on the Envelope, far above), Genesis activity sub-states, its own WSDL
  (``standards/bes/bes-factory.wsdl``, from lancium/GenesisII-public); otherwise correct. It
  finds an activity by the EndpointIdentifier, and refuses an identifier whose ``xsi:type``
  prefixes no longer resolve (as a deserializer would).
* :class:`DraftPeer`: a BES of the May 2007 draft in the manner of Platform's gSOAP BES++
  (``corpus/soap/saga-bespp-activityidentifier.xml``: an Address-only identifier): ``Cancelled``
  instead of ``Terminated``, ``InvalidActivityIdentifierFault``, no WS-Addressing, no WSDL
  (gSOAP answers GET with 405).
* :func:`html_endpoint`: a web server's error pages (Apache's 404 and 500) instead of a BES;
  :func:`dropping_endpoint`: accepts each connection and closes it without an answer.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import requests
from lxml import etree

from tests.support.standards import corpus_dir, official_schema, standards_dir

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
WSA = "http://www.w3.org/2005/08/addressing"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
BES = "http://schemas.ggf.org/bes/2006/08/bes-factory"
MGMT = "http://schemas.ggf.org/bes/2006/08/bes-management"
JSDL = "http://schemas.ggf.org/jsdl/2005/11/jsdl"
POSIX = "http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
HPCPA = "http://schemas.ggf.org/jsdl/2006/07/jsdl-hpcpa"
SPMD = "http://schemas.ogf.org/jsdl/2007/02/jsdl-spmd"
SWEEP = "http://schemas.ogf.org/jsdl/2009/03/sweep"
SWEEP_FUNCTIONS = "http://schemas.ogf.org/jsdl/2009/03/sweep/functions"
FS = "http://schemas.ogf.org/hpcp/2007/01/fs"
AREX = "http://www.nordugrid.org/schemas/a-rex"
GLUE = "http://schemas.ogf.org/glue/2009/03/spec_2.0_r1"
WSRF_BF = "http://docs.oasis-open.org/wsrf/bf-2"
GENII_STATES = "http://vcgr.cs.virginia.edu/genesisII/bes/activity-states"
WS_NAMING = "http://schemas.ggf.org/naming/2006/03/naming"
BASIC_WSA = "http://schemas.ggf.org/bes/2006/08/bes/naming/BasicWSAddressing"
FACTORY_ACTIONS = BES + "/BESFactoryPortType/"
MGMT_ACTIONS = MGMT + "/BESManagementPortType/"

PENDING_S = 0.3
"""How long a new activity stays Pending (then it is picked up)."""
STAGE_S = 0.3
"""How long each staging phase lasts (the transfer itself happens at its end)."""
QUICK_JOB_S = 0.5
"""How long a job runs that is not ``/bin/sleep N``."""
KILL_S = 0.3
"""From TerminateActivities to the activity's end."""

Answer = tuple[int, bytes, str]
"""HTTP status, body, content type."""


def _q(namespace: str, local: str) -> str:
    return f"{{{namespace}}}{local}"


def _text(element: etree._Element | None) -> str:
    return (element.text or "").strip() if element is not None else ""


# ------------------------------------------------------------------------------ the jobs


@dataclass
class Job:
    """One activity a peer holds, and how it runs: Pending, staging in (each input fetched
    from its source), executing, staging out (each output delivered to its target), ended."""

    key: str
    document: etree._Element
    created: float
    run_s: float
    inputs: list[tuple[str, str]]
    """(file name, source URL)."""
    outputs: list[tuple[str, str]]
    """(file name, target URL)."""
    copies: dict[str, str]
    """``/bin/cp A B``: B holds what A held."""
    files: dict[str, bytes] = field(default_factory=dict)
    terminated: float | None = None
    failure: str = ""
    done: set[str] = field(default_factory=set)

    def phase(self, now: float) -> str:
        """``pending``, ``staging-in``, ``executing``, ``staging-out``, ``finished``,
        ``failed``, ``killing`` or ``killed``; transfers happen as their phase ends."""
        if self.failure:
            return "failed"
        t = now - self.created
        ends = self._ends()
        if self.terminated is not None and self.terminated - self.created < ends["staging-out"]:
            return "killing" if now - self.terminated < KILL_S else "killed"
        if t < PENDING_S:
            return "pending"
        if t < ends["staging-in"]:
            return "staging-in"
        self._stage_in()
        if self.failure:
            return "failed"
        if t < ends["executing"]:
            return "executing"
        if t < ends["staging-out"]:
            return "staging-out"
        self._stage_out()
        return "failed" if self.failure else "finished"

    def ended(self, now: float) -> bool:
        return self.phase(now) in ("finished", "failed", "killed")

    def _ends(self) -> dict[str, float]:
        staging_in = PENDING_S + (STAGE_S if self.inputs else 0.0)
        executing = staging_in + self.run_s
        return {
            "staging-in": staging_in,
            "executing": executing,
            "staging-out": executing + (STAGE_S if self.outputs else 0.0),
        }

    def _stage_in(self) -> None:
        if "in" in self.done:
            return
        self.done.add("in")
        for name, source in self.inputs:
            try:
                answer = requests.get(source, timeout=10)
                answer.raise_for_status()
            except requests.RequestException as exc:
                self.failure = f"stage-in of {name} from {source} failed: {exc}"
                return
            self.files[name] = answer.content
        for source, target in self.copies.items():
            if source in self.files:
                self.files[target] = self.files[source]

    def _stage_out(self) -> None:
        if "out" in self.done:
            return
        self.done.add("out")
        for name, target in self.outputs:
            try:
                requests.put(target, data=self.files.get(name, b""), timeout=10).raise_for_status()
            except requests.RequestException as exc:
                self.failure = f"stage-out of {name} to {target} failed: {exc}"
                return


def plan(key: str, document: etree._Element, now: float) -> Job:
    """A job from its JSDL document: what runs how long, what is staged where."""
    inputs, outputs = [], []
    for staging in document.iter(_q(JSDL, "DataStaging")):
        name = _text(staging.find(_q(JSDL, "FileName")))
        source = staging.find(f"{_q(JSDL, 'Source')}/{_q(JSDL, 'URI')}")
        target = staging.find(f"{_q(JSDL, 'Target')}/{_q(JSDL, 'URI')}")
        if source is not None:
            inputs.append((name, _text(source)))
        if target is not None:
            outputs.append((name, _text(target)))
    executable = next(
        (_text(e) for e in document.iter() if etree.QName(e).localname == "Executable"), ""
    )
    arguments = [_text(e) for e in document.iter(_q(POSIX, "Argument"))]
    run_s = QUICK_JOB_S
    if executable.endswith("/sleep") and arguments and arguments[0].isdigit():
        run_s = float(arguments[0])
    copies = (
        {arguments[0]: arguments[1]} if executable.endswith("/cp") and len(arguments) == 2 else {}
    )
    return Job(
        key=key,
        document=document,
        created=now,
        run_s=run_s,
        inputs=inputs,
        outputs=outputs,
        copies=copies,
    )


# ------------------------------------------------------------------------------ peers


class Refused(Exception):
    """A whole-call SOAP fault."""

    def __init__(self, code: str, message: str, detail: etree._Element | None = None) -> None:
        super().__init__(message)
        self.code = code
        """``Client`` or ``Server`` (the SOAP prefix is the peer's)."""
        self.message = message
        self.detail = detail


class Peer:
    """A replayed BES: routes GET and POST, keeps the jobs, answers each operation through
    hooks that a subclass gives the manners of its implementation."""

    name: ClassVar[str]
    path: ClassVar[str]
    """Path of the factory endpoint."""
    query: ClassVar[str] = ""
    """Query string that is part of the factory's URL (UNICORE's ``res=``)."""
    prefixes: ClassVar[dict[str, str]]
    """Namespace declarations on every answer's Envelope (``soap`` is the SOAP prefix)."""
    addressing: ClassVar[str] = "full"
    """``full`` (Action, MessageID, RelatesTo), ``action`` (Action only) or ``none``."""
    terminated_element: ClassVar[str] = "Terminated"
    unknown_fault: ClassVar[str] = "UnknownActivityIdentifierFault"
    supported: ClassVar[frozenset[str]] = frozenset({JSDL, POSIX, HPCPA})
    """The namespaces of the JSDL elements it implements; others get UnsupportedFeatureFault."""
    validates: ClassVar[bool] = True
    """Whether it validates the JSDL document against the schema."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jobs: dict[str, Job] = {}
        self.accepting = True
        self.lock = threading.Lock()
        self.counter = 0
        self.requests: list[str] = []
        """The operation of every SOAP request received, in order."""

    @property
    def url(self) -> str:
        return self.base + self.path + (f"?{self.query}" if self.query else "")

    def open_jobs(self) -> list[Job]:
        now = time.monotonic()
        return [j for j in self.jobs.values() if not j.ended(now)]

    # ------------------------------------------------------------------ HTTP

    def get(self, path: str, query: str) -> Answer:
        return 404, b"", "text/plain"

    def post(self, path: str, body: bytes) -> Answer:
        try:
            envelope = etree.fromstring(body, etree.XMLParser(resolve_entities=False))
        except etree.XMLSyntaxError as exc:
            return self.fault_answer(None, Refused("Client", f"cannot parse the request: {exc}"))
        soap_body = envelope.find(_q(SOAP, "Body"))
        payload = (
            next(soap_body.iterchildren(etree.Element), None) if soap_body is not None else None
        )
        if payload is None:
            return self.fault_answer(envelope, Refused("Client", "no SOAP Body"))
        operation = etree.QName(payload).localname
        self.requests.append(operation)
        handler = getattr(self, "op_" + operation, None)
        if handler is None:
            return self.fault_answer(envelope, Refused("Client", f"unknown operation {operation}"))
        try:
            with self.lock:
                answer = handler(payload)
        except Refused as refused:
            return self.fault_answer(envelope, refused)
        return 200, self.serialize(envelope, answer, self.action_of(payload, "Response")), _XML

    def action_of(self, payload: etree._Element, suffix: str) -> str:
        name = etree.QName(payload)
        base = MGMT_ACTIONS if name.namespace == MGMT else FACTORY_ACTIONS
        return base + name.localname + suffix

    def serialize(
        self, request: etree._Element | None, answer: etree._Element, action: str | None
    ) -> bytes:
        soap = self.prefixes["soap"]
        nsmap = {p: u for p, u in self.prefixes.items() if p != "soap"} | {soap: SOAP}
        envelope = etree.Element(_q(SOAP, "Envelope"), nsmap=nsmap)
        headers = self.reply_headers(request, action)
        if headers:
            header = etree.SubElement(envelope, _q(SOAP, "Header"))
            header.extend(headers)
        etree.SubElement(envelope, _q(SOAP, "Body")).append(answer)
        return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")

    def reply_headers(
        self, request: etree._Element | None, action: str | None
    ) -> list[etree._Element]:
        if self.addressing == "none" or action is None:
            return []
        out = [_leaf(WSA, "Action", action)]
        if self.addressing == "full" and request is not None:
            out.append(_leaf(WSA, "MessageID", f"urn:uuid:{uuid.uuid4()}"))
            asked = request.find(f"{_q(SOAP, 'Header')}/{_q(WSA, 'MessageID')}")
            if asked is not None:
                out.append(_leaf(WSA, "RelatesTo", _text(asked)))
        return out

    def fault_answer(self, request: etree._Element | None, refused: Refused) -> Answer:
        fault = etree.Element(_q(SOAP, "Fault"))
        soap = self.prefixes["soap"]
        etree.SubElement(fault, "faultcode").text = f"{soap}:{refused.code}"
        etree.SubElement(fault, "faultstring").text = refused.message
        if refused.detail is not None:
            etree.SubElement(fault, "detail").append(refused.detail)
        return 500, self.serialize(request, fault, FACTORY_ACTIONS + "Fault"), _XML

    # ------------------------------------------------------------------ operations

    def op_CreateActivity(self, payload: etree._Element) -> etree._Element:
        document = payload.find(f"{_q(BES, 'ActivityDocument')}/{_q(JSDL, 'JobDefinition')}")
        if document is None:
            raise self.no_document()
        if not self.accepting:
            raise Refused(
                "Server", "not accepting new activities", _bes("NotAcceptingNewActivitiesFault")
            )
        self.judge(document)
        self.counter += 1
        key = self.new_key()
        self.jobs[key] = plan(key, _copy(document), time.monotonic())
        response = _bes("CreateActivityResponse")
        response.append(self.mint(key))
        self.after_create(response, payload)
        return response

    def op_GetActivityStatuses(self, payload: etree._Element) -> etree._Element:
        return self.vector(payload, "GetActivityStatusesResponse", self.status_item)

    def op_TerminateActivities(self, payload: etree._Element) -> etree._Element:
        return self.vector(payload, "TerminateActivitiesResponse", self.terminate_item)

    def op_GetActivityDocuments(self, payload: etree._Element) -> etree._Element:
        return self.vector(payload, "GetActivityDocumentsResponse", self.document_item)

    def op_GetFactoryAttributesDocument(self, payload: etree._Element) -> etree._Element:
        response = _bes("GetFactoryAttributesDocumentResponse")
        response.append(self.attributes())
        return response

    def op_StopAcceptingNewActivities(self, payload: etree._Element) -> etree._Element:
        self.accepting = False
        return etree.Element(_q(MGMT, "StopAcceptingNewActivitiesResponse"))

    def op_StartAcceptingNewActivities(self, payload: etree._Element) -> etree._Element:
        self.accepting = True
        return etree.Element(_q(MGMT, "StartAcceptingNewActivitiesResponse"))

    def vector(
        self, payload: etree._Element, name: str, item: Callable[[etree._Element, Job], None]
    ) -> etree._Element:
        response = _bes(name)
        for epr in payload.findall(_q(BES, "ActivityIdentifier")):
            out = etree.SubElement(response, _q(BES, "Response"))
            out.append(_copy(epr))
            found = self.lookup(epr)
            if isinstance(found, Job):
                item(out, found)
            else:
                self.item_fault(out, name, found)
        return response

    def status_item(self, out: etree._Element, job: Job) -> None:
        phase = job.phase(time.monotonic())
        status = etree.SubElement(out, _q(BES, "ActivityStatus"), state=self.state_of(phase))
        self.substates(status, phase)

    def terminate_item(self, out: etree._Element, job: Job) -> None:
        now = time.monotonic()
        if job.ended(now):
            _leaf_in(out, BES, self.terminated_element, "false")
            fault = etree.SubElement(out, _q(BES, "Fault"))
            self.fault_body(fault, "Client", "the activity has already ended")
            detail = etree.SubElement(fault, "detail")
            cant = etree.SubElement(detail, _q(BES, "CantApplyOperationToCurrentStateFault"))
            status = etree.SubElement(cant, _q(BES, "ActivityStatus"))
            status.set("state", self.state_of(job.phase(now)))
            _leaf_in(cant, BES, "Message", "the activity has already ended")
            return
        job.terminated = now
        _leaf_in(out, BES, self.terminated_element, "true")

    def document_item(self, out: etree._Element, job: Job) -> None:
        document = _copy(job.document)
        document.tag = _q(BES, "JobDefinition")
        out.append(document)

    def item_fault(self, out: etree._Element, operation: str, why: str | None) -> None:
        message = why or "no such activity"
        if operation == "TerminateActivitiesResponse":
            _leaf_in(out, BES, self.terminated_element, "false")
        fault = etree.SubElement(out, _q(BES, "Fault"))
        self.fault_body(fault, "Client", message)
        detail = etree.SubElement(fault, "detail")
        unknown = etree.SubElement(detail, _q(BES, self.unknown_fault))
        _leaf_in(unknown, BES, "Message", message)

    def fault_body(self, fault: etree._Element, code: str, message: str) -> None:
        etree.SubElement(fault, "faultcode").text = f"{self.prefixes['soap']}:{code}"
        etree.SubElement(fault, "faultstring").text = message

    # ------------------------------------------------------------------ hooks

    def new_key(self) -> str:
        return str(uuid.uuid4())

    def mint(self, key: str) -> etree._Element:
        raise NotImplementedError

    def lookup(self, epr: etree._Element) -> Job | str | None:
        """The job an identifier names, or why not (None: unknown)."""
        raise NotImplementedError

    def after_create(self, response: etree._Element, payload: etree._Element) -> None:
        pass

    def no_document(self) -> Refused:
        return _invalid("jsdl:JobDefinition", "the ActivityDocument holds no JobDefinition")

    def judge(self, document: etree._Element) -> None:
        """Refuse what the implementation refuses (a schema-invalid document, an extension
        it does not implement)."""
        if self.validates:
            schema = official_schema()
            if not schema.validate(document):
                error = schema.error_log[0]
                raise _invalid(error.path or "jsdl:JobDefinition", error.message)
        unknown = sorted(
            {
                etree.QName(e).text
                for e in document.iter(etree.Element)
                if etree.QName(e).namespace not in self.supported
            }
        )
        if unknown:
            detail = _bes("UnsupportedFeatureFault")
            for name in unknown:
                _leaf_in(detail, BES, "Feature", name)
            raise Refused("Client", "unsupported: " + ", ".join(unknown), detail)

    def state_of(self, phase: str) -> str:
        return {
            "pending": "Pending",
            "staging-in": "Running",
            "executing": "Running",
            "staging-out": "Running",
            "killing": "Running",
            "finished": "Finished",
            "failed": "Failed",
            "killed": "Cancelled",
        }[phase]

    def substates(self, status: etree._Element, phase: str) -> None:
        pass

    def attributes(self) -> etree._Element:
        """A GFD.108 §5 document in schema order."""
        now = time.monotonic()
        document = _bes("FactoryResourceAttributesDocument")
        _leaf_in(document, BES, "IsAcceptingNewActivities", str(self.accepting).lower())
        _leaf_in(document, BES, "CommonName", self.name)
        open_ = [k for k, j in self.jobs.items() if not j.ended(now)]
        _leaf_in(document, BES, "TotalNumberOfActivities", str(len(open_)))
        for key in open_:
            reference = self.mint(key)
            reference.tag = _q(BES, "ActivityReference")
            document.append(reference)
        _leaf_in(document, BES, "TotalNumberOfContainedResources", "0")
        for profile in self.naming_profiles():
            _leaf_in(document, BES, "NamingProfile", profile)
        _leaf_in(document, BES, "LocalResourceManagerType", self.resource_manager())
        return document

    def naming_profiles(self) -> list[str]:
        return [BASIC_WSA]

    def resource_manager(self) -> str:
        return "http://example.org/resource-manager-type/fork"


_XML = "text/xml; charset=utf-8"


def _bes(local: str) -> etree._Element:
    return etree.Element(_q(BES, local))


def _leaf(namespace: str, local: str, text: str) -> etree._Element:
    element = etree.Element(_q(namespace, local))
    element.text = text
    return element


def _leaf_in(parent: etree._Element, namespace: str, local: str, text: str) -> etree._Element:
    element = etree.SubElement(parent, _q(namespace, local))
    element.text = text
    return element


def _copy(element: etree._Element) -> etree._Element:
    """A deep copy that keeps every namespace in scope (prefixed values inside still resolve)."""
    return etree.fromstring(etree.tostring(element))


def _invalid(element: str, message: str) -> Refused:
    detail = _bes("InvalidRequestMessageFault")
    _leaf_in(detail, BES, "InvalidElement", element)
    _leaf_in(detail, BES, "Message", message)
    return Refused("Client", f"invalid request: {message}", detail)


# ------------------------------------------------------------------------------ ARC


class ArcPeer(Peer):
    """NorduGrid ARC's A-REX (sources in the module docstring)."""

    name = "arc"
    path = "/arex"
    prefixes: ClassVar[dict[str, str]] = {
        "soap-env": SOAP,
        "soap": "soap-env",
        "bes-factory": BES,
        "bes-management": MGMT,
        "a-rex": AREX,
        "glue": GLUE,
        "wsa": WSA,
        "jsdl": JSDL,
    }
    addressing = "action"
    validates = False

    def get(self, path: str, query: str) -> Answer:
        # get.cpp GetJobsList: GET on the service URL (whatever the query) is an HTML job list.
        if path.rstrip("/") != self.path:
            return 404, b"", "text/plain"
        items = "".join(
            f'<LI><I>job</I> <A HREF="{self.factory}/{k}">{k}</A> '
            f'<A HREF="{self.factory}/logs/{k}">logs</A>\r\n'
            for k in self.jobs
        )
        html = (
            "<HTML>\r\n<HEAD>\r\n<TITLE>ARex: Jobs list</TITLE>\r\n</HEAD>\r\n<BODY>\r\n<UL>\r\n"
            f"{items}</UL>\r\n"
            f'<A HREF="{self.factory}/*info">SERVICE DESCRIPTION</A></BODY>\r\n</HTML>'
        )
        return 200, html.encode(), "text/html"

    @property
    def factory(self) -> str:
        return self.base + self.path

    def new_key(self) -> str:
        alphabet = string.ascii_letters + string.digits
        return "".join(secrets.choice(alphabet) for _ in range(54))

    def mint(self, key: str) -> etree._Element:
        epr = _bes("ActivityIdentifier")
        _leaf_in(epr, WSA, "Address", self.factory)
        parameters = etree.SubElement(epr, _q(WSA, "ReferenceParameters"))
        _leaf_in(parameters, AREX, "JobID", key)
        _leaf_in(parameters, AREX, "JobSessionDir", f"{self.factory}/{key}")
        return epr

    def after_create(self, response: etree._Element, payload: etree._Element) -> None:
        response.append(_copy(payload.find(_q(BES, "ActivityDocument"))))

    def lookup(self, epr: etree._Element) -> Job | str | None:
        jobid = _text(epr.find(f"{_q(WSA, 'ReferenceParameters')}/{_q(AREX, 'JobID')}"))
        if not jobid:
            return "Unrecognized EPR in ActivityIdentifier"
        return self.jobs.get(jobid) or f"No activity {jobid} found: Failed to open job"

    def item_fault(self, out: etree._Element, operation: str, why: str | None) -> None:
        # Arc::SOAPFault(resp, Sender, ...): a soap-env:Fault in the Response, no Terminated.
        fault = etree.SubElement(out, _q(SOAP, "Fault"))
        reason = "Missing a-rex:JobID in ActivityIdentifier"
        if why and why.startswith("No activity"):
            reason = "No corresponding activity found"
        self.fault_body(fault, "Client", reason)
        detail = etree.SubElement(fault, "detail")
        unknown = etree.SubElement(detail, _q(BES, "UnknownActivityIdentifierFault"))
        _leaf_in(unknown, BES, "Message", why or reason)

    def terminate_item(self, out: etree._Element, job: Job) -> None:
        # ARexJob::Cancel puts a cancel mark whatever the state: always true.
        if not job.ended(time.monotonic()):
            job.terminated = time.monotonic()
        _leaf_in(out, BES, "Terminated", "true")

    def no_document(self) -> Refused:
        # create_activity.cpp + faults.cpp: the misnamed detail element.
        detail = _bes("InvalidRequestMessageFaultType")
        _leaf_in(detail, BES, "InvalidElement", "jsdl:JobDefinition")
        _leaf_in(detail, BES, "Message", "Element is missing")
        return Refused("Client", "Can't find JobDefinition element in request", detail)

    def judge(self, document: etree._Element) -> None:
        # ARCJSDLParser: not JSDL without a jsdl:JobDescription; everything else it does not
        # know is ignored.
        if document.find(_q(JSDL, "JobDescription")) is None:
            raise Refused("Client", "Failed to create new activity: not a JSDL document")

    def state_of(self, phase: str) -> str:
        return {"killed": "Failed", "killing": "Running"}.get(phase) or super().state_of(phase)

    def substates(self, status: etree._Element, phase: str) -> None:
        arex = {
            "pending": "Accepted",
            "staging-in": "Preparing",
            "executing": "Executing",
            "staging-out": "Finishing",
            "killing": "Killing",
            "finished": "Finished",
            "failed": "Failed",
            "killed": "Failed",
        }[phase]
        _leaf_in(status, AREX, "State", arex)
        if phase == "executing":
            _leaf_in(status, AREX, "LRMSState", "R")
            _leaf_in(status, GLUE, "State", "INLRMS:R")

    def attributes(self) -> etree._Element:
        # get_factory_attributes_document.cpp, in its order.
        document = _bes("FactoryResourceAttributesDocument")
        _leaf_in(document, BES, "IsAcceptingNewActivities", "true")
        _leaf_in(document, BES, "TotalNumberOfActivities", str(len(self.jobs)))
        _leaf_in(document, BES, "TotalNumberOfContainedResources", "0")
        _leaf_in(document, BES, "NamingProfile", BASIC_WSA)
        _leaf_in(document, BES, "BESExtension", AREX)
        _leaf_in(document, BES, "LocalResourceManagerType", "org.nordugrid.fork")
        _leaf_in(document, BES, "OperatingSystem", "LINUX")
        return document

    def op_StopAcceptingNewActivities(self, payload: etree._Element) -> etree._Element:
        # arex.cpp: the response is made, the operation returns MCC_Status() and does nothing.
        return etree.Element(_q(MGMT, "StopAcceptingNewActivitiesResponse"))


# ------------------------------------------------------------------------------ UNICORE


class UnicorePeer(Peer):
    """UNICORE 6 (the client's fixtures): a resource per activity, fs sub-states, WS-BaseFaults."""

    name = "DEMO-SITE"
    path = "/DEMO-SITE/services/BESFactory"
    query = "res=default_bes_factory"
    prefixes: ClassVar[dict[str, str]] = {"soapenv": SOAP, "soap": "soapenv"}
    supported = frozenset({JSDL, POSIX, HPCPA, SPMD})

    def get(self, path: str, query: str) -> Answer:
        gridsam = standards_dir() / "gridsam-bes" / "wsdl"
        if path == self.path and "wsdl" in parse_qs(query, keep_blank_values=True):
            return 200, _service_wsdl(self.base + self.path), _XML
        if path.startswith("/DEMO-SITE/services/") and path.endswith(".wsdl"):
            name = path.rsplit("/", 1)[1]
            if (gridsam / name).is_file():
                return 200, (gridsam / name).read_bytes(), _XML
        return 404, b"", "text/plain"

    def mint(self, key: str) -> etree._Element:
        epr = _bes("ActivityIdentifier")
        address = etree.SubElement(epr, _q(WSA, "Address"), nsmap={"add": WSA})
        address.text = f"{self.base}/DEMO-SITE/services/BESActivity?res={key}"
        return epr

    def lookup(self, epr: etree._Element) -> Job | str | None:
        address = urlsplit(_text(epr.find(_q(WSA, "Address"))))
        key = parse_qs(address.query).get("res", [""])[0]
        return self.jobs.get(key) or f"Activity {key or address.path} does not exist"

    def item_fault(self, out: etree._Element, operation: str, why: str | None) -> None:
        if operation == "TerminateActivitiesResponse":
            _leaf_in(out, BES, "Terminated", "false")
        fault = etree.SubElement(out, _q(BES, "Fault"))
        self.fault_body(fault, "Server", "No such resource")
        unknown = etree.SubElement(
            etree.SubElement(fault, "detail"), _q(BES, "UnknownActivityIdentifierFault")
        )
        _leaf_in(unknown, BES, "Message", why or "No such resource")
        _base_fault(unknown, why or "No such resource")

    def substates(self, status: etree._Element, phase: str) -> None:
        if phase == "staging-in":
            etree.SubElement(status, _q(FS, "Staging-In"), nsmap={"fs": FS})
        elif phase == "staging-out":
            etree.SubElement(status, _q(FS, "Staging-Out"), nsmap={"fs": FS})

    def resource_manager(self) -> str:
        return "http://www.unicore.eu/unicore/xnjs"

    def op_StopAcceptingNewActivities(self, payload: etree._Element) -> etree._Element:
        raise self.not_authorized()

    def op_StartAcceptingNewActivities(self, payload: etree._Element) -> etree._Element:
        raise self.not_authorized()

    def not_authorized(self) -> Refused:
        detail = etree.Element(_q(BES, "NotAuthorizedFault"), nsmap={"bes": BES})
        _base_fault(detail, "CN=anonymous is not allowed to manage this site")
        return Refused("Client", "Access denied", detail)


def _base_fault(parent: etree._Element, description: str) -> None:
    _leaf_in(parent, WSRF_BF, "Timestamp", time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00"))
    _leaf_in(parent, WSRF_BF, "Description", description)


def _service_wsdl(address: str) -> bytes:
    """A service document importing the GFD.108 port types by relative location, the way Java
    toolkits publish them (GridSAM's ``bes.wsdl`` does the same)."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions name="BESService" targetNamespace="http://www.unicore.eu/unicore6/bes"
    xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:bes-factory="{BES}" xmlns:bes-mgmt="{MGMT}">
  <wsdl:import namespace="{BES}" location="bes-factory.wsdl"/>
  <wsdl:import namespace="{MGMT}" location="bes-management.wsdl"/>
  <wsdl:service name="BESFactoryService">
    <wsdl:port binding="bes-factory:BESFactoryBinding" name="BESFactoryPort">
      <soap:address location="{address}"/>
    </wsdl:port>
  </wsdl:service>
</wsdl:definitions>""".encode()


# ------------------------------------------------------------------------------ Genesis II


class GenesisPeer(Peer):
    """Genesis II: WS-Naming EPRs of the corpus shape, Genesis sub-states, its own WSDL."""

    name = "GeniiBESPortType"
    path = "/axis/services/GeniiBESPortType"
    container = "ECBCAEC8-5FFF-11E0-B887-28C73890A7D4"
    query = f"genii-container-id={container}"
    prefixes: ClassVar[dict[str, str]] = {
        "soapenv": SOAP,
        "soap": "soapenv",
        # The EPR's xsi:type values use these prefixes; they are declared here, far above.
        "xsi": XSI,
        "ns2": WSA,
        "ns1": "http://vcgr.cs.virginia.edu/Genesis-II",
        "bes": BES,
    }
    supported = frozenset({JSDL, POSIX, HPCPA, SPMD, SWEEP, SWEEP_FUNCTIONS})

    def __init__(self, base: str) -> None:
        super().__init__(base)
        self.template = _genesis_template()

    def get(self, path: str, query: str) -> Answer:
        if path == self.path and "wsdl" in parse_qs(query, keep_blank_values=True):
            return 200, (standards_dir() / "bes" / "bes-factory.wsdl").read_bytes(), _XML
        return 404, b"", "text/plain"

    def mint(self, key: str) -> etree._Element:
        resource, epi = key.split("|")
        text = (
            self.template.replace("@ADDRESS@", self.url)
            .replace("@RESOURCE@", resource)
            .replace("@EPI@", epi)
        )
        # Parsed inside an element that declares the prefixes, then moved out of it: the
        # xsi:type values inside need declarations that only the Envelope will carry.
        holder = etree.fromstring(
            f'<h xmlns:xsi="{XSI}" xmlns:ns2="{WSA}" xmlns:bes="{BES}">{text}</h>'
        )
        return holder[0]

    def new_key(self) -> str:
        return f"{str(uuid.uuid4()).upper()}|urn:ws-naming:epi:{str(uuid.uuid4()).upper()}"

    def lookup(self, epr: etree._Element) -> Job | str | None:
        for element in epr.iter(etree.Element):
            # Every xsi:type value of the EPR names a WS-Addressing type.
            value = element.get(_q(XSI, "type")) or ""
            if ":" in value and element.nsmap.get(value.split(":")[0]) != WSA:
                raise Refused(
                    "Server",
                    f"org.xml.sax.SAXException: xsi:type {value} does not resolve to a "
                    "WS-Addressing type (its prefix is not bound to the namespace it needs)",
                )
        epi = _text(epr.find(f"{_q(WSA, 'Metadata')}/{_q(WS_NAMING, 'EndpointIdentifier')}"))
        found = next((j for k, j in self.jobs.items() if k.endswith("|" + epi)), None)
        return found or f"unknown endpoint identifier {epi or '(none)'}"

    def substates(self, status: etree._Element, phase: str) -> None:
        local = {
            "pending": "Enqueing",
            "staging-in": "staging-in",
            "executing": "Executing",
            "staging-out": "staging-out",
        }.get(phase)
        if local:
            etree.SubElement(status, _q(GENII_STATES, local), nsmap={"g": GENII_STATES})

    def naming_profiles(self) -> list[str]:
        return [BASIC_WSA, "http://schemas.ggf.org/bes/2006/08/bes/naming/WSNaming"]

    def resource_manager(self) -> str:
        return "http://vcgr.cs.virginia.edu/2008/03/resource-manager-type/pbs"


def _genesis_template() -> str:
    """The corpus EPR's content as the inside of a bes-factory:ActivityIdentifier, with
    placeholders for the address, the resource key and the EndpointIdentifier."""
    text = (corpus_dir() / "soap" / "saga-bes-genesis2-besfactory-epr.xml").read_text()
    inner = text.split("?>", 1)[1].split(">", 1)[1].rsplit("</", 1)[0]
    inner = re.sub(r"(<ns2:Address[^>]*>)[^<]*", r"\1@ADDRESS@", inner)
    inner = re.sub(r"(<ns8:resource-key[^>]*>)[^<]*", r"\1@RESOURCE@", inner)
    inner = re.sub(r"(<ns11:EndpointIdentifier[^>]*>)[^<]*", r"\1@EPI@", inner)
    return (
        '<bes:ActivityIdentifier xsi:type="ns2:EndpointReferenceType">'
        f"{inner}</bes:ActivityIdentifier>"
    )


# ------------------------------------------------------------------------------ the 2007 draft


class DraftPeer(Peer):
    """A BES of the May 2007 draft, gSOAP style (BES++): Cancelled, InvalidActivityIdentifier."""

    name = "bes++"
    path = "/"
    prefixes: ClassVar[dict[str, str]] = {
        "SOAP-ENV": SOAP,
        "soap": "SOAP-ENV",
        "SOAP-ENC": "http://schemas.xmlsoap.org/soap/encoding/",
        "xsi": XSI,
        "xsd": "http://www.w3.org/2001/XMLSchema",
        "wsa": WSA,
        "bes": BES,
        "bes-mgmt": MGMT,
        "jsdl": JSDL,
    }
    addressing = "none"
    terminated_element = "Cancelled"
    unknown_fault = "InvalidActivityIdentifierFault"

    def get(self, path: str, query: str) -> Answer:
        return 405, b"<html><body>405 Method Not Allowed</body></html>", "text/html"

    def new_key(self) -> str:
        return f"{self.base}/[fork://localhost]-[{22379 + self.counter}]"

    def mint(self, key: str) -> etree._Element:
        epr = _bes("ActivityIdentifier")
        _leaf_in(epr, WSA, "Address", key)
        return epr

    def lookup(self, epr: etree._Element) -> Job | str | None:
        address = _text(epr.find(_q(WSA, "Address")))
        return self.jobs.get(address) or f"no job {address}"

    def resource_manager(self) -> str:
        return "http://www.platform.com/bes/2006/08/resource-manager-type/fork"


# ------------------------------------------------------------------------------ serving


PEERS: dict[str, type[Peer]] = {
    "arc": ArcPeer,
    "unicore": UnicorePeer,
    "genesis2": GenesisPeer,
    "bespp-draft-2007": DraftPeer,
}


@contextlib.contextmanager
def serve(kind: type[Peer]) -> Iterator[Peer]:
    """Serve a peer on ``http://127.0.0.1:PORT`` for the duration of the block."""
    holder: list[Peer] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            self._send(*holder[0].get(parts.path, parts.query))

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            try:
                answer = holder[0].post(urlsplit(self.path).path, body)
            except Exception as exc:  # noqa: BLE001 - a broken peer says so on the wire
                answer = 599, f"peer error: {exc!r}".encode(), "text/plain"
            self._send(*answer)

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with _running(Handler) as base:
        holder.append(kind(base))
        yield holder[0]


_APACHE = """<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">
<html><head>
<title>{status} {title}</title>
</head><body>
<h1>{title}</h1>
<p>{text}</p>
<hr>
<address>Apache/2.4.62 (Debian) Server at 127.0.0.1 Port {port}</address>
</body></html>
"""


@contextlib.contextmanager
def html_endpoint() -> Iterator[str]:
    """A web server where the BES should be: Apache's 404 page for GET, its 500 page for POST
    (a proxy in front of a broken or missing application). Yields the URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._page(404, "Not Found", "The requested URL was not found on this server.")

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self._page(
                500,
                "Internal Server Error",
                "The server encountered an internal error or misconfiguration and was unable "
                "to complete your request.",
            )

        def _page(self, status: int, title: str, text: str) -> None:
            port = self.server.server_address[1]
            page = _APACHE.format(status=status, title=title, text=text, port=port).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=iso-8859-1")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with _running(Handler) as base:
        yield base + "/bes"


@contextlib.contextmanager
def dropping_endpoint() -> Iterator[str]:
    """A port that accepts each connection, reads what comes, and closes it without a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(1.0)
                with contextlib.suppress(OSError):
                    connection.recv(65536)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/bes"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@contextlib.contextmanager
def _running(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


__all__ = [
    "PEERS",
    "ArcPeer",
    "DraftPeer",
    "GenesisPeer",
    "Job",
    "Peer",
    "UnicorePeer",
    "dropping_endpoint",
    "html_endpoint",
    "serve",
]
