"""The waiting reasons pass (bes.backends.desktopgrid.pools) keeps every queued job's reason
without grouping and rewriting the whole queue every two seconds: the queue is grouped again
when the workers' offers change (or jobs may burst to a cloud), a group whose reason is
unchanged has only its newly queued jobs looked at, and every five minutes every job is (a
job put back in the queue keeps the reason it had). A replica taking the duty over trusts the
reasons it finds kept rather than looking at every job again."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, select, update

from bes.backends.desktopgrid.pools import Pools
from bes.backends.desktopgrid.routing import Needs
from bes.db import grid_rows as grid
from bes.db.store import Database
from bes.db.tables import grid_job
from tests.support.queue import T0, add_worker, job


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def reasons(db: Database) -> dict[str, str | None]:
    def read(conn: Connection) -> dict[str, str | None]:
        return {r.activity_id: r.reason for r in conn.execute(select(grid_job))}

    return db.read_sync(read)


def stale(db: Database, activity_id: str) -> None:
    """What a stale placement or a job put back in the queue leaves: another reason."""

    def write(conn: Connection, _: object) -> list[None]:
        conn.execute(
            update(grid_job).where(grid_job.c.activity_id == activity_id).values(reason="stale")
        )
        return [None]

    db.write_sync(write, None)


def test_the_pass_regroups_the_queue_only_when_reasons_may_have_changed(db: Database) -> None:
    clock = Clock()
    pools = Pools(db, write=db.write_sync, clock=clock, live_s=60, holder="r1")
    first = job(at=T0 - dt.timedelta(minutes=1))
    db.write_sync(grid.add_grid_jobs, [first])

    clock.now = T0 + dt.timedelta(seconds=1)
    assert [c.activity_id for c in pools.refresh(now=True)] == [first.activity_id]
    reason = reasons(db)[first.activity_id]
    assert reason  # no worker at all: it says so

    # Nothing a reason depends on changed: the queue is not grouped again (a job placed
    # meanwhile got its reason from the same offers).
    stale(db, first.activity_id)
    clock.now = T0 + dt.timedelta(seconds=31)
    assert pools.refresh(now=True) == []
    assert reasons(db) == {first.activity_id: "stale"}

    clock.now = T0 + dt.timedelta(minutes=5, seconds=2)  # five minutes after the first pass
    assert [c.activity_id for c in pools.refresh(now=True)] == [first.activity_id]
    assert reasons(db) == {first.activity_id: reason}


def test_a_group_whose_reason_is_unchanged_has_only_its_new_jobs_looked_at(
    db: Database,
) -> None:
    old, new = job(at=T0), job(at=T0 + dt.timedelta(seconds=30))
    db.write_sync(grid.add_grid_jobs, [old, new])
    (group,) = db.read_sync(grid.queued_groups)
    since = T0 + dt.timedelta(seconds=20)
    changed = db.write_sync(grid.set_reasons, (group, "no worker", since))
    assert [c.activity_id for c in changed] == [new.activity_id]
    assert reasons(db) == {old.activity_id: None, new.activity_id: "no worker"}
    stale = db.read_sync(grid.other_reasons, group, "no worker")
    changed = db.write_sync(grid.set_job_reasons, (stale, group.pool, "no worker"))
    assert [c.activity_id for c in changed] == [old.activity_id]


def test_a_replica_taking_the_duty_over_trusts_the_reasons_it_finds_kept(db: Database) -> None:
    clock = Clock()
    first = Pools(db, write=db.write_sync, clock=clock, live_s=60, holder="r1")
    old, new = job(at=T0 - dt.timedelta(minutes=2)), job(at=T0)
    db.write_sync(grid.add_grid_jobs, [old, new])
    clock.now = T0 + dt.timedelta(seconds=1)
    assert len(first.refresh(now=True)) == 2
    reason = reasons(db)[new.activity_id]

    # The group's newest job has the reason it has now: kept, only recent jobs looked at.
    stale(db, old.activity_id)
    second = Pools(db, write=db.write_sync, clock=clock, live_s=60, holder="r2")
    clock.now = T0 + dt.timedelta(seconds=32)  # r1 stopped: its hold (30 s) lapsed
    assert second.refresh(now=True) == []
    assert reasons(db) == {old.activity_id: "stale", new.activity_id: reason}

    # Its newest job has another: the whole group is looked at.
    stale(db, new.activity_id)
    third = Pools(db, write=db.write_sync, clock=clock, live_s=60, holder="r3")
    clock.now = T0 + dt.timedelta(seconds=63)
    assert len(third.refresh(now=True)) == 2
    assert set(reasons(db).values()) == {reason}


def test_a_new_job_is_placed_with_the_offers_of_the_moment(db: Database) -> None:
    # Placements are remembered per requirements, but only with the offers they came from.
    clock = Clock()
    pools = Pools(db, write=db.write_sync, clock=clock, live_s=60, holder="r1")
    needs = Needs(memory_mib=2048, vcpus=1, disk_mib=1024, network=False, hypervisors=())
    alone = pools.place(needs, None)
    assert alone.pool == "volunteers" and alone.reason.startswith("no worker is registered")
    assert pools.place(needs, None) == alone

    worker = add_worker(db, "lab-pc")
    facts = {"max_memory_mib": 1024, "max_vcpus": 2, "hypervisors": {"qemu": "7.2 tcg"}}
    db.write_sync(grid.register_worker, (worker, facts, T0))
    pools.offers(fresh=True)  # (read anew every two seconds in the service)
    small = pools.place(needs, None)
    assert small.reason == (
        "1 worker of pool volunteers, none can run it: lab-pc lacks memory 2048 MiB "
        "(it offers 1024 MiB)"
    )
    fits = pools.place(
        Needs(memory_mib=512, vcpus=1, disk_mib=1024, network=False, hypervisors=()), None
    )
    assert fits.reason != small.reason
