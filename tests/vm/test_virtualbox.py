"""The VirtualBox driver: vboxwrapper's command sequence, replayed through the runner seam."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from bes.errors import HypervisorError, HypervisorUnavailable
from bes.vm.drivers.base import VmState
from bes.vm.drivers.virtualbox import VirtualBoxDriver, parse_machinereadable, vbox_runner
from bes.vm.spec import (
    Disk,
    ImageFormat,
    KernelBoot,
    Network,
    NetworkMode,
    PortForward,
    VmSpec,
)
from tests.support.vbox import VBoxManageReplay, capture


def make(tmp_path: Path, version: str = "7.0") -> tuple[VirtualBoxDriver, VBoxManageReplay]:
    replay = VBoxManageReplay(tmp_path / "vbox", version=version)
    return VirtualBoxDriver(tmp_path / "vbox", replay, sleep=lambda _s: None), replay


def spec(tmp_path: Path, name: str = "bes-job1", **changes: object) -> VmSpec:
    base = tmp_path / "base.vdi"
    base.write_bytes(b"vdi")
    workdir = tmp_path / "vbox" / name
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "input.tar").write_bytes(b"\0" * 10240)
    (workdir / "output.img").write_bytes(b"\0" * 4096)
    values: dict[str, object] = {
        "name": name,
        "memory_mib": 512,
        "vcpus": 2,
        "os_type": "Debian_64",
        "base_disk": Disk(base, ImageFormat.VDI, read_only=True),
        "kernel": None,
        "seed": workdir / "seed.iso",
        "disks": (
            Disk(workdir / "input.tar", ImageFormat.RAW, read_only=True),
            Disk(workdir / "output.img", ImageFormat.RAW, read_only=False),
        ),
        "cpu_cap_percent": 60,
    }
    values.update(changes)
    return VmSpec(**values)  # type: ignore[arg-type]


def test_the_vboxwrapper_sequence(tmp_path: Path) -> None:
    driver, replay = make(tmp_path)
    vm = driver.create(spec(tmp_path), driver.workdir_for("bes-job1"))
    driver.start(vm)
    driver.stop(vm, grace_s=1)
    driver.destroy(vm)

    calls = [shlex.join(call) for call in replay.calls]
    workdir = tmp_path / "vbox" / "bes-job1"
    expected_in_order = [
        "VBoxManage -q --version",
        "VBoxManage -q list hostinfo",
        f"VBoxManage -q createvm --name bes-job1 --basefolder {workdir} --ostype Debian_64 "
        "--register",
        "VBoxManage -q modifyvm bes-job1 --memory 512 --cpus 2 --acpi on --ioapic on "
        "--rtcuseutc on --vram 16 --boot1 disk --boot2 dvd --boot3 none --boot4 none",
        "VBoxManage -q modifyvm bes-job1 --cpu-execution-cap 60",
        "VBoxManage -q modifyvm bes-job1 --nic1 none",
        "VBoxManage -q modifyvm bes-job1 --usb off",
        "VBoxManage -q modifyvm bes-job1 --audio-enabled off",
        "VBoxManage -q modifyvm bes-job1 --clipboard-mode disabled",
        "VBoxManage -q modifyvm bes-job1 --drag-and-drop disabled",
        f"VBoxManage -q modifyvm bes-job1 --uart1 0x3F8 4 --uart-mode1 file {workdir}/console.log",
        "VBoxManage -q storagectl bes-job1 --name SATA --add sata --controller IntelAhci "
        "--portcount 5 --hostiocache off",
        "VBoxManage -q storageattach bes-job1 --storagectl SATA --port 0 --device 0 --type hdd "
        f"--medium {tmp_path}/base.vdi --mtype multiattach",
        "VBoxManage -q storageattach bes-job1 --storagectl SATA --port 1 --device 0 "
        f"--type dvddrive --medium {workdir}/seed.iso",
        "VBoxManage -q storageattach bes-job1 --storagectl SATA --port 2 --device 0 --type hdd "
        f"--medium {workdir}/input.vmdk --mtype immutable --setuuid ''",
        "VBoxManage -q storageattach bes-job1 --storagectl SATA --port 3 --device 0 --type hdd "
        f"--medium {workdir}/output.vmdk --mtype normal --setuuid ''",
        "VBoxManage -q startvm bes-job1 --type headless",
        "VBoxManage -q controlvm bes-job1 acpipowerbutton",
        "VBoxManage -q controlvm bes-job1 poweroff",
        "VBoxManage -q unregistervm bes-job1",
    ]
    positions = [calls.index(line) for line in expected_in_order]
    assert positions == sorted(positions)
    assert not any("--delete" in call for call in calls)  # never deletes the shared base
    assert not workdir.exists()
    # Every call used the driver's own registry and was recorded for replay.
    assert set(replay.envs) == {str(tmp_path / "vbox" / "VirtualBox")}
    replayed = (tmp_path / "vbox" / "vbox_replay.txt").read_text().splitlines()
    assert replayed == calls
    assert "exit 0" in (tmp_path / "vbox" / "vbox_trace.txt").read_text()


def test_virtualbox_6_spellings(tmp_path: Path) -> None:
    driver, replay = make(tmp_path, version="6.1")
    driver.create(
        spec(tmp_path, network=Network(NetworkMode.NAT, True, (PortForward(22, 2222),))),
        driver.workdir_for("bes-job1"),
    )
    calls = [shlex.join(call) for call in replay.calls]
    assert "VBoxManage -q modifyvm bes-job1 --cpuexecutioncap 60" in calls
    assert "VBoxManage -q modifyvm bes-job1 --audio none" in calls
    assert (
        "VBoxManage -q modifyvm bes-job1 --nic1 nat --nictype1 virtio --cableconnected1 on "
        "--natdnsproxy1 on"
    ) in calls
    assert "VBoxManage -q modifyvm bes-job1 --natpf1 bes0,tcp,127.0.0.1,2222,,22" in calls


def test_session_lock_is_retried_with_backoff(tmp_path: Path) -> None:
    driver, replay = make(tmp_path)
    vm = driver.create(spec(tmp_path), driver.workdir_for("bes-job1"))
    replay.failures["startvm"] = ["session-locked.txt", "session-locked.txt"]
    driver.start(vm)
    assert replay.sleeps == [1.0, 2.0]
    assert driver.state(vm) is VmState.RUNNING
    driver.destroy(vm)


def test_a_lock_that_never_clears_is_an_error_with_its_code(tmp_path: Path) -> None:
    driver, replay = make(tmp_path)
    vm = driver.create(spec(tmp_path), driver.workdir_for("bes-job1"))
    replay.failures["startvm"] = ["session-locked.txt"] * 6
    with pytest.raises(HypervisorError) as caught:
        driver.start(vm)
    assert caught.value.code == "0x80bb0007"
    assert "already locked by a session" in caught.value.stderr_tail
    assert replay.sleeps == [1.0, 2.0, 4.0, 8.0, 16.0]
    driver.destroy(vm)


def test_unloaded_kernel_module_makes_virtualbox_unavailable(tmp_path: Path) -> None:
    driver, replay = make(tmp_path)
    replay.hostinfo = "hostinfo-no-driver.txt"
    with pytest.raises(HypervisorUnavailable, match="kernel modules are not loaded"):
        driver.probe()


def test_no_vboxmanage_means_unavailable(tmp_path: Path) -> None:
    driver = VirtualBoxDriver(
        tmp_path, vbox_runner(tmp_path), binary=str(tmp_path / "no-such-VBoxManage")
    )
    with pytest.raises(HypervisorUnavailable):
        driver.probe()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kernel": KernelBoot(Path("/k"), None, "")}, "cannot boot a kernel directly"),
        ({"network": Network(NetworkMode.NAT, outbound=False)}, "blocking outbound"),
    ],
)
def test_what_virtualbox_cannot_do_is_refused_before_anything_is_created(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    driver, replay = make(tmp_path)
    with pytest.raises(HypervisorError, match=message):
        driver.create(spec(tmp_path, **changes), driver.workdir_for("bes-job1"))
    assert not any(call[2] == "createvm" for call in replay.calls)


def test_raw_disks_are_attached_through_a_flat_vmdk(tmp_path: Path) -> None:
    driver, _ = make(tmp_path)
    driver.create(spec(tmp_path), driver.workdir_for("bes-job1"))
    descriptor = (tmp_path / "vbox" / "bes-job1" / "output.vmdk").read_text()
    assert 'createType="monolithicFlat"' in descriptor
    assert f'RW 8 FLAT "{tmp_path}/vbox/bes-job1/output.img" 0' in descriptor


def test_registered_vms_without_a_directory_are_stale(tmp_path: Path) -> None:
    driver, replay = make(tmp_path)
    replay.vms["bes-leftover"] = "running"
    replay.basefolders["bes-leftover"] = "/gone"
    replay.vms["volunteers-own-vm"] = "running"
    stale = driver.find_stale()
    assert [vm.name for vm in stale] == ["bes-leftover"]
    driver.destroy(stale[0])
    assert "bes-leftover" not in replay.vms
    assert "volunteers-own-vm" in replay.vms


def test_machinereadable_output_is_parsed_with_quoted_keys() -> None:
    values = parse_machinereadable(
        capture("showvminfo.txt", name="bes-x", basefolder="/b", state="running")
    )
    assert values["VMState"] == "running"
    assert values["memory"] == "256"
    assert values["SATA-ImageUUID-0-0"] == "1c182745-4b09-41a1-a147-d3ced46f72f6"


@pytest.mark.virtualbox
def test_real_vboxmanage_probe(tmp_path: Path) -> None:
    if shutil.which("VBoxManage") is None:
        pytest.skip("VirtualBox is not installed here (VBoxManage is not on the PATH)")
    info = VirtualBoxDriver(tmp_path, vbox_runner(tmp_path)).probe()
    assert info.version[0].isdigit()
