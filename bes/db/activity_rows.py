"""SQL for activities: insert, read, transition and count. Portable across SQLite and PostgreSQL.

Batch functions (``create_activities``, ``apply_transitions``, ...) run inside the group
committer and take a list of arguments; plain functions are reads. State changes are
conditional ``UPDATE ... WHERE state IN (...)`` statements, so the state machine holds even
with several service replicas writing at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import (
    Boolean,
    Connection,
    Integer,
    String,
    Text,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    tuple_,
    update,
)

from bes.access import Access
from bes.db import tally_rows
from bes.db.prepared import Prepared, db_time, from_db_time
from bes.db.tables import activity, activity_document, activity_event, create_request, setting
from bes.ids import ActivityId, BackendJobId
from bes.states import ActivityState, SubState, can_transition

ACCEPTING_SETTING: Final = "accepting_new_activities"
_CHUNK: Final = 500  # ids per IN (...) list, well under every driver's parameter limit


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivityRecord:
    """An activity's current state as stored (without its documents)."""

    id: ActivityId
    owner: str
    state: ActivityState
    substate: SubState | None
    message: str | None
    exit_code: int | None
    job_name: str | None
    backend: str | None
    backend_job_id: BackendJobId | None
    cancel_requested: bool
    created_at: dt.datetime
    changed_at: dt.datetime
    outputs: bool = False
    """The service keeps files this activity produced (retrievable under its URL)."""
    warnings: tuple[str, ...] = ()
    """What was rewritten in its document before it was parsed (normalization)."""
    parent_id: ActivityId | None = None
    """The parameter sweep this activity is a point of."""
    children: int = 0
    """For a parameter sweep: how many activities it stands for (its state is theirs)."""
    pool: str | None = None
    """The pool of workers its backend routed it to (backends with pools)."""
    access: Access | None = None
    """A VM lease's way in, once its worker reported it."""
    sweep: SweepSummary | None = None
    """For a parameter sweep, as read with :func:`sweep_summaries`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepSummary:
    """The activities of a parameter sweep: how many are in each state, and which."""

    counts: Mapping[ActivityState, int]
    children: tuple[ActivityId, ...]

    @property
    def state(self) -> ActivityState:
        """Finished once all are and none failed; Failed once all ended and any failed;
        Cancelled once all ended, none failed, and any was cancelled; Running once any
        started; Pending until then."""
        total = sum(self.counts.values())
        ended = sum(n for s, n in self.counts.items() if s.terminal)
        if total and ended == total:
            if self.counts.get(ActivityState.FAILED):
                return ActivityState.FAILED
            if self.counts.get(ActivityState.CANCELLED):
                return ActivityState.CANCELLED
            return ActivityState.FINISHED
        if ended or self.counts.get(ActivityState.RUNNING):
            return ActivityState.RUNNING
        return ActivityState.PENDING


@dataclass(frozen=True, slots=True, kw_only=True)
class Enqueued:
    """A backend's own rows for a new activity, written in the transaction that creates it: a
    backend whose queue is this database (the desktop grid) takes the job at once, without a
    dispatch round, and the activity starts Pending/Submitted with the job's id.

    Attributes:
        job_id: The backend's job id.
        pool: The pool it was routed to (None: the backend has none).
        message: Why it waits, for people.
        write: Inserts the backend's rows of several activities (a module-level function:
            creates committed together write theirs with one call).
        row: This activity's rows, as ``write`` takes them.
    """

    job_id: BackendJobId
    pool: str | None
    message: str | None
    write: Callable[[Connection, Sequence[Any]], None]
    row: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class NewActivity:
    """What CreateActivity stores."""

    id: ActivityId
    owner: str
    job_name: str | None
    document: str
    job: str
    backend: str | None
    at: dt.datetime
    warnings: tuple[str, ...] = ()
    parent_id: ActivityId | None = None
    children: int = 0
    enqueued: Enqueued | None = None
    """Its backend's rows, written with it (None: the dispatcher submits it later)."""
    request_key: str | None = None
    """The caller's request that created it (:func:`request_key`), so a retry finds it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """A requested change of state (or sub-state) of one activity.

    Attributes:
        expect_backend_job_id: Apply only while the activity still has this backend job
            (guards against late reports about an earlier attempt).
        outputs: The backend kept files of the activity for its owner (set with the terminal
            state).
        late_running: The backend reports the end of a job it never said was running: from
            Pending, record the Running the activity went through first.
    """

    id: ActivityId
    state: ActivityState
    substate: SubState | None = None
    message: str | None = None
    exit_code: int | None = None
    at: dt.datetime
    expect_backend_job_id: BackendJobId | None = None
    outputs: bool = False
    late_running: bool = False
    pool: str | None = None
    """The backend moved the activity to this pool (None: unchanged)."""
    access: Access | None = None
    """A VM lease's way in, as its worker reported it (None: unchanged)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransitionResult:
    """Outcome of a :class:`Transition`: applied or not, and the state the activity is in."""

    applied: bool
    state: ActivityState | None
    """None if the activity does not exist."""


