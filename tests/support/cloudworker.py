"""The cloud worker image for tests and benchmarks: built once per bes source into the tests'
cache, and booted under QEMU with a NoCloud seed, as an autoscaler's instance would be.

The instance has QEMU's user-mode network with outbound access: it reaches a service on the
host's loopback at ``10.0.2.2`` (QEMU's address for the host), with no bridge, DHCP server or
firewall rules on the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bes.clouds.userdata import WorkerSettings, user_data
from bes.vm import seed, workerimage
from bes.vm.drivers.qemu import QemuDriver
from bes.vm.runner import CommandRunner
from bes.vm.spec import Disk, ImageFormat, KernelBoot, Network, NetworkMode, VmSpec
from tests.support.libvirtd import PrivateLibvirtd
from tests.support.server import LiveServer
from tests.support.vm import cache_dir_for_tests, require_image_builder
from tests.support.worker import issue_token

HOST_FROM_GUEST = "10.0.2.2"
"""The build host's loopback, as an instance on QEMU's user-mode network reaches it."""
INSTANCE = "bes-cloud-worker"
MARK = "@@bes-instance"
GRID_OPTIONS = [
    "--backend-option=lease_s=10",
    "--backend-option=heartbeat_s=2",
    "--backend-option=claim_wait_s=2",
]
"""``bes serve`` options: short leases and claim waits, as the desktop grid tests use."""
GREETING = "hello from a nested VM"
TINY_JOB = f"""<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
    xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix" xmlns:vm="urn:bes-grid:vm:1.0">
  <jsdl:JobDescription><jsdl:Application>
    <posix:POSIXApplication>
      <posix:Executable>/bin/sh</posix:Executable><posix:Argument>-c</posix:Argument>
      <posix:Argument>echo {GREETING}; uname -r</posix:Argument>
    </posix:POSIXApplication>
    <vm:VirtualMachine><vm:Image><vm:Template>tiny</vm:Template></vm:Image>
      <vm:MemoryMiB>256</vm:MemoryMiB><vm:WallTimeLimit>900</vm:WallTimeLimit>
    </vm:VirtualMachine>
  </jsdl:Application></jsdl:JobDescription>
</jsdl:JobDefinition>
"""
"""A job in the tiny template, which the worker image holds already built."""


def require_builder() -> None:
    """Skip (fail under ``BES_REQUIRE_VM=1``) unless this machine can build the image."""
    require_image_builder(
        "the worker image",
        ("apt-get", "apt"),
        ("debootstrap", "debootstrap"),
        ("chroot", "coreutils"),
        root_for="debootstrap, chroot",
    )


def cached_worker_image(*, trace: Path | None = None) -> workerimage.WorkerImage:
    """The worker image of the current source tree, from the tests' cache or built there
    (about 3 minutes; again whenever bes changes)."""
    return workerimage.cached(
        cache_dir_for_tests() / "worker-image", CommandRunner(trace_path=trace)
    )


@dataclass(frozen=True)
class Instance:
    """A booted instance: its serial console, and when QEMU was started."""

    console: Path
    started: float

    def text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, pattern: str, *, timeout_s: float) -> re.Match[str]:
        """The first match of ``pattern`` on the console, waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            match = re.search(pattern, self.text())
            if match is not None:
                return match
            if time.monotonic() >= deadline:
                tail = "\n".join(self.text().splitlines()[-40:])
                raise AssertionError(f"{pattern!r} not on the console in {timeout_s} s:\n{tail}")
            time.sleep(0.5)


