"""User images are hostile: every image is inspected before a VM boots from it.

Real hostile images, built with the real qemu-img in tmp dirs, go into the cache the way jobs
fetch them (file and http URIs). ``secret.txt`` stands for a volunteer's file: the guest must
never see it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bes.vm.drivers.qemu import QemuDriver
from bes.vm.images import ImageCache, ImageError, file_sha256
from bes.vm.inspect import InspectionError, checked_info, detect_format
from bes.vm.repository import Catalog, ImageRepository, Template
from bes.vm.runner import CommandRunner
from bes.vm.seed import write_seed
from bes.vm.spec import ImageFormat, ImageRef
from tests.support.vm import qemu_processes, require
from tests.vm.test_images import http_root  # noqa: F401 - a fixture

FIXTURES = Path(__file__).parents[1] / "fixtures" / "vm" / "qemu-img-info"
SECRET = b"VolunteerSecret4f1d9c\n"
QCOW2, RAW, VDI, VMDK, ISO = (
    ImageFormat.QCOW2,
    ImageFormat.RAW,
    ImageFormat.VDI,
    ImageFormat.VMDK,
    ImageFormat.ISO,
)


def qemu_img(*args: str | Path) -> str:
    binary = require("qemu-img", "qemu-utils")
    done = subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def secret(tmp: Path) -> Path:
    path = tmp / "secret.txt"
    path.write_bytes(SECRET)
    return path


# -- hostile images (each builder returns the image file) ------------------------------------


def backed_by_host_file(tmp: Path) -> Path:
    qemu_img("create", "-q", "-f", "qcow2", "-b", secret(tmp), "-F", "raw", tmp / "a.qcow2")
    return tmp / "a.qcow2"


def backed_by_json_nbd(tmp: Path) -> Path:
    backing = 'json:{"driver":"nbd","server":{"type":"inet","host":"127.0.0.1","port":"9"}}'
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", tmp / "a.qcow2", "1M")
    return tmp / "a.qcow2"


def with_host_data_file(tmp: Path) -> Path:
    data = tmp / "data.raw"  # qemu-img create sizes the data file, so the secret goes in after
    options = f"data_file={data},data_file_raw=on"
    qemu_img("create", "-q", "-f", "qcow2", "-o", options, tmp / "a.qcow2", "1M")
    with data.open("r+b") as out:
        out.write(SECRET)
    return tmp / "a.qcow2"


def vmdk_descriptor(tmp: Path) -> Path:
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", tmp / "a.vmdk", "1M")
    descriptor = tmp / "a.vmdk"
    text = descriptor.read_text().replace('"a-flat.vmdk"', f'"{secret(tmp)}"')
    descriptor.write_text(text)
    return descriptor


def sparse_vmdk_with_parent(tmp: Path) -> Path:
    qemu_img("create", "-q", "-f", "vmdk", tmp / "parent.vmdk", "1M")
    qemu_img("create", "-q", "-f", "vmdk", "-b", tmp / "parent.vmdk", "-F", "vmdk", tmp / "a.vmdk")
    return tmp / "a.vmdk"


def clean_qcow2(tmp: Path, size: str = "1M") -> Path:
    qemu_img("create", "-q", "-f", "qcow2", tmp / "a.qcow2", size)
    return tmp / "a.qcow2"


def raw_image(tmp: Path) -> Path:
    (tmp / "a.img").write_bytes(b"\x07" * 65536)
    return tmp / "a.img"


def broken_qcow2(tmp: Path) -> Path:
    (tmp / "a.qcow2").write_bytes(b"QFI\xfb" + b"\xff" * 4092)
    return tmp / "a.qcow2"


def encrypted_qcow2(tmp: Path) -> Path:
    options = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"
    argv = [require("qemu-img", "qemu-utils"), "create", "-q", "--object"]
    argv += ["secret,id=sec0,data=abc", "-f", "qcow2", "-o", options, str(tmp / "a.qcow2"), "1M"]
    for _ in range(5):
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        # LUKS times its key derivation with the thread's CPU clock, which on a busy machine
        # can read no progress at all: qemu-img then gives up, and a second try is fine.
        if done.returncode == 0 or "accurate CPU usage" not in done.stderr:
            break
    assert done.returncode == 0, done.stderr
    return tmp / "a.qcow2"


def huge_qcow2(tmp: Path) -> Path:
    return clean_qcow2(tmp, "16T")


BACKING = "names a backing file, "


@pytest.mark.parametrize(
    ("build", "declared", "message"),
    [
        pytest.param(backed_by_host_file, QCOW2, BACKING + "'/[^']*/secret.txt'", id="backing"),
        pytest.param(backed_by_json_nbd, QCOW2, BACKING + '\'json:\\{"driver":"nbd"', id="json"),
        pytest.param(
            with_host_data_file, QCOW2, "names an external data file, '/[^']*/data.raw'", id="data"
        ),
        pytest.param(vmdk_descriptor, VMDK, "it is a VMDK descriptor.*only single-file", id="vmdk"),
        pytest.param(vmdk_descriptor, RAW, "it is a vmdk image, not raw", id="vmdk-as-raw"),
        pytest.param(
            sparse_vmdk_with_parent, VMDK, BACKING + "'/[^']*/parent.vmdk'", id="vmdk-parent"
        ),
        pytest.param(raw_image, QCOW2, "it is raw data, not a qcow2 image", id="raw-as-qcow2"),
        pytest.param(clean_qcow2, RAW, "it is a qcow2 image, not raw", id="qcow2-as-raw"),
        pytest.param(clean_qcow2, ISO, "it is a qcow2 image, not iso", id="qcow2-as-iso"),
        pytest.param(clean_qcow2, VDI, "it is a qcow2 image, not a vdi image", id="qcow2-as-vdi"),
        pytest.param(
            huge_qcow2,
            QCOW2,
            "virtual size, 16 TiB, is over this node's limit of 256 GiB",
            id="huge",
        ),
        pytest.param(broken_qcow2, QCOW2, "qemu-img cannot read it as qcow2: .", id="broken"),
        pytest.param(encrypted_qcow2, QCOW2, "it is encrypted", id="encrypted"),
    ],
)
def test_a_hostile_image_is_refused_before_it_is_usable(
    tmp_path: Path, build: Callable[[Path], Path], declared: ImageFormat, message: str
) -> None:
    image = build(tmp_path)
    sha = file_sha256(image)
    cache = ImageCache(tmp_path / "cache")

    with pytest.raises(ImageError) as refused:
        cache.fetch(image.as_uri(), sha, declared)

    text = str(refused.value)
    assert text.startswith(f"the image {image.as_uri()} (declared {declared.value}) is refused: ")
    assert refused.match(message)
    assert not cache.has(sha)
    for folder in ("objects", "converted", "inspected"):  # no partial file left either
        assert list((tmp_path / "cache" / folder).iterdir()) == []


@pytest.mark.parametrize(
    ("build", "declared"),
    [(backed_by_host_file, QCOW2), (with_host_data_file, QCOW2), (vmdk_descriptor, VMDK)],
    ids=["backing file", "data file", "vmdk extent"],
)
def test_these_images_do_show_the_host_file_to_a_guest_that_boots_them(
    tmp_path: Path, build: Callable[[Path], Path], declared: ImageFormat
) -> None:
    """The control: through the driver's overlay, QEMU reads the volunteer's file."""
    qemu_io = require("qemu-io", "qemu-utils")
    image = build(tmp_path)
    overlay = tmp_path / "overlay.qcow2"
    QemuDriver(tmp_path / "vms").create_overlay(image, declared, overlay)
    read = subprocess.run(
        [qemu_io, "-f", "qcow2", "-c", f"read -v 0 {len(SECRET)}", str(overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "VolunteerSecret4" in read.stdout  # qemu-io's ASCII column (16 bytes a line)


def test_nbd_and_json_backing_files_are_never_followed(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        backings = [
            f"nbd://127.0.0.1:{port}/export",
            f'json:{{"driver":"nbd","server":{{"type":"inet","host":"127.0.0.1","port":"{port}"}}}}',
        ]
        cache = ImageCache(tmp_path / "cache")
        for index, backing in enumerate(backings):
            image = tmp_path / f"{index}.qcow2"
            qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", image, "1M")
            with pytest.raises(ImageError, match="names a backing file"):
                cache.fetch(image.as_uri(), file_sha256(image), QCOW2)
            with pytest.raises(ImageError, match="names a backing file"):
                cache.converted(cache.add(image), QCOW2, VDI)  # converting would read it too
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing ever connected to the "NBD server"


def test_the_size_limit_is_configurable(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * (2 * 1024 * 1024))
    sha = file_sha256(image)
    small = ImageCache(tmp_path / "small", max_virtual_bytes=1024 * 1024)
    with pytest.raises(ImageError, match="virtual size, 2 MiB, is over this node's limit of 1 MiB"):
        small.fetch(image.as_uri(), sha, RAW)
    assert ImageCache(tmp_path / "default").fetch(image.as_uri(), sha, RAW).exists()
    # A node whose limit is lowered refuses an image it had accepted before.
    ImageCache(tmp_path / "small").fetch(image.as_uri(), sha, RAW)
    with pytest.raises(ImageError, match="over this node's limit of 1 MiB"):
        ImageCache(tmp_path / "default", max_virtual_bytes=1024 * 1024).disk(sha, RAW)


# -- images that are accepted ----------------------------------------------------------------


def sparse_vmdk(tmp: Path) -> Path:
    qemu_img("create", "-q", "-f", "vmdk", tmp / "a.vmdk", "1M")
    return tmp / "a.vmdk"


def stream_optimized_vmdk(tmp: Path) -> Path:
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", tmp / "a.vmdk", "1M")
    return tmp / "a.vmdk"


def vdi_image(tmp: Path) -> Path:
    qemu_img("create", "-q", "-f", "vdi", tmp / "a.vdi", "1M")
    return tmp / "a.vdi"


def iso_image(tmp: Path) -> Path:
    write_seed(tmp / "a.iso", instance_id="i-1", hostname="h", user_data="#!/bin/sh\n")
    return tmp / "a.iso"


@pytest.mark.parametrize(
    ("build", "declared"),
    [
        (clean_qcow2, QCOW2),
        (raw_image, RAW),
        (vdi_image, VDI),
        (sparse_vmdk, VMDK),
        (stream_optimized_vmdk, VMDK),
        (iso_image, ISO),
    ],
    ids=["qcow2", "raw", "vdi", "vmdk", "vmdk streamOptimized", "iso"],
)
def test_a_clean_image_is_accepted_and_inspected_once(
    tmp_path: Path,
    http_root: tuple[str, Path, list[str]],  # noqa: F811 - the fixture
    build: Callable[[Path], Path],
    declared: ImageFormat,
) -> None:
    base_url, www, _ = http_root
    image = build(www)
    sha = file_sha256(image)
    trace = tmp_path / "trace.log"
    cache = ImageCache(tmp_path / "cache", runner=CommandRunner(trace_path=trace))

    first = cache.fetch(f"{base_url}/{image.name}", sha, declared)
    second = ImageCache(tmp_path / "cache", runner=CommandRunner(trace_path=trace)).fetch(
        f"{base_url}/{image.name}", sha, declared
    )

    assert first == second == cache.path(sha)
    assert file_sha256(first) == sha  # the cached copy is the image itself
    assert first.stat().st_mode & 0o222 == 0
    assert trace.read_text().count(" info -U --output=json") == 1  # the verdict was recorded
    record = json.loads((tmp_path / "cache" / "inspected" / f"{sha}.{declared.value}").read_text())
    assert record["format"] == declared.value


def test_the_verdict_is_per_declared_format(tmp_path: Path) -> None:
    image = clean_qcow2(tmp_path)
    sha = file_sha256(image)
    cache = ImageCache(tmp_path / "cache")
    assert cache.fetch(image.as_uri(), sha, QCOW2) == cache.path(sha)
    with pytest.raises(ImageError, match="it is a qcow2 image, not raw"):
        cache.fetch(image.as_uri(), sha, RAW)
    assert cache.fetch(image.as_uri(), sha, QCOW2) == cache.path(sha)


def test_an_image_cached_before_inspection_is_inspected_on_first_use(tmp_path: Path) -> None:
    """A node's cache from an earlier version (or a file added as a non-disk, like a kernel)
    holds images nobody inspected: using one as a disk, or converting it, inspects it first."""
    image = backed_by_host_file(tmp_path)
    cache = ImageCache(tmp_path / "cache")
    sha = cache.add(image)  # no format: not inspected, as kernels and initrds are added
    assert cache.has(sha)

    with pytest.raises(ImageError, match="names a backing file"):
        cache.fetch(image.as_uri(), sha, QCOW2)
    with pytest.raises(ImageError, match="names a backing file"):
        cache.converted(sha, QCOW2, VDI)  # qemu-img convert would copy the secret in
    assert list((tmp_path / "cache" / "converted").iterdir()) == []
    catalog = Catalog([Template("evil", format=QCOW2, sha256=sha)])  # cached, no URI
    with pytest.raises(ImageError, match=f"the image {sha} .* names a backing file"):
        ImageRepository(cache, catalog).resolve(ImageRef(template="evil"))


def test_add_inspects_a_disk_image(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(ImageError, match=r"a\.vmdk \(declared vmdk\) is refused: it is a VMDK"):
        cache.add(vmdk_descriptor(tmp_path), image_format=VMDK)
    assert list((tmp_path / "cache" / "objects").iterdir()) == []
    sha = cache.add(clean_qcow2(tmp_path), image_format=QCOW2)
    assert (tmp_path / "cache" / "inspected" / f"{sha}.qcow2").exists()


# -- the header check agrees with qemu-img's own probing ---------------------------------------


def _flat_vmdk(tmp: Path) -> Path:
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", tmp / "f.vmdk", "1M")
    return tmp / "f.vmdk"


@pytest.mark.parametrize(
    "create",
    [
        ["-f", "qcow2"],
        ["-f", "qcow"],
        ["-f", "qed"],
        ["-f", "vdi"],
        ["-f", "vmdk"],
        ["-f", "vmdk", "-o", "subformat=streamOptimized"],
        ["-f", "vpc"],
        ["-f", "vhdx"],
        ["-f", "parallels"],
        ["-f", "raw"],
        ["flat vmdk"],
    ],
    ids=" ".join,
)
def test_the_header_names_the_format_qemu_img_probes(tmp_path: Path, create: list[str]) -> None:
    """Our own images only: qemu-img probes (no -f) to say what it detects."""
    if create == ["flat vmdk"]:
        image = _flat_vmdk(tmp_path)
    else:
        image = tmp_path / "image"
        qemu_img("create", "-q", *create, image, "1M")
    probed = json.loads(qemu_img("info", "-U", "--output=json", image))["format"]
    with image.open("rb") as head:
        assert (detect_format(head.read(2048)) or "raw") == probed


# -- qemu-img's answers, captured ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "declared", "message"),
    [
        ("qcow2-backing-file.json", QCOW2, "names a backing file, '/tmp/volunteer/secret.txt'"),
        ("qcow2-data-file.json", QCOW2, "names an external data file, '/tmp/volunteer/data.raw'"),
        ("vmdk-flat-extent.json", VMDK, "its data lies in other files \\('/tmp/volunteer/secret"),
        ("qcow2-clean.json", RAW, "qemu-img reads it as 'qcow2', not raw"),
        ("qcow2-clean.json", QCOW2, "virtual size, 1 GiB, is over this node's limit of 1 MiB"),
    ],
)
def test_captured_answers_of_qemu_img(fixture: str, declared: ImageFormat, message: str) -> None:
    info = json.loads((FIXTURES / fixture).read_text())
    with pytest.raises(InspectionError, match=message):
        checked_info(info, declared, path=Path("flat.vmdk"), max_virtual_bytes=1024 * 1024)


def test_a_clean_captured_answer_and_qemu_8_child_nodes() -> None:
    info = json.loads((FIXTURES / "qcow2-clean.json").read_text())
    accepted = checked_info(info, QCOW2, path=Path("clean.qcow2"), max_virtual_bytes=2**40)
    assert accepted.virtual_size_bytes == 1024**3
    # qemu-img 8 lists the block graph (BlockGraphInfo); only the image's own file may be there.
    own = {**info, "children": [{"name": "file", "info": {"children": []}}]}
    assert checked_info(own, QCOW2, path=Path("clean.qcow2"), max_virtual_bytes=2**40)
    other = {**info, "children": [*own["children"], {"name": "data-file", "info": {}}]}
    with pytest.raises(InspectionError, match="a 'data-file' node"):
        checked_info(other, QCOW2, path=Path("clean.qcow2"), max_virtual_bytes=2**40)


# -- end to end: bes vm run ----------------------------------------------------------------------


def test_bes_vm_run_refuses_an_image_backed_by_a_host_file_before_any_vm_starts(
    tmp_path: Path,
    http_root: tuple[str, Path, list[str]],  # noqa: F811 - the fixture
) -> None:
    require("qemu-system-x86_64", "qemu-system-x86")
    base_url, www, requests = http_root
    image = backed_by_host_file(www)
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    document = tmp_path / "job.jsdl"
    document.write_text(
        f"""<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
            xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
            xmlns:vm="urn:bes-grid:vm:1.0"><jsdl:JobDescription><jsdl:Application>
          <posix:POSIXApplication><posix:Executable>/bin/cat</posix:Executable>
            <posix:Argument>/dev/vda</posix:Argument></posix:POSIXApplication>
          <vm:VirtualMachine><vm:Image><vm:URI>{base_url}/a.qcow2</vm:URI>
            <vm:SHA256>{sha}</vm:SHA256><vm:Format>qcow2</vm:Format></vm:Image>
            <vm:WallTimeLimit>10</vm:WallTimeLimit><!-- were it booted: no VM outlives the test -->
          </vm:VirtualMachine>
        </jsdl:Application></jsdl:JobDescription></jsdl:JobDefinition>"""
    )
    cache = tmp_path / "cache"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "bes", "vm", "run", "--hypervisor", "qemu", "--accel", "tcg"),
            *("--cache-dir", str(cache), "--results", str(tmp_path / "results"), str(document)),
        ],
        cwd=tmp_path,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 1, result.stderr
    assert f"the image {base_url}/a.qcow2 (declared qcow2) is refused" in result.stderr
    assert f"names a backing file, '{www / 'secret.txt'}'" in result.stderr
    assert "Traceback" not in result.stderr
    assert requests == ["/a.qcow2"]  # fetched as jobs fetch images...
    assert not (cache / "images" / "objects" / sha).exists()  # ...and never usable
    vms = cache / "vms" / "qemu"
    assert list(vms.glob("bes-*")) == []  # no VM was created...
    assert " create " not in (vms / "replay.txt").read_text()  # ...nor an overlay
    assert qemu_processes(str(cache)) == []
    assert not (tmp_path / "results").exists()
