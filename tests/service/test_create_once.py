"""CreateActivity commits the desktop grid's queue row with the activity (no dispatch round),
and a retried request (same caller, same wsa:MessageID, same document) gets the activity the
first one created, on the registry and over the wire."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import select

from bes.activities import Activities
from bes.backends.desktopgrid.backend import DesktopGridBackend
from bes.backends.desktopgrid.config import DesktopGridConfig
from bes.db import activity_rows as rows
from bes.db import grid_rows as grid
from bes.db.store import Database
from bes.db.tables import activity
from bes.errors import NotAcceptingNewActivities, UnsupportedFeature
from bes.ids import ActivityId
from bes.jsdl import load_job_definition
from bes.principal import Principal
from bes.states import ActivityState, SubState
from tests.support import soap
from tests.support.server import LiveServer, live_server

ALICE = Principal(name="alice")
BOB = Principal(name="bob")
JOB = load_job_definition(soap.HELLO_JSDL)
DOC = soap.HELLO_JSDL.decode()
UNKNOWN_TEMPLATE = b"""<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
  xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix" xmlns:vm="urn:bes-grid:vm:1.0">
  <jsdl:JobDescription><jsdl:Application>
    <posix:POSIXApplication><posix:Executable>/bin/fit</posix:Executable></posix:POSIXApplication>
    <vm:VirtualMachine><vm:Image><vm:Template>no-such-template</vm:Template></vm:Image>
    </vm:VirtualMachine>
  </jsdl:Application></jsdl:JobDescription>
