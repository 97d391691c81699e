"""The status page's and the metrics' SQL on SQLite and PostgreSQL: pages newest first with
keyset paging, filters by owner and state, timing and workers, counts, the grid's load."""

from __future__ import annotations

import datetime as dt

from bes.db import activity_rows as rows
from bes.db import grid_rows as grid
from bes.db import overview_rows as overview
from bes.db.store import Database
from bes.ids import ActivityId, new_activity_id
from bes.states import ActivityState, SubState
from tests.support.queue import T0, add_worker, claim, job

SECOND = dt.timedelta(seconds=1)


def create(
    db: Database, owner: str, at: dt.datetime, *, children: int = 0, parent: str | None = None
) -> ActivityId:
    activity_id = new_activity_id()
    new = rows.NewActivity(
        id=activity_id,
        owner=owner,
        job_name=f"job-{owner}",
        document="<JobDefinition/>",
        job="{}",
        backend="desktopgrid",
        at=at,
        children=children,
        parent_id=ActivityId(parent) if parent else None,
    )
    assert db.write_sync(rows.create_activities, new)
    return activity_id


def move(db: Database, activity_id: ActivityId, state: ActivityState, at: dt.datetime) -> None:
    transition = rows.Transition(id=activity_id, state=state, at=at)
    assert db.write_sync(rows.apply_transitions, transition).applied


def lines(db: Database, **kwargs: object) -> list[overview.ActivityLine]:
    query = {"owner": None, "state": None, "limit": 50, **kwargs}
    return db.read_sync(overview.activity_lines, **query)  # type: ignore[arg-type]


def test_pages_go_newest_first_and_on_from_the_last_one_shown(db: Database) -> None:
    # Two activities share a creation time: the id breaks the tie, so none is skipped.
    made = [create(db, "alice", T0 + i * SECOND) for i in range(5)]
    made.append(create(db, "alice", T0 + 4 * SECOND))
    create(db, "bob", T0 + 10 * SECOND)
    everyone = [line.record.id for line in lines(db)]
    assert len(everyone) == 7 and everyone[0] != made[-1]  # bob's is the newest
    expected = [i for i in everyone if i in made]
    seen: list[ActivityId] = []
    after = None
    while True:
        page = lines(db, owner="alice", limit=2, after=after)
        if not page:
            break
        seen += [line.record.id for line in page]
        after = page[-1].record.id
    assert seen == expected
    assert [line.record.created_at for line in lines(db, owner="alice")] == sorted(
        (line.record.created_at for line in lines(db, owner="alice")), reverse=True
    )


def test_a_line_knows_its_worker_and_when_it_started_and_ended(db: Database) -> None:
    ran = create(db, "alice", T0)
    waiting = create(db, "alice", T0 + SECOND)
    new_job = job(activity_id=ran, at=T0 + SECOND)
    assert db.write_sync(rows.set_backend_job, (ran, new_job.id, T0 + SECOND, None, None))
    db.write_sync(grid.add_grid_jobs, [new_job])
    worker = add_worker(db, "lab-pc")
    db.write_sync(grid.register_worker, (worker, {"max_vms": 2, "max_memory_mib": 2048}, T0))
    assert claim(db, worker, now=T0 + 2 * SECOND)
    step = rows.Transition(
        id=ran, state=ActivityState.RUNNING, substate=SubState.EXECUTING, at=T0 + 3 * SECOND
    )
    assert db.write_sync(rows.apply_transitions, step).applied
    move(db, ran, ActivityState.FINISHED, T0 + 9 * SECOND)

    by_id = {line.record.id: line for line in lines(db)}
    assert by_id[ran].worker == "lab-pc"
    assert by_id[ran].started_at == T0 + 3 * SECOND
    assert by_id[ran].ended_at == T0 + 9 * SECOND
    assert by_id[waiting].worker is None and by_id[waiting].started_at is None
    assert by_id[waiting].ended_at is None
    assert [line.record.id for line in lines(db, state=ActivityState.FINISHED)] == [ran]

    (load,) = db.read_sync(overview.worker_loads, 10)
    assert (load.name, load.leases, load.max_vms, load.memory_mib) == ("lab-pc", 1, 2, 2048)
    assert load.last_seen_at == T0 and not load.revoked


def test_counts_leave_out_the_sweep_that_stands_for_its_points(db: Database) -> None:
    sweep = create(db, "alice", T0, children=2)
    points = [create(db, "alice", T0, parent=sweep) for _ in range(2)]
    create(db, "bob", T0)
    move(db, points[0], ActivityState.CANCELLED, T0 + SECOND)
    counts = db.read_sync(rows.count_by_state, None)
    assert counts[ActivityState.PENDING] == 2 and counts[ActivityState.CANCELLED] == 1
    mine = db.read_sync(rows.count_by_state, "alice")
    assert sum(mine.values()) == 2
    assert sweep not in {line.record.id for line in lines(db)}


def test_the_queue_says_how_long_its_oldest_job_waits(db: Database) -> None:
    empty = db.read_sync(overview.queue_summary)
    assert empty.oldest_queued_at is None and sum(empty.counts.values()) == 0
    db.write_sync(grid.add_grid_jobs, [job(at=T0 + i * SECOND) for i in range(3)])
    claim(db, add_worker(db, "lab-pc"), now=T0 + 5 * SECOND)  # takes the oldest
    summary = db.read_sync(overview.queue_summary)
    assert summary.counts[grid.GridState.QUEUED] == 2
    assert summary.counts[grid.GridState.LEASED] == 1
    assert summary.oldest_queued_at == T0 + SECOND
    (load,) = db.read_sync(overview.worker_loads, 10)
    assert load.leases == 1 and load.last_seen_at is None and load.max_vms is None


def test_a_job_leased_before_its_activity_records_it_shows_its_worker(db: Database) -> None:
    # The dispatcher records the backend job id on the activity after the grid has the job;
    # a worker can lease it in between, and the page must not lose the worker meanwhile.
    early = create(db, "alice", T0)
    db.write_sync(grid.add_grid_jobs, [job(activity_id=early, at=T0)])
    assert claim(db, add_worker(db, "lab-pc"), now=T0 + SECOND)
    (line,) = lines(db)
    assert line.record.backend_job_id is None and line.worker == "lab-pc"
