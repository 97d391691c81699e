"""SQL for the desktop grid: workers, the job queue and its leases. SQLite and PostgreSQL alike.

A job is ``queued`` until a worker claims it; it is then ``leased`` to that worker until
``lease_until``, which heartbeats push forward. Every claim increments ``lease_epoch``, and
every report names the lease it is about (job, epoch, worker): a report about a lease that
expired or was taken over matches no row and is refused, so it can never overwrite the
result of the job's new owner. Expired leases go back to the queue until ``max_attempts``
claims were made, then the job fails with the reason.

Hot statements (token lookup, claim, heartbeat, completion) are :class:`Prepared`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    update,
)

from bes.db import tally_rows
from bes.db.prepared import Prepared, db_time, from_db_time
from bes.db.tables import activity, activity_document, grid_job, worker
from bes.ids import ActivityId, BackendJobId
from bes.states import SubState


class GridState(StrEnum):
    """States of a job in the desktop grid's queue."""

    QUEUED = "queued"
    """Waiting for a worker."""
    LEASED = "leased"
    """A worker has it, until its lease expires."""
    FINISHED = "finished"
    """The job ran and exited with status 0."""
    FAILED = "failed"
    """The job failed, or the grid gave up on it."""
    CANCELLED = "cancelled"
    """Cancelled on request."""


TERMINAL: Final = (GridState.FINISHED, GridState.FAILED, GridState.CANCELLED)


