"""SQL of retention: finding ended activities older than a cutoff and deleting them in batches.

An activity has ended when its state is terminal; it ended at ``changed_at`` (nothing changes
a terminal activity). The search walks the index ``(state, created_at, id)`` one terminal
state at a time, in keyset order: an activity created after the cutoff cannot have ended
before it, so ``created_at < cutoff`` bounds the walk exactly, and the keyset skips what an
earlier batch already looked at (activities created long ago that ended recently).

Deleting an activity deletes its history, documents, file references and CreateActivity
requests with it (foreign keys ``ON DELETE CASCADE``); its desktop-grid queue entry and tunnel
record carry no foreign key and are deleted here. The counts of :mod:`bes.db.tally_rows`
follow by their triggers. A parameter sweep's own row stands for its points and never ends:
it goes with the last of its points.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Connection, String, delete, func, literal, select, tuple_

from bes.db.tables import UtcDateTime, activity, create_request, grid_job, tunnel
from bes.ids import ActivityId, BackendJobId
from bes.states import TERMINAL_STATES, ActivityState

_CHUNK: Final = 500  # ids per IN (...) list, well under every driver's parameter limit
_TERMINAL: Final = sorted(s.value for s in TERMINAL_STATES)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ended:
    """An ended activity found by :func:`ended_activities`."""

    id: ActivityId
    created_at: dt.datetime
    backend: str | None
    backend_job_id: BackendJobId | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Purge:
    """Delete these activities, those among them that still ended before ``before``."""

    ids: tuple[ActivityId, ...]
    before: dt.datetime
    give_back: int = 0
    """Then give up to this many free pages back (:func:`incremental_vacuum`), in the same
    transaction: one commit, not two."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Purged:
    """What one :class:`Purge` deleted."""

    activities: int
    """Activities (plain ones and sweeps' points)."""
    sweeps: int
    """Parameter sweeps' own rows, gone with their last points."""
    pages: int = 0
    """Free pages given back."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestPurge:
    """Delete at most ``limit`` CreateActivity requests answered before ``before``."""

    before: dt.datetime
    limit: int


def ended_activities(
    conn: Connection,
    state: ActivityState,
    before: dt.datetime,
    limit: int,
    after: tuple[dt.datetime, ActivityId] | None = None,
) -> list[Ended]:
    """Up to ``limit`` activities in terminal ``state`` that ended before ``before``, oldest
    created first, after the keyset ``after`` (``(created_at, id)`` of the last one seen)."""
    query = (
        select(activity.c.id, activity.c.created_at, activity.c.backend, activity.c.backend_job_id)
        .where(
            activity.c.state == state.value,
            activity.c.created_at < before,
            activity.c.changed_at < before,
        )
        .order_by(activity.c.created_at, activity.c.id)
        .limit(limit)
    )
    if after is not None:
        mark = tuple_(literal(after[0], UtcDateTime()), literal(after[1], String()))
        query = query.where(tuple_(activity.c.created_at, activity.c.id) > mark)
    return [
        Ended(
            id=ActivityId(row.id),
            created_at=row.created_at,
            backend=row.backend,
            backend_job_id=BackendJobId(row.backend_job_id) if row.backend_job_id else None,
        )
        for row in conn.execute(query)
    ]


def purge_activities(conn: Connection, items: Sequence[Purge]) -> list[Purged]:
    """Delete ended activities (re-checked: still ended before the cutoff), with their queue
    entries and tunnel records, and the sweeps left without points."""
    out = []
    for item in items:
        gone = sweeps = 0
        for i in range(0, len(item.ids), _CHUNK):
            chunk = list(item.ids[i : i + _CHUNK])
            rows = conn.execute(
                select(activity.c.id, activity.c.parent_id).where(
                    activity.c.id.in_(chunk),
                    activity.c.state.in_(_TERMINAL),
                    activity.c.changed_at < item.before,
                    activity.c.children == 0,
                )
            ).all()
            ids = [r.id for r in rows]
            if not ids:
                continue
            conn.execute(delete(grid_job).where(grid_job.c.activity_id.in_(ids)))
            conn.execute(delete(tunnel).where(tunnel.c.activity_id.in_(ids)))
            gone += conn.execute(delete(activity).where(activity.c.id.in_(ids))).rowcount
            sweeps += _orphaned_sweeps(conn, {r.parent_id for r in rows if r.parent_id})
        pages = incremental_vacuum(conn, [item.give_back])[0] if item.give_back else 0
        out.append(Purged(activities=gone, sweeps=sweeps, pages=pages))
    return out


def _orphaned_sweeps(conn: Connection, parents: set[str]) -> int:
    """Delete the sweeps among ``parents`` that have no point left; how many went."""
    if not parents:
        return 0
    kept = set(
        conn.execute(
            select(activity.c.parent_id)
            .where(activity.c.parent_id.in_(sorted(parents)))
            .group_by(activity.c.parent_id)
        ).scalars()
    )
    orphans = sorted(parents - kept)
    if not orphans:
        return 0
    return int(
        conn.execute(
            delete(activity).where(activity.c.id.in_(orphans), activity.c.children > 0)
        ).rowcount
    )


def purge_requests(conn: Connection, items: Sequence[RequestPurge]) -> list[int]:
    """Delete old CreateActivity requests (a client retries within minutes; the record only
    has to outlive that); how many went, per item."""
    out = []
    for item in items:
        oldest = (
            select(create_request.c.key).where(create_request.c.at < item.before).limit(item.limit)
        )
        out.append(
            int(
                conn.execute(
                    delete(create_request).where(create_request.c.key.in_(oldest.scalar_subquery()))
                ).rowcount
            )
        )
    return out


# ------------------------------------------------------------------------------ SQLite space


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSpace:
    """How an SQLite database file's pages are used."""

    auto_vacuum: int
    """0 none, 1 full, 2 incremental (only then can :func:`incremental_vacuum` give space
    back)."""
    page_size: int
    pages: int
    free_pages: int


def file_space(conn: Connection) -> FileSpace | None:
    """The SQLite file's pages; None on other databases."""
    if conn.dialect.name != "sqlite":
        return None

    def pragma(name: str) -> int:
        return int(conn.exec_driver_sql(f"PRAGMA {name}").scalar_one())

    return FileSpace(
        auto_vacuum=pragma("auto_vacuum"),
        page_size=pragma("page_size"),
        pages=pragma("page_count"),
        free_pages=pragma("freelist_count"),
    )


def incremental_vacuum(conn: Connection, items: Sequence[int]) -> list[int]:
    """Give up to that many free pages back to the file system (SQLite with
    ``auto_vacuum=INCREMENTAL``; elsewhere nothing); how many were freed, per item."""
    space = file_space(conn)
    if space is None or space.auto_vacuum != 2:
        return [0] * len(items)
    free = space.free_pages
    out = []
    # The driver steps a statement once, and each step of incremental_vacuum moves one page:
    # run it once per page, on the raw cursor (a few microseconds each).
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        for pages in items:
            n = min(max(pages, 0), free)
            for _ in range(n):
                cursor.execute("PRAGMA incremental_vacuum(1)")
            free -= n
            out.append(n)
    finally:
        cursor.close()
    return out


def count_activities(conn: Connection) -> int:
    """Every activity row (plain, points and sweeps); for reports and tests."""
    return int(conn.execute(select(func.count()).select_from(activity)).scalar_one())