RECORD_COLUMNS: Final = (
    activity.c.id,
    activity.c.owner,
    activity.c.state,
    activity.c.substate,
    activity.c.message,
    activity.c.exit_code,
    activity.c.job_name,
    activity.c.backend,
    activity.c.backend_job_id,
    activity.c.cancel_requested,
    activity.c.created_at,
    activity.c.changed_at,
    activity.c.outputs,
    activity.c.warnings,
    activity.c.parent_id,
    activity.c.children,
    activity.c.pool,
    activity.c.access,
)


def record_of(row: Sequence[Any]) -> ActivityRecord:
    """An ActivityRecord from a row of ``RECORD_COLUMNS`` as the driver returned it."""
    (
        id_,
        owner,
        state,
        substate,
        message,
        exit_code,
        job_name,
        backend,
        backend_job_id,
        cancel_requested,
        created_at,
        changed_at,
        outputs,
        warnings,
        parent_id,
        child_count,
        pool,
        access,
    ) = row[: len(RECORD_COLUMNS)]
    return ActivityRecord(
        id=ActivityId(id_),
        owner=owner,
        state=ActivityState(state),
        substate=SubState(substate) if substate else None,
        message=message,
        exit_code=exit_code,
        job_name=job_name,
        backend=backend,
        backend_job_id=BackendJobId(backend_job_id) if backend_job_id else None,
        cancel_requested=bool(cancel_requested),
        created_at=from_db_time(created_at),
        changed_at=from_db_time(changed_at),
        outputs=bool(outputs),
        warnings=tuple(json.loads(warnings)) if warnings else (),
        parent_id=ActivityId(parent_id) if parent_id else None,
        children=child_count or 0,
        pool=pool,
        access=Access.from_json(access) if access else None,
    )


# Lookups by id use a few fixed IN-list sizes (the last chunk is padded by repeating an id), so
# each size is compiled once and the ids of a 1,000-item vector call need two statements.
_BUCKETS: Final = (1, 8, 64, _CHUNK)


def _by_ids(columns: tuple[Any, ...], size: int, *, documents: bool = False) -> Prepared:
    ids: list[Any] = [bindparam(f"i{k}") for k in range(size)]
    query = select(*columns).where(activity.c.id.in_(ids))
    if documents:
        query = query.join_from(
            activity, activity_document, activity_document.c.id == activity.c.id
        )
    return Prepared(query)


_RECORDS_BY_IDS: Final = {n: _by_ids(RECORD_COLUMNS, n) for n in _BUCKETS}
_DOCUMENTS_BY_IDS: Final = {
    n: _by_ids((*RECORD_COLUMNS, activity_document.c.document), n, documents=True) for n in _BUCKETS
}


def _fetch_by_ids(
    conn: Connection, statements: dict[int, Prepared], ids: Sequence[str]
) -> Iterable[tuple[Any, ...]]:
    unique = list(dict.fromkeys(ids))
    for i in range(0, len(unique), _CHUNK):
        chunk = unique[i : i + _CHUNK]
        size = next(n for n in _BUCKETS if n >= len(chunk))
        padded = chunk + [chunk[0]] * (size - len(chunk))
        yield from statements[size].fetchall(conn, {f"i{k}": v for k, v in enumerate(padded)})


