"""Build the built-in template ``tiny`` from Debian packages: kernel plus a busybox initramfs.

Only apt-get download and dpkg-deb are needed (no root, no installed busybox): the Debian
kernel's uncompressed ELF image (QEMU boots it through its PVH entry point, which skips
firmware and in-guest decompression) and an initramfs holding busybox-static, the few
kernel modules a guest needs for virtio disks and NoCloud seeds, and ``tiny_init.sh`` as
/init. The result is deterministic for a given pair of packages.
"""

from __future__ import annotations

import hashlib
import logging
import lzma
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bes.errors import HypervisorError
from bes.vm._cpio import InitramfsWriter
from bes.vm.runner import CommandRunner

log = logging.getLogger(__name__)

KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1"
KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# virtio disks and network, the ISO9660 and FAT seeds cloud-init accepts, and ext4 for a
# scratch disk.
MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "isofs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "crc32c_generic",
    "ext4",
)
_XZ_MAGIC = b"\xfd7zXZ\x00"
BUILD = hashlib.sha256(
    resources.files("bes.vm").joinpath("tiny_init.sh").read_bytes()
    + repr((KERNEL_CMDLINE, MODULES)).encode()
).hexdigest()[:16]
"""Changes whenever what goes into tiny (besides the Debian packages) changes."""
_MODULE_SUFFIXES = (".ko", ".ko.xz")
_DOWNLOAD_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class TinyGuest:
    kernel: Path
    initrd: Path
    cmdline: str
    packages: tuple[str, ...]


def build(dest: Path, runner: CommandRunner) -> TinyGuest:
    """Download the packages and write dest/vmlinux and dest/initramfs.cpio.gz."""
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tiny-build-", dir=dest))
    try:
        kernel_package = _kernel_package(runner)
        runner.run(
            ["apt-get", "download", "-q", kernel_package, BUSYBOX_PACKAGE],
            timeout_s=_DOWNLOAD_TIMEOUT_S,
            cwd=work,
        )
        root = work / "root"
        for deb in sorted(work.glob("*.deb")):
            runner.run(["dpkg-deb", "-x", str(deb), str(root)], timeout_s=300.0)
        versions = sorted(p.name for p in (root / "lib/modules").iterdir())
        if len(versions) != 1:
            raise HypervisorError(f"expected one kernel in {kernel_package}, found {versions}")
        version = versions[0]
        kernel = dest / "vmlinux"
        write_vmlinux(root / f"boot/vmlinuz-{version}", kernel)
        busybox = root / "bin/busybox"
        applets = runner.run([str(busybox), "--list"], timeout_s=30.0).stdout.split()
        initrd = dest / "initramfs.cpio.gz"
        _write_initramfs(initrd, busybox, applets, root / "lib/modules" / version)
        packages = tuple(sorted(deb.name for deb in work.glob("*.deb")))
        log.info("built the tiny guest from %s", ", ".join(packages))
        return TinyGuest(kernel, initrd, KERNEL_CMDLINE, packages)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _kernel_package(runner: CommandRunner) -> str:
    depends = runner.run(["apt-cache", "depends", KERNEL_META_PACKAGE], timeout_s=60.0).stdout
    match = re.search(r"Depends:\s*(linux-image-\S+)", depends)
    if match is None:
        raise HypervisorError(f"apt-cache names no kernel package behind {KERNEL_META_PACKAGE}")
    return match.group(1)


def write_vmlinux(vmlinuz: Path, dest: Path) -> None:
    """Debian compresses the kernel with xz; the ELF inside boots directly (PVH)."""
    data = vmlinuz.read_bytes()
    start = data.find(_XZ_MAGIC)
    if start < 0:
        raise HypervisorError(f"{vmlinuz.name} is not an xz-compressed kernel")
    elf = lzma.LZMADecompressor().decompress(data[start:])
    if not elf.startswith(b"\x7fELF"):
        raise HypervisorError(f"{vmlinuz.name} does not hold an ELF kernel image")
    dest.write_bytes(elf)


def _write_initramfs(dest: Path, busybox: Path, applets: list[str], modules_dir: Path) -> None:
    modules = modules_in_load_order(modules_dir, MODULES)
    archive = InitramfsWriter(dest)
    try:
        for directory in ("bin", "dev", "proc", "sys", "tmp", "run", "mnt", "lib", "lib/modules"):
            archive.directory(directory)
        archive.file("bin/busybox", busybox.read_bytes(), 0o755)
        for applet in applets:
            if applet != "busybox":
                archive.symlink(f"bin/{applet}", "busybox")
        for name, data in modules:
            archive.file(f"lib/modules/{name}.ko", data)
        archive.file("lib/modules/load.list", "".join(f"{n}\n" for n, _ in modules).encode())
        init = resources.files("bes.vm").joinpath("tiny_init.sh").read_bytes()
        archive.file("init", init, 0o755)
    finally:
        archive.close()


def modules_in_load_order(modules_dir: Path, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """The wanted modules and their dependencies, dependencies first; built-ins skipped."""
    files: dict[str, Path] = {}
    for path in modules_dir.rglob("*.ko*"):
        if path.name.endswith(_MODULE_SUFFIXES):
            files[_module_name(path)] = path
    builtin = set()
    builtin_list = modules_dir / "modules.builtin"
    if builtin_list.exists():
        builtin = {_module_name(Path(line)) for line in builtin_list.read_text().split()}
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name in builtin:
            return
        seen.add(name)
        path = files.get(name)
        if path is None:
            raise HypervisorError(f"kernel module {name} is missing from {modules_dir.name}")
        data = path.read_bytes()
        if path.name.endswith(".xz"):
            data = lzma.decompress(data)
        for dependency in _depends(data):
            visit(dependency)
        order.append((name, data))

    for name in wanted:
        visit(name)
    return order


def _module_name(path: Path) -> str:
    name = path.name
    for suffix in _MODULE_SUFFIXES[::-1]:
        name = name.removesuffix(suffix)
    return name.replace("-", "_")


def _depends(module: bytes) -> list[str]:
    """The depends= field of a module's .modinfo section."""
    match = re.search(rb"\0depends=([^\0]*)\0", module)
    if match is None or not match.group(1):
        return []
    return [name.decode().replace("-", "_") for name in match.group(1).split(b",")]
