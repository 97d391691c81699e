"""Keeping activities in step with their backends: dispatch, polls, pushed changes, upkeep.

* **Dispatch**: queued activities are claimed with one ``UPDATE ... RETURNING`` (so several
  replicas never submit one twice) and handed to their backend in one batch.
* **Pushed changes**: a backend that hears of changes as they happen (the desktop grid, from
  its workers) pushes them; one consumer applies them in order, many per commit.
* **Polls**: every backend is asked for the status of its unfinished jobs: every
  ``poll_interval_s`` a thousand of them, in pages of fifty spread over the interval, the
  next poll going on where the last one ended (a walk over all of them, in index order, at a
  cost that does not grow with their number). This alone is correct; pushes only make
  activities follow within milliseconds instead of a walk.
* **Upkeep**: each backend's :meth:`~bes.backends.base.Backend.housekeeping` runs every
  ``housekeeping_interval_s``, on one replica at a time (:mod:`bes.upkeep`).

Every change goes through :meth:`Tracker._step`, the one place where a backend's report
becomes a transition of the state machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Final

from bes.access import Access
from bes.backends.base import Backend, JobState, JobStatus, StatusChange, Submission
from bes.db import activity_rows as rows
from bes.db.activity_rows import ActivityRecord, Transition
from bes.db.store import Database
from bes.errors import BackendError, BesError, SubmitError
from bes.ids import ActivityId, BackendJobId
from bes.jsdl import codec
from bes.jsdl.model import JobDefinition
from bes.states import ActivityState, SubState, substate_fits
from bes.upkeep import Upkeep

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]

_DISPATCH_LEASE: Final = dt.timedelta(minutes=2)
_POLL_PAGE: Final = 50
_POLL_PAGES: Final = 20
"""A poll asks about at most this many pages of a backend's unfinished jobs (a thousand)."""
_PUSH_BATCH: Final = 2000
PUSH_GATHER_S: Final = 0.1


