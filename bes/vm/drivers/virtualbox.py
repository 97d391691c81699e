"""VirtualBox through VBoxManage, following BOINC vboxwrapper's proven command sequence.

Every call goes through one CommandRunner with ``VBOX_USER_HOME`` set to the driver's own
directory, so the registry (VirtualBox.xml) is ours, not the volunteer's. The HRESULT is read
from the output (``(0x80bb0007)``), and the session-lock and VBoxSVC codes are retried with
backoff, as vboxwrapper does. The VM boots from a multiattach child of the cached base image:
VirtualBox writes a differencing image in the VM's folder and never touches the base.
VirtualBox 7 renamed many modifyvm options; the spelling is chosen from ``--version``.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bes.errors import HypervisorError, HypervisorUnavailable
from bes.vm.drivers.base import Capability, HostInfo, HypervisorDriver, VmHandle, VmState
from bes.vm.runner import CommandResult, CommandRunner
from bes.vm.spec import VM_NAME_PREFIX, Disk, Hypervisor, ImageFormat, NetworkMode, VmSpec

log = logging.getLogger(__name__)

SESSION_LOCKED = "0x80bb0007"  # VBOX_E_INVALID_OBJECT_STATE
OBJECT_NOT_FOUND = "0x80bb0001"  # VBOX_E_OBJECT_NOT_FOUND
SERVER_EXEC_FAILURE = "0x80080005"  # CO_E_SERVER_EXEC_FAILURE: VBoxSVC unreachable
_TRANSIENT = {SESSION_LOCKED, SERVER_EXEC_FAILURE}
_HRESULT = re.compile(r"\((0x[0-9a-fA-F]{8})\)")
_CONTROLLER = "SATA"
_STARTED = ".started"
_STATES = {
    "running": VmState.RUNNING,
    "starting": VmState.RUNNING,
    "stopping": VmState.RUNNING,
    "saving": VmState.RUNNING,
    "restoring": VmState.RUNNING,
    "livesnapshotting": VmState.RUNNING,
    "onlinesnapshotting": VmState.RUNNING,
    "paused": VmState.PAUSED,
    "poweroff": VmState.STOPPED,
    "saved": VmState.STOPPED,
    "aborted": VmState.CRASHED,
    "gurumeditation": VmState.CRASHED,
}
_TIMEOUT_S = 120.0


def hresult(result: CommandResult) -> str | None:
    """The first ``(0x…)`` code in VBoxManage's output, lower-cased."""
    match = _HRESULT.search(result.output)
    return match.group(1).lower() if match else None


def vbox_runner_settings(root: Path) -> dict[str, Any]:
    """CommandRunner arguments: the driver's own VirtualBox registry, vboxwrapper's retries."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return {
        "env": {"VBOX_USER_HOME": str(root / "VirtualBox")},
        "trace_path": root / "vbox_trace.txt",
        "replay_path": root / "vbox_replay.txt",
        "transient": lambda result: hresult(result) in _TRANSIENT,
        "error_code": hresult,
    }


def vbox_runner(root: Path) -> CommandRunner:
    return CommandRunner(**vbox_runner_settings(root))


def parse_machinereadable(text: str) -> dict[str, str]:
    """``key="value"`` lines of ``showvminfo --machinereadable`` (keys may be quoted too)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        values[key.strip().strip('"')] = value.strip().strip('"')
    return values