# ------------------------------------------------------------------------------ writes


_INSERT_ACTIVITY: Final = Prepared(
    insert(activity),
    column_keys=[
        "id",
        "owner",
        "state",
        "substate",
        "message",
        "job_name",
        "backend",
        "backend_job_id",
        "pool",
        "cancel_requested",
        "created_at",
        "changed_at",
        "warnings",
        "parent_id",
        "children",
    ],
)
_INSERT_DOCUMENT: Final = Prepared(insert(activity_document), column_keys=["id", "document", "job"])
_INSERT_EVENT: Final = Prepared(
    insert(activity_event), column_keys=["activity_id", "at", "state", "substate", "message"]
)
_SELECT_SETTING: Final = Prepared(
    select(setting.c.value).where(setting.c.name == bindparam("name"))
)


def create_activities(conn: Connection, items: Sequence[NewActivity]) -> list[ActivityId | None]:
    """Insert new Pending activities if the factory accepts them. Per item: its id; for a
    request already answered (the same :attr:`NewActivity.request_key`), the id of the
    activity that request created, and nothing is inserted; None where the factory is not
    accepting.

    The accepting flag is read in the same transaction as the inserts, so no activity is
    created after a StopAcceptingNewActivities has committed. Two replicas inserting one
    request at once: the second insert violates the key, the committer retries that call
    alone, and the retry finds the first one's activity. This is the hottest write of the
    service, hence the prepared statements.
    """
    return _create(conn, [(a, (a,)) for a in items])


def create_sweeps(
    conn: Connection, items: Sequence[Sequence[NewActivity]]
) -> list[ActivityId | None]:
    """Insert parameter sweeps, each (its parent first, then its points) in full or not at
    all; per sweep its parent's id, as :func:`create_activities` says."""
    return _create(conn, [(sweep[0], sweep) for sweep in items])


def _create(
    conn: Connection, items: Sequence[tuple[NewActivity, Sequence[NewActivity]]]
) -> list[ActivityId | None]:
    keys = [first.request_key for first, _ in items if first.request_key is not None]
    answered = _answered(conn, keys) if keys else {}
    out: list[ActivityId | None] = []
    fresh: list[NewActivity] = []
    accepting: bool | None = None
    for first, rows in items:
        earlier = answered.get(first.request_key) if first.request_key else None
        if earlier is not None:
            out.append(earlier)
            continue
        if accepting is None:
            accepting = is_accepting(conn)
        if not accepting:
            out.append(None)
            continue
        fresh.extend(rows)
        out.append(first.id)
    if fresh:
        _insert(conn, fresh)
    return out


def _answered(conn: Connection, keys: Sequence[str]) -> dict[str, ActivityId]:
    found = conn.execute(
        select(create_request.c.key, create_request.c.activity_id).where(
            create_request.c.key.in_(keys)
        )
    )
    return {key: ActivityId(activity_id) for key, activity_id in found}


