"""One contract for every HypervisorDriver: QEMU for real, VirtualBox through replayed output."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from bes.vm.drivers.base import HypervisorDriver, VmHandle, VmState
from bes.vm.drivers.qemu import QemuDriver
from bes.vm.drivers.virtualbox import VirtualBoxDriver
from bes.vm.guest import GuestTask
from bes.vm.job import VmJob, _prepare
from bes.vm.repository import ImageRepository
from bes.vm.spec import Disk, ImageFormat, ImageRef, VmSpec
from tests.support.vbox import VBoxManageReplay
from tests.support.vm import qemu_driver, qemu_processes, tiny_repository


class Harness(Protocol):
    driver: HypervisorDriver

    def spec(self, name: str, *, runs_s: int) -> VmSpec: ...
    def guest_finishes(self, vm: VmHandle) -> None: ...
    def another_process(self) -> HypervisorDriver: ...


class QemuHarness:
    def __init__(self, root: Path, repository: ImageRepository) -> None:
        self.root = root
        self.driver = qemu_driver(root)
        self._boot, _ = repository.resolve(ImageRef(template="tiny"))

    def spec(self, name: str, *, runs_s: int) -> VmSpec:
        job = VmJob(
            job_id=name.removeprefix("bes-"),
            boot=self._boot,
            task=GuestTask("/bin/sleep", (str(runs_s),)),
            wall_time_s=60,
        )
        workdir = self.driver.workdir_for(name)
        workdir.mkdir(parents=True)
        return _prepare(job, name, workdir)

    def guest_finishes(self, vm: VmHandle) -> None:
        deadline = time.monotonic() + 30
        while self.driver.state(vm) is VmState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.05)

    def another_process(self) -> HypervisorDriver:
        return QemuDriver(self.root, accelerator="tcg")


class VirtualBoxHarness:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.vboxmanage = VBoxManageReplay(root)
        self.driver = VirtualBoxDriver(root, self.vboxmanage, sleep=lambda _s: None)

    def spec(self, name: str, *, runs_s: int) -> VmSpec:
        workdir = self.driver.workdir_for(name)
        workdir.mkdir(parents=True)
        base = self.root / "base.vdi"
        base.write_bytes(b"vdi")
        output = workdir / "output.img"
        output.write_bytes(b"\0" * 1024)
        return VmSpec(
            name=name,
            memory_mib=256,
            vcpus=1,
            os_type="Linux_64",
            base_disk=Disk(base, ImageFormat.VDI, read_only=True),
            kernel=None,
            seed=workdir / "seed.iso",
            disks=(Disk(output, ImageFormat.RAW, read_only=False),),
        )

    def guest_finishes(self, vm: VmHandle) -> None:
        self.vboxmanage.guest_powers_off(vm.name)

    def another_process(self) -> HypervisorDriver:
        return VirtualBoxDriver(self.root, self.vboxmanage, sleep=lambda _s: None)


@pytest.fixture(
    params=[
        pytest.param("qemu", marks=[pytest.mark.vm, pytest.mark.slow]),
        "virtualbox-replay",
    ]
)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    root = tmp_path / "vms"
    root.mkdir()
    if request.param == "qemu":
        yield QemuHarness(root, tiny_repository())
        assert qemu_processes(str(root)) == []
    else:
        yield VirtualBoxHarness(root)
    assert not [p for p in root.iterdir() if p.name.startswith("bes-")]


def test_probe_names_the_hypervisor(harness: Harness) -> None:
    info = harness.driver.probe()
    assert info.hypervisor is harness.driver.hypervisor
    assert info.version[0].isdigit()


def test_create_start_stop_destroy(harness: Harness) -> None:
    driver = harness.driver
    vm = driver.create(
        harness.spec("bes-lifecycle", runs_s=600), driver.workdir_for("bes-lifecycle")
    )
    assert driver.state(vm) is VmState.CREATED
    driver.start(vm)
    assert driver.state(vm) is VmState.RUNNING
    driver.stop(vm, grace_s=0.5)
    assert driver.state(vm) is VmState.STOPPED
    driver.destroy(vm)
    assert driver.state(vm) is VmState.MISSING
    assert not vm.workdir.exists()
    driver.destroy(vm)  # idempotent


def test_a_guest_that_powers_off_is_stopped(harness: Harness) -> None:
    driver = harness.driver
    vm = driver.create(harness.spec("bes-selfstop", runs_s=0), driver.workdir_for("bes-selfstop"))
    try:
        driver.start(vm)
        harness.guest_finishes(vm)
        assert driver.state(vm) is VmState.STOPPED
    finally:
        driver.destroy(vm)


def test_a_vm_whose_owner_died_is_found_and_destroyed(harness: Harness) -> None:
    driver = harness.driver
    vm = driver.create(harness.spec("bes-orphan", runs_s=600), driver.workdir_for("bes-orphan"))
    driver.start(vm)
    vm.release()  # the owning process is gone
    other = harness.another_process()
    stale = other.find_stale()
    assert [found.name for found in stale] == ["bes-orphan"]
    other.destroy(stale[0])
    assert other.state(stale[0]) is VmState.MISSING
    assert other.find_stale() == []
    driver.destroy(vm)  # the original handle: nothing left to do, and no error


def test_pause_and_resume(harness: Harness) -> None:
    driver = harness.driver
    vm = driver.create(harness.spec("bes-pausing", runs_s=600), driver.workdir_for("bes-pausing"))
    try:
        driver.start(vm)
        driver.pause(vm)
        assert driver.state(vm) is VmState.PAUSED
        driver.resume(vm)
        assert driver.state(vm) is VmState.RUNNING
    finally:
        driver.destroy(vm)