class LeaseAction(StrEnum):
    """What a heartbeat tells the worker about one lease."""

    CONTINUE = "continue"
    """Keep going; the lease was renewed."""
    CANCEL = "cancel"
    """Stop the job: its activity is being terminated. Release the lease afterwards."""
    LOST = "lost"
    """The lease is not the worker's any more (expired, or the job ended): drop the job."""
    SUSPEND = "suspend"
    """A VM lease's owner suspended it: pause its VM until CONTINUE comes again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRecord:
    """A registered worker."""

    id: str
    name: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    facts: dict[str, Any]
    last_seen_at: dt.datetime | None
    pool: str = "volunteers"
    draining: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class NewGridJob:
    """A job handed to the desktop grid, with what a worker needs to run it (the job itself is
    the activity's)."""

    id: BackendJobId
    activity_id: ActivityId
    memory_mib: int
    vcpus: int
    disk_mib: int
    needs_network: bool
    hypervisors: tuple[str, ...]
    """Hypervisors the job may run under; empty for any."""
    max_attempts: int
    at: dt.datetime
    pool: str = "volunteers"
    """The pool whose workers may claim it."""
    pinned: bool = False
    """The job named its pool (a burst never moves it)."""
    reason: str | None = None
    """Why it waits, for people."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """One worker asking for work that fits it."""

    worker_id: str
    limit: int
    memory_mib: int
    vcpus: int
    disk_mib: int
    hypervisors: tuple[str, ...]
    network: bool
    now: dt.datetime
    until: dt.datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseRef:
    """Which lease a report is about."""

    job_id: BackendJobId
    epoch: int
    worker_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """A job leased to a worker."""

    ref: LeaseRef
    activity_id: ActivityId
    job: str
    attempt: int
    max_attempts: int
    ran: bool = False
    """An earlier attempt had started the job."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Renewal:
    """What a heartbeat did to one lease."""

    action: LeaseAction
    activity_id: ActivityId | None
    """The lease's activity (None when the lease is lost)."""
    ran: bool = False
    began_executing: bool = False
    """This heartbeat is the first of the lease to report Executing (its VM runs)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ended:
    """A lease that a worker ended, and what became of its job."""

    state: GridState
    activity_id: ActivityId
    ran: bool
    message: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Expired:
    """A lease taken back because its worker went silent."""

    job_id: BackendJobId
    activity_id: ActivityId
    state: GridState
    message: str
    ran: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """A worker renewing one lease and saying what the job is doing."""

    ref: LeaseRef
    substate: str | None
    running: bool
    """The substate is one of the Running state's (the job has started)."""
    now: dt.datetime
    until: dt.datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Finish:
    """A worker ending its lease.

    Attributes:
        state: FINISHED or FAILED (the job ran to its end), QUEUED (give it back).
        retry: With QUEUED: the attempt counts and the job fails once none are left;
            otherwise (a hand-back on shutdown) it does not count.
    """

    ref: LeaseRef
    state: GridState
    exit_code: int | None = None
    message: str | None = None
    result: dict[str, Any] | None = None
    retry: bool = False
    now: dt.datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class GridJobStatus:
    """A queue row as the backend reports it."""

    id: BackendJobId
    activity_id: ActivityId
    state: GridState
    substate: str | None
    attempts: int
    max_attempts: int
    ran: bool
    cancel_requested: bool
    exit_code: int | None
    message: str | None
    result: dict[str, Any] | None
    worker: str | None
    pool: str = "volunteers"
    reason: str | None = None
    access: str | None = None
    """A VM lease's way in (bes.access JSON), as its worker reported it."""


# ------------------------------------------------------------------------------ workers


def create_worker(
    conn: Connection, items: Sequence[tuple[str, str, str, dt.datetime, str]]
) -> list[bool]:
    """Insert workers ``(id, name, token_hash, at, pool)``; False where the name is taken."""
    out = []
    for worker_id, name, token_hash, at, pool in items:
        taken = conn.execute(select(worker.c.id).where(worker.c.name == name)).first()
        if taken is not None:
            out.append(False)
            continue
        conn.execute(
            insert(worker).values(
                id=worker_id, name=name, token_hash=token_hash, created_at=at, pool=pool
            )
        )
        out.append(True)
    return out


def rotate_worker(
    conn: Connection, items: Sequence[tuple[str, str, str, dt.datetime]]
) -> list[None]:
    """Give worker ``name`` a new token hash (creating it if need be): ``(id, name, hash, at)``.

    Its earlier token stops working; a revoked worker is live again.
    """
    for worker_id, name, token_hash, at in items:
        updated = conn.execute(
            update(worker)
            .where(worker.c.name == name)
            .values(token_hash=token_hash, revoked_at=None)
        ).rowcount
        if not updated:
            conn.execute(
                insert(worker).values(id=worker_id, name=name, token_hash=token_hash, created_at=at)
            )
    return [None] * len(items)


def revoke_worker(conn: Connection, items: Sequence[tuple[str, dt.datetime]]) -> list[bool]:
    """Revoke the token of each named worker; False where there is no such live worker."""
    out = []
    for name, at in items:
        updated = conn.execute(
            update(worker)
            .where(worker.c.name == name, worker.c.revoked_at.is_(None))
            .values(revoked_at=at)
        ).rowcount
        out.append(bool(updated))
    return out


def register_worker(
    conn: Connection, items: Sequence[tuple[str, dict[str, Any], dt.datetime]]
) -> list[bool]:
    """Store the host facts a worker reported ``(id, facts, at)``; False if it is revoked."""
    out = []
    for worker_id, facts, at in items:
        updated = conn.execute(
            update(worker)
            .where(worker.c.id == worker_id, worker.c.revoked_at.is_(None))
            .values(facts=json.dumps(facts, sort_keys=True), last_seen_at=at)
        ).rowcount
        out.append(bool(updated))
    return out


_WORKER_COLUMNS: Final = (
    worker.c.id,
    worker.c.name,
    worker.c.created_at,
    worker.c.revoked_at,
    worker.c.facts,
    worker.c.last_seen_at,
    worker.c.pool,
    worker.c.draining_at,
)
_WORKER_BY_TOKEN: Final = Prepared(
    select(worker.c.id, worker.c.name, worker.c.revoked_at).where(
        worker.c.token_hash == bindparam("token_hash")
    )
)


def _worker(row: Sequence[Any]) -> WorkerRecord:
    id_, name, created_at, revoked_at, facts, last_seen_at, pool, draining_at = row
    return WorkerRecord(
        id=id_,
        name=name,
        created_at=from_db_time(created_at),
        revoked_at=from_db_time(revoked_at) if revoked_at is not None else None,
        facts=json.loads(facts) if facts else {},
        last_seen_at=from_db_time(last_seen_at) if last_seen_at is not None else None,
        pool=pool,
        draining=draining_at is not None,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerIdentity:
    """Who a worker token belongs to (what every worker call needs to know)."""

    id: str
    name: str
    revoked: bool


def worker_by_token(conn: Connection, token_hash: str) -> WorkerIdentity | None:
    """The worker holding the token with this sha256 (revoked ones too)."""
    rows = _WORKER_BY_TOKEN.fetchall(conn, {"token_hash": token_hash})
    if not rows:
        return None
    worker_id, name, revoked_at = rows[0]
    return WorkerIdentity(id=worker_id, name=name, revoked=revoked_at is not None)


_TOUCH: Final = Prepared(
    update(worker)
    .where(worker.c.id == bindparam("w"), worker.c.revoked_at.is_(None))
    .values(last_seen_at=bindparam("at"))
)


def touch_workers(conn: Connection, items: Sequence[tuple[str, dt.datetime]]) -> list[bool]:
    """Record that workers ``(id, at)`` were heard of; False for a revoked one."""
    return [_TOUCH.execute(conn, {"w": w, "at": db_time(conn, at)}) > 0 for w, at in items]


def list_workers(conn: Connection) -> list[WorkerRecord]:
    """Every worker, by name."""
    return [_worker(r) for r in conn.execute(select(*_WORKER_COLUMNS).order_by(worker.c.name))]


def live_workers(conn: Connection, since: dt.datetime) -> list[WorkerRecord]:
    """Workers that registered, were heard of since ``since``, and may claim (not revoked, not
    draining), by name: those the routing policy and the waiting reasons count."""
    query = (
        select(*_WORKER_COLUMNS)
        .where(
            worker.c.revoked_at.is_(None),
            worker.c.draining_at.is_(None),
            worker.c.facts.is_not(None),
            worker.c.last_seen_at >= since,
        )
        .order_by(worker.c.name)
    )
    return [_worker(r) for r in conn.execute(query)]


# ------------------------------------------------------------------------------ the queue


_INSERT_GRID_JOB: Final = Prepared(
    insert(grid_job),
    column_keys=[
        "id",
        "activity_id",
        "state",
        "memory_mib",
        "vcpus",
        "disk_mib",
        "needs_network",
        "hypervisors",
        "lease_epoch",
        "attempts",
        "max_attempts",
        "ran",
        "cancel_requested",
        "queued_at",
        "changed_at",
        "pool",
        "pinned",
        "reason",
    ],
)


def add_grid_jobs(conn: Connection, items: Sequence[Sequence[NewGridJob]]) -> list[None]:
    """Queue new jobs (each item a batch of them); prepared, as they are queued with every
    CreateActivity."""
    rows = []
    for batch in items:
        for j in batch:
            at = db_time(conn, j.at)
            rows.append(
                {
                    "id": j.id,
                    "activity_id": j.activity_id,
                    "state": GridState.QUEUED.value,
                    "memory_mib": j.memory_mib,
                    "vcpus": j.vcpus,
                    "disk_mib": j.disk_mib,
                    "needs_network": j.needs_network,
                    "hypervisors": _hypervisor_list(j.hypervisors),
                    "lease_epoch": 0,
                    "attempts": 0,
                    "max_attempts": j.max_attempts,
                    "ran": False,
                    "cancel_requested": False,
                    "queued_at": at,
                    "changed_at": at,
                    "pool": j.pool,
                    "pinned": j.pinned,
                    "reason": j.reason,
                }
            )
    _INSERT_GRID_JOB.executemany(conn, rows)
    return [None] * len(items)


def queue_jobs(conn: Connection, jobs: Sequence[NewGridJob]) -> None:
    """Queue new jobs, in the caller's transaction (with the activities they are for:
    :class:`bes.db.activity_rows.Enqueued`)."""
    add_grid_jobs(conn, [jobs])


def _hypervisor_list(names: Sequence[str]) -> str:
    """``,qemu,virtualbox,`` (so that LIKE '%,qemu,%' matches one name), or '' for any."""
    return "," + ",".join(names) + "," if names else ""


class _ByDialect:
    """One Prepared statement per dialect, where the SQL must differ (FOR UPDATE)."""

    def __init__(self, statements: dict[str, Prepared]) -> None:
        self._statements = statements

    def fetchall(self, conn: Connection, row: dict[str, Any]) -> list[tuple[Any, ...]]:
        statement = self._statements.get(conn.dialect.name, self._statements["sqlite"])
        return statement.fetchall(conn, row)


_CLAIMS: dict[tuple[str, ...], _ByDialect] = {}


def _claim_statement(hypervisors: tuple[str, ...]) -> _ByDialect:
    """The claim for a worker with these hypervisors, compiled once per distinct list."""
    found = _CLAIMS.get(hypervisors)
    if found is not None:
        return found
    if not all(name.isalnum() for name in hypervisors):
        raise ValueError(f"bad hypervisor names {hypervisors!r}")
    # The patterns are written into the SQL: SQLite prepares a statement again on every
    # execution when a LIKE pattern is a parameter (10x the cost of the claim itself).
    fits = [grid_job.c.hypervisors == ""] + [
        grid_job.c.hypervisors.like(literal_column(f"'%,{name},%'")) for name in hypervisors
    ]
    candidates = (
        select(grid_job.c.id)
        .where(
            grid_job.c.state == GridState.QUEUED.value,
            grid_job.c.cancel_requested.is_(False),
            grid_job.c.memory_mib <= bindparam("memory_mib"),
            grid_job.c.vcpus <= bindparam("vcpus"),
            grid_job.c.disk_mib <= bindparam("disk_mib"),
            or_(grid_job.c.needs_network.is_(False), bindparam("network") == true()),
            or_(*fits),
            grid_job.c.pool == _claiming_pool(bindparam("worker_id")),
        )
        .order_by(grid_job.c.queued_at)
        .limit(bindparam("limit"))
    )
    # PostgreSQL: replicas claiming at once skip each other's rows instead of queueing on
    # them. SQLite serializes writers (BEGIN IMMEDIATE), so the plain statement is atomic.
    skip_locked = candidates.with_for_update(skip_locked=True)
    statement = {
        name: Prepared(
            update(grid_job)
            .where(grid_job.c.id.in_(query.scalar_subquery()))
            .values(
                state=GridState.LEASED.value,
                substate=None,
                access=None,
                worker_id=bindparam("worker_id"),
                lease_epoch=grid_job.c.lease_epoch + 1,
                lease_until=bindparam("until"),
                attempts=grid_job.c.attempts + 1,
                changed_at=bindparam("now"),
            )
            .returning(
                grid_job.c.id,
                grid_job.c.activity_id,
                grid_job.c.lease_epoch,
                grid_job.c.attempts,
                grid_job.c.max_attempts,
                grid_job.c.ran,
            )
        )
        for name, query in (("sqlite", candidates), ("postgresql", skip_locked))
    }
    prepared = _ByDialect(statement)
    _CLAIMS[hypervisors] = prepared
    return prepared


def claim_grid_jobs(conn: Connection, items: Sequence[Claim]) -> list[list[Lease]]:
    """Lease queued jobs that fit each claiming worker: one ``UPDATE ... RETURNING`` each,
    so no job is ever leased to two workers."""
    out = []
    for c in items:
        rows = _claim_statement(tuple(sorted(c.hypervisors))).fetchall(
            conn,
            {
                "memory_mib": c.memory_mib,
                "vcpus": c.vcpus,
                "disk_mib": c.disk_mib,
                "network": c.network,
                "limit": c.limit,
                "worker_id": c.worker_id,
                "until": db_time(conn, c.until),
                "now": db_time(conn, c.now),
            },
        )
        out.append(
            [
                Lease(
                    ref=LeaseRef(job_id=BackendJobId(r[0]), epoch=r[2], worker_id=c.worker_id),
                    activity_id=ActivityId(r[1]),
                    job=_job_of(conn, r[1]),
                    attempt=r[3],
                    max_attempts=r[4],
                    ran=bool(r[5]),
                )
                for r in rows
            ]
        )
    return out


_JOB_OF: Final = Prepared(
    select(activity_document.c.job).where(activity_document.c.id == bindparam("id"))
)


def _job_of(conn: Connection, activity_id: str) -> str:
    """The activity's job as JSON ("{}", an empty job, if the activity is gone)."""
    rows = _JOB_OF.fetchall(conn, {"id": activity_id})
    return str(rows[0][0]) if rows else "{}"


def _live(worker_id: Any) -> Any:
    """WHERE clause: the worker's token is not revoked. Part of every statement that changes
    the queue for a worker, so a revoked token stops its next call on every replica, whatever
    the service cached of it."""
    return (
        select(worker.c.id).where(worker.c.id == worker_id, worker.c.revoked_at.is_(None)).exists()
    )


def _claiming_pool(worker_id: Any) -> Any:
    """The pool of a worker that may claim: live (token not revoked) and not draining; NULL,
    which matches no job, for any other. Like :func:`_live`, checked in the database."""
    return (
        select(worker.c.pool)
        .where(
            worker.c.id == worker_id,
            worker.c.revoked_at.is_(None),
            worker.c.draining_at.is_(None),
        )
        .scalar_subquery()
    )


def _holds(prefix: str = "") -> Any:
    """WHERE clause: the lease named by the bind parameters is current, unexpired, and its
    worker's token is live."""
    return and_(
        grid_job.c.id == bindparam(prefix + "job_id"),
        grid_job.c.lease_epoch == bindparam(prefix + "epoch"),
        grid_job.c.worker_id == bindparam(prefix + "worker_id"),
        grid_job.c.state == GridState.LEASED.value,
        grid_job.c.lease_until >= bindparam(prefix + "now"),
        _live(bindparam(prefix + "worker_id")),
    )


_HEARTBEAT: Final = Prepared(
    update(grid_job)
    .where(_holds())
    .values(
        lease_until=bindparam("until"),
        substate=bindparam("substate"),
        ran=or_(grid_job.c.ran, bindparam("running") == true()),
        changed_at=bindparam("now"),
    )
    .returning(
        grid_job.c.cancel_requested,
        grid_job.c.activity_id,
        grid_job.c.ran,
        grid_job.c.suspend_requested,
    )
)


# Executed before the heartbeat itself when it reports Executing: changes a row only the
# first time for a lease (a claim resets the sub-state), so VM starts are counted once.
_BEGIN_EXECUTING: Final = Prepared(
    update(grid_job)
    .where(
        _holds(),
        or_(grid_job.c.substate.is_(None), grid_job.c.substate != SubState.EXECUTING.value),
    )
    .values(substate=SubState.EXECUTING.value)
)


def _lease_params(conn: Connection, ref: LeaseRef, now: dt.datetime) -> dict[str, Any]:
    return {
        "job_id": ref.job_id,
        "epoch": ref.epoch,
        "worker_id": ref.worker_id,
        "now": db_time(conn, now),
    }


def heartbeat(conn: Connection, items: Sequence[Heartbeat]) -> list[Renewal]:
    """Renew leases; say for each whether to go on, cancel, or drop the job."""
    out = []
    seen: dict[str, dt.datetime] = {}
    for h in items:
        params = _lease_params(conn, h.ref, h.now)
        began = (
            h.substate == SubState.EXECUTING.value and _BEGIN_EXECUTING.execute(conn, params) > 0
        )
        params.update(until=db_time(conn, h.until), substate=h.substate, running=h.running)
        rows = _HEARTBEAT.fetchall(conn, params)
        if not rows:
            out.append(Renewal(action=LeaseAction.LOST, activity_id=None))
        else:
            cancel, activity_id, ran, suspend = rows[0]
            action = (
                LeaseAction.CANCEL
                if cancel
                else LeaseAction.SUSPEND
                if suspend
                else LeaseAction.CONTINUE
            )
            out.append(
                Renewal(
                    action=action,
                    activity_id=ActivityId(activity_id),
                    ran=bool(ran),
                    began_executing=began,
                )
            )
        seen[h.ref.worker_id] = h.now
    touch_workers(conn, list(seen.items()))
    return out


def lease_holds(conn: Connection, ref: LeaseRef, now: dt.datetime) -> bool:
    """True while ``ref`` is the job's current, unexpired lease (read-only check)."""
    found = conn.execute(select(grid_job.c.id).where(*_current(ref, now))).first()
    return found is not None


def _current(ref: LeaseRef, now: dt.datetime) -> tuple[Any, ...]:
    """Conditions on ``grid_job`` that hold while ``ref`` is the job's current lease."""
    return (
        grid_job.c.id == ref.job_id,
        grid_job.c.lease_epoch == ref.epoch,
        grid_job.c.worker_id == ref.worker_id,
        grid_job.c.state == GridState.LEASED.value,
        grid_job.c.lease_until >= now,
        _live(ref.worker_id),
    )


def lease_job(
    conn: Connection, ref: LeaseRef, now: dt.datetime
) -> tuple[ActivityId, str, str] | None:
    """The activity, its owner and its job (JSON) while ``ref`` is the job's current,
    unexpired lease."""
    found = conn.execute(
        select(grid_job.c.activity_id, activity.c.owner, activity_document.c.job)
        .join(activity, activity.c.id == grid_job.c.activity_id)
        .join(activity_document, activity_document.c.id == grid_job.c.activity_id)
        .where(*_current(ref, now))
    ).first()
    if found is None:
        return None
    return ActivityId(found[0]), str(found[1]), str(found[2])


_ENDED: Final = Prepared(
    update(grid_job)
    .where(_holds())
    .values(
        state=bindparam("state"),
        substate=None,
        exit_code=bindparam("exit_code"),
        message=bindparam("message"),
        result=bindparam("result"),
        lease_until=None,
        changed_at=bindparam("now"),
    )
    .returning(grid_job.c.state, grid_job.c.activity_id, grid_job.c.ran, grid_job.c.message)
)
# Give a job back: a retried failure counts as an attempt (the job fails when none are left);
# a hand-back on shutdown does not. A job whose cancellation was asked for is cancelled.
_REQUEUED: Final = Prepared(
    update(grid_job)
    .where(_holds())
    .values(
        state=case(
            (grid_job.c.cancel_requested, GridState.CANCELLED.value),
            (
                and_(bindparam("retry") == true(), grid_job.c.attempts >= grid_job.c.max_attempts),
                GridState.FAILED.value,
            ),
            else_=GridState.QUEUED.value,
        ),
        attempts=case(
            (bindparam("retry") == true(), grid_job.c.attempts),
            else_=grid_job.c.attempts - 1,
        ),
        substate=None,
        worker_id=case(
            (grid_job.c.cancel_requested, grid_job.c.worker_id),
            else_=literal_column("NULL"),
        ),
        message=bindparam("message"),
        exit_code=bindparam("exit_code"),
        lease_until=None,
        changed_at=bindparam("now"),
    )
    .returning(grid_job.c.state, grid_job.c.activity_id, grid_job.c.ran, grid_job.c.message)
)


def finish_leases(conn: Connection, items: Sequence[Finish]) -> list[Ended | None]:
    """End leases; for each what became of the job, or None if the lease no longer holds."""
    out: list[Ended | None] = []
    for f in items:
        params = _lease_params(conn, f.ref, f.now)
        params.update(message=f.message, exit_code=f.exit_code)
        if f.state is GridState.QUEUED:
            params["retry"] = f.retry
            rows = _REQUEUED.fetchall(conn, params)
        else:
            params.update(
                state=f.state.value,
                result=json.dumps(f.result, sort_keys=True) if f.result is not None else None,
            )
            rows = _ENDED.fetchall(conn, params)
        if not rows:
            out.append(None)
            continue
        state, activity_id, ran, message = rows[0]
        out.append(
            Ended(
                state=GridState(state),
                activity_id=ActivityId(activity_id),
                ran=bool(ran),
                message=message,
            )
        )
    return out


def expire_leases(conn: Connection, items: Sequence[dt.datetime]) -> list[list[Expired]]:
    """Take back leases that expired before each given time; return them.

    Each goes back to the queue, or fails once its attempts are used up, or ends cancelled
    if cancellation was asked for. Conditional on the lease epoch, so replicas sweeping at
    once do each lease once.
    """
    out = []
    for now in items:
        taken: list[Expired] = []
        expired = conn.execute(
            select(
                grid_job.c.id,
                grid_job.c.lease_epoch,
                grid_job.c.attempts,
                grid_job.c.max_attempts,
                grid_job.c.cancel_requested,
                worker.c.name,
                grid_job.c.activity_id,
                grid_job.c.ran,
            )
            .select_from(grid_job.outerjoin(worker, worker.c.id == grid_job.c.worker_id))
            .where(grid_job.c.state == GridState.LEASED.value, grid_job.c.lease_until < now)
        ).all()
        for job_id, epoch, attempts, max_attempts, cancel_requested, name, act, ran in expired:
            who = f"worker {name}" if name else "its worker"
            if cancel_requested:
                state, message = GridState.CANCELLED, f"cancelled ({who} stopped reporting)"
            elif attempts >= max_attempts:
                state = GridState.FAILED
                message = (
                    f"given up after {attempts} attempts: {who} stopped reporting "
                    "(its lease expired)"
                )
            else:
                state = GridState.QUEUED
                message = (
                    f"{who} stopped reporting (its lease expired); back in the queue "
                    f"(attempt {attempts} of {max_attempts} used)"
                )
            updated = conn.execute(
                update(grid_job)
                .where(
                    grid_job.c.id == job_id,
                    grid_job.c.lease_epoch == epoch,
                    grid_job.c.state == GridState.LEASED.value,
                )
                .values(
                    state=state.value,
                    substate=None,
                    worker_id=None if state is GridState.QUEUED else grid_job.c.worker_id,
                    lease_until=None,
                    message=message,
                    changed_at=now,
                )
            ).rowcount
            if updated:
                taken.append(
                    Expired(
                        job_id=BackendJobId(job_id),
                        activity_id=ActivityId(act),
                        state=state,
                        message=message,
                        ran=bool(ran),
                    )
                )
        out.append(taken)
    return out


_ACCESS: Final = Prepared(
    update(grid_job)
    .where(_holds())
    .values(access=bindparam("access"), changed_at=bindparam("now"))
    .returning(grid_job.c.activity_id)
)


def report_access(
    conn: Connection, items: Sequence[tuple[LeaseRef, dt.datetime, str]]
) -> list[ActivityId | None]:
    """Record each VM lease's way in ``(lease, now, access JSON)`` while the lease is current;
    return its activity (None: the lease is not current)."""
    out: list[ActivityId | None] = []
    for ref, now, access in items:
        params = _lease_params(conn, ref, now)
        params["access"] = access
        rows = _ACCESS.fetchall(conn, params)
        out.append(ActivityId(rows[0][0]) if rows else None)
    return out


def request_suspend(
    conn: Connection, items: Sequence[tuple[BackendJobId, bool]]
) -> list[GridState | None]:
    """Ask (True) or stop asking (False) each job's worker to suspend its VM lease; the
    heartbeat tells it. Returns the job's state (None for an unknown id)."""
    out: list[GridState | None] = []
    for job_id, suspend in items:
        current = conn.execute(
            update(grid_job)
            .where(grid_job.c.id == job_id)
            .values(suspend_requested=suspend)
            .returning(grid_job.c.state)
        ).scalar_one_or_none()
        out.append(GridState(current) if current is not None else None)
    return out


def cancel_grid_jobs(
    conn: Connection, items: Sequence[tuple[BackendJobId, dt.datetime]]
) -> list[GridState | None]:
    """Cancel each job: a queued one at once, a leased one at its worker's next heartbeat.

    Returns the job's state afterwards (CANCELLED, LEASED with the request recorded, or the
    terminal state it already had), None for an unknown id.
    """
    out: list[GridState | None] = []
    for job_id, at in items:
        cancelled = conn.execute(
            update(grid_job)
            .where(grid_job.c.id == job_id, grid_job.c.state == GridState.QUEUED.value)
            .values(
                state=GridState.CANCELLED.value,
                cancel_requested=True,
                message="cancelled before a worker took it",
                changed_at=at,
            )
        ).rowcount
        if cancelled:
            out.append(GridState.CANCELLED)
            continue
        conn.execute(
            update(grid_job)
            .where(grid_job.c.id == job_id, grid_job.c.state == GridState.LEASED.value)
            .values(cancel_requested=True)
        )
        current = conn.execute(
            select(grid_job.c.state).where(grid_job.c.id == job_id)
        ).scalar_one_or_none()
        out.append(GridState(current) if current is not None else None)
    return out


_STATUS_COLUMNS: Final = (
    grid_job.c.id,
    grid_job.c.activity_id,
    grid_job.c.state,
    grid_job.c.substate,
    grid_job.c.attempts,
    grid_job.c.max_attempts,
    grid_job.c.ran,
    grid_job.c.cancel_requested,
    grid_job.c.exit_code,
    grid_job.c.message,
    grid_job.c.result,
    worker.c.name,
    grid_job.c.pool,
    grid_job.c.reason,
    grid_job.c.access,
)
_STATUS_CHUNK: Final = 500


def grid_statuses(
    conn: Connection, ids: Sequence[BackendJobId]
) -> dict[BackendJobId, GridJobStatus]:
    """The queue rows among ``ids`` (unknown ids are absent)."""
    out: dict[BackendJobId, GridJobStatus] = {}
    unique = list(dict.fromkeys(ids))
    for i in range(0, len(unique), _STATUS_CHUNK):
        rows = conn.execute(
            select(*_STATUS_COLUMNS)
            .select_from(grid_job.outerjoin(worker, worker.c.id == grid_job.c.worker_id))
            .where(grid_job.c.id.in_(unique[i : i + _STATUS_CHUNK]))
        )
        for r in rows:
            status = GridJobStatus(
                id=BackendJobId(r[0]),
                activity_id=ActivityId(r[1]),
                state=GridState(r[2]),
                substate=r[3],
                attempts=r[4],
                max_attempts=r[5],
                ran=bool(r[6]),
                cancel_requested=bool(r[7]),
                exit_code=r[8],
                message=r[9],
                result=json.loads(r[10]) if r[10] else None,
                worker=r[11],
                pool=r[12],
                reason=r[13],
                access=r[14],
            )
            out[status.id] = status
    return out


def queue_counts(conn: Connection) -> dict[GridState, int]:
    """How many jobs are in each queue state (counts the database keeps, bes.db.tally_rows)."""
    counts = dict.fromkeys(GridState, 0)
    for state, n in tally_rows.counts(conn, tally_rows.GRID_JOB).items():
        counts[GridState(state)] = n
    return counts


# ------------------------------------------------------------------------------ pools and reasons


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedGroup:
    """Queued jobs of one pool with the same requirements (the unit the reasons are kept for)."""

    pool: str
    memory_mib: int
    vcpus: int
    disk_mib: int
    network: bool
    hypervisors: tuple[str, ...]
    count: int
    oldest: dt.datetime


_GROUP_KEY: Final = (
    grid_job.c.pool,
    grid_job.c.memory_mib,
    grid_job.c.vcpus,
    grid_job.c.disk_mib,
    grid_job.c.needs_network,
    grid_job.c.hypervisors,
)


def queued_groups(conn: Connection, pool: str | None = None) -> list[QueuedGroup]:
    """The queued jobs (of one pool, or all), grouped by pool and requirements."""
    query = (
        select(*_GROUP_KEY, func.count(), func.min(grid_job.c.queued_at))
        .where(grid_job.c.state == GridState.QUEUED.value)
        .group_by(*_GROUP_KEY)
    )
    if pool is not None:
        query = query.where(grid_job.c.pool == pool)
    rows = conn.execute(query)
    return [
        QueuedGroup(
            pool=pool,
            memory_mib=memory,
            vcpus=vcpus,
            disk_mib=disk,
            network=bool(network),
            hypervisors=tuple(h for h in hypervisors.split(",") if h),
            count=count,
            oldest=from_db_time(oldest),
        )
        for pool, memory, vcpus, disk, network, hypervisors, count, oldest in rows
    ]


def _in_group(group: QueuedGroup) -> list[Any]:
    return [
        grid_job.c.state == GridState.QUEUED.value,
        grid_job.c.pool == group.pool,
        grid_job.c.memory_mib == group.memory_mib,
        grid_job.c.vcpus == group.vcpus,
        grid_job.c.disk_mib == group.disk_mib,
        grid_job.c.needs_network == group.network,
        grid_job.c.hypervisors == _hypervisor_list(group.hypervisors),
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rerouted:
    """A queued job whose reason or pool changed."""

    job_id: BackendJobId
    activity_id: ActivityId
    ran: bool
    message: str | None
    pool: str
    reason: str


_REROUTED: Final = (grid_job.c.id, grid_job.c.activity_id, grid_job.c.ran, grid_job.c.message)


def _rerouted(rows: Iterable[Sequence[Any]], pool: str, reason: str) -> list[Rerouted]:
    return [
        Rerouted(
            job_id=BackendJobId(r[0]),
            activity_id=ActivityId(r[1]),
            ran=bool(r[2]),
            message=r[3],
            pool=pool,
            reason=reason,
        )
        for r in rows
    ]


def set_reasons(
    conn: Connection, items: Sequence[tuple[QueuedGroup, str, dt.datetime]]
) -> list[list[Rerouted]]:
    """Store why a group's jobs queued since a time wait, where it changed; return the jobs it
    changed. Per item ``(group, reason, since)``: an index range, for a group whose older jobs
    have this reason already (the others: :func:`other_reasons`, :func:`set_job_reasons`)."""
    out = []
    for group, reason, since in items:
        rows = conn.execute(
            update(grid_job)
            .where(*_in_group(group), _other_reason(reason), grid_job.c.queued_at >= since)
            .values(reason=reason)
            .returning(*_REROUTED)
        )
        out.append(_rerouted(rows, group.pool, reason))
    return out


def other_reasons(conn: Connection, group: QueuedGroup, reason: str) -> list[BackendJobId]:
    """The group's queued jobs whose stored reason is not ``reason`` (a read: the scan of a
    large queue holds no write lock)."""
    found = conn.execute(select(grid_job.c.id).where(*_in_group(group), _other_reason(reason)))
    return [BackendJobId(r[0]) for r in found]


def newest_reason(conn: Connection, group: QueuedGroup) -> str | None:
    """The stored reason of the group's most recently queued job."""
    return conn.execute(
        select(grid_job.c.reason)
        .where(*_in_group(group))
        .order_by(grid_job.c.queued_at.desc())
        .limit(1)
    ).scalar()


def set_job_reasons(
    conn: Connection, items: Sequence[tuple[Sequence[BackendJobId], str, str]]
) -> list[list[Rerouted]]:
    """Store a reason for jobs by id, those still queued in the pool with another reason:
    ``(job ids, pool, reason)``; return the jobs it changed."""
    out = []
    for ids, pool, reason in items:
        rows = conn.execute(
            update(grid_job)
            .where(
                grid_job.c.id.in_(ids),
                grid_job.c.state == GridState.QUEUED.value,
                grid_job.c.pool == pool,
                _other_reason(reason),
            )
            .values(reason=reason)
            .returning(*_REROUTED)
        )
        out.append(_rerouted(rows, pool, reason))
    return out


def _other_reason(reason: str) -> Any:
    return or_(grid_job.c.reason.is_(None), grid_job.c.reason != reason)


def burst(
    conn: Connection, items: Sequence[tuple[QueuedGroup, str, dt.datetime, str, str]]
) -> list[list[Rerouted]]:
    """Move a group's jobs queued before a time to another pool, unless they named theirs:
    ``(group, to_pool, queued_before, reason, note)``; the note (why they moved) is added to
    their message, which the reasons pass leaves alone."""
    out = []
    for group, to_pool, before, reason, note in items:
        rows = conn.execute(
            update(grid_job)
            .where(
                *_in_group(group),
                grid_job.c.pinned.is_(False),
                grid_job.c.queued_at < before,
            )
            .values(
                pool=to_pool,
                reason=reason,
                message=func.coalesce(grid_job.c.message.concat("; "), "").concat(note),
            )
            .returning(*_REROUTED)
        )
        out.append(_rerouted(rows, to_pool, reason))
    return out


def queue_position(conn: Connection, job_id: BackendJobId) -> int | None:
    """1 + how many jobs of its pool were queued before this queued one; None if not queued."""
    row = conn.execute(
        select(grid_job.c.pool, grid_job.c.queued_at, grid_job.c.state).where(
            grid_job.c.id == job_id
        )
    ).first()
    if row is None or row[2] != GridState.QUEUED.value:
        return None
    ahead = conn.execute(
        select(func.count()).where(
            grid_job.c.pool == row[0],
            grid_job.c.state == GridState.QUEUED.value,
            grid_job.c.queued_at < row[1],
        )
    ).scalar_one()
    return int(ahead) + 1


def set_draining(conn: Connection, items: Sequence[tuple[str, dt.datetime | None]]) -> list[bool]:
    """Stop (a time) or let again (None) the named workers claim; False for no such worker."""
    return [
        conn.execute(update(worker).where(worker.c.name == n).values(draining_at=at)).rowcount > 0
        for n, at in items
    ]


def job_needs(conn: Connection, job_id: str) -> QueuedGroup | None:
    """A job's pool and requirements (as a group of one)."""
    row = conn.execute(
        select(*_GROUP_KEY, grid_job.c.queued_at).where(grid_job.c.id == job_id)
    ).first()
    if row is None:
        return None
    pool, memory, vcpus, disk, network, hypervisors, queued_at = row
    return QueuedGroup(
        pool=pool,
        memory_mib=memory,
        vcpus=vcpus,
        disk_mib=disk,
        network=bool(network),
        hypervisors=tuple(h for h in hypervisors.split(",") if h),
        count=1,
        oldest=from_db_time(queued_at),
    )
