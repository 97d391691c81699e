"""The node's image cache: content-addressed by sha256, bounded in size, least recently used
evicted first.

An image is fetched once (http, https or file URI), hashed while it streams, and becomes
visible under its hash only if the hash is the one asked for: a mismatch fails before any
VM boots and leaves nothing behind. A cached image is never written to; VMs boot from
overlays. Entries in use hold a shared lock, and eviction skips them. Conversions to another
format (qemu-img convert, e.g. raw to vdi for VirtualBox) are cached beside the original.

Images come from http, https and file URIs; URIs of other schemes (the service's file store,
``bes-store:``, which a worker reaches through its lease) are fetched by the ``download``
callable the cache is given, into a file the cache then hashes and inspects like any other.

A disk image is hostile input: before it is usable in a format, it is inspected (inspect.py)
and refused unless it names no other file, is what it is declared to be and is not absurdly
large. A fetched image is inspected before it becomes visible under its hash; the verdict is
recorded (``inspected/SHA256.FORMAT``), so each image is inspected once per declared format.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from bes.errors import BesError
from bes.vm.inspect import DEFAULT_MAX_VIRTUAL_BYTES, ImageInfo, InspectionError, inspect_image
from bes.vm.runner import CommandRunner
from bes.vm.spec import ImageFormat

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_CHUNK = 1024 * 1024
_FETCH_TIMEOUT_S = 60.0
_INSPECTION = 1  # the inspection's version: raise it when it grows stricter to inspect again
_OWN_SCHEMES = ("", "file", "http", "https")

Download = Callable[[str, Path], None]
"""Writes the image a URI names to a local file (raises a BesError saying why it cannot)."""


class ImageError(BesError):
    """An image cannot be fetched, its content is not what its checksum says, or it is
    refused by the inspection (it names other files, is not in its declared format, ...)."""


class ImageCache:
    """The node's images.

    Args:
        root: The cache directory.
        limit_bytes: The cache's size; least recently used entries are evicted beyond it.
        runner: Runs qemu-img.
        img_binary: The qemu-img to run.
        max_virtual_bytes: The largest virtual disk size of an image accepted.
        download: Fetches URIs of schemes other than http, https and file.
    """

    def __init__(
        self,
        root: Path,
        *,
        limit_bytes: int = 20 * 1024**3,
        runner: CommandRunner | None = None,
        img_binary: str = "qemu-img",
        max_virtual_bytes: int = DEFAULT_MAX_VIRTUAL_BYTES,
        download: Download | None = None,
    ) -> None:
        self.root = root.resolve()  # paths handed to hypervisors must not be relative
        self._download = download
        self.limit_bytes = limit_bytes
        self.max_virtual_bytes = max_virtual_bytes
        self.bytes_fetched = 0
        self._runner = runner or CommandRunner()
        self._img_binary = img_binary
        (root / "objects").mkdir(parents=True, exist_ok=True)
        (root / "converted").mkdir(exist_ok=True)
        (root / "inspected").mkdir(exist_ok=True)

    # -- lookup and fetch ------------------------------------------------------------------

    def path(self, sha256: str) -> Path:
        return self.root / "objects" / _checked(sha256)

    def has(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def fetch(self, uri: str, sha256: str, image_format: ImageFormat) -> Path:
        """The cached disk image with this hash, downloaded from ``uri`` if needed, and
        inspected as an image in ``image_format``.

        Raises:
            ImageError: The image cannot be fetched, has another hash, or is refused.
        """
        target = self.path(sha256)
        if not target.exists():
            if urllib.parse.urlsplit(uri).scheme.lower() not in _OWN_SCHEMES:
                with self._lock():
                    if not target.exists():
                        self._store_download(uri, sha256, image_format)
            else:
                with self._lock(), self._source(uri) as source:
                    if not target.exists():  # else another process fetched it meanwhile
                        self._store(source, sha256, uri, image_format=image_format)
            self.evict()
        return self.disk(sha256, image_format, origin=uri)

    def add(self, path: Path, *, image_format: ImageFormat | None = None) -> str:
        """Put a local file in the cache (e.g. a template built here); returns its sha256.

        A disk image names its ``image_format`` and is inspected (ImageError if refused); a
        file added without one (a kernel, an initrd) is not a disk.
        """
        digest = file_sha256(path)
        if not self.has(digest):
            with self._lock(), path.open("rb") as source:
                self._store(source, digest, str(path), image_format=image_format, count=False)
        self.evict()
        if image_format is not None:
            self.disk(digest, image_format, origin=str(path))
        return digest

    def disk(self, sha256: str, image_format: ImageFormat, *, origin: str | None = None) -> Path:
        """The cached image as a disk in ``image_format``, inspected once for that format.

        Raises:
            ImageError: The image is not in the cache, or it is refused.
        """
        path = self.path(sha256)
        if not path.exists():
            raise ImageError(f"the image {sha256} is not in the cache")
        _touch(path)
        record = self._record(sha256, image_format)
        info = _recorded(record)
        # Inspected once per format; again if the size limit has been lowered since.
        if info is None or info.virtual_size_bytes > self.max_virtual_bytes:
            _write_record(record, self._inspect(path, image_format, origin or sha256))
        return path

    @contextlib.contextmanager
    def use(self, sha256: str) -> Iterator[Path]:
        """Hold the entry (it will not be evicted) while a VM boots from it."""
        path = self.path(sha256)
        with path.open("rb") as held:
            fcntl.flock(held, fcntl.LOCK_SH)
            _touch(path)
            yield path

    def converted(self, sha256: str, source_format: ImageFormat, target: ImageFormat) -> Path:
        """The image in another format, converted once with qemu-img."""
        source = self.disk(sha256, source_format)  # never convert what refers to other files
        if source_format is target:
            return source
        converted = self.root / "converted" / f"{_checked(sha256)}.{target.value}"
        if converted.exists():
            _touch(converted)
            return converted
        with self._lock():
            if not converted.exists():
                partial = converted.with_name(converted.name + ".partial")
                self._runner.run(
                    [
                        self._img_binary,
                        "convert",
                        "-q",
                        "-f",
                        source_format.value,
                        "-O",
                        target.value,
                        str(source),
                        str(partial),
                    ],
                    timeout_s=3600.0,
                )
                partial.rename(converted)
        return converted

    # -- eviction --------------------------------------------------------------------------

    def size(self) -> int:
        return sum(entry.stat().st_size for entry in self._entries())

    def evict(self) -> list[Path]:
        """Remove least recently used entries until the cache fits its limit."""
        removed: list[Path] = []
        entries = sorted(self._entries(), key=lambda entry: entry.stat().st_mtime)
        total = sum(entry.stat().st_size for entry in entries)
        for entry in entries:
            if total <= self.limit_bytes:
                break
            size = entry.stat().st_size
            if _remove_unless_in_use(entry):
                total -= size
                removed.append(entry)
                if entry.parent.name == "objects":
                    for record in (self.root / "inspected").glob(f"{entry.name}.*"):
                        record.unlink(missing_ok=True)
                log.info("evicted %s (%d bytes) from the image cache", entry.name, size)
        return removed

    # -- internals -------------------------------------------------------------------------

    def _entries(self) -> list[Path]:
        return [
            entry
            for folder in (self.root / "objects", self.root / "converted")
            for entry in folder.iterdir()
            if entry.is_file() and not entry.name.endswith(".partial")
        ]

    def _record(self, sha256: str, image_format: ImageFormat) -> Path:
        return self.root / "inspected" / f"{_checked(sha256)}.{image_format.value}"

    def _inspect(self, path: Path, image_format: ImageFormat, origin: str) -> ImageInfo:
        try:
            info = inspect_image(
                path,
                image_format,
                runner=self._runner,
                img_binary=self._img_binary,
                max_virtual_bytes=self.max_virtual_bytes,
            )
        except InspectionError as exc:
            log.warning("refused the image %s (declared %s): %s", origin, image_format.value, exc)
            raise ImageError(
                f"the image {origin} (declared {image_format.value}) is refused: {exc}"
            ) from exc
        except OSError as exc:
            raise ImageError(f"cannot inspect the image at {origin}: {exc}") from exc
        return info

    def _store(
        self,
        source: BinaryIO,
        sha256: str,
        origin: str,
        *,
        image_format: ImageFormat | None,
        count: bool = True,
    ) -> None:
        target = self.path(sha256)
        digest = hashlib.sha256()
        handle, partial_name = tempfile.mkstemp(dir=target.parent, suffix=".partial")
        partial = Path(partial_name)
        try:
            with os.fdopen(handle, "wb") as out:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    if count:
                        self.bytes_fetched += len(chunk)
            self._commit(partial, digest.hexdigest(), sha256, origin, image_format)
        finally:
            partial.unlink(missing_ok=True)

    def _store_download(self, uri: str, sha256: str, image_format: ImageFormat) -> None:
        if self._download is None:
            scheme = urllib.parse.urlsplit(uri).scheme
            raise ImageError(f"images cannot be fetched from {scheme}: URIs here")
        handle, partial_name = tempfile.mkstemp(dir=self.path(sha256).parent, suffix=".partial")
        os.close(handle)
        partial = Path(partial_name)
        try:
            try:
                self._download(uri, partial)
            except BesError as exc:
                raise ImageError(f"cannot fetch the image at {uri}: {exc}") from exc
            self.bytes_fetched += partial.stat().st_size
            self._commit(partial, file_sha256(partial), sha256, uri, image_format)
        finally:
            partial.unlink(missing_ok=True)

    def _commit(
        self,
        partial: Path,
        actual: str,
        sha256: str,
        origin: str,
        image_format: ImageFormat | None,
    ) -> None:
        """Make a fetched file visible under its hash, if it is the one asked for and (a
        disk) passes the inspection; a refused image never becomes visible."""
        if actual != sha256:
            raise ImageError(f"the image at {origin} has sha256 {actual}, not {sha256}")
        info = self._inspect(partial, image_format, origin) if image_format else None
        partial.chmod(0o444)
        partial.rename(self.path(sha256))
        if info is not None:
            _write_record(self._record(sha256, info.format), info)

    @contextlib.contextmanager
    def _source(self, uri: str) -> Iterator[BinaryIO]:
        parsed = urllib.parse.urlsplit(uri)
        try:
            if parsed.scheme in ("", "file"):
                with Path(urllib.parse.unquote(parsed.path)).open("rb") as local:
                    yield local
            elif parsed.scheme in ("http", "https"):
                with urllib.request.urlopen(uri, timeout=_FETCH_TIMEOUT_S) as remote:  # noqa: S310 - scheme checked
                    yield remote
            else:
                raise ImageError(f"images cannot be fetched from {parsed.scheme}: URIs")
        except OSError as exc:
            raise ImageError(f"cannot fetch the image at {uri}: {exc}") from exc

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def file_sha256(path: Path) -> str:
    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


def _recorded(record: Path) -> ImageInfo | None:
    """The inspection recorded in ``record``, if any (and by this version of it)."""
    try:
        data = json.loads(record.read_text())
        if data["inspection"] != _INSPECTION:
            return None
        return ImageInfo(
            format=ImageFormat(data["format"]), virtual_size_bytes=int(data["virtual_size_bytes"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(record: Path, info: ImageInfo) -> None:
    data = {
        "inspection": _INSPECTION,
        "format": info.format.value,
        "virtual_size_bytes": info.virtual_size_bytes,
    }
    handle, partial = tempfile.mkstemp(dir=record.parent, suffix=".partial")
    with os.fdopen(handle, "w") as out:
        json.dump(data, out)
    os.replace(partial, record)


def _checked(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise ImageError(f"{sha256!r} is not a lower-case hexadecimal sha256")
    return sha256


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _remove_unless_in_use(entry: Path) -> bool:
    try:
        with entry.open("rb") as held:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            entry.unlink()
            return True
    except OSError:
        return False
