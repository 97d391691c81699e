"""A private libvirtd (with its virtlogd) for tests, touching nothing of the machine's own.

Both daemons run as root in their own mount and PID namespaces (``unshare``). In the mount
namespace, a scratch directory is bound over ``/etc/libvirt``, ``/run``, ``/var/lib/libvirt``,
``/var/log/libvirt`` and ``/var/cache/libvirt``: their configuration, state, logs, domain
definitions and sockets all live under it, and nothing is written to the real ones. Its
``qemu.conf`` runs QEMU as root: with Debian's default (the ``libvirt-qemu`` user) every API
call probes QEMU again because /dev/kvm is root's, and define+start takes about 50 s instead
of half a second. ``libvirtd.conf`` puts the API socket in the scratch directory
(``unix_sock_dir``), so clients outside the namespace connect with
``qemu:///system?socket=PATH``, and needs no authentication on it (mode 0700: root only).

The PID namespace is what stops the daemons: this machine's PID 1 reaps nothing, and libvirtd
double-forks QEMU. ``unshare --kill-child`` kills the namespace's first process when
``unshare`` dies, and the kernel then kills and reaps everything in the namespace.

``.ci/run`` installs libvirt and sets ``BES_REQUIRE_VM=1``, which turns a daemon that cannot
start into a failure instead of a skip.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

# Inside the namespace these are bound to directories of the same names under the root.
_BOUND = {
    "etc": "/etc/libvirt",
    "run": "/run",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}
# A mount namespace of its own; a PID namespace whose first process dies with unshare.
_NAMESPACES = (
    *("--mount", "--propagation", "private"),
    *("--pid", "--fork", "--mount-proc", "--kill-child"),
)
_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class PrivateLibvirtd:
    """A running private libvirtd.

    Attributes:
        uri: Its ``qemu:///system`` URI, through its own socket.
        root: The scratch directory holding all its files.
        pool: The name of its storage pool (a directory pool under ``root/pool``, started).
    """

    uri: str
    root: Path
    pool: str = "default"

    @property
    def qemu_log_dir(self) -> Path:
        """What the daemon and its guests see as /var/log/libvirt/qemu."""
        return self.root / "log" / "qemu"


def _unavailable(message: str) -> NoReturn:
    if os.environ.get("BES_REQUIRE_VM") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        _unavailable(
            f"{name} is not installed (apt-get install libvirt-daemon-system qemu-system-x86)"
        )
    return found


@contextlib.contextmanager
def private_libvirtd() -> Iterator[PrivateLibvirtd]:
    """Start virtlogd and libvirtd in their own namespaces; stop them (and their guests) after."""
    try:
        libvirt = importlib.import_module("libvirt")
    except ImportError:
        _unavailable("libvirt-python is not installed (pip install 'bes[libvirt]')")
    if os.geteuid() != 0:
        _unavailable("a private libvirtd with QEMU as root needs the tests to run as root")
    libvirtd, virtlogd, unshare = _binary("libvirtd"), _binary("virtlogd"), _binary("unshare")
    # Short: the socket's path must fit in a sockaddr_un (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="bes-lv-", dir="/tmp"))
    for name in (*_BOUND, "pool", "sock", "log/qemu"):  # log/qemu: made by the package
        (root / name).mkdir()
    socket = root / "sock" / "libvirt-sock"
    (root / "etc" / "libvirtd.conf").write_text(
        f'unix_sock_dir = "{root / "sock"}"\n'
        'unix_sock_rw_perms = "0700"\n'
        'unix_sock_ro_perms = "0700"\n'
        'auth_unix_rw = "none"\n'
        'auth_unix_ro = "none"\n'
    )
    # Everything runs as root: no need to chown images (the shared test cache's among them).
    (root / "etc" / "qemu.conf").write_text(
        'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\n'
    )
    (root / "etc" / "virtlogd.conf").write_text("")
    binds = " && ".join(f"mount --bind {root / name} {target}" for name, target in _BOUND.items())
    script = f"{binds} || exit 1\n{virtlogd} &\n{libvirtd} -f /etc/libvirt/libvirtd.conf &\nwait\n"
    log = (root / "daemons.log").open("wb")
    process = subprocess.Popen(
        [unshare, *_NAMESPACES, "sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        uri = f"qemu:///system?socket={socket}"
        conn = _wait_for(libvirt, uri, process, root)
        try:
            pool = conn.storagePoolDefineXML(
                f"<pool type='dir'><name>default</name>"
                f"<target><path>{root / 'pool'}</path></target></pool>",
                0,
            )
            pool.create(0)
        finally:
            conn.close()
        yield PrivateLibvirtd(uri=uri, root=root)
    finally:
        process.kill()  # --kill-child: the namespace, its daemons and guests go with it
        process.wait(timeout=30)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for(libvirt: ModuleType, uri: str, process: subprocess.Popen[bytes], root: Path) -> Any:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            _unavailable(f"libvirtd did not start: {_tail(root)}")
        if (root / "sock" / "libvirt-sock").exists():
            with contextlib.suppress(libvirt.libvirtError):
                return libvirt.open(uri)
        if time.monotonic() > deadline:
            _unavailable(f"libvirtd did not answer within {_START_TIMEOUT_S:.0f} s: {_tail(root)}")
        time.sleep(0.1)


def _tail(root: Path) -> str:
    text = (root / "daemons.log").read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-5:]) or "no output"