class VirtualBoxDriver(HypervisorDriver):
    hypervisor = Hypervisor.VIRTUALBOX
    capabilities = frozenset({Capability.CPU_CAP, Capability.PAUSE})
    disk_formats = (ImageFormat.VDI, ImageFormat.VMDK, ImageFormat.ISO)

    def __init__(
        self,
        root: Path,
        runner: CommandRunner,
        *,
        binary: str = "VBoxManage",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(root)
        self._runner = runner
        self._binary = binary
        self._clock = clock
        self._sleep = sleep
        self._version: tuple[int, ...] | None = None

    # -- probing ---------------------------------------------------------------------------

    def probe(self) -> HostInfo:
        result = self._vbm("--version", check=False)
        match = re.match(r"(\d+)\.(\d+)\.(\d+)", result.stdout.strip())
        if result.exit_code != 0 or match is None:
            raise HypervisorUnavailable(
                "VBoxManage does not run here",
                argv=result.argv,
                exit_code=result.exit_code,
                stderr_tail=result.output[-500:],
            )
        self._version = tuple(int(part) for part in match.groups())
        hostinfo = self._vbm("list", "hostinfo", check=False).output
        for broken in ("kernel module is not loaded", "kernel modules are not loaded"):
            if broken in hostinfo:
                raise HypervisorUnavailable(
                    "VirtualBox's kernel modules are not loaded (rebuild them for this kernel)"
                )
        if "Processor count:" not in hostinfo:
            raise HypervisorUnavailable("VBoxManage list hostinfo gave no host information")
        return HostInfo(Hypervisor.VIRTUALBOX, ".".join(map(str, self._version)), "hardware")

    # -- lifecycle -------------------------------------------------------------------------

    def create(self, spec: VmSpec, workdir: Path) -> VmHandle:
        if spec.kernel is not None:
            raise HypervisorError(
                f"VM {spec.name}: VirtualBox cannot boot a kernel directly; this image needs QEMU"
            )
        if spec.network.mode is NetworkMode.NAT and not spec.network.outbound:
            raise HypervisorError(
                f"VM {spec.name}: VirtualBox's NAT cannot forward ports while blocking outbound "
                "traffic; allow outbound access or use QEMU"
            )
        if self._version is None:
            self.probe()  # the option spellings depend on the version
        vm = self._claim(spec.name, workdir)
        try:
            self._define(spec, workdir)
        except BaseException:
            self.destroy(vm)
            raise
        return vm

    def _define(self, spec: VmSpec, workdir: Path) -> None:
        name = spec.name
        self._vbm(
            "createvm",
            "--name",
            name,
            "--basefolder",
            str(workdir),
            "--ostype",
            spec.os_type,
            "--register",
        )
        self._vbm(
            "modifyvm",
            name,
            "--memory",
            str(spec.memory_mib),
            "--cpus",
            str(spec.vcpus),
            "--acpi",
            "on",
            "--ioapic",
            "on",
            "--rtcuseutc",
            "on",
            "--vram",
            "16",
            "--boot1",
            "disk",
            "--boot2",
            "dvd",
            "--boot3",
            "none",
            "--boot4",
            "none",
        )
        self._vbm("modifyvm", name, self._option("cpuexecutioncap"), str(spec.cpu_cap_percent))
        self._network(spec)
        for option, value in (
            ("usb", "off"),
            ("audio", "off" if self._v7() else "none"),
            ("clipboard", "disabled"),
            ("draganddrop", "disabled"),
        ):
            # Not fatal, as in vboxwrapper: some builds lack a device.
            self._vbm("modifyvm", name, self._option(option), value, check=False)
        self._vbm(
            "modifyvm",
            name,
            self._option("uart1"),
            "0x3F8",
            "4",
            self._option("uartmode1"),
            "file",
            str(workdir / "console.log"),
        )
        self._vbm(
            "storagectl",
            name,
            "--name",
            _CONTROLLER,
            "--add",
            "sata",
            "--controller",
            "IntelAhci",
            "--portcount",
            str(3 + len(spec.disks)),
            "--hostiocache",
            "off",
        )
        port = 0
        if spec.base_disk is not None:
            self._attach_base(name, port, spec.base_disk)
            port += 1
        if spec.seed is not None:
            self._attach(name, port, "dvddrive", str(spec.seed))
            port += 1
        for disk in spec.disks:
            descriptor = _flat_vmdk(disk, workdir) if disk.format is ImageFormat.RAW else disk.path
            mtype = "immutable" if disk.read_only else "normal"
            self._attach(name, port, "hdd", str(descriptor), "--mtype", mtype, "--setuuid", "")
            port += 1

    def _network(self, spec: VmSpec) -> None:
        if spec.network.mode is NetworkMode.NONE:
            self._vbm("modifyvm", spec.name, "--nic1", "none")
            return
        self._vbm(
            "modifyvm",
            spec.name,
            "--nic1",
            "nat",
            self._option("nictype1"),
            "virtio",
            self._option("cableconnected1"),
            "on",
            self._option("natdnsproxy1"),
            "on",
        )
        for index, forward in enumerate(spec.network.port_forwards):
            rule = (
                f"bes{index},{forward.protocol.value},{forward.host_address},"
                f"{forward.host_port},,{forward.guest_port}"
            )
            self._vbm("modifyvm", spec.name, self._option("natpf1"), rule)

    def _attach_base(self, name: str, port: int, disk: Disk) -> None:
        if disk.format is ImageFormat.ISO:
            self._attach(name, port, "dvddrive", str(disk.path))
            return
        if disk.format not in self.disk_formats:
            raise HypervisorError(f"VirtualBox cannot boot a {disk.format.value} image")
        # The cached base stays read-only; VirtualBox gives this VM a differencing child.
        self._attach(name, port, "hdd", str(disk.path), "--mtype", "multiattach")

    def _attach(self, name: str, port: int, kind: str, medium: str, *extra: str) -> None:
        self._vbm(
            "storageattach",
            name,
            "--storagectl",
            _CONTROLLER,
            "--port",
            str(port),
            "--device",
            "0",
            "--type",
            kind,
            "--medium",
            medium,
            *extra,
        )

    def start(self, vm: VmHandle) -> None:
        (vm.workdir / _STARTED).touch()
        self._vbm("startvm", vm.name, "--type", "headless")

    def state(self, vm: VmHandle) -> VmState:
        result = self._vbm("showvminfo", vm.name, "--machinereadable", check=False)
        if hresult(result) == OBJECT_NOT_FOUND:
            return VmState.MISSING
        if result.exit_code != 0:
            raise HypervisorError(
                f"cannot read the state of VM {vm.name}",
                argv=result.argv,
                exit_code=result.exit_code,
                code=hresult(result),
                stderr_tail=result.output[-500:],
            )
        state = _STATES.get(
            parse_machinereadable(result.stdout).get("VMState", ""), VmState.CREATED
        )
        if state is VmState.STOPPED and not (vm.workdir / _STARTED).exists():
            return VmState.CREATED  # VirtualBox calls a VM that never ran "poweroff"
        return state

    def stop(self, vm: VmHandle, *, grace_s: float) -> None:
        if self.state(vm) not in (VmState.RUNNING, VmState.PAUSED):
            return
        if grace_s > 0:
            self._vbm("controlvm", vm.name, "acpipowerbutton", check=False)
            deadline = self._clock() + grace_s
            while self._clock() < deadline:
                if self.state(vm) not in (VmState.RUNNING, VmState.PAUSED):
                    return
                self._sleep(0.5)
        self._vbm("controlvm", vm.name, "poweroff", check=False)

    def pause(self, vm: VmHandle) -> None:
        self._vbm("controlvm", vm.name, "pause")

    def resume(self, vm: VmHandle) -> None:
        self._vbm("controlvm", vm.name, "resume")

    def destroy(self, vm: VmHandle) -> None:
        if self.state(vm) is not VmState.MISSING:
            self.stop(vm, grace_s=0)
            # Not --delete: that would also delete media it considers unshared.
            self._vbm("unregistervm", vm.name, check=False)
        for medium in sorted(vm.workdir.rglob("*")):
            if medium.suffix in (".vdi", ".vmdk"):
                self._vbm("closemedium", "disk", str(medium), check=False)
            elif medium.suffix == ".iso":
                self._vbm("closemedium", "dvd", str(medium), check=False)
        shutil.rmtree(vm.workdir, ignore_errors=True)
        vm.release()

    def find_stale(self) -> list[VmHandle]:
        stale = self._unowned_workdirs()
        known = {vm.name for vm in stale}
        listing = self._vbm("list", "vms", check=False).stdout
        for name in re.findall(r'^"([^"]+)" \{', listing, flags=re.MULTILINE):
            if name.startswith(VM_NAME_PREFIX) and name not in known:
                workdir = self.workdir_for(name)
                if not workdir.exists():
                    stale.append(VmHandle(name, workdir, None))
        return stale

    # -- helpers ---------------------------------------------------------------------------

    def _vbm(self, *args: str, check: bool = True) -> CommandResult:
        return self._runner.run([self._binary, "-q", *args], timeout_s=_TIMEOUT_S, check=check)

    def _option(self, name: str) -> str:
        """VirtualBox 7 spells many modifyvm options with hyphens."""
        spelling = _V7_SPELLING if self._v7() else _V6_SPELLING
        return spelling.get(name, f"--{name}")

    def _v7(self) -> bool:
        if self._version is None:
            self.probe()
        return self._version is not None and self._version >= (7, 0, 0)


_V7_SPELLING = {
    "cpuexecutioncap": "--cpu-execution-cap",
    "nictype1": "--nic-type1",
    "cableconnected1": "--cable-connected1",
    "natdnsproxy1": "--nat-dns-proxy1",
    "natpf1": "--nat-pf1",
    "audio": "--audio-enabled",
    "clipboard": "--clipboard-mode",
    "draganddrop": "--drag-and-drop",
    "uartmode1": "--uart-mode1",
}
_V6_SPELLING = {"audio": "--audio", "clipboard": "--clipboard"}


def _flat_vmdk(disk: Disk, workdir: Path) -> Path:
    """A VMDK descriptor whose one flat extent is the raw file: VirtualBox reads raw disks
    this way, and the bytes stay where the host reads them."""
    size = disk.path.stat().st_size
    sectors = (size + 511) // 512
    descriptor = workdir / f"{disk.path.stem}.vmdk"
    descriptor.write_text(
        "# Disk DescriptorFile\n"
        "version=1\n"
        "CID=fffffffe\n"
        "parentCID=ffffffff\n"
        'createType="monolithicFlat"\n\n'
        f'RW {sectors} FLAT "{disk.path.resolve()}" 0\n\n'
        'ddb.virtualHWVersion = "4"\n'
        'ddb.adapterType = "ide"\n'
    )
    return descriptor
