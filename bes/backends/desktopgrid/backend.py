"""The desktop-grid backend: jobs wait in a queue in the service's database until a worker
(a volunteer's machine or a worker node running ``bes worker``) pulls one, runs it in a VM
and reports back through the worker protocol (:mod:`~bes.backends.desktopgrid.gateway`).

Cancelling a job that a worker holds takes effect at the worker's next heartbeat, so it
answers WILL_APPLY_LATER; a job nobody took yet is cancelled at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from bes.backends.base import (
    Backend,
    BackendContext,
    CancelOutcome,
    Capability,
    JobState,
    JobStatus,
    StatusChange,
    StatusListener,
    Submission,
)
from bes.backends.desktopgrid import _translate
from bes.backends.desktopgrid.config import DesktopGridConfig
from bes.backends.desktopgrid.gateway import WorkerGateway
from bes.backends.desktopgrid.outputs import OutputStore
from bes.backends.desktopgrid.pools import Pools
from bes.clock import utc_now
from bes.db import grid_rows as grid
from bes.db.activity_rows import Enqueued
from bes.db.committer import BatchFunction
from bes.db.grid_rows import GridState
from bes.db.store import Database
from bes.errors import BackendError, BesError, ConfigError, StoreError, UnsupportedFeature
from bes.ids import ActivityId, BackendJobId, new_ordered_id
from bes.jsdl.model import JobDefinition
from bes.metrics import Metrics
from bes.sealing import Sealer
from bes.storage import DirectoryStorage, Storage
from bes.vm.images import ImageError
from bes.vm.repository import BUILT_IN_TEMPLATES, Catalog
from bes.vm.spec import VirtualMachine
from bes.vmjob import virtual_machine

log = logging.getLogger(__name__)

A = TypeVar("A")
R = TypeVar("R")

_CANCEL: Final = {
    GridState.CANCELLED: CancelOutcome.CANCELLED,
    GridState.LEASED: CancelOutcome.WILL_APPLY_LATER,
    GridState.QUEUED: CancelOutcome.WILL_APPLY_LATER,
    GridState.FINISHED: CancelOutcome.ALREADY_TERMINAL,
    GridState.FAILED: CancelOutcome.ALREADY_TERMINAL,
}
_SWEEP_EVERY_S: Final = 1.0
_CATALOG_LOOK_S: Final = 0.25
_WRITE_TIMEOUT_S: Final = 60.0


class DesktopGridBackend(Backend):
    """Pull-based execution of VM jobs by workers (see the module docstring).

    Args:
        db: The service's database, which holds the queue.
        config: Settings.
        loop: The service's event loop; writes from the registry's threads are run there, so
            the service keeps a single writer.
        clock: The current time (aware, UTC).
        metrics: Where claims, lease expiries, VM starts and failed runs are counted.
        sealer: Opens the sealed staging secrets of a job for the worker that leases it.
        holder: This replica's name, for the duties it may hold (the reasons pass).
        storage: Where kept outputs go (under ``outputs/``), shared by every replica; the
            config's ``outputs_dir``, if set, is used instead.
    """

    name = "desktopgrid"
    capabilities = frozenset(
        {
            Capability.POSIX_APPLICATION,
            Capability.HPC_PROFILE_APPLICATION,
            Capability.DATA_STAGING,
            Capability.VM_JOBS,
            Capability.NO_APPLICATION,
        }
    )
    # Workers' reports reach activities at once (pushed); polls only catch up on what a push
    # may have missed (a crash between the two writes, another replica's worker calls).
    poll_interval_s = 5.0
    housekeeping_interval_s = 1.0

    def __init__(
        self,
        db: Database,
        config: DesktopGridConfig,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        metrics: Metrics | None = None,
        sealer: Sealer | None = None,
        holder: str | None = None,
        storage: Storage | None = None,
    ) -> None:
        if config.heartbeat_s >= config.lease_s:
            raise ConfigError("the heartbeat period must be shorter than the lease")
        self._db = db
        self.config = config
        self._loop = loop
        self.clock = clock
        """The current time; the queue's leases are measured against it."""
        self._last_sweep = 0.0
        self._sweep_lock = threading.Lock()
        self._listener: StatusListener | None = None
        self._catalog: tuple[float, Catalog] | None = None
        self._catalog_looked = -math.inf
        self._offers_refresh: asyncio.Future[Any] | None = None
        if config.outputs_dir is not None:
            storage, prefix = DirectoryStorage(config.outputs_dir), ""
        elif storage is not None:
            prefix = "outputs"
        else:
            raise ConfigError("the desktop grid needs a storage or a directory for its outputs")
        self.outputs = OutputStore(storage, prefix=prefix, max_bytes=config.max_output_bytes)
        self.metrics = metrics or Metrics()
        # Late-bound: a clock set on the backend later (tests) applies to the gateway too.
        self.pools = Pools(
            db,
            write=self._write,
            clock=lambda: self.clock(),  # noqa: PLW0108
            live_s=config.lease_s + config.claim_wait_s,
            holder=holder or "bes-" + secrets.token_hex(4),
        )
        """Routing and waiting reasons (cloud pools are added by the cloud road)."""
        self.gateway = WorkerGateway(
            db,
            config,
            self.outputs,
            clock=lambda: self.clock(),  # noqa: PLW0108
            changed=self._changed,
            metrics=self.metrics,
            sealer=sealer,
        )

    @classmethod
    def build(cls, context: BackendContext) -> DesktopGridBackend:
        options = dict(context.options)
        numbers: dict[str, Any] = {}
        for key in ("lease_s", "heartbeat_s", "claim_wait_s"):
            if key in options:
                numbers[key] = _number(key, options.pop(key), float)
        for key in ("max_attempts", "max_output_bytes"):
            if key in options:
                numbers[key] = _number(key, options.pop(key), int)
        if options:
            raise ConfigError(f"unknown desktopgrid options: {', '.join(sorted(options))}")
        config = DesktopGridConfig(catalog_path=context.data_dir / "templates.json", **numbers)
        return cls(
            context.db,
            config,
            loop=context.loop,
            metrics=context.metrics,
            sealer=context.sealer,
            storage=context.storage or DirectoryStorage(context.data_dir),
        )

    # ------------------------------------------------------------------ Backend verbs

    def submit(self, job: JobDefinition, *, activity_id: ActivityId) -> BackendJobId:
        submitted = self.submit_batch([(activity_id, job)])[activity_id]
        if isinstance(submitted, BesError):
            raise submitted
        return submitted.job_id

    def submit_batch(
        self, jobs: Sequence[tuple[ActivityId, JobDefinition]]
    ) -> Mapping[ActivityId, Submission | BackendError]:
        catalog = self.catalog()
        now = self.clock()
        rows = [self._queued(activity_id, job, catalog, now) for activity_id, job in jobs]
        try:
            self._write(grid.add_grid_jobs, rows)
        except StoreError as exc:
            raise BackendError(
                f"the queue cannot be written: {exc}", backend=self.name, retryable=True
            ) from exc
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.gateway.work_added)
        return {
            row.activity_id: Submission(job_id=row.id, pool=row.pool, message=row.reason)
            for row in rows
        }

    async def enqueue(self, activity_id: ActivityId, job: JobDefinition) -> Enqueued | None:
        """The job's queue row, written with its activity: no dispatch round, and no second
        transaction competing with the creates for the database (SQLite has one writer).

        Raises:
            UnsupportedFeature: The desktop grid cannot run this job (what
                :meth:`unsupported` says).
        """
        if self.pools.offers_stale():  # every two seconds at most
            await self._refresh_offers()
        catalog = self.catalog()
        missing = super().unsupported(job)
        machine = None
        if not missing:  # the check and the queue row share the machine, worked out once
            missing, machine = _translate.examine(
                job, self.config.vm_defaults, catalog, self.pools.names()
            )
        if missing or machine is None:
            raise UnsupportedFeature(
                missing, f"backend {self.name!r} cannot run: " + ", ".join(missing)
            )
        row = self._queued(activity_id, job, catalog, self.clock(), machine=machine)
        return Enqueued(
            job_id=row.id, pool=row.pool, message=row.reason, write=grid.queue_jobs, row=row
        )

    async def _refresh_offers(self) -> None:
        """Read the pools' offers again, off the loop: one read however many creates wait
        for it, and none waits longer than for any read (a database that does not answer
        gives them a StoreError, not a hung request).

        Raises:
            StoreError: The database did not answer in time, or failed.
        """
        loop = asyncio.get_running_loop()
        refresh = self._offers_refresh
        if refresh is None or refresh.done() or refresh.get_loop() is not loop:
            refresh = asyncio.ensure_future(asyncio.to_thread(self.pools.offers))
            self._offers_refresh = refresh
        # Shielded: a create that gives up does not cancel the read the others wait for.
        await self._db.bounded(asyncio.shield(refresh), "read", self.pools.offers)

    def enqueued(self) -> None:
        self.gateway.work_added()

    def _queued(
        self,
        activity_id: ActivityId,
        job: JobDefinition,
        catalog: Catalog,
        now: dt.datetime,
        *,
        machine: VirtualMachine | None = None,
    ) -> grid.NewGridJob:
        """The queue row of ``job``: what it needs, and the pool it goes to."""
        if machine is None:
            machine = virtual_machine(job, self.config.vm_defaults, catalog)
        needs = _translate.requirements(machine, self.config.vm_defaults, catalog)
        placed = self.pools.place(needs, machine.pool)
        return grid.NewGridJob(
            id=BackendJobId("g" + new_ordered_id()),  # in order: appended to the queue's index
            activity_id=activity_id,
            memory_mib=needs.memory_mib,
            vcpus=needs.vcpus,
            disk_mib=needs.disk_mib,
            needs_network=needs.network,
            hypervisors=needs.hypervisors,
            max_attempts=self.config.max_attempts,
            at=now,
            pool=placed.pool,
            pinned=placed.pinned,
            reason=placed.reason,
        )

    def watch(self, listener: StatusListener) -> None:
        self._listener = listener

    def housekeeping(self) -> None:
        self.sweep()
        self.refresh_reasons()

    def refresh_reasons(self, *, now: bool = False) -> None:
        """Run the reasons pass (:meth:`Pools.refresh`) and push what it changed."""
        changed = self.pools.refresh(now=now)
        self._changed(
            [
                StatusChange(
                    activity_id=c.activity_id,
                    job_id=c.job_id,
                    status=_translate.queued_status(
                        ran=c.ran,
                        message=_translate.waiting_message(c.reason, c.message),
                        extra={"pool": c.pool},
                    ),
                )
                for c in changed
            ]
        )

    def explain(self, job_id: BackendJobId) -> Mapping[str, Any]:
        return self.pools.analysis(job_id)

    def status(self, ids: Sequence[BackendJobId]) -> Mapping[BackendJobId, JobStatus]:
        if not ids:
            return {}
        rows = self._db.read_sync(grid.grid_statuses, ids)
        unknown = JobStatus(state=JobState.UNKNOWN, message="no such job in the desktop grid")
        return {
            i: _translate.to_job_status(rows[i]) if i in rows else unknown
            for i in dict.fromkeys(ids)
        }

    def cancel(self, ids: Sequence[BackendJobId]) -> Mapping[BackendJobId, CancelOutcome]:
        now = self.clock()
        out: dict[BackendJobId, CancelOutcome] = {}
        for job_id in dict.fromkeys(ids):
            state = self._write(grid.cancel_grid_jobs, (job_id, now))
            out[job_id] = CancelOutcome.UNKNOWN_ID if state is None else _CANCEL[state]
        return out

    def suspend(self, job_id: BackendJobId, suspended: bool) -> bool:
        state = self._write(grid.request_suspend, (job_id, suspended))
        return state in (GridState.LEASED, GridState.QUEUED)

    def unsupported(self, job: JobDefinition) -> list[str]:
        missing = super().unsupported(job)
        if missing:
            return missing
        return _translate.unsupported(
            job, self.config.vm_defaults, self.catalog(), self.pools.names()
        )

    def kept_outputs(self, job_id: BackendJobId) -> Path | None:
        row = self._db.read_sync(grid.grid_statuses, [job_id]).get(job_id)
        if row is None or not row.result or not row.result.get("files"):
            return None
        return self.outputs.attempt_dir(job_id, int(row.result["epoch"]))

    def discard(self, ids: Sequence[BackendJobId]) -> int:
        """Remove the kept outputs of every attempt of these jobs (their queue rows go with
        their activities); the bytes freed."""
        freed = 0
        for job_id in dict.fromkeys(ids):
            try:
                job_key = self.outputs.attempt_key(job_id, 0).rpartition("/")[0]
            except BesError:  # not a job id of ours
                continue
            listed = self.outputs.storage.listing(job_key, incomplete=True)
            freed += sum(size for _, size in listed)
            self.outputs.keep_only(job_id, None)
        return freed

    # ------------------------------------------------------------------ helpers

    def catalog(self) -> Catalog:
        """The site's templates and the built-in ones (read again when the file changes; its
        time is looked at every quarter of a second at most: this is on every create's path)."""
        cached = self._catalog
        looked = time.monotonic()
        if cached is not None and looked - self._catalog_looked < _CATALOG_LOOK_S:
            return cached[1]
        path = self.config.catalog_path
        try:
            stamp = path.stat().st_mtime if path is not None else 0.0
        except OSError:
            stamp = -1.0
        self._catalog_looked = looked
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            catalog = Catalog.load(path) if path is not None else Catalog()
        except ImageError as exc:
            log.error("%s; only the built-in templates are available", exc)
            catalog = Catalog()
        for built_in in BUILT_IN_TEMPLATES:
            if catalog.get(built_in.name) is None:
                catalog.add(built_in)
        self._catalog = (stamp, catalog)
        return catalog

    def sweep(self, *, now: bool = False) -> None:
        """Take back expired leases (at most once a second unless ``now``)."""
        with self._sweep_lock:
            if not now and time.monotonic() - self._last_sweep < _SWEEP_EVERY_S:
                return
            self._last_sweep = time.monotonic()
        expired = self._write(grid.expire_leases, self.clock())
        if not expired:
            return
        self.metrics.lease_expiries.inc(len(expired))
        for lease in expired:
            log.warning("%s: %s", lease.activity_id, lease.message)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.gateway.work_added)
        self._changed(
            [
                StatusChange(
                    activity_id=lease.activity_id,
                    job_id=lease.job_id,
                    status=(
                        _translate.queued_status(ran=lease.ran, message=lease.message)
                        if lease.state is GridState.QUEUED
                        else _translate.ended_status(
                            lease.state, exit_code=None, message=lease.message, files=False
                        )
                    ),
                )
                for lease in expired
            ]
        )

    def _changed(self, changes: Sequence[StatusChange]) -> None:
        if self._listener is not None and changes:
            self._listener(changes)

    @property
    def db(self) -> Database:
        """The service's database, which holds the queue."""
        return self._db

    def write(self, fn: BatchFunction[A, R], arg: A) -> R:
        """Run a batch write function on one item from any thread (see :meth:`_write`)."""
        return self._write(fn, arg)

    def _write(self, fn: BatchFunction[A, R], arg: A) -> R:
        """Run a write from a registry thread in the service's loop (one writer), or
        directly when there is no loop (command-line tools, tests)."""
        loop = self._loop
        if loop is None or not loop.is_running() or _running_loop() is loop:
            return self._db.write_sync(fn, arg)
        future = asyncio.run_coroutine_threadsafe(self._db.write(fn, arg), loop)
        try:
            return future.result(_WRITE_TIMEOUT_S)
        except TimeoutError as exc:
            future.cancel()
            raise StoreError("the database write did not finish in time") from exc


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _number(key: str, text: str, kind: type[float] | type[int]) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"desktopgrid option {key}={text!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"desktopgrid option {key} must be positive")
    return value
