"""The cloud worker image: debian.py's builder with the profile :data:`WORKER`, plus bes.

An instance booted from it runs ``bes worker`` for a service and each job in a VM nested in
it, with nothing downloaded at run time. Everything comes from Debian packages and PyPI when
the image is built:

* the template's userland (systemd, cloud-init reading NoCloud seeds only, Python 3) plus
  ``qemu-system-x86`` and ``qemu-utils`` (debootstrap installs no recommends);
* bes, from a wheel of its source tree, and its dependencies as binary wheels from PyPI, in a
  venv (:data:`VENV`) of the image's own python3. pip runs on the build host only to build
  the wheel and to download the wheels for the image's Python and glibc; it installs them
  with the image's interpreter in a chroot, from that directory alone (no index, no
  network), so compiled wheels match the image's ABI, entry-point scripts name its
  interpreter, and the byte-code is compiled by it. Neither pip nor a compiler stays in the
  image;
* the template ``tiny``, built on the build host from Debian packages, in the node image cache
  :data:`CACHE_DIR` (``/root/.cache/bes`` links to it, so ``bes vm run`` as root finds it too);
* ``bes-worker.service``, not enabled: cloud-init user-data configures and starts it.

The contract for user-data (what an autoscaler writes):

* :data:`ENV_FILE` ``/etc/bes/worker.env`` (systemd EnvironmentFile syntax): ``BES_SERVICE=URL``
  (required), ``BES_WORKER_ARGS=...`` (optional: more ``bes worker`` options, split on spaces,
  e.g. ``--max-vms 2 --tls-server-name bes.example.org``);
* :data:`TOKEN_FILE` ``/etc/bes/worker.token``: the worker's token (mode 0600);
* :data:`CA_FILE` ``/etc/bes/ca.pem`` (optional): the CA of the service's certificate, given as
  ``--ca-file`` when the file exists;
* then ``systemctl start --no-block bes-worker.service``.

bes.clouds.userdata writes that user-data for the autoscaler's instances.

The worker runs as root with ``--cache-dir /var/cache/bes``; systemd restarts it when it
fails, except after exit status 3 (the service refused its token).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bes.vm import debian, tiny
from bes.vm.images import ImageCache, ImageError
from bes.vm.repository import TINY, ImageRepository
from bes.vm.runner import CommandRunner
from bes.vm.spec import ImageRef

log = logging.getLogger(__name__)

VENV = "/opt/bes"
CACHE_DIR = "/var/cache/bes"
"""The node cache of the worker (and of ``bes vm run`` as root): tiny is in its images/."""
CONFIG_DIR = "/etc/bes"
ENV_FILE = "/etc/bes/worker.env"
TOKEN_FILE = "/etc/bes/worker.token"  # noqa: S105 - a path, not a secret
CA_FILE = "/etc/bes/ca.pem"
SERVICE = "bes-worker.service"
UNIT_PATH = f"/etc/systemd/system/{SERVICE}"
START_SCRIPT = "/usr/local/sbin/bes-worker-start"
REFUSED_EXIT_STATUS = 3  # bes worker: the service refused this worker's token

START_SCRIPT_TEXT = f"""\
#!/bin/sh
# Starts bes worker as {ENV_FILE} says ({SERVICE}; see bes/vm/workerimage.py).
set -eu
: "${{BES_SERVICE:?{ENV_FILE} sets no BES_SERVICE}}"
set -- --service "$BES_SERVICE" --token-file {TOKEN_FILE} --cache-dir {CACHE_DIR}
if [ -e {CA_FILE} ]; then
    set -- "$@" --ca-file {CA_FILE}
fi
# shellcheck disable=SC2086 # BES_WORKER_ARGS: more options, split on spaces
exec {VENV}/bin/bes worker "$@" ${{BES_WORKER_ARGS:-}}
"""

UNIT_TEXT = f"""\
# Not enabled: cloud-init user-data writes {ENV_FILE} and {TOKEN_FILE} (and
# {CA_FILE} if the service's certificate needs it), then runs
# systemctl start --no-block {SERVICE}
[Unit]
Description=bes worker: runs a bes service's jobs in VMs on this machine
Wants=network-online.target
After=network-online.target
ConditionPathExists={ENV_FILE}
ConditionPathExists={TOKEN_FILE}

[Service]
Type=exec
EnvironmentFile={ENV_FILE}
ExecStart={START_SCRIPT}
Restart=on-failure
RestartSec=10
RestartPreventExitStatus={REFUSED_EXIT_STATUS}
# SIGTERM to bes worker alone, which stops its VMs; whatever is left is killed afterwards.
KillMode=mixed
TimeoutStopSec=120

