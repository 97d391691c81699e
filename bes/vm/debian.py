"""Build Debian images from Debian packages: one builder, parameterized by a profile.

The template ``debian-12`` (a real userland with Python 3, cloud-init and OpenSSH) is the
profile :data:`TEMPLATE`; the SSH-able lease guest and the cloud worker image are meant to be
further profiles of this builder, not builders of their own.

A build needs root, for debootstrap, and nothing else that a Debian host lacks:

1. ``debootstrap --variant=minbase --include=<the profile's packages>`` into a directory;
2. configure it (:func:`configure`): NoCloud-only cloud-init, fstab, masked units, and no
   identity of its own: no SSH host keys, an empty machine-id (each VM makes or gets its own);
3. ``mke2fs -d`` turns the directory into an ext4 filesystem, labelled ``bes-root``, without
   mounting anything; ``qemu-img convert -c`` makes it a compressed qcow2;
4. the image's own kernel, extracted to its uncompressed ELF (QEMU boots it through the PVH
   entry point, see tiny.py), and a small initramfs: busybox, the image's virtio and ext4
   modules and ``debian_init.sh``, which mounts the root by its label and starts systemd.

The disk has no partition table and no boot loader: it boots with the kernel given to the
hypervisor (QEMU's direct kernel boot), so VirtualBox cannot run it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bes.vm._cpio import InitramfsWriter
from bes.vm.images import ImageError
from bes.vm.runner import CommandRunner
from bes.vm.tiny import modules_in_load_order, write_vmlinux

log = logging.getLogger(__name__)

MIRROR_ENV = "BES_DEBIAN_MIRROR"
"""The environment variable naming the Debian mirror to build from."""
FALLBACK_MIRROR = "http://deb.debian.org/debian"
ROOT_LABEL = "bes-root"  # debian_init.sh looks for it
KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1 net.ifnames=0"
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
_INITRAMFS_APPLETS = (
    "sh", "cat", "echo", "mkdir", "mount", "insmod", "findfs", "usleep", "switch_root",
    "poweroff",
)  # fmt: skip
_APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
_DEBOOTSTRAP_TIMEOUT_S = 3600.0
_IMAGE_TIMEOUT_S = 900.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """What goes into one kind of Debian image."""

    name: str
    suite: str = "bookworm"
    packages: tuple[str, ...]
    """Installed besides debootstrap's minbase variant (``--include``)."""
    cloud_config: str
    """/etc/cloud/cloud.cfg.d/90-bes.cfg: cloud-init's settings for this image."""
    masked_units: tuple[str, ...] = ()
    """systemd units that never start (masked: linked to /dev/null)."""
    removed: tuple[str, ...] = ()
    """Globs, relative to the root, of what the image does not need (kernel modules for
    hardware no VM has, translations)."""
    files: tuple[tuple[str, str], ...] = ()
    """More files: (absolute path in the image, content)."""
    size_mib: int = 4096
    """The root filesystem's size (the qcow2 holds only what is used)."""


# cloud-init under emulation: each module costs, so run only those that work without a
# network; a seed's cloud-config still gets write_files, users, ssh keys, runcmd, scripts and
# power_state. RSA host keys would take seconds to generate: ed25519 only, unless the seed
# hands its own in (ssh_keys).
_TEMPLATE_CLOUD_CONFIG = """\
# bes: NoCloud seeds only; never probe a network for another datasource.
datasource_list: [ NoCloud, None ]
ssh_deletekeys: true
ssh_genkeytypes: [ ed25519 ]
cloud_init_modules:
 - seed_random
 - bootcmd
 - write-files
 - set_hostname
 - update_hostname
 - update_etc_hosts
 - users-groups
 - ssh
cloud_config_modules:
 - set-passwords
 - timezone
 - runcmd
cloud_final_modules:
 - write-files-deferred
 - scripts-vendor
 - scripts-per-once
 - scripts-per-boot
 - scripts-per-instance
 - scripts-user
 - final-message
 - power-state-change
"""

_MODULES = "usr/lib/modules/*/kernel"
TEMPLATE = Profile(
    name="template",
    packages=(
        "systemd-sysv",
        "udev",
        "cloud-init",
        "python3-cffi-backend",  # debootstrap cannot resolve python3-cryptography's need alone
        "python3",
        "openssh-server",
        "openssh-sftp-server",
        "sudo",  # a lease's owner administers the guest (leaseguest.py)
        "ifupdown",
        "isc-dhcp-client",
        "iproute2",
        "netbase",
        "e2fsprogs",  # mke2fs: the job script formats the scratch disk
        "procps",
        "linux-image-amd64",
        "busybox-static",  # for the initramfs
    ),
    cloud_config=_TEMPLATE_CLOUD_CONFIG,
    masked_units=(
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "dpkg-db-backup.timer",
        "e2scrub_all.timer",
        "e2scrub_reap.service",
        "fstrim.timer",
        "getty@tty1.service",  # no screen; the serial console keeps its getty
        "getty-static.service",  # gettys on tty2-6 when there is no logind
        "systemd-firstboot.service",  # an empty machine-id would make it prompt on the console
        "systemd-pstore.service",
    ),
    removed=(
        "boot/initrd.img-*",  # Debian's initramfs: the image boots with its own (above)
        f"{_MODULES}/sound",
        f"{_MODULES}/drivers/gpu",
        f"{_MODULES}/drivers/media",
        f"{_MODULES}/drivers/infiniband",
        f"{_MODULES}/drivers/iio",
        f"{_MODULES}/drivers/staging",
        f"{_MODULES}/drivers/comedi",
        f"{_MODULES}/drivers/bluetooth",
        f"{_MODULES}/drivers/net/wireless",
        f"{_MODULES}/net/bluetooth",
        f"{_MODULES}/net/wireless",
        f"{_MODULES}/net/mac80211",
        "usr/share/locale/*",
        "usr/share/man/*",
    ),
    files=(
        # Journals of throwaway VMs are read on their console, if at all.
        ("/etc/systemd/journald.conf.d/90-bes.conf", "[Journal]\nStorage=volatile\n"),
    ),
)

