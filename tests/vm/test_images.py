"""The node's image cache and the template repository, with real files, HTTP and qemu-img."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bes.vm.drivers.qemu import QemuDriver
from bes.vm.images import ImageCache, ImageError, file_sha256
from bes.vm.repository import Catalog, ImageRepository, Template, UnknownTemplate
from bes.vm.spec import ImageFormat, ImageRef
from tests.support.vm import require


def image(path: Path, size: int = 256 * 1024, fill: int = 7) -> tuple[Path, str]:
    data = bytes([fill]) * size
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:
        self.requests.append(self.path)


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A real HTTP server on 127.0.0.1 serving tmp_path/www; yields (base URL, dir, log)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_Quiet,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, requests
    finally:
        server.shutdown()
        server.server_close()


def test_an_image_is_downloaded_once(
    tmp_path: Path, http_root: tuple[str, Path, list[str]]
) -> None:
    base_url, www, requests = http_root
    _, sha = image(www / "disk.img")
    cache = ImageCache(tmp_path / "cache")

    first = cache.fetch(f"{base_url}/disk.img", sha, ImageFormat.RAW)
    second = cache.fetch(f"{base_url}/disk.img", sha, ImageFormat.RAW)

    assert first == second == cache.path(sha)
    assert file_sha256(first) == sha
    assert requests == ["/disk.img"]
    assert cache.bytes_fetched == 256 * 1024  # the second job moved no bytes
    assert first.stat().st_mode & 0o222 == 0  # cached bases are read-only


def test_a_checksum_mismatch_leaves_nothing_behind(tmp_path: Path) -> None:
    source, _ = image(tmp_path / "disk.img")
    cache = ImageCache(tmp_path / "cache")
    wrong = "0" * 64
    with pytest.raises(ImageError, match=f"not {wrong}"):
        cache.fetch(source.as_uri(), wrong, ImageFormat.RAW)
    assert not cache.has(wrong)
    assert list((tmp_path / "cache" / "objects").iterdir()) == []


@pytest.mark.parametrize(
    ("uri", "sha", "message"),
    [
        ("ftp://example.org/x.img", "a" * 64, "ftp: URIs"),
        ("file:///no/such/file.img", "a" * 64, "cannot fetch"),
        ("file:///etc/hostname", "NOT-A-HASH", "not a lower-case hexadecimal sha256"),
    ],
)
def test_bad_references_are_clear_errors(tmp_path: Path, uri: str, sha: str, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        ImageCache(tmp_path / "cache").fetch(uri, sha, ImageFormat.QCOW2)


def test_least_recently_used_images_are_evicted_but_not_those_in_use(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache", limit_bytes=700 * 1024)
    shas = []
    for index in range(3):
        path, sha = image(tmp_path / f"i{index}.img", 300 * 1024, fill=index)
        os.utime(path)
        shas.append(cache.add(path))
        assert shas[-1] == sha
        os.utime(cache.path(sha), (1000 + index, 1000 + index))  # i0 oldest
    # Three 300 KiB images do not fit in 700 KiB: i0, the least recently used, went...
    assert [cache.has(sha) for sha in shas] == [False, True, True]
    # ...and an image in use is kept even when it is the oldest.
    with cache.use(shas[1]):
        os.utime(cache.path(shas[1]), (10, 10))
        path, _ = image(tmp_path / "i3.img", 300 * 1024, fill=3)
        cache.add(path)
        assert cache.has(shas[1])
        assert not cache.has(shas[2])


def test_formats_are_converted_once_with_qemu_img(tmp_path: Path) -> None:
    require("qemu-img", "qemu-utils")
    cache = ImageCache(tmp_path / "cache")
    path, _ = image(tmp_path / "disk.img", 1024 * 1024)
    sha = cache.add(path)

    vdi = cache.converted(sha, ImageFormat.RAW, ImageFormat.VDI)
    again = cache.converted(sha, ImageFormat.RAW, ImageFormat.VDI)

    assert vdi == again
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(vdi)], capture_output=True, text=True, check=True
    ).stdout
    assert '"format": "vdi"' in info


def test_an_overlay_never_writes_to_its_base(tmp_path: Path) -> None:
    require("qemu-img", "qemu-utils")
    qemu_io = require("qemu-io", "qemu-utils")
    cache = ImageCache(tmp_path / "cache")
    path, _ = image(tmp_path / "disk.img", 1024 * 1024)
    sha = cache.add(path)
    overlay = tmp_path / "overlay.qcow2"

    QemuDriver(tmp_path / "vms").create_overlay(cache.path(sha), ImageFormat.RAW, overlay)
    subprocess.run(
        [qemu_io, "-f", "qcow2", "-c", "write -P 0xab 0 64k", str(overlay)],
        check=True,
        capture_output=True,
    )

    assert file_sha256(cache.path(sha)) == sha
    read = subprocess.run(
        [qemu_io, "-f", "qcow2", "-c", "read -P 0xab 0 64k", str(overlay)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Pattern verification failed" not in read.stdout


def test_templates_come_from_the_site_catalog(
    tmp_path: Path, http_root: tuple[str, Path, list[str]]
) -> None:
    base_url, www, _ = http_root
    _, sha = image(www / "alma.qcow2")
    catalog_file = tmp_path / "catalog.json"
    Catalog(
        [Template("alma9", sha256=sha, format=ImageFormat.RAW, uri=f"{base_url}/alma.qcow2")]
    ).save(catalog_file)
    repository = ImageRepository(ImageCache(tmp_path / "cache"), Catalog.load(catalog_file))

    boot, template = repository.resolve(ImageRef(template="alma9"))

    assert template is not None and template.name == "alma9"
    assert boot.disk is not None and boot.disk.path == repository.cache.path(sha)
    assert "alma9" in repository.catalog().names()
    assert "tiny" in repository.catalog().names()
    with pytest.raises(UnknownTemplate, match="no template image named 'centos'"):
        repository.resolve(ImageRef(template="centos"))


def test_a_hypervisor_gets_a_format_it_boots(tmp_path: Path) -> None:
    require("qemu-img", "qemu-utils")
    path, sha = image(tmp_path / "disk.img", 1024 * 1024)
    repository = ImageRepository(ImageCache(tmp_path / "cache"))
    boot, _ = repository.resolve(
        ImageRef(uri=path.as_uri(), sha256=sha, format=ImageFormat.RAW),
        (ImageFormat.VDI, ImageFormat.VMDK, ImageFormat.ISO),
    )
    assert boot.disk is not None
    assert boot.disk.format is ImageFormat.VDI
    assert boot.disk.path.name == f"{sha}.vdi"


def test_a_broken_catalog_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "catalog.json"
    broken.write_text('{"templates": [{"name": "x", "colour": "blue"}]}')
    with pytest.raises(ImageError, match="colour"):
        Catalog.load(broken)
