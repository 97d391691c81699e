"""Run one VM lease: a VM its owner logs into, up until it is cancelled, powers itself off
or runs out of wall time.

A lease is not a job: no script runs and nothing comes back from the guest. Its seed installs
the owner's SSH keys and the host key the worker made (so the owner's client knows it before
the first connection); its forwarded ports are fixed before the VM starts, so the worker can
report them; once the guest prints its ready marker on the serial console, ``on_ready`` is
called with the way in. The VM is destroyed whatever happens.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from bes.access import Access
from bes.vm import seed
from bes.vm.drivers.base import HypervisorDriver, VmHandle, VmState
from bes.vm.drivers.qemu import free_port
from bes.vm.job import (
    BootImage,
    BootWatch,
    console_tail,
    multipart_user_data,
    remove_stale,
    watch,
)
from bes.vm.leaseguest import HostKey, failed_marker, lease_user_data, ready_marker
from bes.vm.spec import (
    ContextFile,
    Lease,
    Network,
    NetworkMode,
    PortForward,
    Protocol,
    VmSpec,
    vm_name,
)

log = logging.getLogger(__name__)

SSH_PORT = 22


@dataclass(frozen=True)
class VmLease:
    """A lease as a worker runs it."""

    lease_id: str
    boot: BootImage
    lease: Lease
    wall_time_s: float
    network: Network
    """With every host port fixed (see :func:`lease_network`)."""
    host_key: HostKey = field(default_factory=HostKey.generate)
    files: tuple[ContextFile, ...] = ()
    memory_mib: int = 512
    vcpus: int = 1
    os_type: str = "Linux_64"
    user_data: str | None = None
    cpu_cap_percent: int = 100
    boot_timeout_s: float | None = None

    def access(self) -> Access:
        """The way in the owner is told about once the guest is ready."""
        return Access(
            user=self.lease.user,
            host_keys=(self.host_key.public,),
            ports=tuple(
                (f.guest_port, f.host_port)
                for f in self.network.port_forwards
                if f.protocol is Protocol.TCP
            ),
        )


@dataclass(frozen=True)
class LeaseOutcome:
    """How a lease ended: ``reason`` is "" when the guest powered itself off."""

    reason: str
    ready: bool
    vm_seconds: float
    console_tail: str

    @property
    def powered_off(self) -> bool:
        return not self.reason


def lease_network(network: Network) -> Network:
    """The lease's network: NAT, the SSH port forwarded, and every host port 0 replaced by a
    free port now (so it can be reported; the drivers then use it as given)."""
    forwards = list(network.port_forwards)
    if not any(f.guest_port == SSH_PORT and f.protocol is Protocol.TCP for f in forwards):
        forwards.insert(0, PortForward(guest_port=SSH_PORT))
    fixed = tuple(
        f if f.host_port else replace(f, host_port=free_port(f.host_address)) for f in forwards
    )
    return Network(mode=NetworkMode.NAT, outbound=network.outbound, port_forwards=fixed)


def run_vm_lease(
    lease: VmLease,
    driver: HypervisorDriver,
    *,
    on_ready: Callable[[Access], None],
    cancelled: Callable[[], bool] = lambda: False,
    paused: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    poll_s: float = 0.2,
) -> LeaseOutcome:
    """Run ``lease`` until it ends; ``paused`` suspends the VM (its wall time stops)."""
    name = vm_name(lease.lease_id)
    workdir = driver.workdir_for(name)
    remove_stale(driver, name)
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    vm: VmHandle | None = None
    started = clock()
    ready = False

    def announce() -> None:
        nonlocal ready
        ready = True
        log.info("lease %s: VM %s is ready", lease.lease_id, name)
        on_ready(lease.access())

    failed = BootWatch(workdir / "console.log", failed_marker(lease.lease_id))
    guest_failed = False

    def stop() -> bool:
        nonlocal guest_failed
        guest_failed = guest_failed or (not ready and failed.check(clock()))
        return guest_failed or cancelled()

    try:
        vm = driver.create(_prepare(lease, name, workdir), workdir)
        started = clock()
        driver.start(vm)
        state, reason = watch(
            driver,
            vm,
            BootWatch(workdir / "console.log", ready_marker(lease.lease_id)),
            wall_time_s=lease.wall_time_s,
            boot_timeout_s=lease.boot_timeout_s,
            cancelled=stop,
            paused=paused,
            clock=clock,
            poll_s=poll_s,
            on_started=announce,
        )
        if guest_failed:
            reason = (
                "the guest's SSH server did not start with the host key its worker made "
                "(see the console's last lines)"
            )
        elif not reason and state is VmState.CRASHED:
            reason = "the VM crashed"
        return LeaseOutcome(reason, ready, round(clock() - started, 3), console_tail(workdir))
    finally:
        if vm is not None:
            driver.destroy(vm)


def _prepare(lease: VmLease, name: str, workdir: Path) -> VmSpec:
    config = lease_user_data(
        lease_id=lease.lease_id,
        authorized_keys=lease.lease.ssh_keys,
        host_key=lease.host_key,
        user=lease.lease.user,
    )
    parts = [part for part in (lease.user_data, _write_files(lease.files)) if part]
    if parts:  # ours last, merged into theirs: their lists (runcmd, ...) keep their items
        config = config.replace("#cloud-config\n", "#cloud-config\n" + _MERGE, 1)
    seed.write_seed(
        workdir / "seed.iso",
        instance_id=lease.lease_id,
        hostname=name,
        user_data=multipart_user_data([*parts, config]),
    )
    return VmSpec(
        name=name,
        memory_mib=lease.memory_mib,
        vcpus=lease.vcpus,
        os_type=lease.os_type,
        base_disk=lease.boot.disk,
        kernel=lease.boot.kernel,
        seed=workdir / "seed.iso",
        network=lease.network,
        cpu_cap_percent=lease.cpu_cap_percent,
    )


_MERGE = (
    "merge_how:\n"
    " - name: list\n   settings: [append]\n"
    " - name: dict\n   settings: [no_replace, recurse_list]\n"
)


def _write_files(files: tuple[ContextFile, ...]) -> str | None:
    """The document's vm:Contextualization/vm:File elements as cloud-config write_files (a
    lease runs no job script that would copy them from an input disk)."""
    if not files:
        return None
    entries = [
        {
            "path": f.path,
            "content": base64.b64encode(f.content.encode()).decode(),
            "encoding": "b64",
            "permissions": f"0{f.mode:o}",
        }
        for f in files
    ]
    return "#cloud-config\n" + json.dumps({"write_files": entries}) + "\n"  # JSON is YAML
