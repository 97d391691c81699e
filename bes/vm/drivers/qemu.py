"""QEMU: KVM where /dev/kvm really runs guest code, TCG otherwise; QMP for state.

Each VM is one qemu-system process in its own session, started with the seccomp sandbox,
no default devices, no network unless asked, and its disks on virtio. The base image is
never written: the VM boots from a qcow2 overlay whose backing file is the cached image.
The directory ``<root>/<name>`` holds the overlay, the pid file, the console log and the
QMP socket, so a VM left by a crashed process is found by name and removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bes.errors import HypervisorError, HypervisorUnavailable
from bes.vm import cpucap, kvm
from bes.vm.drivers import _qmp
from bes.vm.drivers.base import Capability, HostInfo, HypervisorDriver, VmHandle, VmState
from bes.vm.runner import CommandRunner
from bes.vm.spec import Hypervisor, ImageFormat, NetworkMode, VmSpec

log = logging.getLogger(__name__)

ACCELERATORS = ("auto", "kvm", "tcg")
_PID_FILE = "qemu.pid"
_ARGV_FILE = "qemu.argv"
_CONSOLE_LOG = "console.log"
_OVERLAY = "overlay.qcow2"
_CPU_CAP = "cpu.cap"
_STOPPED_BY_US = "stopped"  # present once stop() was called: the exit that follows is no crash
_SOCKET_NAME = "qmp.sock"
_MAX_SOCKET_PATH = 100
_SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


class QemuDriver(HypervisorDriver):
    hypervisor = Hypervisor.QEMU
    capabilities = frozenset(
        {
            Capability.DIRECT_KERNEL_BOOT,
            Capability.NAT_WITHOUT_OUTBOUND,
            Capability.CPU_CAP,
            Capability.PAUSE,
        }
    )

    def __init__(
        self,
        root: Path,
        runner: CommandRunner | None = None,
        *,
        accelerator: str = "auto",
        binary: str = "qemu-system-x86_64",
        img_binary: str = "qemu-img",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(root)
        if accelerator not in ACCELERATORS:
            raise HypervisorError(f"unknown QEMU accelerator {accelerator!r}")
        self._runner = runner or CommandRunner()
        self._wanted_accelerator = accelerator
        self._binary = binary
        self._img_binary = img_binary
        self._clock = clock
        self._accelerator: str | None = None
        self._accelerator_reason = ""
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    # -- probing ---------------------------------------------------------------------------

    def probe(self) -> HostInfo:
        result = self._runner.run([self._binary, "--version"], timeout_s=30.0, check=False)
        match = re.search(r"version (\d+\.\d+(?:\.\d+)?)", result.stdout)
        if result.exit_code != 0 or match is None:
            raise HypervisorUnavailable(
                f"{self._binary} does not run here",
                argv=result.argv,
                exit_code=result.exit_code,
                stderr_tail=result.output[-500:],
            )
        accelerator = self.accelerator()
        return HostInfo(Hypervisor.QEMU, match.group(1), accelerator, self._accelerator_reason)

    def accelerator(self) -> str:
        """kvm or tcg: decided once per driver, by running guest code, not by /dev/kvm."""
        if self._accelerator is None:
            if self._wanted_accelerator == "tcg":
                self._accelerator, self._accelerator_reason = "tcg", "TCG was asked for"
            else:
                verdict = kvm.probe(self._runner)
                if self._wanted_accelerator == "kvm" and not verdict.usable:
                    raise HypervisorUnavailable(verdict.reason)
                self._accelerator = "kvm" if verdict.usable else "tcg"
                self._accelerator_reason = verdict.reason
            log.info("QEMU accelerator: %s (%s)", self._accelerator, self._accelerator_reason)
        return self._accelerator

    # -- lifecycle -------------------------------------------------------------------------

    def create(self, spec: VmSpec, workdir: Path) -> VmHandle:
        vm = self._claim(spec.name, workdir)
        try:
            boot_disk = None
            if spec.base_disk is not None and spec.base_disk.format is not ImageFormat.ISO:
                boot_disk = workdir / _OVERLAY
                self.create_overlay(spec.base_disk.path, spec.base_disk.format, boot_disk)
            argv = qemu_argv(
                spec,
                binary=self._binary,
                accelerator=self.accelerator(),
                boot_disk=boot_disk,
                qmp_socket=self._socket_path(vm),
                pid_file=workdir / _PID_FILE,
                console_log=workdir / _CONSOLE_LOG,
            )
            (workdir / _ARGV_FILE).write_text("\0".join(argv))
            if spec.cpu_cap_percent < 100:
                (workdir / _CPU_CAP).write_text(f"{spec.cpu_cap_percent} {spec.vcpus}\n")
        except BaseException:
            self.destroy(vm)
            raise
        return vm

    def create_overlay(self, base: Path, base_format: ImageFormat, overlay: Path) -> None:
        """A qcow2 file whose reads fall through to ``base``; writes never reach it."""
        self._runner.run(
            [
                self._img_binary,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                base_format.value,
                "-b",
                str(base.resolve()),
                str(overlay),
            ],
            timeout_s=60.0,
        )

    def start(self, vm: VmHandle) -> None:
        argv = (vm.workdir / _ARGV_FILE).read_text().split("\0")
        (vm.workdir / _STOPPED_BY_US).unlink(missing_ok=True)
        process = self._runner.spawn(argv, stdout=vm.workdir / "qemu.log", cwd=vm.workdir)
        self._processes[vm.name] = process
        # Until QEMU has written its pid file, a crash of ours would leave it unfindable.
        deadline = self._clock() + 10.0
        while not (vm.workdir / _PID_FILE).exists() and process.poll() is None:
            if self._clock() >= deadline:
                break
            time.sleep(0.01)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, process.pid, 10)  # volunteers' own work comes first
        cap_file = vm.workdir / _CPU_CAP
        if cap_file.exists():
            percent, vcpus = (int(n) for n in cap_file.read_text().split())
            if cpucap.apply(process.pid, vm.name, percent=percent, vcpus=vcpus) is None:
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, process.pid, 19)

    def state(self, vm: VmHandle) -> VmState:
        ended = self._ended(vm)
        if ended is not None:
            return ended
        try:
            status = _qmp.execute(self._socket_path(vm), "query-status")
        except HypervisorError:
            # Starting up (socket not there yet), or it ended while we asked: how it ended is
            # read again (an exit with an error during the question is still a crash).
            if self._alive(vm):
                return VmState.RUNNING
            return self._ended(vm) or VmState.STOPPED
        return {
            "running": VmState.RUNNING,
            "paused": VmState.PAUSED,
            "prelaunch": VmState.CREATED,
            "shutdown": VmState.STOPPED,
            "internal-error": VmState.CRASHED,
            "guest-panicked": VmState.CRASHED,
        }.get(str(status.get("status")), VmState.RUNNING)

    def _ended(self, vm: VmHandle) -> VmState | None:
        """How the VM is, if its process is not running (or never ran); None while it runs.
        Only our own child's exit code tells a crash from a stop: a VM another process
        started and that is gone reads as stopped."""
        process = self._processes.get(vm.name)
        if process is not None:
            code = process.poll()
            if code is None:
                return None
            stopped = code == 0 or (vm.workdir / _STOPPED_BY_US).exists()
            return VmState.STOPPED if stopped else VmState.CRASHED
        if not (vm.workdir / _ARGV_FILE).exists():
            return VmState.MISSING
        if self._pid(vm) is None:
            started = (vm.workdir / _PID_FILE).exists() or (vm.workdir / "qemu.log").exists()
            return VmState.STOPPED if started else VmState.CREATED
        return None

    def stop(self, vm: VmHandle, *, grace_s: float) -> None:
        if not self._alive(vm):
            self._reap(vm)
            return
        # QEMU killed by our SIGTERM before it handles the signal (a slow start), or by our
        # SIGKILL, exits non-zero: the mark keeps that from reading as a crash.
        with contextlib.suppress(OSError):  # its directory removed by another process
            (vm.workdir / _STOPPED_BY_US).touch()
        if grace_s > 0:
            with contextlib.suppress(HypervisorError):
                _qmp.execute(self._socket_path(vm), "system_powerdown")
            if self._wait_exit(vm, grace_s):
                return
        self._signal(vm, signal.SIGTERM)
        if not self._wait_exit(vm, 3.0):
            self._signal(vm, signal.SIGKILL)
            self._wait_exit(vm, 5.0)

    def pause(self, vm: VmHandle) -> None:
        self._command(vm, "stop")

    def resume(self, vm: VmHandle) -> None:
        self._command(vm, "cont")

    def _command(self, vm: VmHandle, command: str, *, timeout_s: float = 10.0) -> None:
        """A QMP command, waiting for the monitor of a VM that is starting up."""
        deadline = self._clock() + timeout_s
        while True:
            try:
                _qmp.execute(self._socket_path(vm), command)
                return
            except HypervisorError:
                if not self._alive(vm) or self._clock() >= deadline:
                    raise
                time.sleep(0.05)

    def destroy(self, vm: VmHandle) -> None:
        self.stop(vm, grace_s=0)
        cpucap.release(vm.name)
        socket_path = self._socket_path(vm)
        if socket_path.parent != vm.workdir:
            socket_path.unlink(missing_ok=True)
        _remove_tree(vm.workdir)
        self._processes.pop(vm.name, None)
        vm.release()

    def find_stale(self) -> list[VmHandle]:
        return self._unowned_workdirs()

    # -- helpers ---------------------------------------------------------------------------

    def console_log(self, vm: VmHandle) -> Path:
        return vm.workdir / _CONSOLE_LOG

    def _socket_path(self, vm: VmHandle) -> Path:
        path = vm.workdir / _SOCKET_NAME
        if len(str(path)) <= _MAX_SOCKET_PATH:
            return path
        runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/bes-{os.getuid()}")  # noqa: S108
        runtime.mkdir(mode=0o700, exist_ok=True)
        if runtime.stat().st_uid != os.getuid():
            raise HypervisorError(f"{runtime} belongs to another user")
        return runtime / f"{vm.name}.qmp"

    def _pid(self, vm: VmHandle) -> int | None:
        process = self._processes.get(vm.name)
        if process is not None:
            return process.pid if process.poll() is None else None
        marker = f"guest={vm.name},".encode()
        try:
            pid = int((vm.workdir / _PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return _find_process(marker, str(vm.workdir).encode())
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if marker in cmdline else None

    def _alive(self, vm: VmHandle) -> bool:
        return self._pid(vm) is not None

    def _signal(self, vm: VmHandle, sig: signal.Signals) -> None:
        pid = self._pid(vm)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _wait_exit(self, vm: VmHandle, timeout_s: float) -> bool:
        deadline = self._clock() + timeout_s
        while self._alive(vm):
            if self._clock() >= deadline:
                return False
            time.sleep(0.02)
        self._reap(vm)
        return True

    def _reap(self, vm: VmHandle) -> None:
        process = self._processes.get(vm.name)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5.0)


def qemu_argv(
    spec: VmSpec,
    *,
    binary: str,
    accelerator: str,
    boot_disk: Path | None,
    qmp_socket: Path,
    pid_file: Path,
    console_log: Path,
) -> list[str]:
    """The qemu-system command line for ``spec`` (a pure function, for tests)."""
    argv = [
        binary,
        "-name",
        f"guest={spec.name},process={spec.name}",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-sandbox",
        _SANDBOX,
        "-machine",
        "pc",
        "-accel",
        accelerator,
        "-m",
        str(spec.memory_mib),
        "-smp",
        str(spec.vcpus),
        "-serial",
        f"file:{console_log}",
        "-qmp",
        f"unix:{qmp_socket},server=on,wait=off",
        "-pidfile",
        str(pid_file),
    ]
    if spec.kernel is not None:
        argv += ["-kernel", str(spec.kernel.kernel), "-append", spec.kernel.cmdline]
        if spec.kernel.initrd is not None:
            argv += ["-initrd", str(spec.kernel.initrd)]
    drives: list[tuple[Path, str, bool]] = []
    if boot_disk is not None:
        drives.append((boot_disk, "qcow2", False))
    if spec.seed is not None:
        drives.append((spec.seed, "raw", True))
    drives += [(disk.path, disk.format.value, disk.read_only) for disk in spec.disks]
    for index, (path, image_format, read_only) in enumerate(drives):
        drive = f"if=none,id=disk{index},file={_escape(path)},format={image_format}"
        if read_only:
            drive += ",readonly=on"
        argv += ["-drive", drive, "-device", f"virtio-blk-pci,drive=disk{index}"]
    if spec.base_disk is not None and spec.base_disk.format is ImageFormat.ISO:
        argv += [
            "-drive",
            f"if=ide,media=cdrom,readonly=on,format=raw,file={_escape(spec.base_disk.path)}",
        ]
    if accelerator == "kvm":
        argv += ["-cpu", "host"]
    argv += ["-nic", _nic(spec)]
    return argv


def _nic(spec: VmSpec) -> str:
    network = spec.network
    if network.mode is NetworkMode.NONE:
        return "none"
    nic = "user,model=virtio-net-pci,restrict=" + ("off" if network.outbound else "on")
    for forward in network.port_forwards:
        host_port = forward.host_port or free_port(forward.host_address)
        nic += (
            f",hostfwd={forward.protocol.value}:{forward.host_address}:{host_port}"
            f"-:{forward.guest_port}"
        )
    return nic


def free_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe_socket:
        probe_socket.bind((address, 0))
        port: int = probe_socket.getsockname()[1]
        return port


def _escape(path: Path) -> str:
    """QEMU option values escape a comma by doubling it."""
    return str(path).replace(",", ",,")


def _find_process(*parts: bytes) -> int | None:
    """A live process whose command line holds every one of ``parts``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if all(part in cmdline for part in parts):
            return int(proc.name)
    return None


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
