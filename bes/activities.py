"""The activity registry: create, look up, terminate activities, and keep them in step with
their backends. No SOAP and no XML here.

Every public method takes the calling :class:`~bes.principal.Principal`; a caller sees only
the activities it owns (admins see all). Activities of other owners look exactly like unknown
identifiers, so their existence does not leak.

State flows one way: an activity is stored Pending/Queued; the dispatcher claims it and submits
it to its backend (Pending/Submitted); the poller applies the backend's statuses through the
state machine of :mod:`bes.states` until a terminal state. Every transition is stored with its
time and reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from bes.backends.base import Backend, CancelOutcome, JobState, JobStatus
from bes.clock import utc_now
from bes.db import activity_rows as rows
from bes.db.activity_rows import ActivityRecord, NewActivity, Transition
from bes.db.store import Database
from bes.errors import (
    BackendError,
    BesError,
    ConfigError,
    InvalidRequest,
    NotAcceptingNewActivities,
    NotAuthorized,
    StoreError,
    UnsupportedFeature,
)
from bes.filestaging import FileRoots
from bes.filestore import FileStore
from bes.ids import ActivityId, new_activity_id
from bes.jsdl import codec
from bes.jsdl.model import JobDefinition
from bes.jsdl.secrets import redact_document, seal_credentials
from bes.metrics import Metrics
from bes.principal import Principal
from bes.sealing import Sealer
from bes.states import ActivityState, SubState
from bes.tracking import Tracker
from bes.userimages import FileUse, UserImages

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]


class TerminateOutcome(StrEnum):
    """Per-activity result of :meth:`Activities.terminate`."""

    TERMINATED = "terminated"
    """The activity is Cancelled (now, or it already was)."""
    WILL_APPLY_LATER = "will-apply-later"
    """Termination is under way; the activity is not Cancelled yet."""
    NOT_APPLICABLE = "not-applicable"
    """The activity had already Finished or Failed."""
    UNKNOWN = "unknown"
    """No such activity for this caller."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TerminateResult:
    """Outcome of terminating one activity, with its state afterwards (None if unknown)."""

    outcome: TerminateOutcome
    record: ActivityRecord | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FactorySummary:
    """Live figures for the factory attributes document, as the caller may see them."""

    accepting: bool
    counts: Mapping[ActivityState, int]
    active: Sequence[ActivityId]
    """Identifiers of the caller's non-terminal activities (at most ``reference_limit``)."""

    @property
    def total_active(self) -> int:
        """Number of non-terminal activities (Pending and Running)."""
        return sum(n for state, n in self.counts.items() if not state.terminal)


