"""KVM is used only where /dev/kvm really runs guest code."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bes.errors import HypervisorUnavailable
from bes.vm import kvm
from bes.vm.drivers.qemu import QemuDriver
from bes.vm.runner import CommandRunner


def test_the_probe_gives_a_verdict_with_a_reason() -> None:
    verdict = kvm.probe(CommandRunner())
    assert verdict.reason
    if not kvm.KVM_DEVICE.exists():
        assert not verdict.usable


def test_without_dev_kvm_the_probe_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kvm, "KVM_DEVICE", Path("/nonexistent/kvm"))
    assert kvm.probe(CommandRunner()) == kvm.KvmProbe(False, "/nonexistent/kvm does not exist")


def test_the_child_verdict_is_what_the_probe_reports(tmp_path: Path) -> None:
    """The child process's last line decides; a crash or a hang means "not usable"."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'guest code is emulated (0.7 s for a loop)'\n")
    fake.chmod(0o755)
    if not kvm.KVM_DEVICE.exists():
        pytest.skip("no /dev/kvm on this machine")
    original = sys.executable
    try:
        sys.executable = str(fake)
        verdict = kvm.probe(CommandRunner())
    finally:
        sys.executable = original
    assert verdict == kvm.KvmProbe(
        False, "KVM did not run a test guest: guest code is emulated (0.7 s for a loop)"
    )


def test_qemu_uses_tcg_when_asked_without_probing(tmp_path: Path) -> None:
    driver = QemuDriver(tmp_path, CommandRunner(trace_path=tmp_path / "trace"), accelerator="tcg")
    assert driver.accelerator() == "tcg"
    assert not (tmp_path / "trace").exists()


def test_qemu_follows_the_probe(tmp_path: Path) -> None:
    driver = QemuDriver(tmp_path)
    expected = "kvm" if kvm.probe(CommandRunner()).usable else "tcg"
    assert driver.accelerator() == expected


def test_insisting_on_kvm_where_it_does_not_work_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kvm, "KVM_DEVICE", Path("/nonexistent/kvm"))
    with pytest.raises(HypervisorUnavailable, match="does not exist"):
        QemuDriver(tmp_path, accelerator="kvm").accelerator()