def request_key(owner: str, message_id: str, document: str) -> str:
    """The key of a caller's request: its WS-Addressing MessageID and the document it sent.
    One owner's MessageID never matches another's; and a client that (against WS-Addressing)
    sends one MessageID with different documents gets an activity for each."""
    digest = hashlib.sha256()
    for part in (owner, message_id, document):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _insert(conn: Connection, items: Sequence[NewActivity]) -> None:
    pending, queued = ActivityState.PENDING.value, SubState.QUEUED.value
    submitted = SubState.SUBMITTED.value
    activities, documents, events, requests = [], [], [], []
    queues: dict[Callable[[Connection, Sequence[Any]], None], list[Any]] = {}
    for a in items:
        at = db_time(conn, a.at)
        taken = a.enqueued
        activities.append(
            {
                "id": a.id,
                "owner": a.owner,
                "state": pending,
                "substate": submitted if taken else queued,
                "message": taken.message if taken else None,
                "job_name": a.job_name,
                "backend": a.backend,
                "backend_job_id": taken.job_id if taken else None,
                "pool": taken.pool if taken else None,
                "cancel_requested": False,
                "created_at": at,
                "changed_at": at,
                "warnings": json.dumps(a.warnings) if a.warnings else None,
                "parent_id": a.parent_id,
                "children": a.children,
            }
        )
        documents.append({"id": a.id, "document": a.document, "job": a.job})
        # One event: an activity its backend took at create was never queued on its own.
        events.append(
            {
                "activity_id": a.id,
                "at": at,
                "state": pending,
                "substate": submitted if taken else queued,
                "message": (
                    "accepted; " + _submitted_message(taken.job_id, taken.pool, taken.message)
                    if taken
                    else "accepted"
                ),
            }
        )
        if taken is not None:
            queues.setdefault(taken.write, []).append(taken.row)
        if a.request_key is not None:
            requests.append({"key": a.request_key, "activity_id": a.id, "at": a.at})
    _INSERT_ACTIVITY.executemany(conn, activities)
    _INSERT_DOCUMENT.executemany(conn, documents)
    _INSERT_EVENT.executemany(conn, events)
    for write, queued_rows in queues.items():
        write(conn, queued_rows)
    if requests:
        conn.execute(insert(create_request), requests)


def _submitted_message(job_id: str, pool: str | None, message: str | None) -> str:
    return (
        f"submitted as {job_id}"
        + (f" to pool {pool}" if pool else "")
        + (f": {message}" if message else "")
    )


def _transition_statement(target: ActivityState, *, via_running: bool = False) -> Prepared:
    """The UPDATE of one transition into ``target``, prepared (the registry's hottest write).

    ``via_running``: Pending -> Running -> ``target`` in one statement (the row is written
    once; both steps go into the history)."""
    values: dict[str, Any] = {
        "state": target.value,
        "substate": bindparam("substate"),
        "message": bindparam("message"),
        "changed_at": bindparam("at"),
        "exit_code": func.coalesce(bindparam("exit_code", type_=Integer), activity.c.exit_code),
        "outputs": or_(activity.c.outputs, bindparam("outputs", type_=Boolean) == true()),
        "pool": func.coalesce(bindparam("pool", type_=String), activity.c.pool),
        "access": func.coalesce(bindparam("access", type_=Text), activity.c.access),
    }
    if target.terminal:
        values.update(dispatch_owner=None, dispatch_until=None)
    allowed_from = [s.value for s in ActivityState if can_transition(s, target)]
    if via_running:
        allowed_from = [
            s.value
            for s in ActivityState
            if can_transition(s, target)
            or (can_transition(s, ActivityState.RUNNING) and s is not ActivityState.RUNNING)
        ]
    return Prepared(
        update(activity)
        .where(
            activity.c.id == bindparam("activity_id"),
            or_(*(activity.c.state == state for state in allowed_from)),
            or_(
                bindparam("expect", type_=String).is_(None),
                activity.c.backend_job_id == bindparam("expect"),
            ),
        )
        .values(values)
    )


_TRANSITIONS: Final = {state: _transition_statement(state) for state in ActivityState}
_VIA_RUNNING: Final = {
    state: _transition_statement(state, via_running=True)
    for state in ActivityState
    if state.terminal
}
LATE_RUNNING_MESSAGE: Final = "started (reported late)"


