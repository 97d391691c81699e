"""The client against BES services that are not ours: answers in the style of ARC, UNICORE and
Genesis II from a loopback peer, and the endpoint references they minted sent back verbatim.

Every request the client puts on the wire is checked against the official OGF schemas."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lxml import etree

from bes.client import BESClient, State, faults
from bes.client.model import ActivityRef
from tests.support.peer import Peer, soap_peer, xml_answer
from tests.support.soap import HELLO_JSDL, NS
from tests.support.standards import assert_official, corpus_dir

FIXTURES = Path(__file__).parents[1] / "fixtures" / "client"
AREX = "http://www.nordugrid.org/schemas/a-rex"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def check_requests(peer: Peer) -> None:
    assert peer.received, "the client sent nothing"
    for request in peer.received:
        assert_official(request.body, f"{request.operation} sent by the client")
        action = request.headers["soapaction"].strip('"')
        assert action == f"{NS['bes']}/BESFactoryPortType/{request.operation}"


def arc(operation: str, envelope: etree._Element) -> tuple[int, bytes, str]:
    answers = {
        "CreateActivity": "arc-create.xml",
        "GetActivityStatuses": "arc-statuses.xml",
        "TerminateActivities": "arc-terminate.xml",
        "GetFactoryAttributesDocument": "arc-attributes.xml",
    }
    return xml_answer(fixture(answers[operation]))


def test_arc_style_service() -> None:
    with soap_peer(arc) as peer, BESClient(peer.url) as client:
        ref = client.submit(HELLO_JSDL)
        assert ref.address == "https://arc.example.org:60000/arex"
        assert ref.activity_id is None  # not ours: only the EPR identifies it
        second = ActivityRef(address=ref.address, epr=ref.epr.replace(b"hgyMD", b"other"))

        running, failed = client.status([ref, second])
        assert running.state is State.RUNNING
        assert running.substates == ("State=Executing", "State=Running", "State=inlrms:R")
        assert failed.state is State.FAILED and failed.terminal
        assert "State=Killed" in failed.substates

        first, refused = client.cancel([ref, second])
        assert first.terminated and first.fault is None  # no Terminated element: accepted
        assert not refused.terminated
        assert isinstance(refused.fault, faults.CantApplyOperationToCurrentStateFault)
        assert "already finished" in str(refused.fault)

        attributes = client.attributes()
        assert attributes.accepting is True
        assert attributes.total_activities == 17
        assert attributes.name is None
        assert attributes.resource_manager == "org.nordugrid.slurm"
        assert attributes.contained_resources == 1
        check_requests(peer)

    # The a-rex JobID went back exactly as ARC minted it, in every request that named the job.
    for request in peer.received[1:3]:
        sent = request.envelope.findall(".//bes:ActivityIdentifier", NS)
        ids = [e.findtext(f".//{{{AREX}}}JobID") for e in sent]
        assert ids[0] == "hgyMDmBg3Xfn4j4MmqWbRbtmABFKDmABFKDmMMKKDmABFKDmT4ZZUm"
        assert ids[1].startswith("other")


def test_arc_misnamed_invalid_request_fault() -> None:
    with (
        soap_peer(lambda op, env: xml_answer(fixture("arc-invalid-request.xml"), 500)) as peer,
        BESClient(peer.url) as client,
        pytest.raises(faults.InvalidRequestMessageFault) as refused,
    ):
        client.submit(HELLO_JSDL)
    assert refused.value.reason == "Failed to parse job description"
    assert "Unsupported Application type" in str(refused.value)
    assert str(refused.value).startswith("InvalidRequestMessageFault:")


def unicore(operation: str, envelope: etree._Element) -> tuple[int, bytes, str]:
    if operation == "GetActivityStatuses":
        return xml_answer(fixture("unicore-statuses.xml"))
    return xml_answer(fixture("unicore-not-authorized.xml"), 500)


def test_unicore_style_service() -> None:
    with soap_peer(unicore) as peer, BESClient(peer.url) as client:
        refs = [
            client.ref(f"https://unicore.example.org:8080/SITE/services/BESActivity?res={r}")
            for r in ("8b3bbd3e-2c1b-4f0a-9a28-2f4a7f6d1f11", "deadbeef")
        ]
        staging, unknown = client.status(refs)
        assert staging.state is State.RUNNING
        assert staging.substates == ("Staging-In",)
        assert staging.label == "Running/Staging-In"
        assert isinstance(unknown.fault, faults.UnknownActivityIdentifierFault)
        assert "Activity deadbeef does not exist" in str(unknown.fault)
        assert unknown.terminal  # a wait does not hang on an identifier the service denies

        with pytest.raises(faults.NotAuthorizedFault) as denied:
            client.submit(HELLO_JSDL)
        assert "CN=Alice is not allowed" in str(denied.value)
        assert denied.value.code == "soapenv:Client"
        check_requests(peer)


def test_genesis_ii_endpoint_reference_goes_back_verbatim() -> None:
    """Genesis II's EPR carries WS-Naming metadata whose xsi:type values use prefixes declared
    far above them; it must come back with every declaration it needs."""
    path = corpus_dir() / "soap" / "saga-bes-genesis2-besfactory-epr.xml"
    epr = etree.parse(str(path))
    text = path.read_text().split("?>", 1)[1]
    opening, rest = text.split(">", 1)
    declarations = " ".join(re.findall(r'xmlns:\w+="[^"]*"', opening))
    inner = rest.rsplit("</", 1)[0]
    # The declarations go on the Envelope, far above the values that use them.
    created = (
        f'<soap:Envelope xmlns:soap="{NS["soap"]}" xmlns:bes="{NS["bes"]}" {declarations}>'
        f"<soap:Body><bes:CreateActivityResponse><bes:ActivityIdentifier>{inner}"
        "</bes:ActivityIdentifier></bes:CreateActivityResponse></soap:Body></soap:Envelope>"
    ).encode()
    status = (
        f'<soap:Envelope xmlns:soap="{NS["soap"]}" xmlns:bes="{NS["bes"]}"><soap:Body>'
        "<bes:GetActivityStatusesResponse><bes:Response>"
        '<bes:ActivityStatus state="Pending">'
        '<g:Enqueing xmlns:g="http://vcgr.cs.virginia.edu/genesisII/bes/activity-states"/>'
        "</bes:ActivityStatus></bes:Response></bes:GetActivityStatusesResponse>"
        "</soap:Body></soap:Envelope>"
    ).encode()

    def genesis(operation: str, envelope: etree._Element) -> tuple[int, bytes, str]:
        return xml_answer(created if operation == "CreateActivity" else status)

    with soap_peer(genesis) as peer, BESClient(peer.url) as client:
        ref = client.submit(HELLO_JSDL)
        [found] = client.status([ref])
        check_requests(peer)
    assert found.state is State.PENDING
    assert found.substates == ("Enqueing",)

    sent = peer.received[1].envelope.find(".//bes:ActivityIdentifier", NS)
    original = epr.getroot()
    assert [etree.tostring(c, method="c14n", exclusive=True) for c in sent] == [
        etree.tostring(c, method="c14n", exclusive=True) for c in original
    ]
    # The prefixed xsi:type values still resolve in what was sent.
    xsi = "{http://www.w3.org/2001/XMLSchema-instance}type"
    typed = [e for e in sent.iter() if e.get(xsi)]
    assert typed, "the capture has xsi:type values"
    for element in typed:
        prefix = element.get(xsi).split(":", 1)[0]
        assert prefix in element.nsmap, f"{prefix} is not declared where it is used"


@pytest.mark.parametrize(
    ("status", "kind", "body", "expected"),
    [
        (404, "text/html", b"<html><body><h1>Not Found</h1></body></html>", "HTTP 404"),
        (401, "text/plain", b"login required\n", "wants credentials"),
        (502, "text/plain", b"upstream gone\n", "upstream gone"),
        (200, "text/xml", b"<not-soap/>", "not a SOAP envelope"),
        (200, "text/xml", b"<soap:Envelope", "malformed XML"),
    ],
)
def test_answers_that_are_not_soap(status: int, kind: str, body: bytes, expected: str) -> None:
    with soap_peer(lambda op, env: (status, body, kind)) as peer, BESClient(peer.url) as client:
        with pytest.raises(faults.ClientError) as failed:
            client.attributes()
        assert expected in str(failed.value)
        assert peer.url in str(failed.value) or expected == "not a SOAP envelope"