[Install]
WantedBy=multi-user.target
"""

# The template's cloud-init plus resizefs: an instance's disk may be larger than the image's
# filesystem, and the worker's image cache and VMs want all of it (no partition to grow).
_WORKER_CLOUD_CONFIG = debian.TEMPLATE.cloud_config.replace(
    " - bootcmd\n", " - bootcmd\n - resizefs\n"
)

WORKER = dataclasses.replace(
    debian.TEMPLATE,
    name="worker",
    packages=(*debian.TEMPLATE.packages, "qemu-system-x86", "qemu-utils"),
    cloud_config=_WORKER_CLOUD_CONFIG,
    files=(*debian.TEMPLATE.files, (UNIT_PATH, UNIT_TEXT)),
)
"""The worker image's profile: the template's, plus QEMU and the worker's unit."""

_INSTALL_VERSION = 1  # raise when how bes and tiny are installed changes
_PIP_TIMEOUT_S = 900.0
_WHEELS_IN_ROOT = "tmp/bes-wheels"  # configure() empties /tmp afterwards
_MANIFEST = "worker-image.json"
_OLDEST_MANYLINUX = 17  # manylinux2014


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerImage:
    """A built worker image: debian.py's files plus what went into it besides packages."""

    disk: Path
    kernel: Path
    initrd: Path
    cmdline: str
    kernel_version: str
    python_version: str
    package_count: int
    bes_version: str
    key: str
    """Names what went into it (profile, builder, bes's wheel, tiny): cached images by it."""

    def to_json(self) -> dict[str, str | int]:
        data = dataclasses.asdict(self)
        return {k: v.name if isinstance(v, Path) else v for k, v in data.items()}


def project_root() -> Path:
    """The source tree of the running bes (an editable install or a checkout).

    Raises:
        ImageError: bes is not run from its source tree.
    """
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "bes").is_dir():
        raise ImageError("building the worker image needs bes's source tree (pyproject.toml)")
    return root


def build_wheel(source: Path, dest: Path, runner: CommandRunner) -> Path:
    """``pip wheel --no-deps`` of bes's source tree into ``dest``; the wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(
        runner,
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), str(source)],
        f"building a wheel of {source}",
    )
    wheels = sorted(dest.glob("bes-*.whl"))
    if len(wheels) != 1:
        raise ImageError(f"pip wheel made {[w.name for w in wheels]}, not one bes wheel")
    return wheels[0]


def image_key(wheel: Path) -> str:
    """What the image is made of besides Debian's and PyPI's current packages: the profile,
    the builder, tiny and the wheel's content (not its timestamps)."""
    digest = hashlib.sha256(
        repr((WORKER, debian.BUILD, tiny.BUILD, _INSTALL_VERSION, START_SCRIPT_TEXT)).encode()
    )
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            digest.update(name.encode() + b"\0" + archive.read(name) + b"\0")
    return digest.hexdigest()[:16]


def build(
    dest: Path,
    runner: CommandRunner,
    *,
    wheel: Path,
    mirror: str | None = None,
) -> WorkerImage:
    """Build the worker image into ``dest``, with bes from ``wheel``.

    Raises:
        ImageError: Not root, a tool is missing, debootstrap failed, or bes's dependencies
            have no wheel for the image's Python.
    """
    built = debian.build(
        dest,
        runner,
        profile=WORKER,
        mirror=mirror,
        customize=lambda root: install_bes(root, wheel, runner),
    )
    image = WorkerImage(
        disk=built.disk,
        kernel=built.kernel,
        initrd=built.initrd,
        cmdline=built.cmdline,
        kernel_version=built.kernel_version,
        python_version=built.python_version,
        package_count=built.package_count,
        bes_version=_wheel_version(wheel),
        key=image_key(wheel),
    )
    (dest / _MANIFEST).write_text(json.dumps(image.to_json(), indent=1) + "\n")
    return image


