"""Hypervisor drivers: one interface (base.py), one module per hypervisor."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from bes.errors import HypervisorUnavailable
from bes.vm.drivers.base import HostInfo, HypervisorDriver
from bes.vm.runner import CommandRunner
from bes.vm.spec import Hypervisor

log = logging.getLogger(__name__)

DEFAULT_ORDER = (Hypervisor.VIRTUALBOX, Hypervisor.QEMU)


def make_driver(
    hypervisor: Hypervisor, root: Path, *, accelerator: str = "auto"
) -> HypervisorDriver:
    root = root.resolve()  # the hypervisor runs in the VM's directory: no relative paths
    runner = CommandRunner(trace_path=root / "trace.log", replay_path=root / "replay.txt")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    if hypervisor is Hypervisor.QEMU:
        from bes.vm.drivers.qemu import QemuDriver  # noqa: PLC0415 - drivers load lazily

        return QemuDriver(root, runner, accelerator=accelerator)
    from bes.vm.drivers.virtualbox import VirtualBoxDriver, vbox_runner  # noqa: PLC0415

    return VirtualBoxDriver(root, vbox_runner(root))


def choose_driver(
    allowed: Sequence[Hypervisor], root: Path, *, accelerator: str = "auto"
) -> tuple[HypervisorDriver, HostInfo]:
    """The first hypervisor of ``allowed`` (default: VirtualBox, then QEMU) that works here."""
    reasons = []
    for hypervisor in allowed or DEFAULT_ORDER:
        driver = make_driver(hypervisor, root / hypervisor.value, accelerator=accelerator)
        try:
            return driver, driver.probe()
        except HypervisorUnavailable as exc:
            log.info("%s is not usable here: %s", hypervisor.value, exc)
            reasons.append(f"{hypervisor.value}: {exc}")
    raise HypervisorUnavailable("no hypervisor can run this job here (" + "; ".join(reasons) + ")")
