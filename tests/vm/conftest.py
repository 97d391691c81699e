"""Fixtures for VM tests: the tiny template, a QEMU driver, and a check that nothing is left."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bes.vm.drivers.qemu import QemuDriver
from bes.vm.repository import ImageRepository
from tests.support.vm import qemu_driver, qemu_processes, tiny_repository


@pytest.fixture(scope="session")
def repository() -> ImageRepository:
    return tiny_repository()


@pytest.fixture
def driver(tmp_path: Path, repository: ImageRepository) -> Iterator[QemuDriver]:
    """A QEMU driver whose VMs live under tmp_path; after the test, none may be left."""
    root = tmp_path / "vms"
    root.mkdir()
    yield qemu_driver(root)
    assert qemu_processes(str(root)) == [], "a QEMU process outlived its test"
    leftovers = [p.name for p in root.iterdir() if p.name.startswith("bes-")]
    assert leftovers == [], f"VM directories left behind: {leftovers}"
