"""The counts the database keeps (bes.db.tally_rows) agree with counting the rows, whatever
changes them: creates, sweeps, transitions, the queue's claims and ends, deletes; on PostgreSQL
also when several sessions write at once, and after their slots are folded."""

from __future__ import annotations

import random
import threading
from collections import Counter

from sqlalchemy import Connection, create_engine, delete, func, select

from bes.db import activity_rows as rows
from bes.db import grid_rows as grid
from bes.db import tally_rows
from bes.db.store import Database
from bes.db.tables import activity, grid_job, tally
from bes.ids import ActivityId
from bes.states import ActivityState
from tests.db.test_overview_rows import SECOND, create, move
from tests.support.queue import T0, add_worker, claim, job


def truth(conn: Connection) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """Activities per (owner, state) by points, and grid jobs per state, counted row by row."""
    counted = conn.execute(
        select(activity.c.owner, activity.c.state, func.count())
        .where(activity.c.children == 0)
        .group_by(activity.c.owner, activity.c.state)
    )
    jobs = conn.execute(select(grid_job.c.state, func.count()).group_by(grid_job.c.state))
    return {(o, s): n for o, s, n in counted}, {s: n for s, n in jobs}


def kept(conn: Connection) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """The same, from the tally."""
    by_owner: Counter[tuple[str, str]] = Counter()
    for owner, state, n in conn.execute(
        select(tally.c.owner, tally.c.state, tally.c.n).where(tally.c.kind == "activity")
    ):
        by_owner[(owner, state)] += n
    return {k: n for k, n in by_owner.items() if n}, tally_rows.counts(conn, tally_rows.GRID_JOB)


def test_counts_follow_every_kind_of_change(db: Database) -> None:
    rng = random.Random(7)
    made: list[ActivityId] = []
    for i in range(60):
        made.append(create(db, rng.choice(["alice", "bob", "carol"]), T0 + i * SECOND))
    sweep = create(db, "alice", T0, children=3)
    points = [create(db, "alice", T0, parent=sweep) for _ in range(3)]
    for activity_id in rng.sample(made, 25):
        move(db, activity_id, rng.choice([ActivityState.RUNNING, ActivityState.CANCELLED]), T0)
    move(db, points[0], ActivityState.FAILED, T0)
    db.write_sync(grid.add_grid_jobs, [job(activity_id=a) for a in made[:10]])
    add_worker(db, "w1")
    assert len(claim(db, "w-w1", limit=4)) == 4
    assert db.read_sync(truth) == db.read_sync(kept)
    counts = db.read_sync(rows.count_by_state, "alice")
    assert counts[ActivityState.FAILED] == 1 and sum(counts.values()) == sum(
        n for (owner, _), n in db.read_sync(truth)[0].items() if owner == "alice"
    )
    assert db.read_sync(grid.queue_counts)[grid.GridState.LEASED] == 4

    def purge(conn: Connection, _: object) -> list[None]:  # as an administrator's SQL would
        conn.execute(delete(grid_job).where(grid_job.c.activity_id.in_(made[:5])))
        conn.execute(delete(activity).where(activity.c.id.in_([*made[:30], points[1]])))
        return [None]

    db.write_sync(purge, None)
    assert db.read_sync(truth) == db.read_sync(kept)
    assert db.write_sync(tally_rows.fold_tally, None) >= 0
    assert db.read_sync(truth) == db.read_sync(kept)


def test_the_migration_counts_what_is_already_stored(db: Database) -> None:
    for i in range(5):
        create(db, "alice", T0 + i * SECOND)

    def recount(conn: Connection, _: object) -> list[None]:  # what migration 0009 does
        conn.execute(delete(tally))
        tally_rows.create_triggers(conn)
        return [None]

    db.write_sync(recount, None)
    assert db.read_sync(rows.count_by_state, "alice")[ActivityState.PENDING] == 5
    create(db, "alice", T0)  # and the triggers are back
    assert db.read_sync(truth) == db.read_sync(kept)


def test_postgres_sessions_count_apart_and_fold_into_one(db: Database) -> None:
    if not db.url.startswith("postgresql"):
        return
    made = [create(db, "alice", T0 + i * SECOND) for i in range(40)]
    url = db.url.replace("postgresql://", "postgresql+psycopg://", 1)
    errors: list[BaseException] = []

    def writer(ids: list[ActivityId]) -> None:  # its own session, its own slot
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                for i, activity_id in enumerate(ids):
                    state = ActivityState.RUNNING if i % 2 else ActivityState.FAILED
                    rows.apply_transitions(
                        conn, [rows.Transition(id=activity_id, state=state, at=T0)]
                    )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=writer, args=(made[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    slots = db.read_sync(
        lambda c: c.execute(select(func.count(func.distinct(tally.c.slot)))).scalar()
    )
    assert slots >= 4  # the creates' session and the four writers
    assert db.read_sync(truth) == db.read_sync(kept)
    assert db.write_sync(tally_rows.fold_tally, None) > 0  # the writers' sessions have ended
    assert db.read_sync(truth) == db.read_sync(kept)
    live = db.read_sync(lambda c: c.execute(select(tally.c.slot).distinct()).scalars().all())
    assert len(live) <= 3  # slot 0 and the service's own sessions
    assert db.read_sync(rows.count_by_state, None)[ActivityState.FAILED] == 20
