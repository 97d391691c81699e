"""``BESClient`` against a real ``bes serve`` on loopback, as a workflow engine would use it.

Every envelope the client sends is checked against the official OGF schemas."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lxml import etree

from bes.client import BESClient, State, SubState, faults, jsdl
from tests.interop import corpus
from tests.interop.test_corpus import VERDICTS
from tests.support.server import LiveServer
from tests.support.soap import MGMT, MGMT_ACTIONS, envelope
from tests.support.standards import assert_official, corpus_dir

JSDL_NS = "http://schemas.ggf.org/jsdl/2005/11/jsdl"


class Sent:
    """A zeep plugin keeping each envelope as the client sends it."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []

    def egress(self, envelope, http_headers, operation, binding_options):  # type: ignore[no-untyped-def]
        self.envelopes.append(etree.tostring(envelope))
        return envelope, http_headers

    def ingress(self, envelope, http_headers, operation):  # type: ignore[no-untyped-def]
        return envelope, http_headers

    def operations(self) -> list[str]:
        return [etree.QName(etree.fromstring(e)[-1][0]).localname for e in self.envelopes]


@pytest.fixture
def sent() -> Iterator[Sent]:
    recorder = Sent()
    yield recorder
    for body in recorder.envelopes:
        assert_official(body, "an envelope the client sent")


def canonical(document: bytes) -> bytes:
    root = etree.fromstring(document)
    root.tag = f"{{{JSDL_NS}}}JobDefinition"
    return etree.tostring(root, method="c14n", exclusive=True, with_comments=False)


def test_submit_status_document_attributes_cancel(server: LiveServer, sent: Sent) -> None:
    document = jsdl.build(
        ["/bin/sh", "-c", "echo hi > out.txt"],
        name="client-cycle",
        memory_mib=256,
        environment={"GREETING": "hello"},
        inputs={"data.bin": "http://127.0.0.1:9/data.bin"},
        keep=["out.txt"],
    )
    with BESClient(server.endpoint, plugins=[sent]) as bes:
        ref = bes.submit(document)
        assert ref.activity_id is not None
        assert ref.address == f"{server.endpoint}/activities/{ref.activity_id}"

        [status] = bes.status(ref)
        assert status.state is State.PENDING
        assert status.substates[0] in (SubState.QUEUED, SubState.SUBMITTED)
        assert status.changed is not None and status.fault is None

        assert canonical(bes.document(ref)) == canonical(document)

        attributes = bes.attributes()
        assert attributes.accepting is True
        assert ref.activity_id in {r.activity_id for r in attributes.activity_refs}
        assert attributes.total_activities is not None and attributes.total_activities >= 1
        assert attributes.naming_profiles

        [cancelled] = bes.cancel(ref)
        assert cancelled.terminated and cancelled.fault is None
        [status] = bes.wait(ref, timeout_s=10)
        assert status.state is State.CANCELLED and status.terminal
        assert bes.ref(ref.activity_id).activity_id == ref.activity_id
        [again] = bes.status(bes.ref(ref.address))  # the address alone finds it too
        assert again.state is State.CANCELLED
    assert sent.operations()[:3] == [
        "CreateActivity",
        "GetActivityStatuses",
        "GetActivityDocuments",
    ]


def test_vector_calls_are_batched_and_keep_their_order(server: LiveServer, sent: Sent) -> None:
    with BESClient(server.endpoint, plugins=[sent], batch_size=2) as bes:
        refs = [bes.submit(jsdl.build(["/bin/true"], name=f"batch-{i}")) for i in range(3)]
        unknown = bes.ref("A" * 24)
        asked = [refs[0], unknown, refs[1], refs[2], unknown]
        found = bes.status(asked)
        assert [s.ref for s in found] == asked
        assert [s.fault is None for s in found] == [True, False, True, True, False]
        assert isinstance(found[1].fault, faults.UnknownActivityIdentifierFault)
        assert found[1].terminal  # waiting on it would not hang
        results = bes.cancel(asked)
        assert [r.terminated for r in results] == [True, False, True, True, False]
        assert isinstance(results[4].fault, faults.UnknownActivityIdentifierFault)
    calls = sent.operations()
    assert calls.count("GetActivityStatuses") == math.ceil(len(asked) / 2)
    assert calls.count("TerminateActivities") == math.ceil(len(asked) / 2)