def apply_transition_steps(
    conn: Connection, items: Sequence[Sequence[Transition]]
) -> list[list[TransitionResult]]:
    """Apply each item's transitions in order, stopping at the first the state machine
    refuses; one result per transition tried."""
    out = []
    events = []
    for steps in items:
        results = []
        for t in steps:
            at = db_time(conn, t.at)
            substate = t.substate.value if t.substate else None
            statement = _VIA_RUNNING[t.state] if t.late_running else _TRANSITIONS[t.state]
            updated = statement.execute(
                conn,
                {
                    "activity_id": t.id,
                    "substate": substate,
                    "message": t.message,
                    "at": at,
                    "exit_code": t.exit_code,
                    "outputs": t.outputs,
                    "expect": t.expect_backend_job_id,
                    "pool": t.pool,
                    "access": t.access.to_json() if t.access is not None else None,
                },
            )
            if not updated:
                current = conn.execute(
                    select(activity.c.state).where(activity.c.id == t.id)
                ).scalar_one_or_none()
                state = ActivityState(current) if current else None
                results.append(TransitionResult(applied=False, state=state))
                break
            if t.late_running:
                events.append(
                    {
                        "activity_id": t.id,
                        "at": at,
                        "state": ActivityState.RUNNING.value,
                        "substate": None,
                        "message": LATE_RUNNING_MESSAGE,
                    }
                )
            events.append(
                {
                    "activity_id": t.id,
                    "at": at,
                    "state": t.state.value,
                    "substate": substate,
                    "message": t.message,
                }
            )
            results.append(TransitionResult(applied=True, state=t.state))
        out.append(results)
    _INSERT_EVENT.executemany(conn, events)
    return out


def apply_transitions(conn: Connection, items: Sequence[Transition]) -> list[TransitionResult]:
    """Apply state changes that the state machine allows; refuse the others.

    A change into a terminal state also clears the activity's dispatch claim.
    """
    return [results[0] for results in apply_transition_steps(conn, [[t] for t in items])]


def mark_cancel_requested(conn: Connection, ids: Sequence[ActivityId]) -> list[bool]:
    """Flag non-terminal activities as to be cancelled; True where the flag was set."""
    terminal = [s.value for s in ActivityState if s.terminal]
    out = []
    for activity_id in ids:
        updated = conn.execute(
            update(activity)
            .where(activity.c.id == activity_id, activity.c.state.not_in(terminal))
            .values(cancel_requested=True)
        ).rowcount
        out.append(bool(updated))
    return out


_SET_BACKEND_JOB: Final = Prepared(
    update(activity)
    .where(
        activity.c.id == bindparam("activity_id"),
        activity.c.state == ActivityState.PENDING.value,
    )
    .values(
        backend_job_id=bindparam("job_id"),
        substate=SubState.SUBMITTED.value,
        pool=bindparam("pool"),
        message=bindparam("message"),
        dispatch_owner=None,
        dispatch_until=None,
        changed_at=bindparam("at"),
    )
)


def set_backend_job(
    conn: Connection,
    items: Sequence[tuple[ActivityId, BackendJobId, dt.datetime, str | None, str | None]],
) -> list[bool]:
    """Record the backend's job id after a successful submit; the activity becomes Submitted.
    Each item is ``(activity, job id, at, pool, message)``: the pool the backend routed it to
    and why it waits (both may be None).

    Returns False for activities that meanwhile reached a terminal state.
    """
    out = []
    events = []
    for activity_id, job_id, at, pool, message in items:
        when = db_time(conn, at)
        updated = _SET_BACKEND_JOB.execute(
            conn,
            {
                "activity_id": activity_id,
                "job_id": job_id,
                "at": when,
                "pool": pool,
                "message": message,
            },
        )
        if updated:
            events.append(
                {
                    "activity_id": activity_id,
                    "at": when,
                    "state": ActivityState.PENDING.value,
                    "substate": SubState.SUBMITTED.value,
                    "message": _submitted_message(job_id, pool, message),
                }
            )
        out.append(bool(updated))
    _INSERT_EVENT.executemany(conn, events)
    return out


