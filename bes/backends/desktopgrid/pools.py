"""The desktop grid's pools at run time: who can work, where each job goes, why each waits.

:mod:`~bes.backends.desktopgrid.routing` decides; this module gathers what it decides from
(live workers' offers, configured cloud pools, what each autoscaler last said) and keeps the
decisions in the queue: a job's pool and reason are stored when it is queued, and again by
the reasons pass when workers, pools or the queue change, never recomputed on a status call.
The pass runs on one replica at a time (a duty, :mod:`bes.db.duty_rows`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bes.backends.desktopgrid import routing
from bes.backends.desktopgrid.routing import VOLUNTEERS, CloudPool, Needs, Offer
from bes.db import duty_rows
from bes.db import grid_rows as grid
from bes.db.cloud_rows import AUTOSCALER_DUTY, live_instances
from bes.db.committer import BatchFunction
from bes.db.duty import Duty
from bes.db.store import Database
from bes.ids import BackendJobId

log = logging.getLogger(__name__)

REASONS_DUTY: Final = "reasons"
_OFFERS_TTL_S: Final = 2.0
_PASS_EVERY_S: Final = 2.0
_DUTY_S: Final = 30.0
_FULL_PASS_EVERY_S: Final = 300.0
"""How often the reasons pass looks at every queued job, not only the groups whose reason
changed and the jobs queued since the last pass (a job put back in the queue keeps its place
and the reason it had: this pass is what refreshes it)."""
_UPDATE_BATCH: Final = 500
"""Jobs whose reason one write transaction changes."""
_PLACEMENTS_KEPT: Final = 256
"""Distinct placements remembered per read of the offers."""
_SINCE_MARGIN: Final = dt.timedelta(seconds=10)
"""How far before the last pass an incremental pass looks: another replica places a job with
offers up to two seconds old, and replicas' clocks differ a little."""


