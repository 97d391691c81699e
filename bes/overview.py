"""Read-only views of the service for people and for monitoring: a caller's activities page
by page (when each started and ended, where it ran), one activity with its history, the
desktop grid's workers and queue, and the figures ``/metrics`` exports.

The rule is the registry's: a caller sees only its own activities (administrators see all),
and an activity of another owner looks exactly like one that does not exist. Workers, the
queue and the service-wide figures are for administrators only. No SOAP and no XML here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from bes.activities import Activities
from bes.backends.base import kept_files
from bes.clock import utc_now
from bes.db import activity_rows as rows
from bes.db import cloud_rows, file_rows
from bes.db import overview_rows as overview
from bes.db.overview_rows import ActivityLine, QueueSummary, WorkerLoad
from bes.db.store import Database
from bes.errors import NotAuthorized
from bes.ids import ActivityId
from bes.metrics import Census
from bes.principal import Principal
from bes.states import ActivityState

MAX_PAGE: Final = 500
"""Most activities one page lists."""
MAX_WORKERS: Final = 500
"""Most workers the grid view lists (most recently heard of first)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivityPage:
    """One page of a caller's activities, newest first.

    Attributes:
        lines: The activities on this page.
        more: Older activities (in the same filter) follow this page.
        counts: The caller's activities per state (all of them, not only this page's).
        accepting: Whether the factory accepts new activities.
    """

    lines: Sequence[ActivityLine]
    more: bool
    counts: Mapping[ActivityState, int]
    accepting: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """One transition of an activity, as stored."""

    at: dt.datetime
    state: str
    substate: str | None
    message: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivityDetail:
    """One activity with its history, oldest transition first, and its kept files
    (relative name, bytes)."""

    line: ActivityLine
    history: Sequence[History]
    files: Sequence[tuple[str, int]] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class GridView:
    """The desktop grid as its administrator sees it."""

    workers: Sequence[WorkerLoad]
    queue: QueueSummary


class Overview:
    """The read-only views (see the module docstring).

    Args:
        activities: The registry (its visibility rule and sweep summaries are reused).
        db: The database.
        clock: The current time (aware, UTC).
    """

    def __init__(
        self,
        activities: Activities,
        db: Database,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._activities = activities
        self._db = db
        self._clock = clock

    async def page(
        self,
        caller: Principal,
        *,
        state: ActivityState | None = None,
        limit: int = 50,
        after: ActivityId | None = None,
    ) -> ActivityPage:
        """The caller's activities newest first, optionally in one state, after ``after``
        (the last activity of the previous page); at most :data:`MAX_PAGE`."""
        owner = None if caller.admin else caller.name
        limit = max(1, min(limit, MAX_PAGE))
        lines = await self._db.read(
            overview.activity_lines, owner=owner, state=state, limit=limit + 1, after=after
        )
        counts = await self._db.read(rows.count_by_state, owner)
        accepting = await self._activities.is_accepting()
        return ActivityPage(
            lines=lines[:limit], more=len(lines) > limit, counts=counts, accepting=accepting
        )

    async def detail(self, caller: Principal, activity_id: ActivityId) -> ActivityDetail | None:
        """One visible activity with its history; None if the caller may not see it."""
        record = (await self._activities.statuses(caller, [activity_id])).get(activity_id)
        if record is None:
            return None
        line = await self._db.read(overview.activity_line, record)
        events = await self._db.read(rows.events, activity_id)
        history = [History(at=at, state=s, substate=sub, message=m) for at, s, sub, m in events]
        directory = await self._activities.outputs(caller, activity_id) if record.outputs else None
        files = await asyncio.to_thread(kept_files, directory) if directory is not None else []
        return ActivityDetail(line=line, history=history, files=files)

    async def grid(self, caller: Principal) -> GridView:
        """The desktop grid's workers and queue.

        Raises:
            NotAuthorized: The caller is not an administrator.
        """
        _require_admin(caller, "the workers and the queue")
        workers = await self._db.read(overview.worker_loads, MAX_WORKERS)
        queue = await self._db.read(overview.queue_summary)
        return GridView(workers=workers, queue=queue)

    async def census(self, caller: Principal) -> Census:
        """The service-wide figures of ``/metrics``.

        Raises:
            NotAuthorized: The caller is not an administrator.
        """
        _require_admin(caller, "the metrics")
        counts = await self._db.read(rows.count_by_state, None)
        queue = await self._db.read(overview.queue_summary)
        oldest = queue.oldest_queued_at
        stored_bytes, stored_files = await self._db.read(file_rows.store_totals)
        return Census(
            activities={state.value: n for state, n in counts.items()},
            queue={state.value: n for state, n in queue.counts.items()},
            oldest_queued_s=(
                max(0.0, (self._clock() - oldest).total_seconds()) if oldest is not None else None
            ),
            accepting=await self._activities.is_accepting(),
            stored_bytes=stored_bytes,
            stored_files=stored_files,
            cloud_instances=await self._db.read(cloud_rows.instance_counts),
        )


def _require_admin(caller: Principal, what: str) -> None:
    if not caller.admin:
        raise NotAuthorized(f"{caller.name} may not see {what}: they are for administrators")
