"""The HypervisorDriver interface: vboxwrapper's verbs, Libcloud's shape.

A driver keeps each VM's files in a directory of its own under the driver's ``root``, named
after the VM, and holds an exclusive lock on it while the VM is in use. A directory whose lock
nobody holds belongs to a process that died: ``find_stale`` returns it for ``destroy``.
"""

from __future__ import annotations

import enum
import fcntl
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from bes.errors import HypervisorError
from bes.vm.spec import VM_NAME_PREFIX, Hypervisor, ImageFormat, VmSpec

LOCK_FILE = ".owner"


class VmState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"  # powered off by the guest or by stop()
    CRASHED = "crashed"  # the hypervisor process died or the guest failed
    MISSING = "missing"  # nothing of it is left


class Capability(enum.Enum):
    DIRECT_KERNEL_BOOT = "direct-kernel-boot"
    NAT_WITHOUT_OUTBOUND = "nat-without-outbound"
    CPU_CAP = "cpu-cap"
    PAUSE = "pause"


@dataclass(frozen=True)
class HostInfo:
    hypervisor: Hypervisor
    version: str
    accelerator: str  # "kvm", "tcg", "vt-x/amd-v", ...
    detail: str = ""


class VmHandle:
    """A VM this process created or found; holds the lock on its directory."""

    def __init__(self, name: str, workdir: Path, lock_fd: int | None) -> None:
        self.name = name
        self.workdir = workdir
        self._lock_fd = lock_fd

    def __repr__(self) -> str:
        return f"VmHandle({self.name!r}, {str(self.workdir)!r})"

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class HypervisorDriver(ABC):
    hypervisor: ClassVar[Hypervisor]
    capabilities: ClassVar[frozenset[Capability]]
    # Disk formats it boots, preferred first; others are converted (qemu-img) beforehand.
    disk_formats: ClassVar[tuple[ImageFormat, ...]] = tuple(ImageFormat)

    def __init__(self, root: Path) -> None:
        self.root = root

    @abstractmethod
    def probe(self) -> HostInfo:
        """What runs guests here; raises HypervisorUnavailable."""

    @abstractmethod
    def create(self, spec: VmSpec, workdir: Path) -> VmHandle:
        """Define the VM (overlay disk, devices, network); do not start it."""

    @abstractmethod
    def start(self, vm: VmHandle) -> None: ...

    @abstractmethod
    def state(self, vm: VmHandle) -> VmState: ...

    @abstractmethod
    def stop(self, vm: VmHandle, *, grace_s: float) -> None:
        """ACPI shutdown, then power off after ``grace_s``."""

    @abstractmethod
    def destroy(self, vm: VmHandle) -> None:
        """Power off if needed and remove the VM and all its files. Idempotent."""

    @abstractmethod
    def find_stale(self) -> list[VmHandle]:
        """VMs of this driver whose owning process is gone."""

    def pause(self, vm: VmHandle) -> None:
        """Suspend a running VM (drivers with the PAUSE capability)."""
        raise HypervisorError(f"{self.hypervisor.value} VMs cannot be paused here")

    def resume(self, vm: VmHandle) -> None:
        """Resume a paused VM (drivers with the PAUSE capability)."""
        raise HypervisorError(f"{self.hypervisor.value} VMs cannot be paused here")

    def workdir_for(self, name: str) -> Path:
        return self.root / name

    def _claim(self, name: str, workdir: Path) -> VmHandle:
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise HypervisorError(f"VM {name} is in use by another process") from exc
        return VmHandle(name, workdir, fd)

    def _unowned_workdirs(self) -> list[VmHandle]:
        if not self.root.is_dir():
            return []
        stale = []
        for workdir in sorted(self.root.iterdir()):
            if not (workdir.is_dir() and workdir.name.startswith(VM_NAME_PREFIX)):
                continue
            try:
                stale.append(self._claim(workdir.name, workdir))
            except HypervisorError:
                continue
        return stale
