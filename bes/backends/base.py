"""The Backend interface: how the activity registry hands jobs to an execution system.

A backend is a small vector interface in the manner of Parsl's providers, with Libcloud-style
declarations::

    activities ──submit(job, activity_id)──► backend ──► desktop grid / cloud / ...
               ◄──status([ids]) / cancel([ids])──

Contract, checked for every implementation by ``tests/backends/test_contract.py``:

* :meth:`Backend.submit` returns a non-empty :data:`~bes.ids.BackendJobId` or raises
  :class:`~bes.errors.SubmitError` (this job) / :class:`~bes.errors.BackendError` (the whole
  backend). It never returns a falsy id.
* :meth:`Backend.status` and :meth:`Backend.cancel` take a sequence of ids and return a mapping
  **keyed by id** with exactly one entry per distinct id asked for. Per-item trouble is a value
  (``JobState.UNKNOWN``, ``CancelOutcome.UNKNOWN_ID``, ...), never an exception; they raise only
  when the whole call fails (backend unreachable, not authorized).
* Native states are translated through a module-level table; an unrecognized native state
  becomes ``JobState.UNKNOWN`` with a logged warning.
* What a backend can run is declared in :attr:`Backend.capabilities` and checked by the
  activity registry *before* submitting (the caller gets UnsupportedFeatureFault at once).
* Methods are called from worker threads, possibly concurrently: implementations are
  thread-safe.
* A backend is built by :meth:`Backend.build` from a :class:`BackendContext` (the service's
  database, data directory and event loop), never from module-level state.
* Optional hooks with safe defaults: :meth:`Backend.unsupported` (checks beyond the declared
  capabilities, e.g. staging URI schemes), :meth:`Backend.kept_outputs` (files the service
  keeps for the activity's owner), :meth:`Backend.submit_batch` (many submissions in one go),
  :meth:`Backend.housekeeping` (periodic upkeep, e.g. taking back expired leases).
* A backend that learns of changes as they happen (the desktop grid hears from its workers)
  may push them to the registry through the listener given to :meth:`Backend.watch`, from
  the service's event loop. Pushing is an optimisation: the registry still polls
  :meth:`Backend.status`, every ``poll_interval_s``, and that alone must be correct.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Final

from bes.db.activity_rows import Enqueued
from bes.db.store import Database
from bes.errors import BackendError, SubmitError
from bes.ids import ActivityId, BackendJobId
from bes.jsdl.model import JobDefinition
from bes.metrics import Metrics
from bes.sealing import Sealer
from bes.states import ActivityState, SubState
from bes.storage import Storage


class JobState(StrEnum):
    """A backend job's state in BES terms, plus UNKNOWN for "cannot tell"."""

    PENDING = "Pending"
    """Accepted by the backend, not started."""
    RUNNING = "Running"
    """Staging or executing."""
    FINISHED = "Finished"
    """Ended normally."""
    CANCELLED = "Cancelled"
    """Ended because it was cancelled."""
    FAILED = "Failed"
    """Ended abnormally."""
    UNKNOWN = "Unknown"
    """The backend cannot say (unknown id, unrecognized native state). Never applied to an
    activity; the registry asks again later."""

    @property
    def terminal(self) -> bool:
        """True for Finished, Cancelled and Failed."""
        return self in (JobState.FINISHED, JobState.CANCELLED, JobState.FAILED)

    @property
    def activity_state(self) -> ActivityState | None:
        """The matching activity state; None for UNKNOWN."""
        return None if self is JobState.UNKNOWN else ActivityState(self.value)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStatus:
    """What a backend knows of one job.

    Attributes:
        state: The job's state.
        substate: A refinement (e.g. Provisioning, Staging-In), when the backend knows it.
        message: Why, for people; required in practice for FAILED.
        exit_code: The application's exit status once it ended, if known.
        extra: Backend-specific facts (worker name, instance id), shown to admins.
    """

    state: JobState
    substate: SubState | None = None
    message: str | None = None
    exit_code: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Submission:
    """A job a backend took, with what it decided at once.

    Attributes:
        job_id: The backend's id of the job (never falsy).
        pool: The pool of workers it was routed to, if the backend has pools.
        message: Why it waits, for people (the activity's status message).
    """

    job_id: BackendJobId
    pool: str | None = None
    message: str | None = None


class CancelOutcome(StrEnum):
    """Per-job result of :meth:`Backend.cancel`."""

    CANCELLED = "cancelled"
    """The job is stopped now."""
    WILL_APPLY_LATER = "will-apply-later"
    """Cancellation is under way (e.g. a worker must be told at its next heartbeat)."""
    ALREADY_TERMINAL = "already-terminal"
    """The job had already ended; nothing was done."""
    UNKNOWN_ID = "unknown-id"
    """The backend does not know this job (any more)."""