def test_refusals_are_typed_faults(server: LiveServer, sent: Sent) -> None:
    foreign = jsdl.build(["/bin/true"]).replace(
        b"</jsdl:Application>",
        b'<x:Licence xmlns:x="urn:example:licences">matlab</x:Licence></jsdl:Application>',
    )
    with BESClient(server.endpoint, plugins=[sent]) as bes:
        with pytest.raises(faults.UnsupportedFeatureFault) as unsupported:
            bes.submit(foreign)
        assert "Licence" in str(unsupported.value)
        assert unsupported.value.code.endswith("Client")

        invalid = jsdl.build(["/bin/true"]).replace(
            b"</jsdl-posix:Executable>", b"</jsdl-posix:Executable>\n<jsdl-posix:Bogus/>"
        )
        with pytest.raises(faults.InvalidJsdl) as local:
            bes.submit(invalid)
        assert "Bogus" in str(local.value) and local.value.problems[0][0] is not None
        assert "CreateActivity" not in sent.operations()[1:]  # nothing was sent for it
        with (
            BESClient(server.endpoint) as unchecked,  # this envelope is invalid on purpose
            pytest.raises(faults.InvalidRequestMessageFault) as remote,
        ):
            unchecked.submit(invalid, check=False)
        assert "Bogus" in str(remote.value)

        with stopped(server), pytest.raises(faults.NotAcceptingNewActivitiesFault):
            bes.submit(jsdl.build(["/bin/true"]))
        assert bes.attributes().accepting is True

        [pending] = [bes.submit(jsdl.build(["/bin/true"], name="no-outputs-yet"))]
        with pytest.raises(faults.NoOutputs, match="Pending"):
            bes.outputs(pending, "unused")
        bes.cancel(pending)


@contextlib.contextmanager
def stopped(server: LiveServer) -> Iterator[None]:
    def manage(operation: str) -> None:
        body = envelope(f'<m:{operation} xmlns:m="{MGMT}"/>')
        headers = {"Content-Type": "text/xml", "SOAPAction": f'"{MGMT_ACTIONS}{operation}"'}
        assert httpx.post(server.endpoint, content=body, headers=headers).status_code == 200

    manage("StopAcceptingNewActivities")
    try:
        yield
    finally:
        manage("StartAcceptingNewActivities")


def test_wait_reports_progress_and_times_out(server: LiveServer) -> None:
    seen: list[tuple[str, float]] = []
    with BESClient(server.endpoint) as bes:
        ref = bes.submit(jsdl.build(["/bin/true"], name="never-runs"))  # no worker here
        with pytest.raises(faults.WaitTimeout) as late:
            bes.wait([ref], 1.5, progress=lambda s, t: seen.append((s[0].label, t)), poll_s=0.2)
        assert late.value.pending == 1
        assert len(seen) >= 3
        assert all(label.startswith("Pending/") for label, _ in seen)
        assert [t for _, t in seen] == sorted(t for _, t in seen)
        bes.cancel(ref)


def test_a_sweep_is_one_reference_with_its_points(server: LiveServer) -> None:
    path = corpus_dir() / "jsdl" / "unicore-sweep-argument.xml"
    with BESClient(server.endpoint) as bes:
        parent = bes.submit(corpus.document(path))
        [status] = bes.status(parent)
        assert len(status.children) == 3
        assert sum(c.count for c in status.counts) == 3
        points = bes.status(list(status.children))
        assert all(p.state is State.PENDING for p in points)
        [result] = bes.cancel(parent)
        assert result.terminated
        assert all(p.state is State.CANCELLED for p in bes.status(list(status.children)))


@pytest.mark.parametrize("path", sorted((corpus_dir() / "jsdl").iterdir()), ids=lambda p: p.name)
def test_the_client_agrees_with_the_service_on_the_corpus(server: LiveServer, path: Path) -> None:
    """What the service takes, the client's own check lets through; what it refuses comes
    back as the typed fault of the verdict table (or, for invalid JSDL, is caught before
    sending)."""
    verdict, why = VERDICTS[path.name]
    document = corpus.document(path)
    with BESClient(server.endpoint) as bes:
        try:
            ref = bes.submit(document)
        except faults.InvalidJsdl:
            assert verdict == "InvalidRequestMessageFault", why
            return
        except faults.BesFault as refused:
            assert refused.fault_name == verdict, why
            return
        assert verdict in ("accepted", "normalized") or verdict.startswith("sweep:"), why
        bes.cancel(ref)
