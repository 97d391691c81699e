"""Read-only SQL for the status page and the metrics: pages of activities with when each
started and ended and which worker ran it, the workers' load and the queue (counts by state
are :func:`bes.db.activity_rows.count_by_state`, by points, and the queue's are kept
by the database, bes.db.tally_rows). SQLite and PostgreSQL alike.

Parameter sweeps appear as their points: a sweep's own row stands for its children and is
left out of the pages, so every job is listed once.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, func, select, tuple_

from bes.db import grid_rows
from bes.db.activity_rows import RECORD_COLUMNS, ActivityRecord, record_of
from bes.db.grid_rows import GridState
from bes.db.prepared import from_db_time
from bes.db.tables import activity, activity_event, grid_job, worker
from bes.ids import ActivityId
from bes.states import ActivityState

_CHUNK: Final = 500


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivityLine:
    """One activity as the status page lists it."""

    record: ActivityRecord
    worker: str | None
    """The desktop-grid worker that holds or last held its job."""
    started_at: dt.datetime | None
    """When it first became Running."""
    ended_at: dt.datetime | None
    """When it reached its terminal state."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerLoad:
    """A desktop-grid worker and what it holds now."""

    name: str
    last_seen_at: dt.datetime | None
    revoked: bool
    leases: int
    """Jobs leased to it right now."""
    max_vms: int | None
    """How many VMs it runs at once, as it said when it registered."""
    memory_mib: int | None
    """Memory it gives VMs, as it said when it registered."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSummary:
    """The desktop grid's queue: jobs per queue state and the oldest one waiting."""

    counts: dict[GridState, int]
    oldest_queued_at: dt.datetime | None


def activity_lines(
    conn: Connection,
    *,
    owner: str | None,
    state: ActivityState | None,
    limit: int,
    after: ActivityId | None = None,
) -> list[ActivityLine]:
    """Activities newest first (of one owner, or everyone's), optionally in one state,
    starting after the activity ``after`` (keyset pagination: no OFFSET, so a page deep in
    100,000 activities costs what the first does)."""
    query = select(*RECORD_COLUMNS).where(activity.c.children == 0)
    if owner is not None:
        query = query.where(activity.c.owner == owner)
    if state is not None:
        query = query.where(activity.c.state == state.value)
    if after is not None:
        mark = select(activity.c.created_at).where(activity.c.id == after).scalar_subquery()
        # A row-value comparison, which both databases answer from the (…, created_at, id)
        # indexes; the equivalent OR of two conditions makes SQLite scan.
        query = query.where(tuple_(activity.c.created_at, activity.c.id) < tuple_(mark, after))
    query = query.order_by(activity.c.created_at.desc(), activity.c.id.desc()).limit(limit)
    records = [record_of(row) for row in conn.execute(query)]
    return _lines(conn, records)


def activity_line(conn: Connection, record: ActivityRecord) -> ActivityLine:
    """One activity's line (worker and timing added to its record)."""
    return _lines(conn, [record])[0]


def _lines(conn: Connection, records: Sequence[ActivityRecord]) -> list[ActivityLine]:
    ids = [r.id for r in records]
    workers: dict[str, str] = {}
    started: dict[str, dt.datetime] = {}
    for i in range(0, len(ids), _CHUNK):
        # By activity, not by the activity's backend_job_id: a worker may lease the job
        # moments before the dispatcher has recorded that id on the activity.
        found = conn.execute(
            select(grid_job.c.activity_id, worker.c.name)
            .select_from(grid_job.join(worker, worker.c.id == grid_job.c.worker_id))
            .where(grid_job.c.activity_id.in_(ids[i : i + _CHUNK]))
            .order_by(grid_job.c.queued_at)
        )
        workers.update((activity_id, name) for activity_id, name in found)
        rows = conn.execute(
            select(activity_event.c.activity_id, func.min(activity_event.c.at))
            .where(
                activity_event.c.activity_id.in_(ids[i : i + _CHUNK]),
                activity_event.c.state == ActivityState.RUNNING.value,
            )
            .group_by(activity_event.c.activity_id)
        )
        started.update((a, from_db_time(at)) for a, at in rows)
    return [
        ActivityLine(
            record=r,
            worker=workers.get(r.id),
            started_at=started.get(r.id),
            ended_at=r.changed_at if r.state.terminal else None,
        )
        for r in records
    ]


def worker_loads(conn: Connection, limit: int) -> list[WorkerLoad]:
    """Workers, most recently heard of first, with the leases each holds now."""
    held = conn.execute(
        select(grid_job.c.worker_id, func.count())
        .where(grid_job.c.state == GridState.LEASED.value)
        .group_by(grid_job.c.worker_id)
    )
    leases: dict[str, int] = {worker_id: n for worker_id, n in held}
    rows = conn.execute(
        select(worker.c.id, worker.c.name, worker.c.last_seen_at, worker.c.revoked_at)
        .add_columns(worker.c.facts)
        .order_by(worker.c.last_seen_at.desc().nulls_last(), worker.c.name)
        .limit(limit)
    )
    out = []
    for worker_id, name, last_seen_at, revoked_at, facts in rows:
        known = _facts(facts)
        out.append(
            WorkerLoad(
                name=name,
                last_seen_at=from_db_time(last_seen_at) if last_seen_at is not None else None,
                revoked=revoked_at is not None,
                leases=leases.get(worker_id, 0),
                max_vms=_int(known.get("max_vms")),
                memory_mib=_int(known.get("max_memory_mib")),
            )
        )
    return out


def queue_summary(conn: Connection) -> QueueSummary:
    """Jobs per queue state and when the oldest job still waiting was queued."""
    counts = grid_rows.queue_counts(conn)
    oldest = conn.execute(
        select(func.min(grid_job.c.queued_at)).where(grid_job.c.state == GridState.QUEUED.value)
    ).scalar_one_or_none()
    return QueueSummary(
        counts=counts, oldest_queued_at=from_db_time(oldest) if oldest is not None else None
    )


def _facts(text: str | None) -> dict[str, Any]:
    try:
        found = json.loads(text) if text else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
