"""Retention on SQLite and PostgreSQL: a purge removes exactly the activities that ended before
the cutoff, with everything kept of them (history, documents, queue entries, requests, kept
outputs), sweeps once their last point goes, in batches; the counts stay right; on SQLite the
file gives the space back; the automatic purge runs only where the duty is held."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import Connection, func, insert, select

from bes.backends.base import Backend, BackendContext
from bes.backends.desktopgrid import DesktopGridBackend
from bes.backends.fake import FakeBackend
from bes.db import activity_rows as rows
from bes.db import duty_rows, retention_rows
from bes.db import grid_rows as grid
from bes.db.store import Database
from bes.db.tables import activity, activity_document, activity_event, create_request, grid_job
from bes.errors import ConfigError
from bes.ids import ActivityId, BackendJobId, new_activity_id
from bes.retention import DUTY, KEEP_REQUESTS, PurgeReport, Retention, _adapted, vacuum
from bes.states import ActivityState
from tests.db.test_overview_rows import create, move
from tests.db.test_tally import kept, truth
from tests.support.queue import T0, job

DAY = dt.timedelta(days=1)
NOW = T0 + 40 * DAY
MONTH = 30 * DAY  # purge what ended before T0 + 10 days


def purge(
    db: Database,
    *,
    older_than: dt.timedelta = MONTH,
    batch: int = 1000,
    backends: dict[str, Backend] | None = None,
) -> PurgeReport:
    retention = Retention(db, (backends or {}).get, clock=lambda: NOW, pause_s=0)
    try:
        return asyncio.run(retention.purge_once(older_than, batch=batch))
    finally:
        retention.close()


def end(db: Database, activity_id: ActivityId, state: ActivityState, at: dt.datetime) -> None:
    """Move an activity into terminal ``state`` at ``at`` (through Running if need be)."""
    transition = rows.Transition(id=activity_id, state=state, at=at, late_running=True)
    assert db.write_sync(rows.apply_transitions, transition).applied


def ended(db: Database, owner: str, created: dt.datetime, state: ActivityState) -> ActivityId:
    made = create(db, owner, created)
    end(db, made, state, created + DAY)
    return made


def rows_of(conn: Connection, ids: Sequence[str]) -> dict[str, int]:
    """How many rows of each kind the activities ``ids`` still have."""
    tables = {
        "activity": activity.c.id,
        "activity_document": activity_document.c.id,
        "activity_event": activity_event.c.activity_id,
        "grid_job": grid_job.c.activity_id,
        "create_request": create_request.c.activity_id,
    }
    return {
        name: conn.execute(select(func.count()).where(column.in_(list(ids)))).scalar_one()
        for name, column in tables.items()
    }


def remember_request(db: Database, key: str, activity_id: str, at: dt.datetime) -> None:
    def add(conn: Connection, items: Sequence[None]) -> list[None]:
        conn.execute(insert(create_request).values(key=key, activity_id=activity_id, at=at))
        return [None] * len(items)

    db.write_sync(add, None)


def test_a_purge_removes_exactly_what_ended_before_the_cutoff(db: Database) -> None:
    old = [
        ended(db, "alice", T0, ActivityState.FINISHED),
        ended(db, "alice", T0 + DAY, ActivityState.CANCELLED),
        ended(db, "bob", T0 + 2 * DAY, ActivityState.FAILED),
    ]
    running = create(db, "alice", T0)
    move(db, running, ActivityState.RUNNING, T0 + DAY)
    pending = create(db, "bob", T0)
    recent = ended(db, "alice", T0 + 20 * DAY, ActivityState.FINISHED)
    late = create(db, "bob", T0)  # created long ago, ended after the cutoff
    move(db, late, ActivityState.FAILED, T0 + 15 * DAY)
    for activity_id in (old[0], recent):
        db.write_sync(grid.add_grid_jobs, [job(activity_id=activity_id, at=T0)])
    remember_request(db, "k-old", old[1], T0 + DAY)
    kept_ids = [running, pending, recent, late]
    before = db.read_sync(rows_of, kept_ids)

    report = purge(db)

    assert (report.activities, report.sweeps) == (3, 0)
    assert db.read_sync(rows_of, old) == dict.fromkeys(before, 0)
    assert set(db.read_sync(rows.get_activities, [*old, *kept_ids])) == set(kept_ids)
    assert db.read_sync(rows_of, kept_ids) == before  # nothing of the others went
    assert db.read_sync(truth) == db.read_sync(kept)
    counts = db.read_sync(rows.count_by_state, None)
    assert counts[ActivityState.FINISHED] == 1 and counts[ActivityState.FAILED] == 1
    assert counts[ActivityState.CANCELLED] == 0
    assert purge(db).activities == 0  # nothing more to do
    assert purge(db, older_than=DAY).activities == 2  # recent and late, not the unended


def test_many_activities_go_in_batches_of_their_own(db: Database) -> None:
    made = [
        ended(db, "alice", T0 + i * dt.timedelta(minutes=1), ActivityState.FINISHED)
        for i in range(23)
    ]

    report = purge(db, batch=5)

    assert report.activities == 23 and db.read_sync(retention_rows.count_activities) == 0
    assert report.batches == 5  # each committed before the next began
    assert db.read_sync(rows_of, made)["activity_event"] == 0
    assert db.read_sync(truth) == db.read_sync(kept)


def test_the_service_purges_sqlite_in_short_transactions(db: Database) -> None:
    # The service's writes wait behind each of the purge's transactions on SQLite (one
    # writer); an administrator's bes purge deletes a whole batch per transaction.
    def make() -> None:
        for i in range(120):
            ended(db, "alice", T0 + i * dt.timedelta(minutes=1), ActivityState.FINISHED)

    make()
    short = purge(db, batch=1000)
    make()
    whole = Retention(db, {}.get, clock=lambda: NOW, pause_s=0, short=False)
    try:
        rest = asyncio.run(whole.purge_once(MONTH, batch=1000))
    finally:
        whole.close()
    assert short.activities == rest.activities == 120
    assert rest.batches == 1
    if db.dialect == "sqlite":
        assert short.batches > 1
    else:  # (the purge writes on a connection of its own: nobody waits behind it)
        assert short.batches == 1


def test_transactions_are_sized_to_take_about_ten_milliseconds() -> None:
    assert _adapted(50, 50, 0.02) == 25
    assert _adapted(50, 50, 0.001) == 75, "growing by half at most"
    assert _adapted(50, 12, 0.001) == 50, "a short last chunk says nothing"
    assert _adapted(900, 900, 1e-6) == 1000 and _adapted(10, 10, 5.0) == 5


def test_a_sweep_goes_with_its_last_point(db: Database) -> None:
    sweep = create(db, "alice", T0, children=3)
    points = [create(db, "alice", T0, parent=sweep) for _ in range(3)]
    end(db, points[0], ActivityState.FINISHED, T0 + DAY)
    end(db, points[1], ActivityState.FAILED, T0 + DAY)
    move(db, points[2], ActivityState.RUNNING, T0 + DAY)

    first = purge(db, batch=1)

    assert (first.activities, first.sweeps) == (2, 0)
    summary = db.read_sync(rows.sweep_summaries, [sweep])[sweep]
    assert summary.children == (points[2],)
    assert db.read_sync(truth) == db.read_sync(kept)

    move(db, points[2], ActivityState.FINISHED, T0 + 2 * DAY)
    second = purge(db)

    assert (second.activities, second.sweeps) == (1, 1)
    assert db.read_sync(retention_rows.count_activities) == 0
    assert db.read_sync(truth) == db.read_sync(kept)


def test_old_requests_are_forgotten_and_recent_ones_kept(db: Database) -> None:
    first = create(db, "alice", NOW - 10 * DAY)
    second = create(db, "alice", NOW - DAY)
    remember_request(db, "k-old", first, NOW - KEEP_REQUESTS - DAY)
    remember_request(db, "k-new", second, NOW - DAY)

    report = purge(db)

    assert report.requests == 1 and report.activities == 0
    assert db.read_sync(rows_of, [first])["create_request"] == 0
    assert db.read_sync(rows_of, [second])["create_request"] == 1


def test_kept_outputs_go_before_their_activities(db: Database, tmp_path: Path) -> None:
    backend = DesktopGridBackend.build(BackendContext(db=db, data_dir=tmp_path))
    made, jobs = [], []
    for i in range(3):
        activity_id = create(db, "alice", T0 + i * DAY)
        new_job = job(activity_id=activity_id, at=T0)
        assert db.write_sync(rows.set_backend_job, (activity_id, new_job.id, T0, None, None))
        db.write_sync(grid.add_grid_jobs, [new_job])
        end(db, activity_id, ActivityState.FINISHED, T0 + (i + 1) * DAY)
        for epoch in (1, 2):  # a lost attempt's files, and the kept ones
            with backend.outputs.writer(new_job.id, epoch, "stdout") as out:
                out.write(b"x" * 1000)
        made.append(activity_id)
        jobs.append(new_job.id)
    keep_job = BackendJobId("g-kept")
    with backend.outputs.writer(keep_job, 1, "stdout") as out:
        out.write(b"mine")

    report = purge(db, backends={"desktopgrid": backend})

    assert report.activities == 3 and report.output_bytes == 6000
    assert all(backend.outputs.files(j, 2) == {} for j in jobs)
    assert backend.outputs.files(keep_job, 1) == {"stdout": 4}
    assert db.read_sync(rows_of, made)["grid_job"] == 0
    assert db.read_sync(grid.grid_statuses, jobs) == {}


class _Broken(FakeBackend):
    """A backend whose files cannot be removed (a storage that is down)."""

    def discard(self, ids: Sequence[BackendJobId]) -> int:
        raise OSError("storage unreachable")


def test_activities_whose_files_cannot_go_are_kept_for_the_next_purge(db: Database) -> None:
    made = create(db, "alice", T0)
    assert db.write_sync(rows.set_backend_job, (made, BackendJobId("g1"), T0, None, None))
    end(db, made, ActivityState.FINISHED, T0 + DAY)
    other = ended(db, "bob", T0, ActivityState.CANCELLED)

    report = purge(db, backends={"desktopgrid": _Broken()})

    assert report.activities == 1 and report.kept_back == 1
    assert set(db.read_sync(rows.get_activities, [made, other])) == {made}
    assert purge(db, backends={"desktopgrid": FakeBackend()}).activities == 1


def test_the_automatic_purge_runs_where_the_duty_is_held_and_gives_it_back(
    db: Database,
) -> None:
    for i in range(4):
        ended(db, "alice", T0 + i * DAY, ActivityState.FINISHED)
    other = duty_rows.Take(name=DUTY, holder="other", now=NOW, until=NOW + DAY)
    assert db.write_sync(duty_rows.take_duties, other)
    retention = Retention(db, lambda name: None, holder="me", clock=lambda: NOW, pause_s=0)

    async def scenario() -> tuple[int, int, list[duty_rows.DutyRecord]]:
        stop = asyncio.Event()
        task = asyncio.create_task(retention.run(stop, keep_ended=MONTH, every_s=0.2))
        await asyncio.sleep(1.5)  # another replica holds the duty: nothing happens here
        while_held = await db.read(retention_rows.count_activities)
        await db.write(duty_rows.release_duties, ("retention", "other"))
        deadline = time.monotonic() + 20
        while await db.read(retention_rows.count_activities) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = await db.read(retention_rows.count_activities)
        stop.set()
        await asyncio.wait_for(task, 10)
        return while_held, left, await db.read(duty_rows.duties, DUTY)

    while_held, left, duties = asyncio.run(scenario())

    assert (while_held, left) == (4, 0)
    (record,) = duties
    assert record.holder == "me" and record.until < NOW  # given back at the end


def _fill(db: Database, n: int, *, ended_at: dt.datetime) -> None:
    """``n`` ended activities with 8 KiB documents, written in big transactions."""
    document = "<JobDefinition>" + "x" * 8192 + "</JobDefinition>"
    for start in range(0, n, 500):
        ids = [ActivityId(new_activity_id()) for _ in range(min(500, n - start))]
        for activity_id in ids:
            new = rows.NewActivity(
                id=activity_id,
                owner="alice",
                job_name="fill",
                document=document,
                job="{}",
                backend=None,
                at=ended_at - DAY,
            )
            db.committer.submit(rows.create_activities, new)
        done = [
            db.committer.submit(
                rows.apply_transitions,
                rows.Transition(id=i, state=ActivityState.FINISHED, at=ended_at, late_running=True),
            )
            for i in ids
        ]
        assert all(f.result().applied for f in done)


def _file_bytes(path: Path) -> int:
    with (
        contextlib.closing(sqlite3.connect(path)) as conn,
        conn,
    ):  # a checkpoint folds the WAL into the file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def test_a_new_sqlite_database_gives_the_space_back(tmp_path: Path) -> None:
    path = tmp_path / "bes.sqlite3"
    with Database(f"sqlite:///{path}") as db:
        db.migrate()
        _fill(db, 2000, ended_at=T0)
        ended(db, "bob", NOW - DAY, ActivityState.FINISHED)  # kept
        full = db.read_sync(retention_rows.file_space)
        assert full is not None and full.auto_vacuum == 2  # incremental, set at creation
        full_bytes = _file_bytes(path)

        report = purge(db, batch=300)

        after = db.read_sync(retention_rows.file_space)
        assert report.activities == 2000 and after is not None
        assert after.free_pages < 16
        assert after.pages < full.pages / 4
        assert report.freed_bytes >= (full.pages - after.pages - 16) * full.page_size
    assert _file_bytes(path) < full_bytes / 4


def test_vacuum_converts_a_database_made_before_incremental_auto_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with (
        contextlib.closing(sqlite3.connect(path)) as conn,
        conn,
    ):  # a table before our pragmas: auto_vacuum stays off
        conn.execute("CREATE TABLE made_before (x)")
    url = f"sqlite:///{path}"
    with Database(url) as db:
        db.migrate()
        _fill(db, 500, ended_at=T0)
        space = db.read_sync(retention_rows.file_space)
        assert space is not None and space.auto_vacuum == 0
        report = purge(db)
        assert report.activities == 500 and report.freed_bytes == 0  # reused, not given back
        left = db.read_sync(retention_rows.file_space)
        assert left is not None and left.free_pages > 500

    before, after = vacuum(url)

    assert before.auto_vacuum == 0 and after.auto_vacuum == 2
    assert after.free_pages == 0 and after.pages < before.pages / 4
    with Database(url) as db:  # and from now on it gives space back by itself
        _fill(db, 300, ended_at=T0)
        assert purge(db).freed_bytes > 300 * 8192


def test_vacuum_refuses_postgresql() -> None:
    with pytest.raises(ConfigError, match="SQLite"):
        vacuum("postgresql://nobody@127.0.0.1:1/none")
