"""One leased job on a worker: stage in, run the VM, stage out, report.

Sub-states are reported as they happen (Staging-In while inputs and the image arrive,
Executing while the VM runs, Staging-Out while outputs are delivered and uploaded). stdout,
stderr and the exit code go back whatever happened; the console's last lines too when the
VM did not bring the job to its end. Failures that are not the job's fault (a hypervisor
that breaks, a template that cannot be built here) are reported as retryable, so another
worker can try; the job's own failures are final.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from bes.access import Access
from bes.errors import BesError, HypervisorError, LeaseLost
from bes.states import SubState
from bes.vm.drivers.base import HypervisorDriver
from bes.vm.images import Download
from bes.vm.job import VmJob, run_vm_job
from bes.vm.lease import VmLease, run_vm_lease
from bes.vm.media import GuestResults
from bes.vm.repository import ImageRepository
from bes.vm.spec import Hypervisor, Lease
from bes.vmjob import VmDefaults, kept_files, lease_of, plan, plan_lease, virtual_machine
from bes.worker.client import ServiceClient, ServiceUnavailable, Work, WorkerRefused
from bes.worker.config import WorkerConfig
from bes.worker.staging import deliver_outputs, fetch_inputs, kept_paths
from bes.worker.tunnel import LeaseTunnel

log = logging.getLogger(__name__)

T = TypeVar("T")

_REPORT_FOR_S: Final = 600.0  # keep trying to report a result this long while the service is down
_CRASHED: Final = "the VM crashed"


@dataclass(slots=True)
class Assignment:
    """A lease in progress, shared between its job thread and the heartbeat thread."""

    work: Work
    memory_mib: int
    substate: str = SubState.PROVISIONING.value
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    suspend: threading.Event = field(default_factory=threading.Event)
    """A VM lease's owner asked to suspend it (its VM is paused while this is set)."""
    changed: Callable[[], None] = lambda: None

    def enter(self, substate: SubState) -> None:
        """Move to a sub-state and tell the service at once."""
        self.substate = substate.value
        self.changed()


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """What a job needs of the worker it runs on."""

    config: WorkerConfig
    client: ServiceClient
    drivers: Mapping[Hypervisor, HypervisorDriver]
    repository: Callable[[Download | None], ImageRepository]
    """The node's images; user images in the service's store come through the download
    given (the lease's)."""
    defaults: VmDefaults
    stopping: threading.Event
    busy: Callable[[], bool]
    next_claim: Callable[[Assignment], Mapping[str, Any] | None] = lambda _: None
    """What to ask for when this job's slot frees (None: nothing), in the same call."""
    adopt: Callable[[list[Work]], None] = lambda _: None
    """Start jobs leased along with a completion."""


def memory_of(work: Work, defaults: VmDefaults) -> int:
    """The memory a job's VM will take (for the worker's own budget)."""
    return virtual_machine(work.job, defaults).memory_mib or defaults.memory_mib


def execute(assignment: Assignment, node: Node) -> None:
    """Run one leased job to its end and report it; never raises."""
    work = assignment.work
    workdir = node.config.cache_dir / "jobs" / work.lease
    try:
        _execute(assignment, node, workdir)
    except LeaseLost as exc:
        log.warning("%s: lease %s lost, job dropped: %s", work.activity, work.lease, exc)
    except WorkerRefused as exc:
        log.error("%s: %s", work.activity, exc)
    except ServiceUnavailable as exc:
        log.error("%s: could not report to the service: %s", work.activity, exc)
    except Exception:
        log.exception("%s: unexpected failure running lease %s", work.activity, work.lease)
        _try(lambda: node.client.fail(work.lease, message="the worker failed", retry=True))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _execute(assignment: Assignment, node: Node, workdir: Path) -> None:
    work, client = assignment.work, node.client
    inputs_dir, results_dir = workdir / "inputs", workdir / "results"
    inputs_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    assignment.enter(SubState.STAGING_IN)
    lease = lease_of(work.job)
    if lease is not None:
        run_lease(assignment, node, lease, workdir)
        return
    if work.job.job_description.application is None:
        _data_job(assignment, node, inputs_dir, workdir)
        return

    def prepare() -> tuple[HypervisorDriver, VmJob]:
        driver = _driver_for(work, node)
        store = _store(node, work)
        inputs = fetch_inputs(work.job, inputs_dir, file_roots=node.config.file_roots, store=store)
        return driver, plan(
            work.job,
            work.activity,
            repository=node.repository(store.fetch),
            inputs=inputs,
            formats=driver.disk_formats,
            defaults=node.defaults,
            cpu_cap_percent=node.config.cpu_cap_percent,
        )

    prepared = _prepared(work, client, prepare)
    if prepared is None:
        return
    driver, vm_job = prepared
    staged_in = time.monotonic()
    assignment.enter(SubState.EXECUTING)

    try:
        outcome = run_vm_job(
            vm_job, driver, results_dir, cancelled=_cancelled(assignment, node), paused=node.busy
        )
    except HypervisorError as exc:
        log.warning("%s: the hypervisor failed: %s", work.activity, exc)
        _fail(client, work, f"hypervisor: {exc}", retry=True)
        return
    ran = time.monotonic()
    if assignment.lost.is_set():
        log.warning("%s: the lease was lost while the job ran; dropped", work.activity)
        return
    if assignment.cancel.is_set():
        _report(lambda: client.release(work.lease, message="stopped: the activity was terminated"))
        return
    if node.stopping.is_set() and not outcome.completed:
        _report(lambda: client.release(work.lease, message="the worker is shutting down"))
        return
    timing = {"staging_in": staged_in - started, "vm": outcome.vm_seconds}
    if not outcome.completed or outcome.results is None or outcome.exit_code is None:
        uploaded = _upload_console(assignment, node, outcome.console_tail, workdir)
        _fail(client, work, outcome.reason, retry=outcome.reason == _CRASHED, files=uploaded)
        return
    timing["vm"] = ran - staged_in
    _stage_out_and_complete(
        assignment, node, outcome.results, exit_code=outcome.exit_code, timing=timing
    )


