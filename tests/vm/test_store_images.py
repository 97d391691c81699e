"""User images in the service's file store reach the node's image cache through the download
a worker gives it (its lease's): fetched once, checked, inspected and cached by sha256 like any
image; a real qcow2 made with qemu-img."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bes.errors import BesError
from bes.vm.images import ImageCache, ImageError, file_sha256
from bes.vm.repository import ImageRepository
from bes.vm.spec import ImageFormat, ImageRef
from tests.support.vm import require


class Lease:
    """Stands for a lease's store: serves files by their bes-store URI, counting requests."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.requests: list[str] = []

    def fetch(self, uri: str, dest: Path) -> None:
        self.requests.append(uri)
        if uri not in self.files:
            raise BesError(f"the service answered 400: the leased job names no {uri}")
        dest.write_bytes(self.files[uri].read_bytes())


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    qemu_img = require("qemu-img", "qemu-utils")
    subprocess.run(
        [qemu_img, "create", "-q", "-f", "qcow2", str(tmp_path / "d.qcow2"), "32M"],
        check=True,
        timeout=60,
    )
    return tmp_path / "d.qcow2"


def test_a_store_image_is_fetched_through_the_lease_once_and_cached_by_sha256(
    disk: Path, tmp_path: Path
) -> None:
    sha256 = file_sha256(disk)
    uri = f"bes-store:sha256/{sha256}"
    lease = Lease({uri: disk})
    ref = ImageRef(uri=uri, sha256=sha256, format=ImageFormat.QCOW2)

    repository = ImageRepository(ImageCache(tmp_path / "cache", download=lease.fetch))
    boot, template = repository.resolve(ref)
    assert template is None and boot.disk is not None
    assert boot.disk.path == repository.cache.path(sha256)
    assert file_sha256(boot.disk.path) == sha256
    assert repository.cache.bytes_fetched == disk.stat().st_size

    # The next job's lease is not asked again, nor is a cache without a download.
    again = ImageRepository(ImageCache(tmp_path / "cache", download=Lease({}).fetch))
    assert again.resolve(ref)[0].disk == boot.disk
    assert ImageRepository(ImageCache(tmp_path / "cache")).resolve(ref)[0].disk == boot.disk
    assert lease.requests == [uri]


def test_a_store_image_that_is_not_what_the_job_says_is_not_cached(
    disk: Path, tmp_path: Path
) -> None:
    wrong = "0" * 64
    uri = f"bes-store:sha256/{wrong}"
    cache = ImageCache(tmp_path / "cache", download=Lease({uri: disk}).fetch)
    with pytest.raises(ImageError, match="has sha256"):
        cache.fetch(uri, wrong, ImageFormat.QCOW2)
    assert not cache.has(wrong)
    assert list((tmp_path / "cache" / "objects").iterdir()) == []

    refused = ImageCache(tmp_path / "cache", download=Lease({}).fetch)
    with pytest.raises(ImageError, match="names no"):
        refused.fetch(uri, wrong, ImageFormat.QCOW2)
    without = ImageCache(tmp_path / "cache")
    with pytest.raises(ImageError, match="bes-store: URIs"):
        without.fetch(uri, wrong, ImageFormat.QCOW2)
