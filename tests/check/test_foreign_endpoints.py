"""``bes check`` against endpoints that are not ours: replayed foreign BES implementations
(``tests/support/replay.py``: ARC's A-REX, UNICORE 6, Genesis II, a BES++ of the 2007 draft),
a web server's error pages, a port that drops every connection, and our own service's real
``/bes/draft-2007`` endpoint.

The verdict expected of every check is kept as data, one table per endpoint, in
``tests/check/expected/NAME.json``: check id -> ``verdict``, ``deviation`` (the name from
``bes/check/deviations.py``; absent means none) and optionally ``reason_contains``. The run
must produce exactly those rows, in that order: a deviation must be named precisely, a real
breach must FAIL, and nothing may crash. Every run must also clean up after itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import requests
from lxml import etree

from bes.check import Options, Report, deviations, documents, run
from tests.support import replay
from tests.support.server import LiveServer, live_server
from tests.support.soap import HELLO_JSDL
from tests.support.standards import official_schema

EXPECTED = Path(__file__).parent / "expected"
OPTIONS = Options(wait_s=5, admin=True)
"""Short waits: the replayed peers move on within a second or two, and a polling loop on an
endpoint that never runs jobs gives up after 5 s."""


def expected(name: str) -> dict[str, dict[str, str]]:
    table: dict[str, dict[str, str]] = json.loads((EXPECTED / f"{name}.json").read_text())
    return table


def assert_table(report: Report, name: str) -> None:
    """The report has exactly the rows of the table, with their verdicts and deviations."""
    table = expected(name)
    got = [r.id for r in report.results]
    assert got == list(table), f"the checks run differ from {name}.json"
    wrong = []
    for result in report.results:
        want = table[result.id]
        contains = want.get("reason_contains", "")
        if (
            result.verdict.value != want["verdict"]
            or result.deviation != want.get("deviation", "")
            or contains not in result.reason
        ):
            wrong.append(
                f"{result.id}: expected {want}, got {result.verdict.value} "
                f"[{result.deviation}] {result.reason!r}"
            )
    assert not wrong, f"{name}.json:\n" + "\n".join(wrong)


def settle(peer: replay.Peer, timeout_s: float = 3.0) -> list[replay.Job]:
    """The peer's activities not ended once terminations had time to take effect."""
    deadline = time.monotonic() + timeout_s
    while (left := peer.open_jobs()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.parametrize("name", list(replay.PEERS))
def test_replayed_foreign_endpoint(name: str) -> None:
    with replay.serve(replay.PEERS[name]) as peer:
        report = run(peer.url, OPTIONS, timeout_s=10)
        left = settle(peer)
    assert_table(report, name)
    assert report.dialect == ("draft-2007" if name == "bespp-draft-2007" else "GFD.108")
    # Everything the suite created, and nothing else, was made and terminated by it.
    assert report.created == len(peer.jobs) > 0
    assert report.cleanup.startswith(f"terminated the {report.created} activities")
    assert "except" not in report.cleanup
    assert not left, f"left running on the peer: {[j.key for j in left]}"
    assert peer.accepting, "the suite left the endpoint not accepting new activities"


def test_arc_deviations_are_all_named() -> None:
    """Pointed at A-REX, every departure from GFD.108 that A-REX is known for is named, and
    what is really broken (it ignores what it does not understand; Stop does nothing) FAILs."""
    table = expected("arc")
    named = {row["deviation"] for row in table.values() if "deviation" in row}
    assert named == {
        deviations.ARC_OPERATING_SYSTEM,
        deviations.ARC_NO_RELATES_TO,
        deviations.ARC_KILLED_FAILED,
        deviations.ARC_NO_TERMINATED,
        deviations.ARC_FAULT_NAME,
    }
    failed = {k for k, row in table.items() if row["verdict"] == "FAIL"}
    assert failed == {
        "fault-invalid-request",
        "fault-unsupported-feature",
        "management-stop",
        "management-refuses",
    }


class SloppyArc(replay.ArcPeer):
    """Looks like A-REX, but breaks more than A-REX does: its attributes also lack the
    mandatory LocalResourceManagerType, and its terminations say nothing at all."""

    def attributes(self) -> etree._Element:
        document = super().attributes()
        document.remove(document.find(f"{{{replay.BES}}}LocalResourceManagerType"))
        return document

    def terminate_item(self, out: etree._Element, job: replay.Job) -> None:
        if not job.ended(time.monotonic()):
            job.terminated = time.monotonic()


def test_a_lookalike_is_not_excused_by_the_deviation_it_resembles() -> None:
    """A deviation's name is given only when the deviation explains everything wrong: what
    else is broken still FAILs, with its rule."""
    with replay.serve(SloppyArc) as peer:
        report = run(peer.url, Options(wait_s=5), timeout_s=10)
    rows = {r.id: r for r in report.results}
    attributes = rows["factory-attributes"]
    assert (attributes.verdict.value, attributes.deviation) == ("FAIL", "")
    assert "LocalResourceManagerType" in attributes.reason
    for silent in (rows["terminate"], rows["terminate-again"]):
        assert (silent.verdict.value, silent.deviation) == ("FAIL", ""), silent
        assert "neither Terminated nor a fault" in silent.reason
        assert silent.rule.startswith("GFD.108 §6.3")
    # What A-REX itself does is still named.
    assert rows["terminate-unknown"].deviation == deviations.ARC_NO_TERMINATED
    assert rows["terminate-state"].deviation == deviations.ARC_KILLED_FAILED


def test_staging_really_went_through_the_peer() -> None:
    """The staging check's PASS rests on a real transfer: the peer fetched the input from the
    checker's loopback place and delivered the output there."""
    with replay.serve(replay.UnicorePeer) as peer:
        report = run(peer.url, Options(wait_s=5), timeout_s=10)
        staged = [j for j in peer.jobs.values() if j.inputs and j.outputs]
    [row] = [r for r in report.results if r.id == "create-staging"]
    assert row.verdict.value == "PASS"
    [job] = staged
    assert job.files["input.txt"].startswith(b"bes check ")
    assert job.files["output.txt"] == job.files["input.txt"]


@pytest.mark.parametrize(
    ("endpoint", "name", "reason"),
    [
        (replay.html_endpoint, "html-error-page", "HTTP 500, text/html, not XML"),
        (replay.dropping_endpoint, "connection-drop", "connection failed or dropped"),
    ],
)
def test_not_a_bes_at_all(
    endpoint: Callable[[], AbstractContextManager[str]], name: str, reason: str
) -> None:
    """A web server's error page, a dropped connection: every SOAP check FAILs saying so,
    the run completes, and the clean-up line says there was nothing to clean up."""
    started = time.monotonic()
    with endpoint() as url:
        report = run(url, OPTIONS, timeout_s=10)
    assert time.monotonic() - started < 10
    assert_table(report, name)
    assert report.failed
    assert report.dialect == "GFD.108 (assumed)"
    assert report.created == 0 and report.cleanup == "nothing to clean up"
    soap = [r for r in report.results if r.id != "wsdl" and r.verdict.value == "FAIL"]
    assert len(soap) >= 15 and all(reason in r.reason for r in soap)


@pytest.fixture(scope="module")
def draft_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Our own service with no backend: activities stay Pending until terminated."""
    data = tmp_path_factory.mktemp("draft") / "data"
    with live_server(data, extra=["--backend", "none"]) as server:
        yield server


@pytest.mark.slow
def test_our_draft_2007_endpoint(draft_server: LiveServer) -> None:
    """Our service's real /bes/draft-2007 endpoint, judged as a draft endpoint: Cancelled and
    InvalidActivityIdentifierFault are its dialect, not failures; staging cannot finish with no
    backend (WARN: still Pending)."""
    report = run(draft_server.endpoint + "/draft-2007", OPTIONS, timeout_s=10)
    assert_table(report, "bes-draft-2007-live")
    assert report.dialect == "draft-2007"
    assert report.cleanup == f"terminated the {report.created} activities the suite created"


def test_genesis_peer_refuses_an_identifier_that_lost_its_declarations() -> None:
    """The Genesis II peer checks what a deserializer would: a client that renames the
    WS-Addressing prefix of an identifier (as stub generators do) leaves its ``ns2:`` xsi:type
    values dangling, and is refused. So the PASSes of the Genesis run show that bes check sent
    the identifiers back verbatim."""
    with replay.serve(replay.GenesisPeer) as peer:
        created = _post(
            peer.url,
            "<b:CreateActivity><b:ActivityDocument>"
            f"{HELLO_JSDL.decode()}</b:ActivityDocument></b:CreateActivity>",
        )
        epr = created.find(f".//{{{replay.BES}}}ActivityIdentifier")
        verbatim = etree.tostring(epr).decode()
        renamed = _renamed(epr)
        good = _post(peer.url, f"<b:GetActivityStatuses>{verbatim}</b:GetActivityStatuses>")
        bad = _post(
            peer.url, f"<b:GetActivityStatuses>{renamed}</b:GetActivityStatuses>", status=500
        )
    assert good.find(f".//{{{replay.BES}}}ActivityStatus").get("state") == "Pending"
    assert "xsi:type ns2:EndpointReferenceType does not resolve" in "".join(bad.itertext())


def test_the_checkers_documents_are_valid_jsdl() -> None:
    """A validating endpoint (UNICORE, Genesis II, BES++) refuses an invalid probe with
    InvalidRequestMessageFault, which the checker would report as the feature's fault: every
    document it sends is valid JSDL 1.0, except the one meant to be invalid."""
    schema = official_schema()
    valid = [
        documents.hpcp_job("x"),
        documents.posix_job("x"),
        documents.posix_job("x", seconds=300),
        documents.staging_job("x", "http://127.0.0.1/in", "http://127.0.0.1/out"),
        documents.unsupported_job("x"),
        *(build("x") for build in documents.PROBES.values()),
    ]
    for document in valid:
        element = etree.fromstring(document)
        assert schema.validate(element), (document, schema.error_log)
    assert not schema.validate(etree.fromstring(documents.invalid_job("x")))


def _post(url: str, body: str, *, status: int = 200) -> etree._Element:
    envelope = (
        f'<soap:Envelope xmlns:soap="{replay.SOAP}" xmlns:b="{replay.BES}"><soap:Body>'
        f"{body}</soap:Body></soap:Envelope>"
    )
    answer = requests.post(url, data=envelope, headers={"Content-Type": "text/xml"}, timeout=10)
    assert answer.status_code == status, answer.text
    return etree.fromstring(answer.content)


def _renamed(epr: etree._Element) -> str:
    """The identifier rebuilt the way a stub generator serializes it: its WS-Addressing
    elements under the prefix ``wsa``, its attributes copied as they were."""

    def rebuild(element: etree._Element, parent: etree._Element | None) -> etree._Element:
        nsmap = {"wsa": replay.WSA} if etree.QName(element).namespace == replay.WSA else None
        copy = (
            etree.Element(element.tag, nsmap=nsmap)
            if parent is None
            else etree.SubElement(parent, element.tag, nsmap=nsmap)
        )
        copy.text, copy.tail = element.text, element.tail
        copy.attrib.update(element.attrib)
        for child in element.iterchildren(etree.Element):
            rebuild(child, copy)
        return copy

    return etree.tostring(rebuild(epr, None)).decode()
