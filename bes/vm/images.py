"""The node's image cache: content-addressed by sha256, bounded in size, least recently used
evicted first.

An image is fetched once (http, https or file URI), hashed while it streams, and becomes
visible under its hash only if the hash is the one asked for: a mismatch fails before any
VM boots and leaves nothing behind. A cached image is never written to; VMs boot from
overlays. Entries in use hold a shared lock, and eviction skips them. Conversions to another
format (qemu-img convert, e.g. raw to vdi for VirtualBox) are cached beside the original.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from bes.errors import BesError
from bes.vm.runner import CommandRunner
from bes.vm.spec import ImageFormat

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_CHUNK = 1024 * 1024
_FETCH_TIMEOUT_S = 60.0


class ImageError(BesError):
    """An image cannot be fetched, or its content is not what its checksum says."""


class ImageCache:
    def __init__(
        self,
        root: Path,
        *,
        limit_bytes: int = 20 * 1024**3,
        runner: CommandRunner | None = None,
        img_binary: str = "qemu-img",
    ) -> None:
        self.root = root.resolve()  # paths handed to hypervisors must not be relative
        self.limit_bytes = limit_bytes
        self.bytes_fetched = 0
        self._runner = runner or CommandRunner()
        self._img_binary = img_binary
        (root / "objects").mkdir(parents=True, exist_ok=True)
        (root / "converted").mkdir(exist_ok=True)

    # -- lookup and fetch ------------------------------------------------------------------

    def path(self, sha256: str) -> Path:
        return self.root / "objects" / _checked(sha256)

    def has(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def fetch(self, uri: str, sha256: str) -> Path:
        """The cached image with this hash, downloading it from ``uri`` if needed."""
        target = self.path(sha256)
        if target.exists():
            _touch(target)
            return target
        with self._lock(), self._source(uri) as source:
            if target.exists():  # another process fetched it meanwhile
                return target
            self._store(source, sha256, uri)
        self.evict()
        return target

    def add(self, path: Path) -> str:
        """Put a local file in the cache (e.g. a template built here); returns its sha256."""
        digest = file_sha256(path)
        if not self.has(digest):
            with self._lock(), path.open("rb") as source:
                self._store(source, digest, str(path), count=False)
        self.evict()
        return digest

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
        if source_format is target:
            return self.path(sha256)
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
                        str(self.path(sha256)),
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

    def _store(self, source: BinaryIO, sha256: str, origin: str, *, count: bool = True) -> None:
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
            if digest.hexdigest() != sha256:
                raise ImageError(
                    f"the image at {origin} has sha256 {digest.hexdigest()}, not {sha256}"
                )
            partial.chmod(0o444)
            partial.rename(target)
        finally:
            partial.unlink(missing_ok=True)

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
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