@contextlib.contextmanager
def booted(
    image: workerimage.WorkerImage,
    user_data: str,
    workdir: Path,
    *,
    memory_mib: int = 2048,
    vcpus: int = 1,
) -> Iterator[Instance]:
    """An instance of ``image`` with ``user_data`` in its NoCloud seed, destroyed on exit;
    its console is kept as ``workdir/console.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    driver = QemuDriver(workdir / "vms", accelerator=os.environ.get("BES_TEST_ACCEL", "auto"))
    seed_path = workdir / "seed.iso"
    seed.write_seed(seed_path, instance_id="i-0001", hostname="worker-1", user_data=user_data)
    spec = VmSpec(
        name=INSTANCE,
        memory_mib=memory_mib,
        vcpus=vcpus,
        os_type="Linux_64",
        base_disk=Disk(image.disk, ImageFormat.QCOW2, read_only=True),
        kernel=KernelBoot(image.kernel, image.initrd, image.cmdline),
        seed=seed_path,
        network=Network(mode=NetworkMode.NAT, outbound=True),
    )
    vm = driver.create(spec, driver.workdir_for(INSTANCE))
    started = time.monotonic()
    try:
        driver.start(vm)
        yield Instance(console=vm.workdir / "console.log", started=started)
    finally:
        with contextlib.suppress(OSError):
            shutil.copyfile(vm.workdir / "console.log", workdir / "console.log")
        driver.destroy(vm)


def instance_user_data(
    server: LiveServer, name: str, *, memory_mib: int = 2048, worker_args: tuple[str, ...] = ()
) -> str:
    """The user-data the autoscaler gives an instance working for ``server``
    (bes.clouds.userdata, with a token issued by the real CLI and the service's URL as the
    instance reaches it), plus console marks: the uptime when cloud-init ran it, and
    ``bes --version`` once the worker was started. ``worker_args`` go to ``bes worker`` too."""
    token = issue_token(server.data_dir, name).read_text().strip()
    settings = WorkerSettings(
        service_url=f"http://{HOST_FROM_GUEST}:{server.port}",
        max_memory_mib=memory_mib // 2,
        max_vcpus=1,
        max_vms=1,
    )
    text = user_data(settings, token=token)
    header, _, body = text.partition("\n")
    config = json.loads(body)
    if worker_args:
        env = config["write_files"][0]
        assert env["path"] == workerimage.ENV_FILE
        before = env["content"]
        env["content"] = before.replace(
            "BES_WORKER_ARGS='", f"BES_WORKER_ARGS='{' '.join(worker_args)} "
        )
        assert env["content"] != before, before
    uptime = "$(cut -d' ' -f1 /proc/uptime)"
    config["runcmd"] = [
        ["sh", "-c", f'echo "{MARK} runcmd uptime={uptime}" > /dev/ttyS0'],
        *config["runcmd"],
        ["sh", "-c", f'echo "{MARK} version=$(bes --version) uptime={uptime}" > /dev/ttyS0'],
    ]
    return header + "\n" + json.dumps(config, indent=1) + "\n"


def wait_registered(server: LiveServer, name: str, *, timeout_s: float) -> str:
    """The facts worker ``name`` registered with, as the service logged them."""
    pattern = re.compile(rf"worker {re.escape(name)} registered: (.*)")
    deadline = time.monotonic() + timeout_s
    while True:
        match = pattern.search(server.log.read_text(errors="replace"))
        if match is not None:
            return match.group(1)
        if time.monotonic() >= deadline:
            raise AssertionError(f"worker {name} did not register in {timeout_s} s")
        time.sleep(0.5)


def libvirt_pool(
    daemon: PrivateLibvirtd,
    image: workerimage.WorkerImage,
    path: Path,
    *,
    name: str,
    port: int,
    idle_s: float,
    boot_timeout_s: float = 1200.0,
) -> Path:
    """A clouds.toml with one pool of at most one worker-image instance (2048 MiB, 1 vCPU) on
    a private libvirtd, whose instances reach ``bes serve`` on the host's port ``port``; the
    image's disk is copied into the daemon's storage pool as ``bes-worker.qcow2``."""
    shutil.copyfile(image.disk, daemon.root / "pool" / "bes-worker.qcow2")
    with contextlib.closing(libvirt_module().open(daemon.uri)) as conn:
        conn.storagePoolLookupByName(daemon.pool).refresh(0)
    path.write_text(
        f"""[pool.{name}]
provider = "libvirt"
service_url = "http://{HOST_FROM_GUEST}:{port}"
max_instances = 1
idle_s = {idle_s}
boot_timeout_s = {boot_timeout_s:.0f}
max_vms = 1

[pool.{name}.libvirt]
uris = ["{daemon.uri}"]
image = "bes-worker.qcow2"
kernel = "{image.kernel}"
initrd = "{image.initrd}"
cmdline = "{image.cmdline}"
flavors = [{{ name = "w2", memory_mib = 2048, vcpus = 1 }}]
"""
    )
    return path


def libvirt_module() -> Any:
    import libvirt

    return libvirt