def claim_for_dispatch(
    conn: Connection, items: Sequence[tuple[str, int, dt.datetime, dt.datetime]]
) -> list[list[tuple[ActivityId, str, str]]]:
    """Claim queued activities for submission to their backend.

    Each item is ``(dispatcher, limit, now, until)``; each result lists ``(id, backend, job)``
    of the activities claimed. One ``UPDATE ... RETURNING`` per claim, so two dispatchers
    (several replicas) never take the same activity; an expired claim is taken over.
    """
    out = []
    for dispatcher, limit, now, until in items:
        candidates = (
            select(activity.c.id)
            .where(
                activity.c.state == ActivityState.PENDING.value,
                activity.c.backend.is_not(None),
                activity.c.backend_job_id.is_(None),
                activity.c.cancel_requested.is_(False),
                (activity.c.dispatch_until.is_(None)) | (activity.c.dispatch_until < now),
            )
            .order_by(activity.c.created_at)
            .limit(limit)
        )
        if conn.dialect.name == "postgresql":
            candidates = candidates.with_for_update(skip_locked=True)
        rows = conn.execute(
            update(activity)
            .where(activity.c.id.in_(candidates.scalar_subquery()))
            .values(dispatch_owner=dispatcher, dispatch_until=until)
            .returning(activity.c.id, activity.c.backend)
        ).all()
        jobs = dict(jobs_of(conn, [r.id for r in rows]))
        out.append([(ActivityId(r.id), r.backend, jobs[r.id]) for r in rows])
    return out


def jobs_of(conn: Connection, ids: Sequence[str]) -> list[tuple[str, str]]:
    """The parsed jobs (JSON) of activities: ``(id, job)``."""
    out: list[tuple[str, str]] = []
    for i in range(0, len(ids), _CHUNK):
        out.extend(
            (r.id, r.job)
            for r in conn.execute(
                select(activity_document.c.id, activity_document.c.job).where(
                    activity_document.c.id.in_(ids[i : i + _CHUNK])
                )
            )
        )
    return out


def sweep_summaries(
    conn: Connection, parents: Sequence[ActivityId]
) -> dict[ActivityId, SweepSummary]:
    """The children of parameter sweeps: counts per state and identifiers, oldest first."""
    out: dict[ActivityId, SweepSummary] = {}
    for i in range(0, len(parents), _CHUNK):
        chunk = list(parents[i : i + _CHUNK])
        counts: dict[str, dict[ActivityState, int]] = {p: {} for p in chunk}
        children: dict[str, list[ActivityId]] = {p: [] for p in chunk}
        rows = conn.execute(
            select(activity.c.parent_id, activity.c.id, activity.c.state)
            .where(activity.c.parent_id.in_(chunk))
            .order_by(activity.c.created_at, activity.c.id)
        )
        for parent, child, state in rows:
            children[parent].append(ActivityId(child))
            counts[parent][ActivityState(state)] = counts[parent].get(ActivityState(state), 0) + 1
        for parent in chunk:
            out[ActivityId(parent)] = SweepSummary(
                counts=counts[parent], children=tuple(children[parent])
            )
    return out


def set_setting(conn: Connection, items: Sequence[tuple[str, str]]) -> list[None]:
    """Insert or replace service settings."""
    for name, value in items:
        updated = conn.execute(
            update(setting).where(setting.c.name == name).values(value=value)
        ).rowcount
        if not updated:
            conn.execute(insert(setting).values(name=name, value=value))
    return [None] * len(items)


# ------------------------------------------------------------------------------ reads


def is_accepting(conn: Connection) -> bool:
    """Whether CreateActivity is currently accepted (true unless stopped)."""
    found = _SELECT_SETTING.fetchall(conn, {"name": ACCEPTING_SETTING})
    return not found or found[0][0] != "false"


def get_activities(conn: Connection, ids: Sequence[ActivityId]) -> dict[ActivityId, ActivityRecord]:
    """The stored activities among ``ids`` (unknown ids are simply absent)."""
    records = (record_of(row) for row in _fetch_by_ids(conn, _RECORDS_BY_IDS, ids))
    return {r.id: r for r in records}


def get_documents(
    conn: Connection, ids: Sequence[ActivityId]
) -> dict[ActivityId, tuple[ActivityRecord, str]]:
    """Activities among ``ids`` with the JSDL document each was created from."""
    out: dict[ActivityId, tuple[ActivityRecord, str]] = {}
    for row in _fetch_by_ids(conn, _DOCUMENTS_BY_IDS, ids):
        record = record_of(row)
        out[record.id] = (record, row[len(RECORD_COLUMNS)])
    return out


def count_by_state(conn: Connection, owner: str | None) -> dict[ActivityState, int]:
    """How many activities are in each basic state (of one owner, or of everyone), a parameter
    sweep by its points; read from the counts the database keeps (bes.db.tally_rows), so it
    costs the same at a million activities as at ten."""
    return tally_rows.activity_counts(conn, owner)