</jsdl:JobDefinition>"""


@pytest.fixture
def grid_registry(db: Database, tmp_path: Path) -> Iterator[Activities]:
    backend = DesktopGridBackend(db, DesktopGridConfig(outputs_dir=tmp_path / "outputs"))
    yield Activities(db, backends={"desktopgrid": backend}, default_backend="desktopgrid")
    backend.close()


@pytest.mark.anyio
async def test_a_desktop_grid_job_is_queued_in_the_create_itself(
    grid_registry: Activities, db: Database
) -> None:
    made = await asyncio.gather(*(grid_registry.create(ALICE, JOB, DOC) for _ in range(20)))
    # No dispatch round ran: each is Submitted with its job, and the queue holds all 20.
    found = await grid_registry.statuses(ALICE, made)
    assert {(r.state, r.substate) for r in found.values()} == {
        (ActivityState.PENDING, SubState.SUBMITTED)
    }
    assert db.read_sync(grid.queue_counts)[grid.GridState.QUEUED] == 20
    jobs = db.read_sync(grid.grid_statuses, [r.backend_job_id for r in found.values()])
    assert {s.activity_id for s in jobs.values()} == set(made)
    # One event: it was never queued for a dispatch round.
    history = await grid_registry.history(ALICE, made[0])
    assert [(s, sub) for _, s, sub, _ in history] == [("Pending", "Submitted")]
    job_id = found[made[0]].backend_job_id
    assert history[0][3].startswith(f"accepted; submitted as {job_id} to pool volunteers: ")
    assert await grid_registry.dispatch_once() == 0  # nothing left for the dispatcher

    await grid_registry.set_accepting(Principal(name="root", admin=True), False)
    with pytest.raises(NotAcceptingNewActivities):
        await grid_registry.create(ALICE, JOB, DOC)
    assert db.read_sync(grid.queue_counts)[grid.GridState.QUEUED] == 20  # no orphan row


@pytest.mark.anyio
async def test_a_job_the_grid_cannot_run_is_refused_and_nothing_is_queued(
    grid_registry: Activities, db: Database
) -> None:
    unknown = load_job_definition(UNKNOWN_TEMPLATE)
    with pytest.raises(UnsupportedFeature) as refused:
        await grid_registry.create(ALICE, unknown, UNKNOWN_TEMPLATE.decode())
    assert "vm:Template 'no-such-template'" in str(refused.value)
    assert "backend 'desktopgrid' cannot run" in str(refused.value)
    assert sum(db.read_sync(rows.count_by_state, "alice").values()) == 0
    assert sum(db.read_sync(grid.queue_counts).values()) == 0


@pytest.mark.anyio
async def test_a_sweeps_points_are_queued_in_the_sweep_itself(
    grid_registry: Activities, db: Database
) -> None:
    sweep = await grid_registry.create_sweep(ALICE, DOC, [(JOB, DOC)] * 5)
    points = db.read_sync(
        lambda conn: [
            ActivityId(i)
            for i in conn.execute(select(activity.c.id).where(activity.c.parent_id == sweep))
            .scalars()
            .all()
        ]
    )
    assert len(points) == 5
    found = await grid_registry.statuses(ALICE, points)
    assert {(r.state, r.substate) for r in found.values()} == {
        (ActivityState.PENDING, SubState.SUBMITTED)
    }
    assert db.read_sync(grid.queue_counts)[grid.GridState.QUEUED] == 5
    assert await grid_registry.dispatch_once() == 0  # nothing left for the dispatcher

    unknown = load_job_definition(UNKNOWN_TEMPLATE)
    with pytest.raises(UnsupportedFeature) as refused:
        await grid_registry.create_sweep(
            ALICE, DOC, [(JOB, DOC), (unknown, UNKNOWN_TEMPLATE.decode())]
        )
    assert str(refused.value).startswith("point 2 of the parameter sweep: backend 'desktopgrid'")
    assert "vm:Template 'no-such-template'" in str(refused.value)
    assert db.read_sync(grid.queue_counts)[grid.GridState.QUEUED] == 5  # nothing of it


@pytest.mark.anyio
async def test_a_repeated_request_gets_the_activity_it_created(
    grid_registry: Activities, db: Database
) -> None:
    first = await grid_registry.create(ALICE, JOB, DOC, request="urn:uuid:1")
    assert await grid_registry.create(ALICE, JOB, DOC, request="urn:uuid:1") == first
    # Another caller's MessageID, another document, no MessageID: new activities.
    assert await grid_registry.create(BOB, JOB, DOC, request="urn:uuid:1") != first
    assert await grid_registry.create(ALICE, JOB, DOC + " ", request="urn:uuid:1") != first
    assert await grid_registry.create(ALICE, JOB, DOC) != first
    # Two copies in flight at once (one batch, or two replicas): one activity.
    twins = await asyncio.gather(
        *(grid_registry.create(ALICE, JOB, DOC, request="urn:uuid:2") for _ in range(3))
    )
    assert len(set(twins)) == 1
    counts = db.read_sync(rows.count_by_state, "alice")
    assert sum(counts.values()) == 4
    assert db.read_sync(grid.queue_counts)[grid.GridState.QUEUED] == 5  # bob's too
    # Answered even once the factory stopped accepting: the activity exists.
    await grid_registry.set_accepting(Principal(name="root", admin=True), False)
    assert await grid_registry.create(ALICE, JOB, DOC, request="urn:uuid:1") == first


@pytest.mark.anyio
async def test_a_repeated_sweep_gets_the_sweep_it_created(grid_registry: Activities) -> None:
    points = [(JOB, DOC), (JOB, DOC)]
    first = await grid_registry.create_sweep(ALICE, DOC, points, request="urn:uuid:s")
    again = await grid_registry.create_sweep(ALICE, DOC, points, request="urn:uuid:s")
    assert again == first
    summary = await grid_registry.summary(ALICE)
    assert summary.total_active == 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("once"), extra=["--backend", "none"]) as live:
        yield live


def created_address(server: LiveServer, message_id: str, jsdl: bytes = soap.HELLO_JSDL) -> str:
    action = "http://schemas.ggf.org/bes/2006/08/bes-factory/BESFactoryPortType/CreateActivity"
    message = soap.envelope(
        soap.create_activity(jsdl), headers=soap.wsa_headers(action, message_id=message_id)
    )
    answer = server.post(message, "CreateActivity")
    assert answer.status_code == 200, answer.text
    address = etree.fromstring(answer.content).find(".//{*}ActivityIdentifier/{*}Address")
    assert address is not None and address.text
    return address.text


def test_a_client_retrying_over_soap_gets_the_same_epr(server: LiveServer) -> None:
    first = created_address(server, "urn:uuid:aaaaaaaa-0000-0000-0000-000000000001")
    assert created_address(server, "urn:uuid:aaaaaaaa-0000-0000-0000-000000000001") == first
    other = created_address(server, "urn:uuid:aaaaaaaa-0000-0000-0000-000000000002")
    assert other != first
