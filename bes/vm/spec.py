"""Value types describing a job's virtual machine, shared by the JSDL parser and the drivers."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path

VM_NAME_PREFIX = "bes-"
_NAME_SAFE = re.compile(r"[^A-Za-z0-9_-]")


class ImageFormat(enum.Enum):
    RAW = "raw"
    QCOW2 = "qcow2"
    VDI = "vdi"
    VMDK = "vmdk"
    ISO = "iso"


class Hypervisor(enum.Enum):
    QEMU = "qemu"
    VIRTUALBOX = "virtualbox"


class NetworkMode(enum.Enum):
    NONE = "none"
    NAT = "nat"


class Protocol(enum.Enum):
    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True)
class PortForward:
    """A host port that reaches a guest port (interactive access, e.g. ssh)."""

    guest_port: int
    host_port: int = 0  # 0: any free port
    host_address: str = "127.0.0.1"
    protocol: Protocol = Protocol.TCP


@dataclass(frozen=True)
class Network:
    """No network by default. NAT gives outbound access only if ``outbound`` is set;
    port forwards work either way."""

    mode: NetworkMode = NetworkMode.NONE
    outbound: bool = False
    port_forwards: tuple[PortForward, ...] = ()


@dataclass(frozen=True)
class ImageRef:
    """A template from the repository by name, or a user image by URI and checksum."""

    template: str | None = None
    uri: str | None = None
    sha256: str | None = None
    format: ImageFormat | None = None

    def describe(self) -> str:
        return f"template {self.template}" if self.template else f"image {self.uri}"


@dataclass(frozen=True)
class ContextFile:
    """A file the guest gets before the job runs (absolute path in the guest)."""

    path: str
    content: str
    mode: int = 0o644

    def __repr__(self) -> str:
        return f"ContextFile({self.path!r}, {len(self.content)} characters, mode={self.mode:o})"


@dataclass(frozen=True)
class Lease:
    """The VM is its owner's to use (``vm:Lease``): no application runs in it."""

    user: str = "debian"
    ssh_keys: tuple[str, ...] = ()
    """OpenSSH public key lines authorized for ``user``."""


@dataclass(frozen=True)
class VirtualMachine:
    """What a job asks of its VM (the JSDL VM extension, parsed)."""

    image: ImageRef
    os_type: str | None = None
    memory_mib: int | None = None
    vcpus: int | None = None
    scratch_disk_mib: int | None = None
    network: Network = field(default_factory=Network)
    user_data: str | None = None
    files: tuple[ContextFile, ...] = ()
    wall_time_s: int | None = None
    hypervisors: tuple[Hypervisor, ...] = ()
    pool: str | None = None
    """The pool of workers the job asks for (``volunteers``, ``cloud:NAME``); None: the
    service's routing policy decides."""
    lease: Lease | None = None
    """Set when the activity is a VM lease (see :func:`bes.vmjob.lease_of`)."""


@dataclass(frozen=True)
class Disk:
    """A disk attached to the VM. Read-write disks other than the boot overlay are the
    job's own files (output, scratch); the driver never writes to a read-only one."""

    path: Path
    format: ImageFormat
    read_only: bool


@dataclass(frozen=True)
class KernelBoot:
    """Direct kernel boot (no firmware, no boot loader), as templates like tiny use."""

    kernel: Path
    initrd: Path | None
    cmdline: str


@dataclass(frozen=True)
class VmSpec:
    """Everything a driver needs to create one VM.

    ``base_disk`` is a cached image the driver must not write: it boots from a copy-on-write
    overlay of it. ``seed`` is the NoCloud ISO, attached as a CD-ROM or a read-only disk.
    """

    name: str
    memory_mib: int
    vcpus: int
    os_type: str
    base_disk: Disk | None
    kernel: KernelBoot | None
    seed: Path | None
    disks: tuple[Disk, ...] = ()
    network: Network = field(default_factory=Network)
    cpu_cap_percent: int = 100


def vm_name(job_id: str) -> str:
    """The deterministic VM name of a job, so stale VMs can be found after a crash."""
    return VM_NAME_PREFIX + _NAME_SAFE.sub("_", job_id)
