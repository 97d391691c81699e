"""How the QEMU driver reads the way a qemu-system process ended.

A stand-in for qemu-system (a script that writes its pid file as QEMU does) lets each way of
ending happen on cue: the real QEMU is exercised by the driver contract tests.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from bes.errors import HypervisorError
from bes.vm.drivers import _qmp
from bes.vm.drivers.base import VmHandle, VmState
from bes.vm.drivers.qemu import QemuDriver
from bes.vm.spec import VmSpec

_STAND_IN = """\
#!{python}
import os, signal, sys, time
argv = sys.argv
with open(argv[argv.index("-pidfile") + 1], "w") as pid_file:
    pid_file.write(str(os.getpid()))
if {ignores_sigterm}:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a QEMU still starting up, or stuck
time.sleep({runs_s})
sys.exit({exit_code})
"""


def _write_stand_in(tmp_path: Path, **behaviour: object) -> Path:
    binary = tmp_path / "qemu-system-stand-in"
    binary.write_text(_STAND_IN.format(python=sys.executable, **behaviour))
    binary.chmod(0o755)
    return binary


def _driver(tmp_path: Path, **behaviour: object) -> QemuDriver:
    binary = _write_stand_in(tmp_path, **behaviour)
    return QemuDriver(tmp_path / "vms", accelerator="tcg", binary=str(binary))


def _spec(name: str) -> VmSpec:
    return VmSpec(
        name=name, memory_mib=64, vcpus=1, os_type="Linux", base_disk=None, kernel=None, seed=None
    )


def _started(driver: QemuDriver, name: str) -> VmHandle:
    vm = driver.create(_spec(name), driver.workdir_for(name))
    driver.start(vm)
    return vm


def test_a_vm_killed_by_our_stop_is_stopped_not_crashed(tmp_path: Path) -> None:
    # SIGTERM ignored, so stop() ends it with SIGKILL: the process dies of a signal.
    driver = _driver(tmp_path, ignores_sigterm=True, runs_s=600, exit_code=0)
    vm = _started(driver, "bes-killed")
    try:
        assert driver.state(vm) is VmState.RUNNING
        driver.stop(vm, grace_s=0)
        assert driver.state(vm) is VmState.STOPPED
        # Another process of the service, not the parent, reads the same.
        assert QemuDriver(driver.root, accelerator="tcg").state(vm) is VmState.STOPPED
    finally:
        driver.destroy(vm)


def _ended(driver: QemuDriver, vm: VmHandle) -> VmState:
    deadline = time.monotonic() + 10
    while (state := driver.state(vm)) is VmState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.01)
    return state


@pytest.mark.parametrize("exit_code", [1, 3])
def test_a_vm_that_exits_with_an_error_on_its_own_crashed(tmp_path: Path, exit_code: int) -> None:
    driver = _driver(tmp_path, ignores_sigterm=False, runs_s=0, exit_code=exit_code)
    vm = _started(driver, "bes-failing")
    try:
        assert _ended(driver, vm) is VmState.CRASHED
    finally:
        driver.destroy(vm)


def test_a_restarted_vm_forgets_the_last_stop(tmp_path: Path) -> None:
    driver = _driver(tmp_path, ignores_sigterm=True, runs_s=600, exit_code=0)
    vm = _started(driver, "bes-again")
    try:
        driver.stop(vm, grace_s=0)
        _write_stand_in(tmp_path, ignores_sigterm=False, runs_s=0, exit_code=1)
        driver.start(vm)
        assert _ended(driver, vm) is VmState.CRASHED
    finally:
        driver.destroy(vm)


def test_a_vm_that_fails_while_its_monitor_is_asked_crashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CI's race: the process still ran when state() looked, then exited with an error while
    # state() was asking QMP (a monitor that does not answer, on a slow machine).
    driver = _driver(tmp_path, ignores_sigterm=False, runs_s=2, exit_code=1)
    vm = _started(driver, "bes-failing-meanwhile")

    def ends_meanwhile(socket_path: Path, command: str, **_: object) -> object:
        driver._processes[vm.name].wait(timeout=30)
        raise HypervisorError(f"{socket_path}: connection refused")

    monkeypatch.setattr(_qmp, "execute", ends_meanwhile)
    try:
        assert driver.state(vm) is VmState.CRASHED
    finally:
        driver.destroy(vm)