class Capability(StrEnum):
    """Features a backend declares it can run."""

    POSIX_APPLICATION = "posix-application"
    """Runs jsdl-posix:POSIXApplication."""
    HPC_PROFILE_APPLICATION = "hpc-profile-application"
    """Runs jsdl-hpcpa:HPCProfileApplication."""
    SPMD_APPLICATION = "spmd-application"
    """Runs jsdl-spmd:SPMDApplication (several processes)."""
    DATA_STAGING = "data-staging"
    """Fetches DataStaging sources and delivers targets."""
    VM_JOBS = "vm-jobs"
    """Runs jobs inside a virtual machine described by the VM extension."""
    NO_APPLICATION = "no-application"
    """Runs jobs without an Application element: data staging only (in, then out), or
    nothing at all."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendContext:
    """What the service gives a backend it builds.

    Attributes:
        db: The service's database (backends that keep their own rows use it).
        data_dir: The service's data directory (for files a backend keeps).
        loop: The service's event loop, when the backend may schedule work on it.
        options: Backend-specific settings (``--backend-option key=value``).
        metrics: The service's counters (a backend counts what happens only inside it).
        sealer: Opens the staging secrets sealed in stored jobs (:mod:`bes.jsdl.secrets`),
            for a backend that hands jobs to their executors; None where nothing is sealed.
        storage: Where a backend keeps files that every replica must reach (kept outputs),
            under a prefix of its own (:mod:`bes.storage`); None: a directory storage at
            ``data_dir``.
    """

    db: Database
    data_dir: Path
    loop: asyncio.AbstractEventLoop | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    sealer: Sealer | None = None
    storage: Storage | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusChange:
    """A change a backend pushes: the job of ``activity_id`` is now ``status``."""

    activity_id: ActivityId
    job_id: BackendJobId
    status: JobStatus


StatusListener = Callable[[Sequence[StatusChange]], None]
"""Receives pushed changes, in the order they happened (called in the event loop)."""


class Backend(abc.ABC):
    """Base class of every backend. See the module docstring for the contract."""

    housekeeping_interval_s: float | None = None
    """How often :meth:`housekeeping` is to run; None: never."""

    @classmethod
    def build(cls, context: BackendContext) -> Backend:
        """A backend configured for the service described by ``context``.

        Raises:
            ConfigError: The options are wrong for this backend.
        """
        del context
        return cls()

    name: ClassVar[str]
    """Registry name, e.g. ``desktopgrid``."""
    capabilities: ClassVar[frozenset[Capability]]
    """What this backend can run."""
    poll_interval_s: float = 5.0
    """How often the registry should call :meth:`status` for this backend's running jobs."""

    @abc.abstractmethod
    def submit(self, job: JobDefinition, *, activity_id: ActivityId) -> BackendJobId:
        """Start running ``job`` for activity ``activity_id``.

        Raises:
            SubmitError: This job cannot be run (``retryable`` says whether to try again).
            BackendError: The backend as a whole failed.
        """

    @abc.abstractmethod
    def status(self, ids: Sequence[BackendJobId]) -> Mapping[BackendJobId, JobStatus]:
        """Current status of each job, keyed by id (UNKNOWN for ids it does not know).

        Raises:
            BackendError: The backend cannot be asked at all.
        """

    @abc.abstractmethod
    def cancel(self, ids: Sequence[BackendJobId]) -> Mapping[BackendJobId, CancelOutcome]:
        """Cancel each job, keyed by id.

        Raises:
            BackendError: The backend cannot be asked at all.
        """

    def submit_batch(
        self, jobs: Sequence[tuple[ActivityId, JobDefinition]]
    ) -> Mapping[ActivityId, BackendJobId | Submission | BackendError]:
        """Submit several jobs: per activity, its backend job id (or a :class:`Submission`
        that also says where it goes and why it waits) or why it was not taken.

        The default submits one by one; backends that can do better override it.

        Raises:
            BackendError: The backend as a whole failed (nothing was submitted).
        """
        out: dict[ActivityId, BackendJobId | Submission | BackendError] = {}
        for activity_id, job in jobs:
            try:
                out[activity_id] = self.submit(job, activity_id=activity_id)
            except SubmitError as exc:
                out[activity_id] = exc
        return out

    async def enqueue(self, activity_id: ActivityId, job: JobDefinition) -> Enqueued | None:
        """The rows that queue ``job`` in the service's own database, to be written in the
        transaction that creates its activity (called in the event loop, so it must not
        block); None (the default) leaves the job to the dispatcher, which calls
        :meth:`submit_batch`. Only a backend whose queue is the service's database can.

        A backend that enqueues checks the job itself (the registry does not call
        :meth:`unsupported` for a job it enqueued).

        Raises:
            UnsupportedFeature: The backend cannot run this job (said as
                :meth:`unsupported` would).
            BesError: The job cannot be queued so; the dispatcher will submit it instead.
        """
        del activity_id, job
        return None

    def enqueued(self) -> None:  # noqa: B027 - optional hook with an empty default
        """Jobs from :meth:`enqueue` were committed (called in the event loop)."""

    def watch(self, listener: StatusListener) -> None:
        """Push changes to ``listener`` from now on (if this backend can; default: no-op)."""
        del listener

    def housekeeping(self) -> None:  # noqa: B027 - optional hook with an empty default
        """Periodic upkeep (called from a worker thread every ``housekeeping_interval_s``, on
        one replica at a time: the one holding the upkeep duty, :mod:`bes.upkeep`)."""

    def explain(self, job_id: BackendJobId) -> Mapping[str, Any]:
        """Why a job is where it is, for ``bes why`` (JSON-ready; empty: nothing to say)."""
        del job_id
        return {}

    def suspend(self, job_id: BackendJobId, suspended: bool) -> bool:
        """Suspend (True) or resume (False) a VM lease's VM; False if this backend cannot, or
        the job is not running."""
        del job_id, suspended
        return False

    def unsupported(self, job: JobDefinition) -> list[str]:
        """The features of ``job`` this backend cannot run, as readable names (empty: none).

        The default checks the declared capabilities; backends add their own checks.
        """
        return missing_capabilities(job, self.capabilities)

    def kept_outputs(self, job_id: BackendJobId) -> Path | None:
        """The directory of files the service keeps for this job's owner, if any (files
        still being written in it end with :data:`PARTIAL`; see :func:`kept_files`)."""
        del job_id
        return None

    def discard(self, ids: Sequence[BackendJobId]) -> int:
        """Remove what the backend still keeps of ended jobs whose activities are being
        purged (:mod:`bes.retention`), kept outputs first; return the bytes freed. Called
        from a worker thread before the activities' rows go; unknown ids are skipped. The
        default keeps nothing: 0."""
        del ids
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook with a sensible empty default
        """Release connections and threads. The backend is not used afterwards."""


