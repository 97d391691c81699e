"""Rows of the desktop grid's queue for the database tests: jobs, workers and claims."""

from __future__ import annotations

import datetime as dt

from bes.db import grid_rows as grid
from bes.db.store import Database
from bes.ids import ActivityId, BackendJobId, new_activity_id

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
LEASE = dt.timedelta(seconds=60)


def job(
    *,
    activity_id: ActivityId | None = None,
    memory_mib: int = 256,
    vcpus: int = 1,
    network: bool = False,
    hypervisors: tuple[str, ...] = (),
    max_attempts: int = 3,
    at: dt.datetime = T0,
    pool: str = "volunteers",
) -> grid.NewGridJob:
    """A job of ``activity_id`` (else of a new activity id), its id ``g`` + that id."""
    activity = activity_id or ActivityId(new_activity_id())
    return grid.NewGridJob(
        id=BackendJobId("g" + activity),
        activity_id=activity,
        memory_mib=memory_mib,
        vcpus=vcpus,
        disk_mib=1024,
        needs_network=network,
        hypervisors=hypervisors,
        max_attempts=max_attempts,
        at=at,
        pool=pool,
    )


def add_worker(db: Database, name: str, *, pool: str = "volunteers") -> str:
    """Register a worker called ``name``; its id."""
    assert db.write_sync(grid.create_worker, (f"w-{name}", name, "h" * 60 + name[:4], T0, pool))
    return f"w-{name}"


def claim(
    db: Database,
    worker: str,
    *,
    now: dt.datetime = T0,
    limit: int = 1,
    memory_mib: int = 4096,
    vcpus: int = 4,
    hypervisors: tuple[str, ...] = ("qemu",),
    network: bool = False,
    lease: dt.timedelta = LEASE,
) -> list[grid.Lease]:
    """What a roomy worker's claim at ``now`` leases (for ``lease``)."""
    return db.write_sync(
        grid.claim_grid_jobs,
        grid.Claim(
            worker_id=worker,
            limit=limit,
            memory_mib=memory_mib,
            vcpus=vcpus,
            disk_mib=100_000,
            hypervisors=hypervisors,
            network=network,
            now=now,
            until=now + lease,
        ),
    )