class Activities:
    """The registry. One per service process; safe to use from one asyncio loop.

    Args:
        db: The database.
        backends: Configured backends by name.
        default_backend: Name of the backend new activities go to; None keeps them queued.
        clock: Returns the current time (aware, UTC).
        reference_limit: Most activity references listed in the factory attributes.
        metrics: Where submissions are counted.
        sealer: Seals the staging passwords and bearer tokens of stored jobs (see
            :mod:`bes.jsdl.secrets`); None stores them as given (documents are redacted
            either way).
        file_roots: Directories ``file:`` staging URIs may name (:mod:`bes.filestaging`);
            none refuses them.
        store: The file store, whose files jobs may name as Sources and Targets
            (:mod:`bes.filestore`); None treats those URLs like any other.
        images: Users' images, which VM extensions name like templates
            (:mod:`bes.userimages`); None leaves those names to the backend.
        replica: This replica's name, for the duties it may hold (default: a new one).
    """

    def __init__(
        self,
        db: Database,
        *,
        backends: Mapping[str, Backend] | None = None,
        default_backend: str | None = None,
        clock: Clock = utc_now,
        reference_limit: int = 1000,
        metrics: Metrics | None = None,
        sealer: Sealer | None = None,
        file_roots: Sequence[str] = (),
        store: FileStore | None = None,
        images: UserImages | None = None,
        replica: str | None = None,
    ) -> None:
        self._db = db
        self._store = store
        self._images = images
        self._sealer = sealer
        self._file_roots = FileRoots(file_roots)
        self._backends = dict(backends or {})
        if default_backend is not None and default_backend not in self._backends:
            raise ConfigError(f"default backend {default_backend!r} is not configured")
        self.default_backend = default_backend
        self._clock = clock
        self.reference_limit = reference_limit
        self.metrics = metrics or Metrics()
        self.tracker = Tracker(db, self._backends, clock=clock, holder=replica)

    @property
    def backends(self) -> Mapping[str, Backend]:
        """The configured backends by name."""
        return self._backends

    # ------------------------------------------------------------------ BES-Factory verbs

    async def create(
        self,
        caller: Principal,
        job: JobDefinition,
        document: str,
        *,
        warnings: Sequence[str] = (),
        endpoint: str | None = None,
        request: str | None = None,
    ) -> ActivityId:
        """Store a new activity; return only once it is durably committed.

        Args:
            caller: Becomes the activity's owner.
            job: The parsed job definition.
            document: The JobDefinition as submitted (returned by GetActivityDocuments,
                with its passwords and bearer tokens redacted).
            warnings: What was rewritten in it before it was parsed (shown in its status).
            endpoint: The base URL the request came to: staging URLs of the file store
                there are the caller's stored files.
            request: The request's WS-Addressing MessageID. A caller that sends a MessageID
                and document it sent before (a retry whose answer was lost, to this replica or
                another) gets the activity the first one created, and no second one is made.

        Raises:
            UnsupportedFeature: The backend it would go to cannot run this job.
            InvalidRequest: It names a file the caller has not stored.
            NotAcceptingNewActivities: The factory was told to stop accepting activities.
            StoreError: The database failed; the activity was not created.
        """
        backend = self.default_backend
        job, used = await self._with_stored_files(caller, job, endpoint)
        activity_id = new_activity_id()
        taker = self._backends.get(backend) if backend is not None else None
        enqueued = await self._admitted(taker, activity_id, job)
        new = NewActivity(
            id=activity_id,
            owner=caller.name,
            job_name=job.job_name,
            document=redact_document(document),
            job=self._stored_job(job),
            backend=backend,
            at=self._clock(),
            warnings=tuple(warnings),
            enqueued=enqueued,
            request_key=rows.request_key(caller.name, request, document) if request else None,
        )
        created = await self._db.write(rows.create_activities, new)
        if created is None:
            raise NotAcceptingNewActivities("this factory is not accepting new activities")
        if created != activity_id:
            log.info("%s repeated request %s: it created %s", caller.name, request, created)
            return created
        await self._use(activity_id, used)
        self.metrics.submissions.inc()
        if new.enqueued is not None and taker is not None:
            taker.enqueued()
        elif backend is not None:
            self.tracker.wakeup.set()
        return activity_id

    async def _admitted(
        self,
        backend: Backend | None,
        activity_id: ActivityId,
        job: JobDefinition,
        *,
        where: str = "",
    ) -> rows.Enqueued | None:
        """Refuse a job the site does not take; the backend's rows to write with the
        activity, if it keeps its queue here (None leaves the job to the dispatcher, which
        also reports a refusal the usual way). ``where`` starts a refusal's message.

        Raises:
            UnsupportedFeature: A ``file:`` URI outside the site's roots, or features the
                backend lacks (every one named).
        """
        self._check_file_roots(job, where=where)
        enqueued = None
        if backend is not None:
            try:
                enqueued = await backend.enqueue(activity_id, job)
            except UnsupportedFeature as exc:
                if not where:
                    raise
                raise UnsupportedFeature(exc.features, where + str(exc)) from exc
            except StoreError:
                raise  # the database does not answer: the create cannot be stored either
            except BesError as exc:
                log.debug("%s goes through the dispatcher: %s", activity_id, exc)
        if enqueued is None:  # (a backend that enqueues has checked the job itself)
            self._check_backend(job, where=where)
        return enqueued

    async def _with_stored_files(
        self, caller: Principal, job: JobDefinition, endpoint: str | None
    ) -> tuple[JobDefinition, list[FileUse]]:
        """The job with its files in the store and its user image resolved; the files it
        uses (a published image is another owner's file)."""
        uses: list[FileUse] = []
        if self._store is not None and endpoint is not None:
            job, used = await self._store.localize(caller.name, job, endpoint)
            uses = [FileUse(owner=caller.name, sha256=sha256) for sha256 in used]
        if self._images is not None:
            job, image = await self._images.localize(caller.name, job)
            uses.extend([image] if image is not None else [])
        return job, uses

    async def _use(self, activity_id: ActivityId, uses: list[FileUse]) -> None:
        if self._store is None or not uses:
            return
        store = self._store
        await asyncio.gather(
            *(
                store.use(activity_id, owner, [u.sha256 for u in uses if u.owner == owner])
                for owner in dict.fromkeys(use.owner for use in uses)
            )
        )

    def _check_file_roots(self, job: JobDefinition, *, where: str = "") -> None:
        """Refuse a job with ``file:`` URIs outside the site's roots (UnsupportedFeatureFault,
        every one named)."""
        refused = self._file_roots.refused(job)
        if refused:
            raise UnsupportedFeature(refused, where + "unsupported: " + "; ".join(refused))

    def _check_backend(self, job: JobDefinition, *, where: str = "") -> None:
        """Refuse a job with features its backend lacks (every one named)."""
        backend = self.default_backend
        if backend is not None:
            missing = self._backends[backend].unsupported(job)
            if missing:
                raise UnsupportedFeature(
                    missing, f"{where}backend {backend!r} cannot run: " + ", ".join(missing)
                )

    async def create_sweep(
        self,
        caller: Principal,
        document: str,
        points: Sequence[tuple[JobDefinition, str]],
        *,
        warnings: Sequence[str] = (),
        endpoint: str | None = None,
        request: str | None = None,
    ) -> ActivityId:
        """Store a parameter sweep: one activity standing for one child activity per point
        (``(job, document)``), all committed together. The sweep's own state is its
        children's (see :class:`~bes.db.activity_rows.SweepSummary`). A repeated ``request``
        is answered as :meth:`create` does.

        Raises:
            UnsupportedFeature: A point's job cannot run on the backend (the first such).
            NotAcceptingNewActivities: The factory was told to stop accepting activities.
        """
        backend = self.default_backend
        taker = self._backends.get(backend) if backend is not None else None
        at = self._clock()
        parent = new_activity_id()
        children = []
        uses: list[tuple[ActivityId, list[FileUse]]] = []
        for index, (given, child_document) in enumerate(points):
            job, used = await self._with_stored_files(caller, given, endpoint)
            child_id = new_activity_id()
            # Each point queued in the sweep's transaction, as a single create's job is.
            enqueued = await self._admitted(
                taker, child_id, job, where=f"point {index + 1} of the parameter sweep: "
            )
            uses.append((child_id, used))
            children.append(
                NewActivity(
                    id=child_id,
                    owner=caller.name,
                    job_name=job.job_name,
                    document=redact_document(child_document),
                    job=self._stored_job(job),
                    backend=backend,
                    at=at,
                    parent_id=parent,
                    enqueued=enqueued,
                )
            )
        first = points[0][0] if points else None
        sweep = NewActivity(
            id=parent,
            owner=caller.name,
            job_name=first.job_name if first else None,
            document=redact_document(document),
            job="{}",
            backend=None,
            at=at,
            warnings=tuple(warnings),
            children=len(children),
            request_key=rows.request_key(caller.name, request, document) if request else None,
        )
        created = await self._db.write(rows.create_sweeps, [sweep, *children])
        if created is None:
            raise NotAcceptingNewActivities("this factory is not accepting new activities")
        if created != parent:
            log.info("%s repeated request %s: it created %s", caller.name, request, created)
            return created
        # Together: one group commit for the whole sweep, not one per child.
        await asyncio.gather(*(self._use(child_id, used) for child_id, used in uses))
        self.metrics.submissions.inc()
        log.info(
            "%s created a parameter sweep %s of %d activities", caller.name, parent, len(children)
        )
        if taker is not None and any(child.enqueued for child in children):
            taker.enqueued()
        if any(child.enqueued is None for child in children) and backend is not None:
            self.tracker.wakeup.set()
        return parent

    def _stored_job(self, job: JobDefinition) -> str:
        """The job as stored: JSON, its staging secrets sealed."""
        return codec.to_json(seal_credentials(job, self._sealer) if self._sealer else job)

    async def statuses(
        self, caller: Principal, ids: Sequence[ActivityId]
    ) -> dict[ActivityId, ActivityRecord]:
        """The activities among ``ids`` that the caller may see (others are absent). A
        parameter sweep comes with its children's summary, and their state as its own."""
        found = await self._db.read(rows.get_activities, ids)
        visible = {i: r for i, r in found.items() if caller.may_see(r.owner)}
        sweeps = [i for i, r in visible.items() if r.children]
        if sweeps:
            summaries = await self._db.read(rows.sweep_summaries, sweeps)
            for i in sweeps:
                summary = summaries[i]
                counts = ", ".join(f"{n} {s.value}" for s, n in summary.counts.items() if n)
                visible[i] = dataclasses.replace(
                    visible[i],
                    state=summary.state,
                    substate=None,
                    message=f"parameter sweep of {visible[i].children} activities: {counts}",
                    sweep=summary,
                )
        return visible

    async def documents(
        self, caller: Principal, ids: Sequence[ActivityId]
    ) -> dict[ActivityId, str]:
        """The JobDefinition documents of the visible activities among ``ids``, secrets
        redacted (documents are stored so; this catches those stored before that)."""
        found = await self._db.read(rows.get_documents, ids)
        return {i: redact_document(doc) for i, (r, doc) in found.items() if caller.may_see(r.owner)}

    async def terminate(
        self, caller: Principal, ids: Sequence[ActivityId]
    ) -> dict[ActivityId, TerminateResult]:
        """Terminate each activity; one result per distinct id."""
        found = await self.statuses(caller, ids)
        results: dict[ActivityId, TerminateResult] = {}
        for activity_id in dict.fromkeys(ids):
            record = found.get(activity_id)
            if record is None:
                results[activity_id] = TerminateResult(
                    outcome=TerminateOutcome.UNKNOWN, record=None
                )
            else:
                results[activity_id] = await self._terminate_one(caller, record)
        return results

    async def summary(self, caller: Principal) -> FactorySummary:
        """Accepting flag, per-state counts and active activity references for the caller."""
        owner = None if caller.admin else caller.name
        accepting, counts, active = await self._db.read(
            rows.factory_summary, owner, self.reference_limit
        )
        return FactorySummary(accepting=accepting, counts=counts, active=active)

    async def set_accepting(self, caller: Principal, accepting: bool) -> None:
        """BES-Management Start/StopAcceptingNewActivities.

        Raises:
            NotAuthorized: The caller is not an administrator.
        """
        if not caller.admin:
            raise NotAuthorized(f"{caller.name} may not manage this factory")
        await self._db.write(
            rows.set_setting, (rows.ACCEPTING_SETTING, "true" if accepting else "false")
        )
        log.info(
            "%s %s accepting new activities", caller.name, "started" if accepting else "stopped"
        )

    async def is_accepting(self) -> bool:
        """Whether CreateActivity is accepted right now."""
        return await self._db.read(rows.is_accepting)

    async def outputs(self, caller: Principal, activity_id: ActivityId) -> Path | None:
        """The directory of files kept for a visible activity, if its backend kept any."""
        record = (await self.statuses(caller, [activity_id])).get(activity_id)
        if record is None or not record.outputs or record.backend_job_id is None:
            return None
        backend = self._backends.get(record.backend or "")
        if backend is None:
            return None
        return await self._db.off_loop(backend.kept_outputs, record.backend_job_id)

    async def why(self, caller: Principal, activity_id: ActivityId) -> dict[str, Any] | None:
        """Why a visible activity is where it is: its state and message, and what its backend
        says (requirements, pool, queue position, each worker's misfit); None if not visible."""
        record = (await self.statuses(caller, [activity_id])).get(activity_id)
        if record is None:
            return None
        out: dict[str, Any] = {
            "activity": record.id,
            "state": record.state.value,
            "substate": record.substate.value if record.substate else None,
            "message": record.message,
            "backend": record.backend,
            "pool": record.pool,
        }
        backend = self._backends.get(record.backend or "")
        if backend is not None and record.backend_job_id is not None:
            out["analysis"] = dict(await self._db.off_loop(backend.explain, record.backend_job_id))
        elif record.backend_job_id is None and not record.state.terminal:
            out["analysis"] = {"reason": "not handed to a backend yet"}
        return out

    async def suspend(
        self, caller: Principal, activity_id: ActivityId, suspended: bool
    ) -> ActivityRecord | None:
        """Suspend (True) or resume (False) a visible VM lease's VM: its worker pauses it at
        its next heartbeat (its wall time stops meanwhile). None if not visible.

        Raises:
            InvalidRequest: The activity is not a running VM lease, or its backend cannot.
        """
        record = (await self.statuses(caller, [activity_id])).get(activity_id)
        if record is None:
            return None
        if record.state.terminal or record.access is None:
            raise InvalidRequest(
                f"{activity_id} is not a running VM lease ({record.state.value}); only a lease "
                "whose VM is up can be suspended or resumed"
            )
        backend = self._backends.get(record.backend or "")
        done = (
            backend is not None
            and record.backend_job_id is not None
            and await self._db.off_loop(backend.suspend, record.backend_job_id, suspended)
        )
        if not done:
            raise InvalidRequest(f"{activity_id}: its backend cannot suspend it now")
        log.info("%s: %s by %s", activity_id, "suspended" if suspended else "resumed", caller.name)
        return record

    async def history(
        self, caller: Principal, activity_id: ActivityId
    ) -> list[tuple[dt.datetime, str, str | None, str | None]]:
        """Every transition of a visible activity, oldest first (empty if not visible)."""
        if not await self.statuses(caller, [activity_id]):
            return []
        return await self._db.read(rows.events, activity_id)

    # ------------------------------------------------------------------ termination

    async def _terminate_one(self, caller: Principal, record: ActivityRecord) -> TerminateResult:
        if record.sweep is not None:
            return await self._terminate_sweep(caller, record, record.sweep)
        if record.state is ActivityState.CANCELLED:
            return TerminateResult(outcome=TerminateOutcome.TERMINATED, record=record)
        if record.state.terminal:
            return TerminateResult(outcome=TerminateOutcome.NOT_APPLICABLE, record=record)
        await self._db.write(rows.mark_cancel_requested, record.id)
        reason = f"terminated by {caller.name}"
        if record.backend_job_id is None or record.backend not in self._backends:
            # Not handed to a backend (yet): the dispatcher skips it from now on, and a submit
            # racing with us finds it Cancelled and cancels the backend job it just made.
            return await self._finish_termination(record, reason)
        backend = self._backends[record.backend]
        try:
            outcome = (await self._db.off_loop(backend.cancel, [record.backend_job_id]))[
                record.backend_job_id
            ]
        except BackendError as exc:
            log.warning("cancel of %s on %s failed, will retry: %s", record.id, backend.name, exc)
            outcome = CancelOutcome.WILL_APPLY_LATER
        if outcome in (CancelOutcome.CANCELLED, CancelOutcome.UNKNOWN_ID):
            if outcome is CancelOutcome.UNKNOWN_ID:
                reason += f" (backend {backend.name} no longer knew the job)"
            return await self._finish_termination(record, reason)
        if outcome is CancelOutcome.ALREADY_TERMINAL:
            await self.tracker.poll_backend(backend, only=[record])
            refreshed = (await self.statuses(caller, [record.id]))[record.id]
            if refreshed.state is ActivityState.CANCELLED:
                return TerminateResult(outcome=TerminateOutcome.TERMINATED, record=refreshed)
            return TerminateResult(outcome=TerminateOutcome.NOT_APPLICABLE, record=refreshed)
        await self.tracker.apply(
            record,
            JobStatus(
                state=JobState(record.state.value), substate=SubState.TERMINATING, message=reason
            ),
        )
        refreshed = (await self.statuses(caller, [record.id])).get(record.id, record)
        return TerminateResult(outcome=TerminateOutcome.WILL_APPLY_LATER, record=refreshed)

    async def _terminate_sweep(
        self, caller: Principal, record: ActivityRecord, sweep: rows.SweepSummary
    ) -> TerminateResult:
        """Terminating a sweep terminates every point of it."""
        results = await self.terminate(caller, list(sweep.children))
        outcomes = {r.outcome for r in results.values()}
        refreshed = (await self.statuses(caller, [record.id]))[record.id]
        if TerminateOutcome.WILL_APPLY_LATER in outcomes:
            outcome = TerminateOutcome.WILL_APPLY_LATER
        elif TerminateOutcome.TERMINATED in outcomes:
            outcome = TerminateOutcome.TERMINATED
        else:
            outcome = TerminateOutcome.NOT_APPLICABLE
        return TerminateResult(outcome=outcome, record=refreshed)

    async def _finish_termination(self, record: ActivityRecord, reason: str) -> TerminateResult:
        transition = Transition(
            id=record.id, state=ActivityState.CANCELLED, message=reason, at=self._clock()
        )
        result = await self._db.write(rows.apply_transitions, transition)
        current = (await self._db.read(rows.get_activities, [record.id]))[record.id]
        if result.applied or current.state is ActivityState.CANCELLED:
            return TerminateResult(outcome=TerminateOutcome.TERMINATED, record=current)
        return TerminateResult(outcome=TerminateOutcome.NOT_APPLICABLE, record=current)

    # ------------------------------------------------------------------ backend loop

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch queued activities and keep them in step with backends until ``stop``."""
        await self.tracker.run(stop)

    async def dispatch_once(self, limit: int = 256) -> int:
        """Submit queued activities to their backends; return how many were handled."""
        return await self.tracker.dispatch_once(limit)

    async def poll_once(self) -> int:
        """Ask every backend about its unfinished jobs and apply what changed."""
        return await self.tracker.poll_once()