_INIT_SCRIPT = "debian_init.sh"
BUILD = hashlib.sha256(
    resources.files("bes.vm").joinpath(_INIT_SCRIPT).read_bytes()
    + repr((TEMPLATE, KERNEL_CMDLINE, INITRAMFS_MODULES, ROOT_LABEL)).encode()
).hexdigest()[:16]
"""Changes whenever what goes into the template (besides the Debian packages) changes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DebianImage:
    """A built image: the disk, and the kernel and initramfs it boots with."""

    disk: Path
    """qcow2, an ext4 filesystem labelled ``bes-root`` (no partition table)."""
    kernel: Path
    initrd: Path
    cmdline: str
    kernel_version: str
    python_version: str
    package_count: int


def default_mirror(sources: Sequence[Path] = _APT_SOURCES) -> str:
    """``$BES_DEBIAN_MIRROR``, else the first Debian archive apt is configured with here,
    else deb.debian.org."""
    configured = os.environ.get(MIRROR_ENV)
    if configured:
        return configured
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files += sorted(source.glob("*.list")) + sorted(source.glob("*.sources"))
        elif source.is_file():
            files.append(source)
    for file in files:
        try:
            text = file.read_text()
        except OSError:
            continue
        for uri in _archive_uris(text, deb822=file.suffix == ".sources"):
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return FALLBACK_MIRROR


def _archive_uris(text: str, *, deb822: bool) -> list[str]:
    if deb822:
        return [u for line in re.findall(r"(?mi)^URIs:\s*(.+)$", text) for u in line.split()]
    uris = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            uris.append(words[1])
    return uris


def debootstrap_argv(profile: Profile, root: Path, mirror: str) -> list[str]:
    """The debootstrap command line that installs ``profile`` into ``root``."""
    return [
        "debootstrap",
        "--variant=minbase",
        "--components=main",
        f"--include={','.join(profile.packages)}",
        profile.suite,
        str(root),
        mirror,
    ]


def configure(root: Path, profile: Profile) -> None:
    """Make the installed tree ``root`` the image ``profile`` describes: its settings, and
    nothing that identifies one machine (host keys, machine-id, the build host's names)."""
    _write(root, "/etc/cloud/cloud.cfg.d/90-bes.cfg", profile.cloud_config)
    _write(root, "/etc/fstab", f"LABEL={ROOT_LABEL} / ext4 rw,noatime 0 0\n")
    _write(root, "/etc/hostname", "debian\n")
    _write(root, "/etc/hosts", _HOSTS)
    for name, content in profile.files:
        _write(root, name, content)
    systemd = root / "etc/systemd/system"
    systemd.mkdir(parents=True, exist_ok=True)
    for unit in profile.masked_units:
        (systemd / unit).unlink(missing_ok=True)
        (systemd / unit).symlink_to("/dev/null")
    for pattern in profile.removed:
        for path in sorted(root.glob(pattern)):
            _remove(path)
    # Identity: each VM generates its own machine-id (an empty file, which systemd fills at
    # boot) and its SSH host keys (cloud-init, or the seed's), and names itself from the seed.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    _write(root, "/etc/machine-id", "")
    for stale in (
        "var/lib/dbus/machine-id",
        "var/lib/systemd/random-seed",
        "var/lib/systemd/credential.secret",
        "etc/resolv.conf",  # debootstrap copies the build host's
        "var/lib/cloud",
    ):
        _remove(root / stale)
    _write(root, "/etc/resolv.conf", "")
    # What apt downloaded and the build's logs: neither is part of the image.
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for path in root.glob(pattern):
            _remove(path)
    for path in (root / "var/log").rglob("*"):
        if path.is_file():
            path.write_bytes(b"")
    for path in (root / "tmp").glob("*"):
        _remove(path)


def build(
    dest: Path,
    runner: CommandRunner,
    *,
    profile: Profile = TEMPLATE,
    mirror: str | None = None,
    customize: Callable[[Path], None] | None = None,
) -> DebianImage:
    """Build ``profile`` into ``dest`` (disk.qcow2, vmlinux, initramfs.cpio.gz).

    ``customize``, if given, is called with the installed root after debootstrap and before
    :func:`configure` (which then cleans /tmp, apt's downloads and the logs): it installs
    what does not come from Debian packages (the worker image's bes, see workerimage.py).

    Raises:
        ImageError: Not root, a tool is missing, or debootstrap failed (e.g. no mirror).
    """
    if os.geteuid() != 0:
        raise ImageError(
            f"building the Debian image ({profile.name}) needs root, for debootstrap: "
            "run the worker as root once, or put a built image in the site's catalog"
        )
    for tool, package in (("debootstrap", "debootstrap"), ("mke2fs", "e2fsprogs")):
        if shutil.which(tool, path=f"{os.environ.get('PATH', '')}:{_SBIN_PATH}") is None:
            raise ImageError(f"building the Debian image needs {tool} (apt-get install {package})")
    mirror = mirror or default_mirror()
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="debian-build-", dir=dest))
    root = work / "root"
    try:
        log.info("debootstrap %s (%s) from %s", profile.suite, profile.name, mirror)
        result = runner.run(
            debootstrap_argv(profile, root, mirror), timeout_s=_DEBOOTSTRAP_TIMEOUT_S, check=False
        )
        if result.exit_code != 0:
            raise ImageError(
                f"debootstrap of {profile.suite} from {mirror} failed (exit {result.exit_code}): "
                + _last_lines(result.output)
            )
        if customize is not None:
            customize(root)
        version = _kernel_version(root)
        kernel = dest / "vmlinux"
        write_vmlinux(root / f"boot/vmlinuz-{version}", kernel)
        initrd = dest / "initramfs.cpio.gz"
        _write_initramfs(initrd, root / "bin/busybox", root / "lib/modules" / version)
        configure(root, profile)
        runner.run(["chroot", str(root), "depmod", version], timeout_s=300.0)
        python = _python_version(root)
        packages = _package_count(root)
        raw = work / "root.img"
        runner.run(
            [
                "mke2fs", "-q", "-F", "-t", "ext4", "-m", "0", "-L", ROOT_LABEL,
                "-d", str(root), str(raw), f"{profile.size_mib}M",
            ],
            timeout_s=_IMAGE_TIMEOUT_S,
        )  # fmt: skip
        disk = dest / "disk.qcow2"
        runner.run(
            ["qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(disk)],
            timeout_s=_IMAGE_TIMEOUT_S,
        )
        log.info(
            "built the Debian image %s: %d packages, Linux %s, Python %s",
            profile.name,
            packages,
            version,
            python,
        )
        return DebianImage(
            disk=disk,
            kernel=kernel,
            initrd=initrd,
            cmdline=KERNEL_CMDLINE,
            kernel_version=version,
            python_version=python,
            package_count=packages,
        )
    finally:
        remove_tree(work, runner)


def remove_tree(path: Path, runner: CommandRunner) -> None:
    """Remove a build directory, after unmounting what a failed debootstrap may have left
    mounted in it (its /proc, /sys, or bind mounts of the host's /dev in a container)."""
    mounts = _mounts_below(path)
    for mount in mounts:
        runner.run(["umount", "-l", str(mount)], timeout_s=60.0, check=False)
    if _mounts_below(path):
        log.error("not removing %s: something is still mounted in it", path)
        return
    shutil.rmtree(path, ignore_errors=True)


def _mounts_below(path: Path) -> list[Path]:
    """Mount points inside ``path``, deepest first."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    base = str(path.resolve())
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) > 1:
            point = fields[1].replace("\\040", " ")
            if point == base or point.startswith(base + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _write_initramfs(dest: Path, busybox: Path, modules_dir: Path) -> None:
    modules = modules_in_load_order(modules_dir, INITRAMFS_MODULES)
    archive = InitramfsWriter(dest)
    try:
        for directory in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"):
            archive.directory(directory)
        archive.file("bin/busybox", busybox.read_bytes(), 0o755)
        for applet in _INITRAMFS_APPLETS:
            archive.symlink(f"bin/{applet}", "busybox")
        for name, data in modules:
            archive.file(f"lib/modules/{name}.ko", data)
        archive.file("lib/modules/load.list", "".join(f"{n}\n" for n, _ in modules).encode())
        init = resources.files("bes.vm").joinpath(_INIT_SCRIPT).read_bytes()
        archive.file("init", init, 0o755)
    finally:
        archive.close()


def _kernel_version(root: Path) -> str:
    versions = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
    if len(versions) != 1:
        raise ImageError(f"expected one kernel in the Debian image, found {versions}")
    return versions[0]


def _python_version(root: Path) -> str:
    try:
        return os.readlink(root / "usr/bin/python3").removeprefix("python")
    except OSError:
        return "?"


def _package_count(root: Path) -> int:
    try:
        status = (root / "var/lib/dpkg/status").read_text(errors="replace")
    except OSError:
        return 0
    return len(re.findall(r"(?m)^Status: install ok installed$", status))


def _write(root: Path, path: str, content: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    target.write_text(content)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _last_lines(text: str, count: int = 5) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-count:])


_HOSTS = """\
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
"""
