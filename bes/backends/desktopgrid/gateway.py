"""The service's side of the worker protocol: what workers may ask, checked and applied.

Workers open every connection (pull only, so volunteers behind NAT take part). Each call
names a lease as ``<job id>.<epoch>``; the epoch grows with every claim of a job, so a worker
whose lease expired can neither renew it nor report on it, whatever it sends. Everything
here runs in the service's event loop.

A job's staging passwords and bearer tokens are stored sealed (:mod:`bes.jsdl.secrets`); the
claim that leases it is the one place they are opened, in the answer to that worker alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bes.access import Access
from bes.backends.base import StatusChange
from bes.backends.desktopgrid._translate import (
    WORKER_SUBSTATES,
    ended_status,
    leased_status,
    queued_status,
)
from bes.backends.desktopgrid.config import DesktopGridConfig
from bes.backends.desktopgrid.outputs import OutputStore, OutputTooLarge
from bes.backends.desktopgrid.tokens import token_hash
from bes.db import grid_rows as grid
from bes.db.grid_rows import GridState, Lease, LeaseAction, LeaseRef, WorkerIdentity
from bes.db.store import Database
from bes.errors import InvalidRequest, JsdlError, LeaseLost, NotAuthorized
from bes.ids import ActivityId, BackendJobId
from bes.jsdl import codec
from bes.jsdl.secrets import open_credentials
from bes.metrics import INFRASTRUCTURE, JOB, Metrics
from bes.sealing import PREFIX as SEALED
from bes.sealing import Sealer, UnsealError
from bes.states import SubState

log = logging.getLogger(__name__)

_RUNNING: Final = frozenset(
    {
        SubState.STAGING_IN.value,
        SubState.EXECUTING.value,
        SubState.STAGING_OUT.value,
        SubState.SUSPENDED.value,
    }
)
_UPLOAD_CHECK_BYTES: Final = 8 * 1024 * 1024  # re-check the lease this often during uploads
_MAX_REMEMBERED: Final = 100_000  # worker identities kept by token
_MAX_EPOCH_DIGITS: Final = 18  # as the worker API's LeaseId: below 2**63


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimRequest:
    """What a worker can take on now.

    Attributes:
        slots: How many jobs it would start now.
        memory_mib, vcpus, disk_mib: What it has free for one job.
        hypervisors: Hypervisors it can run (``qemu``, ``virtualbox``).
        network: Whether its owner allows guests a network.
        wait_s: How long to wait for work if there is none (long poll).
    """

    slots: int
    memory_mib: int
    vcpus: int
    disk_mib: int
    hypervisors: tuple[str, ...]
    network: bool
    wait_s: float


def lease_id(ref: LeaseRef) -> str:
    """A lease as workers name it."""
    return f"{ref.job_id}.{ref.epoch}"


class WorkerGateway:
    """Authenticates workers and applies their claims and reports (see module docstring).

    Args:
        db: The service's database.
        config: The desktop grid's settings.
        outputs: Where uploaded files go.
        clock: The current time (aware, UTC).
        changed: Told of every change of a job's state (the backend pushes it on).
        metrics: Where claims, VM starts and failed runs are counted.
        sealer: Opens the sealed staging secrets of a job for the worker that leases it.
    """

    def __init__(
        self,
        db: Database,
        config: DesktopGridConfig,
        outputs: OutputStore,
        *,
        clock: Callable[[], dt.datetime],
        changed: Callable[[Sequence[StatusChange]], None] = lambda changes: None,
        metrics: Metrics | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        self._db = db
        self.config = config
        self._sealer = sealer
        self.outputs = outputs
        self._clock = clock
        self._changed = changed
        self._work = asyncio.Event()
        self._stopping = False
        self._identities: dict[str, WorkerIdentity] = {}
        self._metrics = metrics or Metrics()

    # ------------------------------------------------------------------ identity

    async def authenticate(self, token: str | None) -> WorkerIdentity:
        """The worker holding ``token``.

        Known tokens are remembered; that is safe because every statement that changes the
        queue for a worker also checks, in the database, that its token is not revoked (see
        :func:`refuse_if_revoked`, which turns the refusal into NotAuthorized).

        Raises:
            NotAuthorized: No token, an unknown one, or a revoked one.
        """
        if not token:
            raise NotAuthorized("a worker token is required (Authorization: Bearer TOKEN)")
        hashed = token_hash(token)
        known = self._identities.get(hashed)
        if known is not None:
            return known
        found = await self._db.read(grid.worker_by_token, hashed)
        if found is None:
            raise NotAuthorized("unknown worker token")
        if found.revoked:
            raise NotAuthorized(f"the token of worker {found.name} was revoked")
        if len(self._identities) >= _MAX_REMEMBERED:
            self._identities.clear()
        self._identities[hashed] = found
        return found

    async def refuse_if_revoked(self, worker: WorkerIdentity) -> None:
        """Raise NotAuthorized if the worker's token was revoked (asked of the database)."""
        for hashed, known in list(self._identities.items()):
            if known.id == worker.id:
                current = await self._db.read(grid.worker_by_token, hashed)
                if current is None or current.revoked:
                    self._identities.pop(hashed, None)
                    raise NotAuthorized(f"the token of worker {worker.name} was revoked")
                return

    async def register(self, worker: WorkerIdentity, facts: Mapping[str, Any]) -> dict[str, Any]:
        """Store what the worker says of its host; answer the protocol's timing.

        Raises:
            NotAuthorized: The worker's token was revoked.
        """
        if not await self._db.write(grid.register_worker, (worker.id, dict(facts), self._clock())):
            await self.refuse_if_revoked(worker)
        log.info("worker %s registered: %s", worker.name, dict(facts))
        return {
            "worker": worker.name,
            "heartbeat_s": self.config.heartbeat_s,
            "lease_s": self.config.lease_s,
            "claim_wait_s": self.config.claim_wait_s,
        }

    # ------------------------------------------------------------------ work

    def work_added(self) -> None:
        """Wake claims that are waiting for work (call in the loop)."""
        self._work.set()
        self._work = asyncio.Event()

    def stop_waiting(self) -> None:
        """The service is stopping: answer every claim at once, with no work (call in the
        loop). Workers ask again, of this replica once it is back or of another."""
        self._stopping = True
        self.work_added()

    async def claim(self, worker: WorkerIdentity, request: ClaimRequest) -> list[Lease]:
        """Lease up to ``request.slots`` jobs that fit; wait up to ``wait_s`` for some."""
        if request.slots < 1 or self._stopping:
            return []
        deadline = time.monotonic() + max(0.0, min(request.wait_s, self.config.claim_wait_s))
        first = True
        while True:
            now = self._clock()
            leases = await self._db.write(
                grid.claim_grid_jobs,
                grid.Claim(
                    worker_id=worker.id,
                    limit=min(request.slots, 16),
                    memory_mib=request.memory_mib,
                    vcpus=request.vcpus,
                    disk_mib=request.disk_mib,
                    hypervisors=request.hypervisors,
                    network=request.network,
                    now=now,
                    until=now + dt.timedelta(seconds=self.config.lease_s),
                ),
            )
            leases = await self._with_secrets(worker, leases)
            if leases:
                self._metrics.claims.inc(len(leases))
                for lease in leases:
                    log.debug(
                        "%s: leased to worker %s (attempt %d of %d)",
                        lease.activity_id,
                        worker.name,
                        lease.attempt,
                        lease.max_attempts,
                    )
                self._changed(
                    [
                        StatusChange(
                            activity_id=lease.activity_id,
                            job_id=lease.ref.job_id,
                            status=leased_status(
                                substate=None, ran=lease.ran, extra={"worker": worker.name}
                            ),
                        )
                        for lease in leases
                    ]
                )
                return leases
            if first:
                first = False
                await self.refuse_if_revoked(worker)  # nothing was leased: revoked, or no work?
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopping:
                return []
            # Wake on new work here, and look again every second for work that another
            # replica queued or that came back from an expired lease.
            event = self._work
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(remaining, 1.0))

    async def heartbeat(
        self, worker: WorkerIdentity, reports: Sequence[tuple[str, str | None]]
    ) -> dict[str, LeaseAction]:
        """Renew each reported lease ``(lease id, sub-state)``; say what to do with it."""
        now = self._clock()
        until = now + dt.timedelta(seconds=self.config.lease_s)
        actions: dict[str, LeaseAction] = {}
        beats = []
        for reported, substate in reports:
            ref = self._parse(worker, reported)
            if ref is None or (substate is not None and substate not in WORKER_SUBSTATES):
                actions[reported] = LeaseAction.LOST
                continue
            beats.append(
                (
                    reported,
                    grid.Heartbeat(
                        ref=ref,
                        substate=substate,
                        running=substate in _RUNNING,
                        now=now,
                        until=until,
                    ),
                )
            )
        results = await asyncio.gather(*(self._db.write(grid.heartbeat, b) for _, b in beats))
        if any(renewal.action is LeaseAction.LOST for renewal in results):
            await self.refuse_if_revoked(worker)
        began = sum(renewal.began_executing for renewal in results)
        if began:
            self._metrics.vm_boots.inc(began)
        changes = []
        for (reported, beat), renewal in zip(beats, results, strict=True):
            actions[reported] = renewal.action
            if renewal.activity_id is not None:
                status = leased_status(
                    substate=beat.substate, ran=renewal.ran, extra={"worker": worker.name}
                )
                changes.append(
                    StatusChange(
                        activity_id=renewal.activity_id, job_id=beat.ref.job_id, status=status
                    )
                )
        if changes:
            self._changed(changes)
        if not beats and not await self._db.write(grid.touch_workers, (worker.id, now)):
            await self.refuse_if_revoked(worker)
        return actions

    async def upload(
        self, worker: WorkerIdentity, reported: str, name: str, body: AsyncIterator[bytes]
    ) -> int:
        """Store one output file of a lease; return its size.

        Raises:
            LeaseLost: The lease is not the worker's (any more).
            OutputTooLarge: The attempt's files would exceed the limit.
            UnsafePath: ``name`` leaves the job's directory.
        """
        ref = await self._holding(worker, reported)
        budget = self.config.max_output_bytes - self.outputs.used_bytes(ref.job_id, ref.epoch)
        size = checked = 0
        with self.outputs.writer(ref.job_id, ref.epoch, name) as out:
            async for chunk in body:
                size += len(chunk)
                if size > budget:
                    raise OutputTooLarge(
                        f"the outputs of one attempt may not exceed "
                        f"{self.config.max_output_bytes} bytes"
                    )
                out.write(chunk)
                if size - checked >= _UPLOAD_CHECK_BYTES:
                    checked = size
                    await self._holding(worker, reported)
        return size

    async def complete(
        self,
        worker: WorkerIdentity,
        reported: str,
        *,
        exit_code: int,
        failure: str | None,
        timing: Mapping[str, float],
        files: Sequence[str] = (),
    ) -> GridState:
        """The job ran to its end (``failure``: why it failed nonetheless, e.g. stage-out);
        ``files`` names what the worker uploaded for this lease.

        Raises:
            LeaseLost: The lease is not the worker's (any more); its files are dropped.
            InvalidRequest: A file it names was not uploaded.
        """
        ref = self._required(worker, reported)
        if exit_code != 0:
            message = f"the job exited with status {exit_code}"
            state, message = GridState.FAILED, f"{message}; {failure}" if failure else message
        elif failure:
            state, message = GridState.FAILED, failure
        else:
            state, message = GridState.FINISHED, None
        result = {
            "epoch": ref.epoch,
            "files": self.outputs.uploaded(ref.job_id, ref.epoch, files),
            "timing": dict(timing),
            "worker": worker.name,
        }
        return await self._end(
            worker,
            ref,
            grid.Finish(
                ref=ref,
                state=state,
                exit_code=exit_code,
                message=message,
                result=result,
                now=self._clock(),
            ),
        )

    async def fail(
        self,
        worker: WorkerIdentity,
        reported: str,
        *,
        message: str,
        retry: bool,
        files: Sequence[str] = (),
    ) -> GridState:
        """The job could not run. ``retry``: not the job's fault (hypervisor, host), so
        another attempt may succeed; otherwise it fails now, keeping the ``files`` uploaded.

        Raises:
            LeaseLost: The lease is not the worker's (any more).
            InvalidRequest: A file it names was not uploaded.
        """
        ref = self._required(worker, reported)
        now = self._clock()
        if not retry:
            result = {
                "epoch": ref.epoch,
                "files": self.outputs.uploaded(ref.job_id, ref.epoch, files),
                "worker": worker.name,
            }
            state = await self._end(
                worker,
                ref,
                grid.Finish(
                    ref=ref, state=GridState.FAILED, message=message, result=result, now=now
                ),
            )
            self._metrics.vm_failures[JOB].inc()
            return state
        row = (await self._db.read(grid.grid_statuses, [ref.job_id])).get(ref.job_id)
        attempts = f"attempt {row.attempts} of {row.max_attempts}" if row else "an attempt"
        give_up = row is not None and row.attempts >= row.max_attempts
        text = f"{attempts} failed on worker {worker.name}: {message}"
        text = f"given up: {text}" if give_up else f"{text}; back in the queue"
        state = await self._end(
            worker,
            ref,
            grid.Finish(ref=ref, state=GridState.QUEUED, retry=True, message=text, now=now),
        )
        self._metrics.vm_failures[INFRASTRUCTURE].inc()
        return state

    async def release(self, worker: WorkerIdentity, reported: str, *, message: str) -> GridState:
        """The worker gives the job back unfinished (shutting down, or it was cancelled).

        Raises:
            LeaseLost: The lease is not the worker's (any more).
        """
        ref = self._required(worker, reported)
        text = f"handed back by worker {worker.name}: {message}"
        return await self._end(
            worker,
            ref,
            grid.Finish(ref=ref, state=GridState.QUEUED, message=text, now=self._clock()),
        )

    # ------------------------------------------------------------------ helpers

    async def _with_secrets(self, worker: WorkerIdentity, leases: list[Lease]) -> list[Lease]:
        """The leases with their jobs' staging secrets opened, for ``worker`` alone. A job
        whose secrets do not open (sealed with a key this service no longer holds) fails
        with the reason, and its lease is left out."""
        opened = []
        for lease in leases:
            if SEALED not in lease.job:  # nothing sealed (or stored before sealing): as is
                opened.append(lease)
                continue
            try:
                job = open_credentials(codec.from_json(lease.job), self._sealer)
            except (UnsealError, JsdlError) as exc:
                why = str(exc) if isinstance(exc, UnsealError) else "the stored job is unreadable"
                message = f"its staging credentials cannot be opened: {why}"
                log.error("%s: %s", lease.activity_id, message)
                finish = grid.Finish(
                    ref=lease.ref, state=GridState.FAILED, message=message, now=self._clock()
                )
                with contextlib.suppress(LeaseLost):
                    await self._end(worker, lease.ref, finish)
                continue
            opened.append(dataclasses.replace(lease, job=codec.to_json(job)))
        return opened

    async def _end(self, worker: WorkerIdentity, ref: LeaseRef, finish: grid.Finish) -> GridState:
        ended = await self._db.write(grid.finish_leases, finish)
        if ended is None:
            self._drop_attempt(ref)
            await self.refuse_if_revoked(worker)
            raise LeaseLost(f"lease {lease_id(ref)} is not yours any more")
        files = bool(finish.result is not None and finish.result.get("files"))
        if ended.state is GridState.QUEUED:
            self._drop_attempt(ref)
            self.work_added()
            status = queued_status(ran=ended.ran, message=ended.message)
        else:
            # An earlier attempt may have left files (its worker vanished after uploading);
            # a first attempt that uploaded nothing has nothing to tidy: no disk access then.
            if files:
                self.outputs.keep_only(ref.job_id, ref.epoch)
            elif ref.epoch > 1:
                self.outputs.keep_only(ref.job_id, None)
            status = ended_status(
                ended.state, exit_code=finish.exit_code, message=ended.message, files=files
            )
        self._changed(
            [StatusChange(activity_id=ended.activity_id, job_id=ref.job_id, status=status)]
        )
        log.debug("%s: lease %s ended, job %s", ref.job_id, lease_id(ref), ended.state.value)
        return ended.state

    def _drop_attempt(self, ref: LeaseRef) -> None:
        """Remove what one attempt uploaded (it will not be the job's result)."""
        self.outputs.drop_attempt(ref.job_id, ref.epoch)

    async def access(self, worker: WorkerIdentity, reported: str, access: Access) -> None:
        """A VM lease's guest is ready: record how its owner gets in (shown in its status).

        Raises:
            LeaseLost: The lease is not the worker's (any more).
        """
        ref = self._required(worker, reported)
        reported_json = access.to_json()
        activity_id = await self._db.write(grid.report_access, (ref, self._clock(), reported_json))
        if activity_id is None:
            await self.refuse_if_revoked(worker)
            raise LeaseLost(f"lease {reported} is not yours any more")
        status = leased_status(
            substate=SubState.EXECUTING.value,
            ran=True,
            extra={"worker": worker.name, "access": reported_json},
        )
        self._changed([StatusChange(activity_id=activity_id, job_id=ref.job_id, status=status)])

    async def tunnel_lease(self, worker: WorkerIdentity, reported: str) -> ActivityId:
        """The activity of a lease the worker holds (it opens the lease's tunnel).

        Raises:
            LeaseLost: The lease is not the worker's (any more).
        """
        activity_id, _owner, _job = await self.leased_job(worker, reported)
        return ActivityId(activity_id)

    async def leased_job(self, worker: WorkerIdentity, reported: str) -> tuple[str, str, str]:
        """The activity, owner and job (JSON) of a lease the worker holds.

        Raises:
            LeaseLost: The lease is not the worker's (any more).
        """
        ref = self._required(worker, reported)
        found = await self._db.read(grid.lease_job, ref, self._clock())
        if found is None:
            await self.refuse_if_revoked(worker)
            raise LeaseLost(f"lease {reported} is not yours any more")
        return found

    async def _holding(self, worker: WorkerIdentity, reported: str) -> LeaseRef:
        ref = self._required(worker, reported)
        if not await self._db.read(grid.lease_holds, ref, self._clock()):
            await self.refuse_if_revoked(worker)
            raise LeaseLost(f"lease {reported} is not yours any more")
        return ref

    def _required(self, worker: WorkerIdentity, reported: str) -> LeaseRef:
        ref = self._parse(worker, reported)
        if ref is None:
            raise InvalidRequest(f"{reported!r} is not a lease identifier")
        return ref

    @staticmethod
    def _parse(worker: WorkerIdentity, reported: str) -> LeaseRef | None:
        job_id, dot, epoch = reported.rpartition(".")
        if not dot or not job_id or len(reported) > 64:
            return None
        if not (epoch.isascii() and epoch.isdigit() and len(epoch) <= _MAX_EPOCH_DIGITS):
            return None  # (a bigger number fits no database's integer)
        return LeaseRef(job_id=BackendJobId(job_id), epoch=int(epoch), worker_id=worker.id)


__all__ = ["ClaimRequest", "LeaseLost", "OutputTooLarge", "WorkerGateway", "lease_id"]