class Tracker:
    """The backend loop of one service process (see the module docstring).

    Args:
        db: The database.
        backends: The configured backends by name.
        clock: The current time (aware, UTC).
        holder: This replica's name, for the upkeep duty (default: a new random one).
    """

    def __init__(
        self,
        db: Database,
        backends: dict[str, Backend],
        *,
        clock: Clock,
        holder: str | None = None,
    ) -> None:
        self._db = db
        self._backends = backends
        self._clock = clock
        self._dispatcher_name = "d-" + secrets.token_hex(6)
        self.upkeep = Upkeep(
            db, backends, holder=holder or "bes-" + secrets.token_hex(4), clock=clock
        )
        """Housekeeping and the tally's folds, on the replica holding the duty."""
        self.wakeup = asyncio.Event()
        """Set to dispatch at once (a new activity arrived)."""
        self._pushed: list[StatusChange] = []
        self._watch_marks: dict[str, rows.WatchMark | None] = {}
        """Per backend, where its next poll starts."""
        self._push_ready = asyncio.Event()

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch, poll, apply pushes and run upkeep until ``stop`` is set."""
        upkeep = asyncio.create_task(self.upkeep.run(stop), name="bes-upkeep")
        try:
            await self._track(stop)
        finally:
            if not stop.is_set():  # cancelled: the upkeep goes too
                upkeep.cancel()
            await asyncio.gather(upkeep, return_exceptions=True)

    async def _track(self, stop: asyncio.Event) -> None:
        if not self._backends:
            await stop.wait()
            return
        loop = asyncio.get_running_loop()

        def listener(changes: Sequence[StatusChange]) -> None:
            if _running_loop() is loop:
                self._push(changes)
            else:  # from a backend's thread
                loop.call_soon_threadsafe(self._push, changes)

        for backend in self._backends.values():
            backend.watch(listener)
        helpers = [asyncio.create_task(self._consume(stop), name="bes-pushed-changes")]
        helpers += [
            asyncio.create_task(self._polls(backend, stop), name=f"bes-polls-{name}")
            for name, backend in self._backends.items()
        ]
        try:
            await self._rounds(stop)
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _rounds(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wakeup.clear()  # before dispatching: a create arriving meanwhile sets it again
            try:
                await self.dispatch_once()
            except BesError as exc:
                log.warning("backend round failed: %s", exc)
            except Exception:
                log.exception("backend round failed")
            waiters = [
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(self.wakeup.wait()),
            ]
            await asyncio.wait(
                waiters, timeout=self._next_round_s(), return_when=asyncio.FIRST_COMPLETED
            )
            for w in waiters:
                w.cancel()

    def _next_round_s(self) -> float:
        # Also at the housekeeping period (now bes.upkeep's): a dispatch to retry waits no longer.
        periods = [b.poll_interval_s for b in self._backends.values()]
        periods += [
            b.housekeeping_interval_s
            for b in self._backends.values()
            if b.housekeeping_interval_s is not None
        ]
        return min(periods)

    # ------------------------------------------------------------------ dispatch

    async def dispatch_once(self, limit: int = 256) -> int:
        """Submit queued activities to their backends; return how many were handled."""
        now = self._clock()
        claimed = await self._db.write(
            rows.claim_for_dispatch, (self._dispatcher_name, limit, now, now + _DISPATCH_LEASE)
        )
        by_backend: dict[str, list[tuple[ActivityId, JobDefinition]]] = {}
        for activity_id, backend_name, job_json in claimed:
            if backend_name not in self._backends:
                await self.fail(activity_id, f"backend {backend_name!r} is not configured here")
                continue
            try:
                job = codec.from_json(job_json)
            except BesError as exc:
                await self.fail(activity_id, str(exc))
                continue
            by_backend.setdefault(backend_name, []).append((activity_id, job))
        await asyncio.gather(*(self._submit(n, jobs) for n, jobs in by_backend.items()))
        return len(claimed)

    async def _submit(
        self, backend_name: str, jobs: list[tuple[ActivityId, JobDefinition]]
    ) -> None:
        backend = self._backends[backend_name]
        try:
            submitted = await asyncio.to_thread(backend.submit_batch, jobs)
        except BackendError as exc:
            log.warning(
                "backend %s unavailable, %d activities stay queued: %s",
                backend_name,
                len(jobs),
                exc,
            )
            return
        recorded = []
        for activity_id, _ in jobs:
            outcome = submitted.get(activity_id)
            if isinstance(outcome, SubmitError) and outcome.retryable:
                log.warning(
                    "submit of %s to %s failed, will retry: %s", activity_id, backend_name, outcome
                )
            elif isinstance(outcome, BesError):
                await self.fail(activity_id, f"{backend_name} refused the job: {outcome}")
            elif not outcome:
                await self.fail(activity_id, f"{backend_name} returned no job id")
            elif isinstance(outcome, Submission):
                recorded.append((activity_id, outcome))
            else:
                recorded.append((activity_id, Submission(job_id=outcome)))
        now = self._clock()
        results = await asyncio.gather(
            *(
                self._db.write(rows.set_backend_job, (a, s.job_id, now, s.pool, s.message))
                for a, s in recorded
            )
        )
        undo = [s.job_id for (_, s), ok in zip(recorded, results, strict=True) if not ok]
        if undo:  # terminated while we were submitting: undo on the backend
            await asyncio.to_thread(backend.cancel, undo)

    # ------------------------------------------------------------------ polls

    async def poll_once(self) -> int:
        """Ask every backend about its unfinished jobs and apply what changed."""
        changed = 0
        for backend in self._backends.values():
            changed += await self.poll_backend(backend)
        return changed

    async def poll_backend(
        self, backend: Backend, *, only: Sequence[ActivityRecord] | None = None
    ) -> int:
        """Poll one backend at once about the next :data:`_POLL_PAGES` pages of its unfinished
        jobs (successive polls walk all of them in turn), or about those of ``only``; return
        how many activities changed."""
        if only is not None:
            return await self._poll_page(
                backend,
                [
                    (r.id, r.backend_job_id, r.state, r.cancel_requested)
                    for r in only
                    if r.backend_job_id is not None
                ],
            )
        applied = 0
        for _ in range(_POLL_PAGES):
            changed, walked = await self._poll_next_page(backend)
            applied += changed
            if walked:
                break
        return applied

    async def _polls(self, backend: Backend, stop: asyncio.Event) -> None:
        """Poll ``backend`` until ``stop``: every ``poll_interval_s`` the next pages of its
        unfinished jobs, one page at a time, spread over the interval. A poll of a thousand
        jobs at once holds the loop for tens of milliseconds, every request waiting; a page
        of fifty, a millisecond or two. (A backend that pushes its changes, like the desktop
        grid, is polled only to catch a change whose push was lost.)"""
        pause_s = backend.poll_interval_s / _POLL_PAGES
        while not stop.is_set():
            started = time.monotonic()
            for _ in range(_POLL_PAGES):
                try:
                    _, walked = await self._poll_next_page(backend)
                except BesError as exc:
                    log.warning("poll of %s failed: %s", backend.name, exc)
                    walked = True
                except Exception:
                    log.exception("poll of %s failed", backend.name)
                    walked = True
                if walked:  # (the walk starts again at the next poll)
                    break
                if await _stopped(stop, pause_s):
                    return
            await _stopped(stop, backend.poll_interval_s - (time.monotonic() - started))

    async def _poll_next_page(self, backend: Backend) -> tuple[int, bool]:
        """Poll the next page of ``backend``'s walk; (activities changed, the walk is over)."""
        page, mark = await self._db.read(
            rows.backend_jobs_to_watch,
            backend.name,
            _POLL_PAGE,
            self._watch_marks.get(backend.name),
        )
        self._watch_marks[backend.name] = mark
        return await self._poll_page(backend, page), mark is None

    async def _poll_page(
        self,
        backend: Backend,
        watched: Sequence[tuple[ActivityId, BackendJobId, ActivityState, bool]],
    ) -> int:
        if not watched:
            return 0
        statuses = await asyncio.to_thread(backend.status, [w[1] for w in watched])
        changes = [
            StatusChange(activity_id=a, job_id=j, status=statuses[j])
            for a, j, _, _ in watched
            if j in statuses
        ]
        applied, retry_cancel = await self._apply_all(changes, backend)
        if retry_cancel:
            try:
                await asyncio.to_thread(backend.cancel, retry_cancel)
            except BackendError as exc:
                log.warning("cancel retry on %s failed: %s", backend.name, exc)
        return applied

    # ------------------------------------------------------------------ pushes

    def _push(self, changes: Sequence[StatusChange]) -> None:
        self._pushed.extend(changes)
        self._push_ready.set()

    async def _consume(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._push_ready.wait()
            # Gather what arrives in the next moments: more changes share a commit, and a job
            # that ended right after it started is written once.
            await asyncio.sleep(PUSH_GATHER_S)
            self._push_ready.clear()
            while self._pushed:
                batch, self._pushed = self._pushed[:_PUSH_BATCH], self._pushed[_PUSH_BATCH:]
                try:
                    await self._apply_all(_latest(batch), None)
                except BesError as exc:
                    log.warning("pushed changes not applied (the next poll will): %s", exc)
                except Exception:
                    log.exception("pushed changes not applied (the next poll will)")

    # ------------------------------------------------------------------ applying

    async def _apply_all(
        self, changes: Sequence[StatusChange], backend: Backend | None
    ) -> tuple[int, list[BackendJobId]]:
        """Apply changes; return how many changed an activity, and the jobs whose cancellation
        must be asked again (cancel requested, not yet ended)."""
        if not changes:
            return 0, []
        records = await self._db.read(rows.get_activities, [c.activity_id for c in changes])
        updates = []
        retry_cancel: list[BackendJobId] = []
        for change in changes:
            record = records.get(change.activity_id)
            if record is None or record.backend_job_id != change.job_id:
                continue
            status = change.status
            if status.state is JobState.UNKNOWN:
                if backend is not None:
                    log.warning(
                        "%s: backend %s cannot tell the state of %s: %s",
                        record.id,
                        backend.name,
                        change.job_id,
                        status.message,
                    )
                continue
            if record.cancel_requested and not status.state.terminal:
                retry_cancel.append(change.job_id)
                status = JobStatus(
                    state=status.state,
                    substate=SubState.TERMINATING,
                    message=status.message,
                    exit_code=status.exit_code,
                    extra=status.extra,
                )
            step = self._step(record, status)
            if step is not None:  # (a poll mostly hears what is known already)
                updates.append((record, step))
        # Concurrent writes share a commit.
        applied = await asyncio.gather(*(self._write_step(r, step) for r, step in updates))
        return sum(applied), retry_cancel

    async def apply(self, record: ActivityRecord, status: JobStatus) -> bool:
        """Move an activity to the state a backend reported; True if anything changed."""
        step = self._step(record, status)
        if step is None:
            return False
        return await self._write_step(record, step)

    def _step(self, record: ActivityRecord, status: JobStatus) -> Transition | None:
        """The transition a report asks of an activity; None if it changes nothing."""
        target = status.state.activity_state
        if target is None:
            return None
        substate = status.substate
        if not substate_fits(target, substate):
            log.warning(
                "%s: backend reported sub-state %s with state %s; ignoring the sub-state",
                record.id,
                substate,
                target,
            )
            substate = None
        pool = status.extra.get("pool")
        reported = status.extra.get("access")
        access = Access.from_json(reported) if reported else None
        if (
            target is record.state
            and substate is record.substate
            and (status.message is None or status.message == record.message)
            and (pool is None or pool == record.pool)
            and (access is None or access == record.access)
        ):
            return None
        return Transition(
            id=record.id,
            state=target,
            substate=substate,
            message=status.message,
            exit_code=status.exit_code,
            at=self._clock(),
            expect_backend_job_id=record.backend_job_id,
            outputs=target.terminal and status.extra.get("outputs") == "kept",
            # Pending -> Finished is not a BES transition: record the Running we missed.
            late_running=record.state is ActivityState.PENDING and target is ActivityState.FINISHED,
            pool=pool,
            access=access,
        )

    async def _write_step(self, record: ActivityRecord, step: Transition) -> bool:
        target = step.state
        (result,) = await self._db.write(rows.apply_transition_steps, [step])
        if result.applied:
            return True
        if not (result.state is not None and result.state.terminal and target.terminal):
            # (a report of the end heard twice is not worth a word)
            log.warning(
                "%s: refused transition %s -> %s (%s)",
                record.id,
                result.state,
                target,
                step.message,
            )
        return False

    async def fail(self, activity_id: ActivityId, reason: str) -> None:
        """The activity failed before a backend ran it."""
        log.warning("%s failed: %s", activity_id, reason)
        await self._db.write(
            rows.apply_transitions,
            Transition(
                id=activity_id, state=ActivityState.FAILED, message=reason, at=self._clock()
            ),
        )


async def _stopped(stop: asyncio.Event, wait_s: float) -> bool:
    """Wait ``wait_s`` (at most) for ``stop``; whether it is set."""
    if wait_s > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait_s)
    return stop.is_set()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _latest(changes: Sequence[StatusChange]) -> list[StatusChange]:
    """One change per activity, the last one pushed (what it is now)."""
    latest: dict[ActivityId, StatusChange] = {}
    for change in changes:
        latest.pop(change.activity_id, None)
        latest[change.activity_id] = change
    return list(latest.values())
