"""The activity registry and state machine, with the scripted fake backend."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from bes.activities import Activities, TerminateOutcome
from bes.backends.base import JobState, JobStatus
from bes.backends.fake import FakeBackend, FakeConfig
from bes.db import activity_rows as rows
from bes.db.store import Database
from bes.errors import NotAcceptingNewActivities, NotAuthorized, UnsupportedFeature
from bes.jsdl import load_job_definition
from bes.principal import Principal
from bes.states import ActivityState, SubState, can_transition
from tests.support.soap import HELLO_JSDL

pytestmark = pytest.mark.anyio

ALICE = Principal(name="alice")
BOB = Principal(name="bob")
ADMIN = Principal(name="root", admin=True)
JOB = load_job_definition(HELLO_JSDL)


def registry(db: Database, fake: FakeBackend | None = None) -> Activities:
    if fake is None:
        return Activities(db)
    return Activities(db, backends={"fake": fake}, default_backend="fake")


async def wait_for(
    activities: Activities,
    caller: Principal,
    activity_id: str,
    state: ActivityState,
    timeout_s: float = 5.0,
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        await activities.dispatch_once()
        await activities.poll_once()
        record = (await activities.statuses(caller, [activity_id]))[activity_id]
        if record.state is state:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"{activity_id} did not reach {state} (is {record.state}/{record.substate})")


def test_state_machine_table() -> None:
    s = ActivityState
    allowed = {(a, b) for a in s for b in s if a != b and can_transition(a, b)}
    assert allowed == {
        (s.PENDING, s.RUNNING),
        (s.PENDING, s.CANCELLED),
        (s.PENDING, s.FAILED),
        (s.RUNNING, s.FINISHED),
        (s.RUNNING, s.CANCELLED),
        (s.RUNNING, s.FAILED),
    }
    assert all(not can_transition(t, t) for t in s if t.terminal)


async def test_activity_runs_to_finished_with_every_transition_recorded(db: Database) -> None:
    fake = FakeBackend()
    activities = registry(db, fake)
    activity_id = await activities.create(ALICE, JOB, "<doc/>")
    await wait_for(activities, ALICE, activity_id, ActivityState.FINISHED)
    record = (await activities.statuses(ALICE, [activity_id]))[activity_id]
    assert record.exit_code == 0 and record.backend == "fake" and record.backend_job_id
    history = await activities.history(ALICE, activity_id)
    states = [(state, substate) for _, state, substate, _ in history]
    assert states[0] == ("Pending", "Queued")
    assert ("Pending", "Submitted") in states
    assert states[-1] == ("Finished", None)
    assert states.index(("Pending", "Submitted")) < [s for s, _ in states].index("Running")
    times = [t for t, *_ in history]
    assert times == sorted(times) and all(t.tzinfo is dt.UTC for t in times)


async def test_pending_to_finished_records_the_missed_running(db: Database) -> None:
    fake = FakeBackend(FakeConfig(script=((0.0, JobStatus(state=JobState.FINISHED, exit_code=3)),)))
    activities = registry(db, fake)
    activity_id = await activities.create(ALICE, JOB, "<doc/>")
    await wait_for(activities, ALICE, activity_id, ActivityState.FINISHED)
    states = [s for _, s, _, _ in await activities.history(ALICE, activity_id)]
    assert states[-2:] == ["Running", "Finished"]
    assert (await activities.statuses(ALICE, [activity_id]))[activity_id].exit_code == 3


async def test_nothing_leaves_a_terminal_state(db: Database) -> None:
    activities = registry(db)
    activity_id = await activities.create(ALICE, JOB, "<doc/>")
    (result,) = (await activities.terminate(ALICE, [activity_id])).values()
    assert result.outcome is TerminateOutcome.TERMINATED
    now = dt.datetime.now(dt.UTC)
    for target in ActivityState:
        applied = await db.write(
            rows.apply_transitions, rows.Transition(id=activity_id, state=target, at=now)
        )
        assert not applied.applied and applied.state is ActivityState.CANCELLED


async def test_terminate_while_running_eventually(db: Database) -> None:
    running = ((0.0, JobStatus(state=JobState.RUNNING, substate=SubState.EXECUTING)),)
    fake = FakeBackend(FakeConfig(script=running, cancel_delay_s=0.2))
    activities = registry(db, fake)
    activity_id = await activities.create(ALICE, JOB, "<doc/>")
    await wait_for(activities, ALICE, activity_id, ActivityState.RUNNING)
    (result,) = (await activities.terminate(ALICE, [activity_id])).values()
    assert result.outcome is TerminateOutcome.WILL_APPLY_LATER
    assert result.record is not None and result.record.substate is SubState.TERMINATING
    await wait_for(activities, ALICE, activity_id, ActivityState.CANCELLED)


async def test_terminate_finished_is_not_applicable(db: Database) -> None:
    activities = registry(db, FakeBackend())
    activity_id = await activities.create(ALICE, JOB, "<doc/>")
    await wait_for(activities, ALICE, activity_id, ActivityState.FINISHED)
    (result,) = (await activities.terminate(ALICE, [activity_id])).values()
    assert result.outcome is TerminateOutcome.NOT_APPLICABLE
    assert result.record is not None and result.record.state is ActivityState.FINISHED


async def test_refused_submission_fails_with_the_reason(db: Database) -> None:
    fake = FakeBackend(FakeConfig(refuse_job_names=frozenset({"hello"})))
    activities = registry(db, fake)
    activity_id = await activities.create(ALICE, JOB, "<doc/>")
    await wait_for(activities, ALICE, activity_id, ActivityState.FAILED)
    record = (await activities.statuses(ALICE, [activity_id]))[activity_id]
    assert record.message is not None and "refuses job 'hello'" in record.message


async def test_cancelled_before_submission_is_never_submitted(db: Database) -> None:
    fake = FakeBackend()
    activities = registry(db, fake)
    activity_id = await activities.create(ALICE, JOB, "<doc/>")
    await activities.terminate(ALICE, [activity_id])
    assert await activities.dispatch_once() == 0
    assert fake.submitted == []


async def test_owners_see_only_their_own_activities(db: Database) -> None:
    activities = registry(db)
    mine = await activities.create(ALICE, JOB, "<doc/>")
    assert await activities.statuses(BOB, [mine]) == {}
    assert await activities.documents(BOB, [mine]) == {}
    assert (await activities.terminate(BOB, [mine]))[mine].outcome is TerminateOutcome.UNKNOWN
    assert (await activities.statuses(ALICE, [mine]))[mine].state is ActivityState.PENDING
    assert mine in await activities.statuses(ADMIN, [mine])
    assert (await activities.summary(BOB)).counts[ActivityState.PENDING] == 0
    assert (await activities.summary(ADMIN)).counts[ActivityState.PENDING] == 1


async def test_only_admins_manage_the_factory(db: Database) -> None:
    activities = registry(db)
    with pytest.raises(NotAuthorized):
        await activities.set_accepting(ALICE, False)
    await activities.set_accepting(ADMIN, False)
    with pytest.raises(NotAcceptingNewActivities):
        await activities.create(ALICE, JOB, "<doc/>")
    await activities.set_accepting(ADMIN, True)
    await activities.create(ALICE, JOB, "<doc/>")


async def test_backend_capabilities_are_checked_before_acceptance(db: Database) -> None:
    class PosixOnly(FakeBackend):
        capabilities = frozenset()

    activities = Activities(db, backends={"fake": PosixOnly()}, default_backend="fake")
    with pytest.raises(UnsupportedFeature) as info:
        await activities.create(ALICE, JOB, "<doc/>")
    assert info.value.features == ("jsdl-posix:POSIXApplication",)
    assert (await activities.summary(ADMIN)).total_active == 0


async def test_concurrent_creates_are_group_committed(db: Database) -> None:
    activities = registry(db)
    before = db.transactions
    ids = await asyncio.gather(*(activities.create(ALICE, JOB, "<doc/>") for _ in range(200)))
    assert len(set(ids)) == 200
    assert db.transactions - before < 200
    assert len(await activities.statuses(ALICE, ids)) == 200