def cached(
    cache_root: Path,
    runner: CommandRunner,
    *,
    source: Path | None = None,
    mirror: str | None = None,
) -> WorkerImage:
    """The worker image of bes's current source, from ``cache_root/KEY`` or built there.

    Older images in ``cache_root`` are removed once a new one is built.
    """
    cache_root.mkdir(parents=True, exist_ok=True)
    with (cache_root / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time
        return _cached(cache_root, runner, source=source, mirror=mirror)


def _cached(
    cache_root: Path, runner: CommandRunner, *, source: Path | None, mirror: str | None
) -> WorkerImage:
    scratch = Path(tempfile.mkdtemp(prefix="wheel-", dir=cache_root))
    try:
        wheel = build_wheel(source or project_root(), scratch, runner)
        key = image_key(wheel)
        existing = load(cache_root / key)
        if existing is not None:
            return existing
        log.info("building the worker image %s", key)
        partial = cache_root / f"{key}.partial"
        debian.remove_tree(partial, runner)
        try:
            build(partial, runner, wheel=wheel, mirror=mirror)
        except BaseException:
            debian.remove_tree(partial, runner)
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    final = cache_root / key
    debian.remove_tree(final, runner)
    partial.rename(final)
    for old in cache_root.iterdir():
        if old.name != key and (old / _MANIFEST).exists():
            shutil.rmtree(old, ignore_errors=True)
    moved = load(final)
    if moved is None:
        raise ImageError(f"the worker image built in {final} is incomplete")
    return moved


def load(directory: Path) -> WorkerImage | None:
    """The worker image built into ``directory``, if one is there."""
    try:
        data = json.loads((directory / _MANIFEST).read_text())
        paths = {name: directory / data[name] for name in ("disk", "kernel", "initrd")}
        image = WorkerImage(**{**data, **paths})
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return image if all(path.is_file() for path in paths.values()) else None


# -- installing bes into the debootstrapped root -----------------------------------------


def install_bes(root: Path, wheel: Path, runner: CommandRunner) -> None:
    """Put bes (a venv of the image's python3), its unit's start script and tiny into the
    installed tree ``root`` (debian.build's customize step)."""
    wheels = root / _WHEELS_IN_ROOT
    wheels.mkdir(parents=True)
    shutil.copy2(wheel, wheels)
    python = image_python(root)
    download_wheels(wheels, wheel, python=python, glibc=image_glibc(root), runner=runner)
    (pip_wheel,) = sorted(wheels.glob("pip-*.whl"))
    in_root = f"/{_WHEELS_IN_ROOT}"
    _run(
        runner,
        ["chroot", str(root), "/usr/bin/python3", "-m", "venv", "--without-pip", VENV],
        f"making the venv {VENV}",
    )
    _run(
        runner,
        [
            "chroot", str(root), f"{VENV}/bin/python", f"{in_root}/{pip_wheel.name}/pip",
            "install", "--isolated", "--no-index", "--no-cache-dir", "--disable-pip-version-check",
            "--find-links", in_root, f"{in_root}/{wheel.name}",
        ],
        f"installing bes into {VENV}",
    )  # fmt: skip
    _link(root, "/usr/local/bin/bes", f"{VENV}/bin/bes")
    script = root / START_SCRIPT.lstrip("/")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(START_SCRIPT_TEXT)
    script.chmod(0o755)
    (root / CONFIG_DIR.lstrip("/")).mkdir(mode=0o700, exist_ok=True)
    cache = root / CACHE_DIR.lstrip("/")
    ImageRepository(ImageCache(cache / "images"), runner=runner).resolve(ImageRef(template=TINY))
    _link(root, "/root/.cache/bes", CACHE_DIR)
    log.info("installed bes %s (Python %s) and tiny in the worker image", wheel.name, python)


def download_wheels(
    dest: Path, wheel: Path, *, python: str, glibc: tuple[int, int], runner: CommandRunner
) -> None:
    """Binary wheels of ``wheel``'s dependencies, and of pip, for CPython ``python`` on
    x86_64 with ``glibc``, into ``dest`` (with the build host's pip and its index settings)."""
    target = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    for platform in manylinux_platforms(glibc):
        target += ["--platform", platform]
    pip = [sys.executable, "-m", "pip", "download", "-q", "--dest", str(dest), *target]
    _run(runner, [*pip, str(wheel)], f"downloading bes's dependencies for Python {python}")
    _run(runner, [*pip, "--no-deps", "pip"], "downloading pip")


def manylinux_platforms(glibc: tuple[int, int]) -> list[str]:
    """The platform tags a glibc ``(2, minor)`` x86_64 system installs, newest first (pip's
    ``--platform`` takes each literally)."""
    major, minor = glibc
    if major != 2 or minor < _OLDEST_MANYLINUX:
        raise ImageError(f"glibc {major}.{minor} is too old for the worker image")
    tags = [f"manylinux_2_{m}_x86_64" for m in range(minor, 4, -1)]
    return [*tags, "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def image_python(root: Path) -> str:
    """``3.11``: the version of the installed tree's python3."""
    try:
        version = os.readlink(root / "usr/bin/python3").removeprefix("python")
    except OSError:
        version = ""
    if not re.fullmatch(r"3\.\d+", version):
        raise ImageError(f"the image's python3 is not a CPython 3 ({version!r})")
    return version


def image_glibc(root: Path) -> tuple[int, int]:
    """The installed tree's glibc version, from dpkg's record of libc6."""
    try:
        status = (root / "var/lib/dpkg/status").read_text(errors="replace")
    except OSError as exc:
        raise ImageError(f"cannot read the image's dpkg status: {exc}") from exc
    match = re.search(r"(?m)^Package: libc6\n(?:[^\n]+\n)*?Version: (\d+)\.(\d+)", status)
    if match is None:
        raise ImageError("the image has no libc6")
    return int(match.group(1)), int(match.group(2))


def _run(runner: CommandRunner, argv: list[str], what: str) -> None:
    result = runner.run(argv, timeout_s=_PIP_TIMEOUT_S, check=False)
    if result.exit_code != 0:
        tail = " | ".join(result.output.strip().splitlines()[-5:])
        raise ImageError(f"{what} failed (exit {result.exit_code}): {tail}")


def _wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def _link(root: Path, path: str, target: str) -> None:
    link = root / path.lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(target)
