"""The once-only upkeep (bes.upkeep), on SQLite and PostgreSQL: of several replicas' Upkeeps on
one database only the duty's holder runs the backends' housekeeping; it renews the duty, gives
it up at shutdown so another takes over at once, and loses it to another once it lapses; on
PostgreSQL it folds the tally's slots of ended sessions."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import insert, select

from bes.backends.fake import FakeBackend
from bes.db import duty_rows, tally_rows
from bes.db.store import Database
from bes.db.tables import tally
from bes.upkeep import DUTY, DUTY_S, Upkeep
from tests.support.postgres import fresh_database

pytestmark = pytest.mark.anyio


class Counting(FakeBackend):
    """A backend whose housekeeping is due at every round."""

    housekeeping_interval_s = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.rounds = 0

    def housekeeping(self) -> None:
        self.rounds += 1


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def replica(db: Database, name: str, clock: Clock) -> tuple[Upkeep, Counting]:
    backend = Counting()
    return Upkeep(db, {"fake": backend}, holder=name, clock=clock), backend


async def test_only_the_holder_keeps_house_and_another_takes_over(db: Database) -> None:
    clock = Clock()
    (a, grid_a), (b, grid_b) = replica(db, "a", clock), replica(db, "b", clock)
    for _ in range(3):
        assert await a.round()
        assert not await b.round()
    assert (grid_a.rounds, grid_b.rounds) == (3, 0)
    (held,) = await db.read(duty_rows.duties, DUTY)
    assert held.holder == "a" and held.until == clock.now + dt.timedelta(seconds=DUTY_S)

    await a.release()  # a stops: b takes over at its next round, with no wait
    assert await b.round() and grid_b.rounds == 1
    assert not await a.round()

    # b dies without a word: once its duty lapses, a takes it.
    clock.now += dt.timedelta(seconds=DUTY_S - 1)
    assert not await a.round()
    clock.now += dt.timedelta(seconds=2)
    assert await a.round() and grid_a.rounds == 4


async def test_run_gives_the_duty_up_when_stopped(db: Database) -> None:
    clock = Clock()
    upkeep, grid = replica(db, "a", clock)
    stop = asyncio.Event()
    running = asyncio.create_task(upkeep.run(stop))
    while not grid.rounds:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(running, 5)
    (duty,) = await db.read(duty_rows.duties, DUTY)
    assert duty.until < clock.now  # given up: anyone may take it
    other, _ = replica(db, "b", clock)
    assert await other.round()


@pytest.fixture
def pg_db(postgres_admin_url: str) -> Iterator[Database]:
    database = Database(fresh_database(postgres_admin_url, "upkeep_fold"))
    database.migrate()
    try:
        yield database
    finally:
        database.close()


@pytest.mark.postgres
async def test_the_holder_folds_the_tally_of_ended_sessions(pg_db: Database) -> None:
    db = pg_db

    def add(conn: object, items: object) -> list[None]:
        conn.execute(  # type: ignore[attr-defined]
            insert(tally).values(kind="activity", owner="alice", state="Pending", slot=2**30, n=3)
        )
        return [None]

    await db.write(add, None)  # a slot of a session that has ended (no such backend pid)
    before = await db.read(tally_rows.counts, tally_rows.ACTIVITY)
    upkeep, _ = replica(db, "a", Clock())
    assert await upkeep.round()
    assert await db.read(tally_rows.counts, tally_rows.ACTIVITY) == before  # totals unchanged
    slots = await db.read(lambda conn: list(conn.execute(select(tally.c.slot)).scalars()))
    assert 2**30 not in slots
