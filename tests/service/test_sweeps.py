"""Parameter sweeps through the SOAP edge: one identifier for the sweep, one per point, an
aggregated state, termination of all points at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bes.app import BesApp, create_app
from bes.backends.base import JobState, JobStatus
from bes.backends.fake import FakeBackend, FakeConfig
from bes.config import ServiceConfig
from bes.states import SubState
from tests.support import soap
from tests.support.standards import assert_official, corpus_dir

pytestmark = pytest.mark.anyio

FOREVER = (
    (0.0, JobStatus(state=JobState.PENDING)),
    (0.01, JobStatus(state=JobState.RUNNING, substate=SubState.EXECUTING)),
)


@pytest.fixture
async def sweep_service(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    fake = FakeBackend(FakeConfig(script=FOREVER) if request.param == "forever" else None)
    app: BesApp = create_app(
        ServiceConfig(data_dir=tmp_path / "data", backend="fake", sweep_limit=5),
        backends={"fake": fake},
    )
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bes.test") as client:
            yield client
    finally:
        await app.shutdown()


async def call(client: httpx.AsyncClient, operation: str, body: str | bytes) -> bytes:
    response = await client.post(
        "/bes", content=soap.envelope(body), headers={"SOAPAction": soap.ACTIONS + operation}
    )
    assert_official(response.content, operation)
    return response.content


async def sweep(client: httpx.AsyncClient) -> str:
    document = (corpus_dir() / "jsdl" / "unicore-sweep-argument.xml").read_bytes()
    answer = await call(client, "CreateActivity", soap.create_activity(document.split(b"?>", 1)[1]))
    (activity_id,) = soap.xpath(soap.body_of(answer), "//besa:ActivityId/text()")
    return str(activity_id)


async def status(client: httpx.AsyncClient, activity_id: str) -> object:
    answer = await call(
        client,
        "GetActivityStatuses",
        soap.vector("GetActivityStatuses", [soap.epr(activity_id=activity_id)]),
    )
    (found,) = soap.xpath(soap.body_of(answer), "//bes:ActivityStatus")
    return found


async def until(client: httpx.AsyncClient, activity_id: str, state: str) -> object:
    for _ in range(200):
        found = await status(client, activity_id)
        if found.get("state") == state:  # type: ignore[attr-defined]
            return found
        await asyncio.sleep(0.02)
    pytest.fail(f"{activity_id} never reached {state}")


@pytest.mark.parametrize("sweep_service", ["default"], indirect=True)
async def test_a_sweep_has_its_points_and_ends_when_they_all_do(
    sweep_service: httpx.AsyncClient,
) -> None:
    client = sweep_service
    parent = await sweep(client)
    first = await status(client, parent)
    children = soap.xpath(first, "besa:Child/wsa:ReferenceParameters/besa:ActivityId/text()")  # type: ignore[arg-type]
    assert len(children) == 3 and parent not in children
    addresses = soap.xpath(first, "besa:Child/wsa:Address/text()")  # type: ignore[arg-type]
    assert all(a.endswith(c) for a, c in zip(addresses, children, strict=True))
    done = await until(client, parent, "Finished")
    counts = {
        c.get("state"): int(c.text)
        for c in soap.xpath(done, "besa:ActivityCount")  # type: ignore[arg-type]
    }
    assert counts["Finished"] == 3 and sum(counts.values()) == 3
    for child in children:  # each point is an activity of its own
        assert (await status(client, child)).get("state") == "Finished"  # type: ignore[attr-defined]
    documents = await call(
        client,
        "GetActivityDocuments",
        soap.vector("GetActivityDocuments", [soap.epr(activity_id=str(children[1]))]),
    )
    assert b">dog<" in documents and b"Sweep" not in documents


@pytest.mark.parametrize("sweep_service", ["forever"], indirect=True)
async def test_terminating_a_sweep_terminates_every_point(
    sweep_service: httpx.AsyncClient,
) -> None:
    client = sweep_service
    parent = await sweep(client)
    await until(client, parent, "Running")
    answer = await call(
        client,
        "TerminateActivities",
        soap.vector("TerminateActivities", [soap.epr(activity_id=parent)]),
    )
    assert soap.xpath(soap.body_of(answer), "//bes:Terminated/text()") == ["true"]
    cancelled = await until(client, parent, "Cancelled")
    for child in soap.xpath(cancelled, "besa:Child/wsa:ReferenceParameters/besa:ActivityId/text()"):  # type: ignore[arg-type]
        assert (await status(client, str(child))).get("state") == "Cancelled"  # type: ignore[attr-defined]


@pytest.mark.parametrize("sweep_service", ["default"], indirect=True)
async def test_a_sweep_above_the_limit_is_refused(sweep_service: httpx.AsyncClient) -> None:
    document = (corpus_dir() / "jsdl" / "unicore-sweep-argument.xml").read_bytes()
    many = document.split(b"?>", 1)[1].replace(
        b"<sweepfunc:Value>bird</sweepfunc:Value>",
        b"".join(b"<sweepfunc:Value>v%d</sweepfunc:Value>" % i for i in range(10)),
    )
    answer = await call(sweep_service, "CreateActivity", soap.create_activity(many))
    fault = soap.fault_of(answer)
    assert soap.xpath(fault, "detail/bes:InvalidRequestMessageFault")
    assert "more than 5 jobs" in soap.xpath(fault, "faultstring/text()")[0]
