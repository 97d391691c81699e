"""A cap on one VM's CPU use, for QEMU (VirtualBox has ``cpuexecutioncap``).

QEMU has no such setting, so the cap is the kernel's CFS bandwidth control: the VM's process
goes into a cgroup of its own whose quota is ``percent`` of its virtual CPUs. cgroup v2 is
used where the ``cpu`` controller is available to us, else cgroup v1's ``cpu`` hierarchy.
Where neither is writable (an unprivileged user without a delegated cgroup), the cap cannot
be enforced: :func:`apply` says so and the VM only runs at the lowest CPU priority.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

PERIOD_US: Final = 100_000
_ROOTS: Final = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
_V1_CPU: Final = Path("/sys/fs/cgroup/cpu")
_GROUP: Final = "bes-vms"


@dataclass(frozen=True, slots=True)
class CpuCap:
    """A cgroup holding one VM's process, capped; remove it when the VM is gone."""

    path: Path
    quota_us: int

    def remove(self) -> None:
        """Delete the cgroup (its process has exited by now)."""
        with contextlib.suppress(OSError):
            self.path.rmdir()


def quota_us(percent: int, vcpus: int) -> int:
    """CFS quota per period for ``percent`` of ``vcpus`` CPUs (at least 1 % of one)."""
    percent = max(1, min(100, percent))
    return max(PERIOD_US // 100, PERIOD_US * vcpus * percent // 100)


def apply(pid: int, name: str, *, percent: int, vcpus: int) -> CpuCap | None:
    """Cap process ``pid`` (a VM named ``name``) at ``percent`` of ``vcpus`` CPUs.

    Returns None when no cap is needed (100 %) or none can be set here (logged).
    """
    if percent >= 100:
        return None
    quota = quota_us(percent, vcpus)
    for attempt in (_v2, _v1):
        cap = attempt(pid, name, quota)
        if cap is not None:
            log.info(
                "VM %s capped at %d%% of %d CPU(s) (cgroup %s)", name, percent, vcpus, cap.path
            )
            return cap
    log.warning(
        "cannot cap VM %s at %d%% CPU here (no writable cgroup with the cpu controller); it "
        "runs at the lowest priority instead",
        name,
        percent,
    )
    return None


def _v2(pid: int, name: str, quota: int) -> CpuCap | None:
    for root in _ROOTS:
        try:
            if "cpu" not in (root / "cgroup.controllers").read_text().split():
                continue
            parent = root / _GROUP
            parent.mkdir(exist_ok=True)
            if "cpu" not in (root / "cgroup.subtree_control").read_text().split():
                (root / "cgroup.subtree_control").write_text("+cpu")
            if "cpu" not in (parent / "cgroup.subtree_control").read_text().split():
                (parent / "cgroup.subtree_control").write_text("+cpu")
            group = parent / name
            group.mkdir(exist_ok=True)
            (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            (group / "cgroup.procs").write_text(str(pid))
            return CpuCap(group, quota)
        except OSError as exc:
            log.debug("cgroup v2 under %s not usable: %s", root, exc)
    return None


def _v1(pid: int, name: str, quota: int) -> CpuCap | None:
    try:
        if not (_V1_CPU / "cpu.cfs_quota_us").exists():
            return None
        group = _V1_CPU / _GROUP / name
        group.mkdir(parents=True, exist_ok=True)
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
        (group / "cgroup.procs").write_text(str(pid))
        return CpuCap(group, quota)
    except OSError as exc:
        log.debug("cgroup v1 cpu hierarchy not usable: %s", exc)
        return None


def group_of(pid: int) -> str | None:
    """The cpu cgroup path of a process (for checks and tests)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (controllers == "" or "cpu" in controllers.split(",")) and _GROUP in path:
            return path
    return None


def release(name: str) -> None:
    """Remove the cgroup of VM ``name`` wherever it is (after a crash, say)."""
    for parent in (*(root / _GROUP for root in _ROOTS), _V1_CPU / _GROUP):
        with contextlib.suppress(OSError):
            (parent / name).rmdir()


__all__ = ["CpuCap", "apply", "group_of", "quota_us", "release"]
