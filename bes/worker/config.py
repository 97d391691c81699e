"""How a worker runs: what it may use of its host, and how it talks to the service."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bes.vm.spec import Hypervisor


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    """A worker's settings; the defaults protect a volunteer's machine.

    Attributes:
        service: The service's base URL (``https://bes.example.org``).
        token: This worker's token.
        cache_dir: VM directories and scratch space (and the image cache, unless
            ``image_cache_dir`` names another).
        max_vms: Most VMs at once.
        cpu_cap_percent: Most CPU each VM may use, in percent of its virtual CPUs.
        max_memory_mib: Memory all VMs together may use; jobs that do not fit are not taken.
        max_vcpus: Virtual CPUs one VM may have.
        cache_limit_mib: Disk budget of the image cache (least recently used images go).
        allow_network: Whether guests may reach the network (jobs asking for outbound access
            are taken only then). Port forwards to this host's loopback (a VM lease's SSH),
            which give the guest no way out, need no permission.
        busy_load: Pause VMs and take no work while the host's load average, not counting
            our VMs, is above this; None never pauses.
        hypervisors: Hypervisors to use, preferred first; empty: whatever works here.
        accelerator: QEMU accelerator (auto, kvm, tcg).
        file_roots: Directories that ``file:`` staging URIs may name; none by default.
        ca_file: PEM certificates that the service's HTTPS certificate must chain to (any
            of them is a trust anchor, also a server certificate itself); None: the system's.
        tls_server_name: The name the service's certificate must be valid for, when the URL
            reaches it by another (e.g. an address); None: the URL's host.
        max_backoff_s: Longest wait between attempts to reach the service.
        stop_grace_s: On shutdown, how long to wait for jobs to hand back.
        boot_timeout_s: How long a VM may take to boot and start its job (an image that does
            not boot or has no cloud-init fails then, not at its wall time).
    """

    service: str
    token: str
    cache_dir: Path
    image_cache_dir: Path | None = None
    """The node's image cache, shared with other tools (bes.vmlocal.default_image_cache);
    None: ``cache_dir/images``."""
    max_vms: int = 1
    cpu_cap_percent: int = 100
    max_memory_mib: int = 2048
    max_vcpus: int = 1
    cache_limit_mib: int = 20 * 1024
    allow_network: bool = False
    busy_load: float | None = None
    hypervisors: tuple[Hypervisor, ...] = ()
    accelerator: str = "auto"
    file_roots: tuple[Path, ...] = ()
    ca_file: Path | None = None
    tls_server_name: str | None = None
    max_backoff_s: float = 60.0
    stop_grace_s: float = 30.0
    boot_timeout_s: float = 600.0