def _stage_out_and_complete(
    assignment: Assignment,
    node: Node,
    results: GuestResults,
    *,
    exit_code: int,
    timing: dict[str, float],
    streams: bool = True,
) -> None:
    """Deliver outputs to their Targets, upload what is kept, and complete the lease (with
    the next job leased in the same call, if the slot is welcome to one)."""
    work, client = assignment.work, node.client
    assignment.enter(SubState.STAGING_OUT)
    staging_out = time.monotonic()
    failures = deliver_outputs(
        work.job, results, file_roots=node.config.file_roots, store=_store(node, work)
    )
    files = {"stdout": results.stdout, "stderr": results.stderr} if streams else {}
    files.update(kept_paths(results, kept_files(work.job)))
    for name, path in files.items():
        _upload(client, work.lease, name, path)
    if results.missing:
        failures.append("the job did not produce " + ", ".join(results.missing))
    if results.guest_seconds is not None:
        timing["guest"] = results.guest_seconds
    timing["staging_out"] = time.monotonic() - staging_out
    claim = None if node.stopping.is_set() else node.next_claim(assignment)
    state, more = _report(
        lambda: client.complete(
            work.lease,
            exit_code=exit_code,
            failure="; ".join(failures) or None,
            timing=timing,
            files=list(files),
            claim=claim,
        )
    )
    log.info("%s: done, exit code %s, %s", work.activity, exit_code, state)
    if more:
        node.adopt(more)


def _data_job(assignment: Assignment, node: Node, inputs_dir: Path, workdir: Path) -> None:
    """A job without an Application: its files are staged in, then out (GridSAM's pure data
    staging jobs); no VM is needed."""
    work = assignment.work
    started = time.monotonic()
    try:
        inputs = fetch_inputs(
            work.job, inputs_dir, file_roots=node.config.file_roots, store=_store(node, work)
        )
    except BesError as exc:
        _fail(node.client, work, f"{exc}", retry=False)
        return
    empty = workdir / "empty"
    empty.write_bytes(b"")
    results = GuestResults(
        exit_code=0, stdout=empty, stderr=empty, outputs=inputs, missing=(), guest_seconds=None
    )
    timing = {"staging_in": time.monotonic() - started}
    _stage_out_and_complete(assignment, node, results, exit_code=0, timing=timing, streams=False)