def active_ids(conn: Connection, owner: str | None, limit: int) -> list[ActivityId]:
    """Ids of non-terminal activities, oldest first (of one owner, or of everyone); a
    parameter sweep by its points (its own row stands for them and never ends).

    One ordered index range per state, merged here: a single query over both states would
    sort every active activity to return the first ``limit`` (a million queued ones, at a
    busy site)."""
    found: list[tuple[Any, str]] = []
    for state in (s for s in ActivityState if not s.terminal):
        query = (
            select(activity.c.created_at, activity.c.id)
            .where(activity.c.state == state.value, activity.c.children == 0)
            .order_by(activity.c.created_at, activity.c.id)
            .limit(limit)
        )
        if owner is not None:
            query = query.where(activity.c.owner == owner)
        found.extend((at, i) for at, i in conn.execute(query))
    found.sort()
    return [ActivityId(i) for _, i in found[:limit]]


def factory_summary(
    conn: Connection, owner: str | None, limit: int
) -> tuple[bool, dict[ActivityState, int], list[ActivityId]]:
    """Accepting flag, counts per state and active ids, read in one go."""
    return (
        is_accepting(conn),
        count_by_state(conn, owner),
        active_ids(conn, owner, limit),
    )


@dataclass(frozen=True, slots=True)
class WatchMark:
    """Where a page of :func:`backend_jobs_to_watch` ended; the next page starts after it."""

    state: ActivityState
    created_at: dt.datetime
    id: ActivityId


_WATCHED_STATES: Final = tuple(s for s in ActivityState if not s.terminal)


def backend_jobs_to_watch(
    conn: Connection, backend: str, limit: int, after: WatchMark | None = None
) -> tuple[list[tuple[ActivityId, BackendJobId, ActivityState, bool]], WatchMark | None]:
    """One page of the non-terminal activities handed to ``backend``: (id, backend job,
    state, cancel asked), and where the next page starts (None: this page ends the walk;
    the next one starts again from the first).

    Pages walk every such activity in (state, created_at, id) order, each an index range
    (``ix_activity_state_created_at_id``): a page costs ``limit`` rows however many are
    active, and successive polls look at all of them in turn, not at the same oldest ones."""
    found: list[tuple[ActivityId, BackendJobId, ActivityState, bool]] = []
    mark = None
    first = 0 if after is None else _WATCHED_STATES.index(after.state)
    for state in _WATCHED_STATES[first:]:
        query = (
            select(
                activity.c.id,
                activity.c.backend_job_id,
                activity.c.cancel_requested,
                activity.c.created_at,
            )
            .where(
                activity.c.state == state.value,
                activity.c.backend == backend,
                activity.c.backend_job_id.is_not(None),
            )
            .order_by(activity.c.created_at, activity.c.id)
            .limit(limit - len(found))
        )
        if after is not None and state is after.state:
            query = query.where(
                tuple_(activity.c.created_at, activity.c.id)
                > tuple_(
                    literal(after.created_at, activity.c.created_at.type),
                    literal(after.id, activity.c.id.type),
                )
            )
        for r in conn.execute(query):
            found.append(
                (ActivityId(r.id), BackendJobId(r.backend_job_id), state, bool(r.cancel_requested))
            )
            mark = WatchMark(state=state, created_at=r.created_at, id=ActivityId(r.id))
        if len(found) >= limit:
            return found, mark
    return found, None


def events(
    conn: Connection, activity_id: ActivityId
) -> list[tuple[dt.datetime, str, str | None, str | None]]:
    """The history of one activity: (time, state, sub-state, message), oldest first."""
    rows = conn.execute(
        select(
            activity_event.c.at,
            activity_event.c.state,
            activity_event.c.substate,
            activity_event.c.message,
        )
        .where(activity_event.c.activity_id == activity_id)
        .order_by(activity_event.c.id)
    )
    return [(r.at, r.state, r.substate, r.message) for r in rows]
