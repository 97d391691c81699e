"""What the VM tests need from the machine: QEMU, cloud-init, and a built tiny guest.

``.ci/run`` installs the Debian packages and sets ``BES_REQUIRE_VM=1``, which turns a missing
tool into a failure instead of a skip. The tiny template is built once per machine into a
cache shared by test runs (``BES_TEST_CACHE``, default ``~/.cache/bes-tests``); it is
content-addressed, so sharing it is safe.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bes.vm.drivers.qemu import QemuDriver
from bes.vm.images import ImageCache
from bes.vm.repository import DEBIAN_12, ImageRepository
from bes.vm.spec import ImageRef


def require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (apt-get install {package})"
        if os.environ.get("BES_REQUIRE_VM") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def cache_dir_for_tests() -> Path:
    base = os.environ.get("BES_TEST_CACHE") or str(Path.home() / ".cache" / "bes-tests")
    return Path(base)


def tiny_repository() -> ImageRepository:
    require("qemu-system-x86_64", "qemu-system-x86")
    require("qemu-img", "qemu-utils")
    require("apt-get", "apt")
    return ImageRepository(ImageCache(cache_dir_for_tests() / "images"))


def require_image_builder(what: str, *tools: tuple[str, str], root_for: str) -> None:
    """Skip (fail with BES_REQUIRE_VM=1) unless this machine can build ``what``: QEMU, the
    ``(tool, Debian package)`` pairs in ``tools``, and root (which ``root_for`` needs)."""
    require("qemu-system-x86_64", "qemu-system-x86")
    require("qemu-img", "qemu-utils")
    path = os.environ.get("PATH", "")
    if "/usr/sbin" not in path.split(os.pathsep):  # once, however many builders ask
        os.environ["PATH"] = path + ":/usr/sbin:/sbin"
    for tool, package in tools:
        require(tool, package)
    if os.geteuid() != 0:
        message = f"building {what} needs root ({root_for})"
        if os.environ.get("BES_REQUIRE_VM") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def built_debian_repository() -> ImageRepository:
    """The shared test cache with debian-12 built in it (once per machine: 2-3 minutes, from
    the Debian mirror; skipped where it cannot be built)."""
    require_image_builder(
        "debian-12",
        ("debootstrap", "debootstrap"),
        ("debugfs", "e2fsprogs"),
        root_for="debootstrap",
    )
    repository = ImageRepository(ImageCache(cache_dir_for_tests() / "images"))
    repository.resolve(ImageRef(template=DEBIAN_12))
    return repository


def qemu_processes(name_part: str) -> list[str]:
    """Command lines of running QEMU processes whose name contains ``name_part``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = (proc / "status").read_text()
        except OSError:
            continue
        if "qemu-system" in cmdline and name_part in cmdline and "State:\tZ" not in status:
            found.append(cmdline)
    return found


def qemu_driver(root: Path) -> QemuDriver:
    return QemuDriver(root, accelerator=os.environ.get("BES_TEST_ACCEL", "auto"))


def cloud_init_python() -> str:
    """Debian's python3 with Debian's cloud-init importable."""
    python = "/usr/bin/python3"
    probe = (
        subprocess.run([python, "-c", "import cloudinit"], capture_output=True, check=False)
        if Path(python).exists()
        else None
    )
    if probe is None or probe.returncode != 0:
        message = "Debian's cloud-init is not installed (apt-get install cloud-init)"
        if os.environ.get("BES_REQUIRE_VM") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return python