def run_lease(assignment: Assignment, node: Node, lease: Lease, workdir: Path) -> None:
    """Run a VM lease until it ends: report its way in once the guest is ready, keep its
    tunnel open meanwhile, pause it while its owner suspends it."""
    work, client = assignment.work, node.client

    def prepare() -> tuple[HypervisorDriver, VmLease]:
        driver = _driver_for(work, node)
        return driver, plan_lease(
            work.job,
            work.activity,
            lease,
            repository=node.repository(_store(node, work).fetch),
            formats=driver.disk_formats,
            defaults=node.defaults,
            cpu_cap_percent=node.config.cpu_cap_percent,
        )

    prepared = _prepared(work, client, prepare)
    if prepared is None:
        return
    driver, vm_lease = prepared
    assignment.enter(SubState.EXECUTING)
    tunnels: list[LeaseTunnel] = []

    def ready(access: Access) -> None:
        tunnel = LeaseTunnel(client.tunnel(work.lease), dict(access.ports), name=work.activity)
        tunnel.start()
        tunnels.append(tunnel)
        threading.Thread(  # retried while the service is unavailable (a restart)
            target=_try,
            args=(lambda: _report(lambda: client.report_access(work.lease, access)),),
            name=f"access-{work.activity}",
            daemon=True,
        ).start()

    try:
        outcome = run_vm_lease(
            vm_lease,
            driver,
            on_ready=ready,
            cancelled=_cancelled(assignment, node),
            paused=lambda: assignment.suspend.is_set() or node.busy(),
        )
    except HypervisorError as exc:
        log.warning("%s: the hypervisor failed: %s", work.activity, exc)
        _fail(client, work, f"hypervisor: {exc}", retry=True)
        return
    finally:
        for tunnel in tunnels:
            tunnel.close()
    if assignment.lost.is_set():
        log.warning("%s: the lease was lost while its VM ran; stopped", work.activity)
    elif assignment.cancel.is_set():
        _report(lambda: client.release(work.lease, message="stopped: the activity was terminated"))
    elif node.stopping.is_set():
        _report(lambda: client.release(work.lease, message="the worker is shutting down"))
    elif outcome.powered_off:
        timing = {"vm": outcome.vm_seconds}
        _report(
            lambda: client.complete(work.lease, exit_code=0, failure=None, timing=timing, files=[])
        )
        log.info("%s: the lease's guest powered itself off", work.activity)
    else:
        uploaded = _upload_console(assignment, node, outcome.console_tail, workdir)
        _fail(client, work, outcome.reason, retry=outcome.reason == _CRASHED, files=uploaded)


def _prepared(work: Work, client: ServiceClient, prepare: Callable[[], T]) -> T | None:
    """What ``prepare`` makes (the driver and the planned VM), or None once the failure was
    reported: a hypervisor's is retried elsewhere, the job's own (staging, checksum,
    template, unsupported feature) is final."""
    try:
        return prepare()
    except HypervisorError as exc:
        _fail(client, work, f"{exc}", retry=True)
    except BesError as exc:
        log.warning("%s: cannot run: %s", work.activity, exc)
        _fail(client, work, f"{exc}", retry=False)
    return None


def _cancelled(assignment: Assignment, node: Node) -> Callable[[], bool]:
    """Whether a running VM must stop: the activity is terminated, the lease was lost, or the
    worker shuts down."""
    return lambda: assignment.cancel.is_set() or assignment.lost.is_set() or node.stopping.is_set()


def _driver_for(work: Work, node: Node) -> HypervisorDriver:
    wanted: Sequence[Hypervisor] = virtual_machine(work.job, node.defaults).hypervisors
    for hypervisor in wanted or tuple(node.drivers):
        driver = node.drivers.get(hypervisor)
        if driver is not None:
            return driver
    raise HypervisorError(
        "this worker has none of the hypervisors the job accepts: "
        + ", ".join(h.value for h in wanted)
    )


def _fail(
    client: ServiceClient, work: Work, message: str, *, retry: bool, files: Sequence[str] = ()
) -> None:
    _report(lambda: client.fail(work.lease, message=message, retry=retry, files=files))


def _upload(client: ServiceClient, lease: str, name: str, path: Path) -> None:
    _report(lambda: client.upload(lease, name, path))


def _upload_console(
    assignment: Assignment, node: Node, console_tail: str, workdir: Path
) -> list[str]:
    if not console_tail:
        return []
    console = workdir / "console.log"
    console.write_text(console_tail + "\n")
    _upload(node.client, assignment.work.lease, "console.log", console)
    return ["console.log"]


def _report(call: Callable[[], T]) -> T:
    """Make a protocol call, retrying while the service is unavailable (bounded)."""
    deadline = time.monotonic() + _REPORT_FOR_S
    delay = 1.0
    while True:
        try:
            return call()
        except ServiceUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("the service is unavailable (%s); retrying in %.0f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 60.0)


def _try(call: Callable[[], object]) -> None:
    try:
        call()
    except BesError as exc:
        log.warning("could not report: %s", exc)


class _LeaseStore:
    """The service's file store for one lease (bes.worker.staging.ServiceStore)."""

    def __init__(self, client: ServiceClient, lease: str) -> None:
        self._client = client
        self._lease = lease

    def fetch(self, uri: str, dest: Path) -> None:
        self._client.fetch_stored(self._lease, uri, dest)

    def deliver(self, uri: str, path: Path) -> None:
        self._client.deliver_stored(self._lease, uri, path)


def _store(node: Node, work: Work) -> _LeaseStore:
    return _LeaseStore(node.client, work.lease)