@dataclass(slots=True, kw_only=True)
class _Offers:
    """What :meth:`Pools.offers` read, when, and the placements decided from it."""

    at: float
    """time.monotonic() of the read."""
    offers: list[Offer]
    statuses: dict[str, str]
    placements: dict[tuple[Needs, str | None], Placement] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Where a new job goes and why it waits there."""

    pool: str
    pinned: bool
    reason: str


class Pools:
    """Routing and waiting reasons for one desktop grid.

    Args:
        db: The service's database (read from here).
        write: Runs a batch write function on one item (the backend's single writer).
        clock: The current time (aware, UTC).
        live_s: A worker counts as registered if it was heard of this recently.
        holder: This replica's name, for duties.
    """

    def __init__(
        self,
        db: Database,
        *,
        write: Callable[[BatchFunction[Any, Any], Any], Any],
        clock: Callable[[], dt.datetime],
        live_s: float,
        holder: str,
    ) -> None:
        self._db = db
        self._write = write
        self._clock = clock
        self._live_s = live_s
        self.holder = holder
        """This replica's name, for duties."""
        self._duty = Duty(name=REASONS_DUTY, holder=holder, hold_s=_DUTY_S, clock=clock)
        self._clouds: tuple[CloudPool, ...] = ()
        self._offers: _Offers | None = None
        self._lock = threading.Lock()
        self._last_pass = 0.0
        self._reasons: dict[tuple[Any, ...], str | None] = {}
        """Per group (its pool and requirements), the reason the last pass stored."""
        self._reasons_at: dt.datetime | None = None
        """When the last pass began; None: the next pass looks at every queued job."""
        self._full_pass_at: dt.datetime | None = None
        self._seen: tuple[Any, ...] = ()
        """The offers and pool statuses the last pass worked with."""

    # ------------------------------------------------------------------ configuration

    def set_clouds(self, clouds: Sequence[CloudPool]) -> None:
        """The configured cloud pools, in the order the policy tries them."""
        self._clouds = tuple(clouds)
        with self._lock:
            self._offers = None  # (placements made without these pools)

    @property
    def clouds(self) -> tuple[CloudPool, ...]:
        """The configured cloud pools."""
        return self._clouds

    def names(self) -> list[str]:
        """Every pool a job may name."""
        return [VOLUNTEERS, *(c.name for c in self._clouds)]

    # ------------------------------------------------------------------ state

    def offers(self, *, fresh: bool = False) -> tuple[list[Offer], dict[str, str]]:
        """Live workers' offers, and what each cloud pool's autoscaler last said (by pool);
        cached for two seconds unless ``fresh``."""
        read = self._read_offers(fresh=fresh)
        return read.offers, read.statuses

    def _read_offers(self, *, fresh: bool = False) -> _Offers:
        with self._lock:
            cached = self._offers
            if cached is not None and not fresh and time.monotonic() - cached.at < _OFFERS_TTL_S:
                return cached
        horizon = self._clock() - dt.timedelta(seconds=self._live_s)
        workers = self._db.read_sync(grid.live_workers, horizon)
        offers = [Offer.from_facts(w.name, w.pool, w.facts) for w in workers]
        statuses = {
            d.name.removeprefix(AUTOSCALER_DUTY): d.status
            for d in self._db.read_sync(duty_rows.duties, AUTOSCALER_DUTY)
            if d.status
        }
        read = _Offers(at=time.monotonic(), offers=offers, statuses=statuses)
        with self._lock:
            self._offers = read
        return read

    def offers_stale(self) -> bool:
        """Whether :meth:`offers` would read the database (its cache is older than two
        seconds), so a caller in the event loop calls it from a thread instead."""
        with self._lock:
            cached = self._offers
        return cached is None or time.monotonic() - cached.at >= _OFFERS_TTL_S

    def place(self, needs: Needs, named: str | None) -> Placement:
        """Where a new job goes (the routing policy) and why it will wait there.

        Decided once per distinct (requirements, named pool) for as long as the offers it was
        decided from are cached: the jobs of a workflow or a sweep mostly ask for the same.
        """
        cached = self._read_offers()
        key = (needs, named)
        found = cached.placements.get(key)
        if found is not None:
            return found
        volunteers = [o for o in cached.offers if o.pool == VOLUNTEERS]
        decided = routing.route(needs, named=named, volunteers=volunteers, clouds=self._clouds)
        reason = routing.waiting_reason(
            needs,
            decided.pool,
            workers=cached.offers,
            pool_status=cached.statuses.get(decided.pool),
        )
        found = Placement(pool=decided.pool, pinned=named is not None, reason=reason)
        if len(cached.placements) < _PLACEMENTS_KEPT:
            cached.placements[key] = found
        return found

    # ------------------------------------------------------------------ the reasons pass

    def refresh(self, *, now: bool = False) -> list[grid.Rerouted]:
        """Move bursting jobs, store reasons that changed; return the jobs changed.

        At most every two seconds (unless ``now``), and only on the replica holding the duty.
        The queue is grouped again only when what a reason depends on changed (the workers'
        offers, the cloud pools' statuses), when jobs may burst to a cloud pool, or every five
        minutes: grouping a large queue costs a few hundred milliseconds of CPU.
        """
        with self._lock:
            if not now and time.monotonic() - self._last_pass < _PASS_EVERY_S:
                return []
            self._last_pass = time.monotonic()
        take = self._duty.take()
        if not self._duty.taken(self._write(duty_rows.take_duties, take)):
            self._reasons_at = self._full_pass_at = None  # whoever holds the duty keeps them
            return []
        at = take.now
        last_full = self._full_pass_at
        first = last_full is None  # (just took the duty)
        if last_full is None or (at - last_full).total_seconds() >= _FULL_PASS_EVERY_S:
            self._full_pass_at = at
            self._reasons_at = None
        offers, statuses = self.offers(fresh=True)
        seen = (tuple(offers), tuple(sorted(statuses.items())))
        bursting = any(cloud.burst_after_s is not None for cloud in self._clouds)
        if self._reasons_at is not None and not bursting and seen == self._seen:
            # Nothing a reason depends on changed since the last pass, and the jobs queued
            # since were placed with these offers: no need to group the whole queue again.
            return []
        self._seen = seen
        groups = self._db.read_sync(grid.queued_groups)
        changed = self._burst(groups, at, offers, statuses)
        if changed:
            groups = self._db.read_sync(grid.queued_groups)
            self._reasons_at = None
        since = self._reasons_at - _SINCE_MARGIN if self._reasons_at is not None else None
        if first and not changed:
            # Taking over: the reasons stored were kept by the last holder until at most a
            # hold ago. A group whose newest job has the reason the group has now is taken
            # as kept (its jobs queued since are looked at); any other, as changed.
            since = at - dt.timedelta(seconds=_DUTY_S) - _SINCE_MARGIN
            self._reasons = {
                _group_key(group): self._db.read_sync(grid.newest_reason, group) for group in groups
            }
        reasons: dict[tuple[Any, ...], str | None] = {}
        for group in groups:
            key = _group_key(group)
            reason = reasons[key] = routing.waiting_reason(
                _needs(group), group.pool, workers=offers, pool_status=statuses.get(group.pool)
            )
            if since is not None and self._reasons.get(key) == reason:
                # Unchanged: only the group's jobs queued since the last pass (an index range).
                changed.extend(self._write(grid.set_reasons, (group, reason, since)))
                continue
            # Changed, or a full pass: the group's jobs with another reason are found by a
            # read, off the event loop, and updated by id, a few hundred per transaction.
            stale = self._db.read_sync(grid.other_reasons, group, reason)
            for start in range(0, len(stale), _UPDATE_BATCH):
                chunk = (stale[start : start + _UPDATE_BATCH], group.pool, reason)
                changed.extend(self._write(grid.set_job_reasons, chunk))
        self._reasons, self._reasons_at = reasons, at
        return changed

    def _burst(
        self,
        groups: Sequence[grid.QueuedGroup],
        at: dt.datetime,
        offers: list[Offer],
        statuses: dict[str, str],
    ) -> list[grid.Rerouted]:
        """Move the volunteers' jobs that waited too long to the cloud pool they burst to."""
        changed: list[grid.Rerouted] = []
        bursts = []
        for group in groups:
            if group.pool != VOLUNTEERS:
                continue
            waited_s = (at - group.oldest).total_seconds()
            target = routing.burst_pool(_needs(group), waited_s, self._clouds)
            if target is None:
                continue
            cloud = next(c for c in self._clouds if c.name == target)
            after_s = cloud.burst_after_s or 0.0
            reason = routing.waiting_reason(
                _needs(group), target, workers=offers, pool_status=statuses.get(target)
            )
            before = at - dt.timedelta(seconds=after_s)
            note = f"moved from pool {VOLUNTEERS} after {after_s:.0f} s unclaimed"
            bursts.append((group, target, before, reason, note))
        for item in bursts:
            changed.extend(self._write(grid.burst, item))
        return changed

    def analysis(self, job_id: BackendJobId) -> dict[str, Any]:
        """Everything ``bes why`` shows of a job: requirements, pool, position, and for each
        live worker of the pool (or every pool, if none) what it lacks."""
        rows = self._db.read_sync(grid.grid_statuses, [job_id])
        found = rows.get(job_id)
        if found is None:
            return {}
        group = self._db.read_sync(grid.job_needs, job_id)
        needs = _needs(group) if group is not None else None
        offers, statuses = self.offers(fresh=True)
        members = [o for o in offers if o.pool == found.pool] or offers
        out: dict[str, Any] = {
            "state": found.state.value,
            "pool": found.pool,
            "reason": found.reason,
            "message": found.message,
            "attempts": f"{found.attempts} of {found.max_attempts}",
            "pools": self.names(),
        }
        if needs is not None:
            out["needs"] = {
                "memory_mib": needs.memory_mib,
                "vcpus": needs.vcpus,
                "disk_mib": needs.disk_mib,
                "network": needs.network,
                "hypervisors": list(needs.hypervisors) or ["any"],
            }
            out["workers"] = [
                {"name": o.name, "pool": o.pool, "lacks": routing.misfits(needs, o)}
                for o in sorted(members, key=lambda o: o.name)[:50]
            ]
        if found.worker:
            out["worker"] = found.worker
        position = self._db.read_sync(grid.queue_position, job_id)
        if position is not None:
            out["position"] = position
        if found.pool in statuses:
            out["pool_status"] = statuses[found.pool]
        if found.pool != VOLUNTEERS:
            out["instances"] = [
                {
                    "name": i.name,
                    "state": i.state,
                    "since": i.created_at.isoformat(),
                    "host": i.host,
                    "message": i.message,
                }
                for i in self._db.read_sync(live_instances, found.pool)
            ]
        return out


def _group_key(group: grid.QueuedGroup) -> tuple[Any, ...]:
    return (
        group.pool,
        group.memory_mib,
        group.vcpus,
        group.disk_mib,
        group.network,
        group.hypervisors,
    )


def _needs(group: grid.QueuedGroup) -> Needs:
    return Needs(
        memory_mib=group.memory_mib,
        vcpus=group.vcpus,
        disk_mib=group.disk_mib,
        network=group.network,
        hypervisors=group.hypervisors,
    )