PARTIAL: Final = ".partial"
"""The suffix of a kept file still being written (renamed without it once complete)."""


def kept_files(top: Path, *, partial: bool = False) -> list[tuple[str, int]]:
    """The files under a directory of kept outputs (:meth:`Backend.kept_outputs`): relative
    name and size in bytes, by name; files still being written only with ``partial``, and
    none if there is no such directory. Blocking."""
    found: list[tuple[str, int]] = []
    if not top.is_dir():
        return found
    for directory, _, names in os.walk(top):
        for name in names:
            if name.endswith(PARTIAL) and not partial:
                continue
            path = Path(directory) / name
            with contextlib.suppress(OSError):  # removed meanwhile
                found.append((str(path.relative_to(top)), path.stat().st_size))
    return sorted(found)


def missing_capabilities(job: JobDefinition, capabilities: frozenset[Capability]) -> list[str]:
    """The JSDL features of ``job`` that a backend with ``capabilities`` cannot run.

    Returns readable feature names for an UnsupportedFeatureFault, empty if all is supported.
    """
    missing: list[str] = []
    description = job.job_description
    application = description.application
    executable = application.executable_part if application else None
    if application and application.posix and Capability.POSIX_APPLICATION not in capabilities:
        missing.append("jsdl-posix:POSIXApplication")
    if (
        application
        and application.hpc_profile
        and (Capability.HPC_PROFILE_APPLICATION not in capabilities)
    ):
        missing.append("jsdl-hpcpa:HPCProfileApplication")
    if application and application.spmd and Capability.SPMD_APPLICATION not in capabilities:
        missing.append("jsdl-spmd:SPMDApplication")
    if application is not None and executable is None:
        named = f" {application.application_name!r}" if application.application_name else ""
        missing.append(
            f"jsdl:Application{named} without an executable (this service has no registry of "
            "site applications: say what to run with POSIXApplication or HPCProfileApplication)"
        )
    elif application is None and Capability.NO_APPLICATION not in capabilities:
        missing.append("a job without an Application (data staging only)")
    if description.data_staging and Capability.DATA_STAGING not in capabilities:
        missing.append("jsdl:DataStaging")
    return missing
