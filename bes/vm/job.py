"""Run one job in one throwaway VM: media, create, start, watch, collect, destroy.

The VM is destroyed whatever happens (results read, wall time exceeded, cancelled, error),
and its directory goes with it. The outcome always carries what could be learned: the exit
code, stdout and stderr from the output disk when the guest wrote them, the VM's time, and
the console's last lines when it did not.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

from bes.errors import HypervisorError, UnsupportedFeature
from bes.vm import guest, media, seed
from bes.vm.drivers.base import Capability, HypervisorDriver, VmHandle, VmState
from bes.vm.spec import ContextFile, Disk, ImageFormat, KernelBoot, Network, VmSpec, vm_name

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_DISK_MIB = 1024
_CONSOLE_TAIL_LINES = 20
_BOOT_CHECK_S = 1.0


@dataclass(frozen=True)
class BootImage:
    """A resolved image: a cached disk, a kernel to boot directly, or both."""

    disk: Disk | None = None
    kernel: KernelBoot | None = None
    runs_cloud_config: bool = True  # False for tiny: only "#!" user-data


@dataclass(frozen=True)
class VmJob:
    job_id: str
    boot: BootImage
    task: guest.GuestTask
    wall_time_s: float
    inputs: Mapping[str, Path] = field(default_factory=dict)
    files: tuple[ContextFile, ...] = ()
    memory_mib: int = 256
    vcpus: int = 1
    os_type: str = "Linux_64"
    network: Network = field(default_factory=Network)
    scratch_disk_mib: int | None = None
    output_disk_mib: int = DEFAULT_OUTPUT_DISK_MIB
    user_data: str | None = None  # extra cloud-init user-data, merged as MIME multipart
    cpu_cap_percent: int = 100
    boot_timeout_s: float | None = None
    """The job script must have started within this (None: no limit but the wall time)."""


@dataclass(frozen=True)
class VmOutcome:
    completed: bool  # the job ran to its end and its results came back
    exit_code: int | None
    reason: str  # why it did not complete, or ""
    results: media.GuestResults | None
    vm_seconds: float
    console_tail: str


def run_vm_job(
    job: VmJob,
    driver: HypervisorDriver,
    results_dir: Path,
    *,
    cancelled: Callable[[], bool] = lambda: False,
    paused: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    poll_s: float = 0.05,
) -> VmOutcome:
    """Run ``job`` to its end under ``driver``; results land in ``results_dir``.

    ``cancelled`` is asked while the VM runs: once true, the VM is stopped and the outcome
    says "cancelled". While ``paused`` is true the VM is suspended (if the driver can) and the
    time does not count against its wall-time limit: a volunteer's machine is busy.
    """
    name = vm_name(job.job_id)
    workdir = driver.workdir_for(name)
    remove_stale(driver, name)
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    vm: VmHandle | None = None
    started = clock()
    try:
        spec = _prepare(job, name, workdir)
        vm = driver.create(spec, workdir)
        started = clock()
        driver.start(vm)
        state, reason = watch(
            driver,
            vm,
            BootWatch(workdir / "console.log", guest.started_marker(job.job_id)),
            wall_time_s=job.wall_time_s,
            boot_timeout_s=job.boot_timeout_s,
            cancelled=cancelled,
            paused=paused,
            clock=clock,
            poll_s=poll_s,
        )
        vm_seconds = round(clock() - started, 3)
        console = console_tail(workdir)
        if reason:
            return VmOutcome(False, None, reason, None, vm_seconds, console)
        if state is VmState.CRASHED:
            return VmOutcome(False, None, "the VM crashed", None, vm_seconds, console)
        try:
            results = media.read_results(workdir / "output.img", job.job_id, results_dir)
        except media.GuestResultsMissing as exc:
            return VmOutcome(False, None, str(exc), None, vm_seconds, console)
        return VmOutcome(True, results.exit_code, "", results, vm_seconds, console)
    finally:
        if vm is not None:
            driver.destroy(vm)
        else:
            _remove_dir(workdir)


def _prepare(job: VmJob, name: str, workdir: Path) -> VmSpec:
    if job.user_data and not job.boot.runs_cloud_config:
        raise UnsupportedFeature(
            ["vm:Contextualization/vm:UserData for an image without cloud-init (e.g. tiny)"]
        )
    script = guest.user_data(job.task, job.job_id, scratch_disk=job.scratch_disk_mib is not None)
    seed.write_seed(
        workdir / "seed.iso",
        instance_id=job.job_id,
        hostname=name,
        user_data=combined_user_data(script, job.user_data),
    )
    media.write_input_disk(workdir / "input.tar", job.job_id, inputs=job.inputs, files=job.files)
    media.create_output_disk(workdir / "output.img", job.job_id, job.output_disk_mib)
    disks = [
        Disk(workdir / "input.tar", ImageFormat.RAW, read_only=True),
        Disk(workdir / "output.img", ImageFormat.RAW, read_only=False),
    ]
    if job.scratch_disk_mib is not None:
        media.create_scratch_disk(workdir / "scratch.img", job.job_id, job.scratch_disk_mib)
        disks.append(Disk(workdir / "scratch.img", ImageFormat.RAW, read_only=False))
    return VmSpec(
        name=name,
        memory_mib=job.memory_mib,
        vcpus=job.vcpus,
        os_type=job.os_type,
        base_disk=job.boot.disk,
        kernel=job.boot.kernel,
        seed=workdir / "seed.iso",
        disks=tuple(disks),
        network=job.network,
        cpu_cap_percent=job.cpu_cap_percent,
    )


class BootWatch:
    """Whether the job script has announced itself on the serial console yet (read in
    pieces as the log grows, at most about once a second)."""

    def __init__(self, console: Path, marker: str) -> None:
        self._console = console
        self._marker = marker.encode()
        self._offset = 0
        self._checked = 0.0
        self.started = False

    def check(self, now: float, *, force: bool = False) -> bool:
        if self.started or (not force and now - self._checked < _BOOT_CHECK_S):
            return self.started
        self._checked = now
        start = max(0, self._offset - len(self._marker))  # a marker split across two reads
        try:
            with self._console.open("rb") as log_file:
                log_file.seek(start)
                data = log_file.read()
        except OSError:
            return False
        self._offset = start + len(data)
        self.started = self._marker in data
        return self.started


def watch(
    driver: HypervisorDriver,
    vm: VmHandle,
    boot: BootWatch,
    *,
    wall_time_s: float,
    boot_timeout_s: float | None,
    cancelled: Callable[[], bool],
    paused: Callable[[], bool],
    clock: Callable[[], float],
    poll_s: float,
    on_started: Callable[[], None] = lambda: None,
) -> tuple[VmState, str]:
    """Watch a started VM until it stops, is cancelled or runs out of time; return its last
    state and, if it was stopped, why. ``on_started`` is called once, when ``boot`` sees its
    marker (the job started, or a lease's guest is ready)."""
    deadline = clock() + wall_time_s
    boot_deadline = clock() + boot_timeout_s if boot_timeout_s is not None else None
    can_pause = Capability.PAUSE in driver.capabilities
    paused_since: float | None = None
    announced = False
    while True:
        if cancelled():
            driver.stop(vm, grace_s=0)
            return VmState.STOPPED, "cancelled"
        if can_pause and paused_since is None and paused():
            driver.pause(vm)
            paused_since = clock()
            log.info("VM %s paused", vm.name)
        elif paused_since is not None and not paused():
            driver.resume(vm)
            deadline += clock() - paused_since
            if boot_deadline is not None:
                boot_deadline += clock() - paused_since
            paused_since = None
            log.info("VM %s resumed", vm.name)
        if paused_since is not None:
            time.sleep(poll_s)
            continue
        state = driver.state(vm)
        if state in (VmState.STOPPED, VmState.CRASHED, VmState.MISSING):
            return state, ""
        now = clock()
        if not announced and boot.check(now):
            announced = True
            boot_deadline = None
            on_started()
        elif boot_deadline is not None and now >= boot_deadline and not boot.check(now, force=True):
            log.info("VM %s did not start its job within %s s", vm.name, boot_timeout_s)
            driver.stop(vm, grace_s=0)
            return VmState.STOPPED, (
                f"the VM did not start the job within {boot_timeout_s:g} s: its image "
                "does not boot, or has no cloud-init reading the NoCloud seed's user-data "
                "(see the console's last lines)"
            )
        if now >= deadline:
            log.info("VM %s exceeded its wall-time limit of %s s; killing it", vm.name, wall_time_s)
            driver.stop(vm, grace_s=0)
            return VmState.STOPPED, f"wall-time limit of {wall_time_s:g} s exceeded"
        time.sleep(poll_s)


def combined_user_data(script: str, extra: str | None) -> str:
    """Our job script, plus the user's own user-data as a second MIME part if given."""
    return multipart_user_data([extra, script] if extra else [script])


def multipart_user_data(parts: list[str]) -> str:
    """One user-data of several: as it is if there is one, else a MIME multipart (cloud-init
    handles each part by its type: cloud-config, shell script, boothook)."""
    if len(parts) == 1:
        return parts[0]
    message = MIMEMultipart()
    for part in parts:
        message.attach(MIMEText(part, _subtype=_mime_subtype(part)))
    return message.as_string()


def _mime_subtype(user_data: str) -> str:
    if user_data.startswith("#cloud-config"):
        return "cloud-config"
    if user_data.startswith("#!"):
        return "x-shellscript"
    if user_data.startswith("#cloud-boothook"):
        return "cloud-boothook"
    return "plain"


def console_tail(workdir: Path) -> str:
    try:
        text = (workdir / "console.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.replace("\r", "").splitlines()[-_CONSOLE_TAIL_LINES:])


def remove_stale(driver: HypervisorDriver, name: str) -> None:
    if not driver.workdir_for(name).exists():
        return
    for stale in driver.find_stale():
        if stale.name == name:
            driver.destroy(stale)
        else:
            stale.release()
    if driver.workdir_for(name).exists():
        raise HypervisorError(f"VM {name} is already running")


def _remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
