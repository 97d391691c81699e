"""An in-memory backend with scripted transitions, for tests of the service and registry.

Each job follows :attr:`FakeConfig.script`: a list of ``(seconds after submit, status)`` steps.
Cancellation is immediate or, with ``cancel_delay_s``, takes effect later (as a desktop-grid
worker does at its next heartbeat). The clock is injectable.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bes.backends.base import Backend, CancelOutcome, Capability, JobState, JobStatus
from bes.errors import SubmitError
from bes.ids import ActivityId, BackendJobId
from bes.jsdl.model import JobDefinition
from bes.states import SubState

DEFAULT_SCRIPT: tuple[tuple[float, JobStatus], ...] = (
    (0.0, JobStatus(state=JobState.PENDING)),
    (0.05, JobStatus(state=JobState.RUNNING, substate=SubState.EXECUTING)),
    (0.10, JobStatus(state=JobState.FINISHED, exit_code=0)),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeConfig:
    """How the fake behaves.

    Attributes:
        script: ``(seconds after submit, status)`` steps, in time order.
        cancel_delay_s: None cancels at once; a number makes cancel answer WILL_APPLY_LATER and
            the job turn CANCELLED that many seconds later.
        refuse_job_names: Jobs with these JobNames fail to submit (not retryable).
    """

    script: tuple[tuple[float, JobStatus], ...] = DEFAULT_SCRIPT
    cancel_delay_s: float | None = None
    refuse_job_names: frozenset[str] = field(default_factory=frozenset)


@dataclass(slots=True)
class _Job:
    activity_id: ActivityId
    submitted_at: float
    cancel_at: float | None = None


class FakeBackend(Backend):
    """Scripted in-memory backend (see module docstring)."""

    name = "fake"
    capabilities = frozenset(Capability)
    poll_interval_s = 0.05

    def __init__(
        self, config: FakeConfig | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or FakeConfig()
        self._clock = clock
        self._jobs: dict[BackendJobId, _Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.submitted: list[ActivityId] = []

    def submit(self, job: JobDefinition, *, activity_id: ActivityId) -> BackendJobId:
        if job.job_name in self.config.refuse_job_names:
            raise SubmitError(
                f"the fake refuses job {job.job_name!r}", backend=self.name, retryable=False
            )
        with self._lock:
            job_id = BackendJobId(f"fake-{next(self._ids)}")
            self._jobs[job_id] = _Job(activity_id=activity_id, submitted_at=self._clock())
            self.submitted.append(activity_id)
        return job_id

    def status(self, ids: Sequence[BackendJobId]) -> Mapping[BackendJobId, JobStatus]:
        now = self._clock()
        with self._lock:
            return {i: self._status(self._jobs.get(i), now) for i in ids}

    def cancel(self, ids: Sequence[BackendJobId]) -> Mapping[BackendJobId, CancelOutcome]:
        now = self._clock()
        out: dict[BackendJobId, CancelOutcome] = {}
        with self._lock:
            for i in ids:
                job = self._jobs.get(i)
                if job is None:
                    out[i] = CancelOutcome.UNKNOWN_ID
                elif self._status(job, now).state.terminal:
                    out[i] = CancelOutcome.ALREADY_TERMINAL
                elif self.config.cancel_delay_s is None:
                    job.cancel_at = now
                    out[i] = CancelOutcome.CANCELLED
                else:
                    if job.cancel_at is None:
                        job.cancel_at = now + self.config.cancel_delay_s
                    out[i] = CancelOutcome.WILL_APPLY_LATER
        return out

    def _status(self, job: _Job | None, now: float) -> JobStatus:
        if job is None:
            return JobStatus(state=JobState.UNKNOWN, message="no such job")
        scripted = self.config.script[0][1]
        for after_s, status in self.config.script:
            if now - job.submitted_at >= after_s:
                scripted = status
        if job.cancel_at is not None and now >= job.cancel_at and not scripted.state.terminal:
            return JobStatus(state=JobState.CANCELLED, message="cancelled")
        return scripted
