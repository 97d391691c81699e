"""Where the service keeps the files every replica must reach: the files users upload
(:mod:`bes.filestore`) and the outputs the desktop grid keeps for their owners
(:mod:`bes.backends.desktopgrid.outputs`).

A :class:`Storage` holds objects (bytes) under **keys**: ``/``-separated relative names such
as ``files/<owner key>/<sha256>`` or ``outputs/<job id>/<epoch>/stdout``. Callers name
objects by key, never by path, so an object store can take the directory's place without
them changing. Contract, for every implementation:

* A key is checked (:func:`check_key`) before anything is touched: relative, no empty, ``.``
  or ``..`` component, no NUL, and no component ending in :data:`PARTIAL` or :data:`LOCK`
  (names the storage keeps for objects being written and for locks). A bad key raises
  :class:`UnsafeKey`; no key reaches outside the storage.
* Whole or nothing: an object written with :meth:`Storage.writer` or put in place by
  :meth:`Storage.rename` appears complete, and durably (fsync), or not at all; a reader
  never sees half of it, and a failed write leaves the key as it was.
* Missing objects are values, not errors, except for :meth:`Storage.open`
  (:class:`NoSuchKey`): :meth:`Storage.size` answers None, deleting one does nothing.
* Methods block (file or network I/O): async code calls them through
  ``asyncio.to_thread``, or inline where the objects are small. They are thread-safe, and
  safe between processes (replicas) sharing the storage.

:class:`DirectoryStorage` is the shared-directory implementation: a local directory for one
replica, or one network file system (NFS, CephFS) mounted on every replica. Its objects are
files under the root (the key is the relative path), written as ``NAME.<random>.partial`` and
renamed into place after an fsync; locks are ``flock`` on ``KEY.lock`` files (NFS clients
take them as POSIX locks on the server).

An object store (S3 through a maintained library such as boto3) would implement the same
methods: ``writer`` as a multipart upload completed on success and aborted on error;
``appender`` as one part object per append, joined by ``rename`` (a multipart copy);
``lock`` as a lock object created with a conditional put (``If-None-Match: *``) and an
expiry; listings by prefix. It would answer None from :meth:`Storage.local_path`, and the
few callers that hand a local file to something else (the HTTP responses of the file API,
workers' downloads and kept outputs, ``qemu-img`` on a user's disk image) would then stream
from :meth:`Storage.open` instead.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Final

from bes.errors import BesError, InvalidRequest

PARTIAL: Final = ".partial"
"""The suffix of an object still being written (never a key's; hidden from listings)."""
LOCK: Final = ".lock"
"""The suffix of a lock (never a key's)."""
_APPEND_BUFFER: Final = 1024 * 1024


class StorageError(BesError):
    """The storage failed, or cannot do what was asked (e.g. hand out a local file)."""


class NoSuchKey(StorageError):
    """There is no object under the key."""


class StorageBusy(StorageError):
    """Another holder (in this process or another replica) holds the key's lock."""


class UnsafeKey(InvalidRequest):
    """A key that is not a plain relative name inside the storage."""


def check_key(key: str, *, prefix: bool = False) -> str:
    """``key`` if it is a valid key (see the module docstring).

    Args:
        key: The key.
        prefix: Accept the empty key too (the whole storage, as a prefix).

    Raises:
        UnsafeKey: It is not.
    """
    if not key:
        if prefix:
            return key
        raise UnsafeKey("an empty storage key")
    for part in key.split("/"):
        if part in ("", ".", "..") or "\0" in part:
            raise UnsafeKey(
                f"{key[:200]!r} is not a storage key (a relative name with no empty, '.' or "
                "'..' component: it must not leave the storage)"
            )
        if part.endswith((PARTIAL, LOCK)):
            raise UnsafeKey(
                f"{key[:200]!r} is not a storage key (names ending in {PARTIAL} or {LOCK} "
                "are the storage's own)"
            )
    return key


def join_key(*parts: str) -> str:
    """The key of ``parts`` joined with ``/`` (empty parts left out), checked.

    Raises:
        UnsafeKey: The result is not a valid key.
    """
    return check_key("/".join(part for part in parts if part), prefix=True)


class Storage(abc.ABC):
    """Objects under keys, shared by every replica (see the module docstring)."""

    @abc.abstractmethod
    def writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A file to write the object ``key`` into. The object (replacing any before it)
        appears whole, and durably, when the block ends without an error; on an error
        nothing of it appears.

        Raises:
            UnsafeKey: A bad key.
        """

    @abc.abstractmethod
    def appender(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A file appending to the object ``key`` (created if missing), for uploads that
        arrive in parts: what was written is kept when the block ends, even on an error, so
        the upload can resume. Not durable until :meth:`rename` puts it in place; hold
        :meth:`lock` of the key meanwhile.

        Raises:
            UnsafeKey: A bad key.
        """

    @abc.abstractmethod
    def rename(self, source: str, target: str) -> None:
        """Put the object ``source`` in place as ``target`` (replacing any), durably; a
        reader of ``target`` sees the old object or the whole new one.

        Raises:
            NoSuchKey: There is no ``source``.
            UnsafeKey: A bad key.
        """

    @abc.abstractmethod
    def lock(self, key: str) -> AbstractContextManager[None]:
        """Hold ``key`` exclusively for the block, against every other holder (this
        process's and other replicas'). Does not wait.

        Raises:
            StorageBusy: Someone else holds it.
            UnsafeKey: A bad key.
        """

    @abc.abstractmethod
    def open(self, key: str) -> BinaryIO:
        """The object ``key``, open for reading (the caller closes it).

        Raises:
            NoSuchKey: There is none.
            UnsafeKey: A bad key.
        """

    @abc.abstractmethod
    def size(self, key: str) -> int | None:
        """The size in bytes of the object ``key``; None if there is none.

        Raises:
            UnsafeKey: A bad key.
        """

    @abc.abstractmethod
    def listing(self, prefix: str, *, incomplete: bool = False) -> list[tuple[str, int]]:
        """The objects under ``prefix`` (a key, as a folder; empty: all): each one's key
        relative to the prefix and its size in bytes, sorted by key; with ``incomplete``
        also objects being written (named ``KEY.<random>.partial``, by implementations
        that can tell), so that bytes under way can be counted.

        Raises:
            UnsafeKey: A bad prefix.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object ``key`` (nothing if there is none).

        Raises:
            UnsafeKey: A bad key.
        """

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix``, and those being written there.

        Raises:
            UnsafeKey: A bad prefix, or the empty one (the whole storage is never removed).
        """

    def local_path(self, key: str) -> Path | None:
        """The local file (or, for a prefix, directory) holding ``key``, for a caller that
        must hand a real file to something else (an HTTP response, ``qemu-img``); None when
        the storage is not a file system (object stores: use :meth:`open`). Reading only:
        write through the other methods.

        Raises:
            UnsafeKey: A bad key.
        """
        check_key(key, prefix=True)
        return None


class DirectoryStorage(Storage):
    """Objects as files under ``root``: a local directory, or a network file system
    mounted at the same place on every replica (see the module docstring).

    Args:
        root: The directory (created when the first object is written).
    """

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    def __repr__(self) -> str:
        return f"DirectoryStorage({str(self.root)!r})"

    def _path(self, key: str, *, prefix: bool = False) -> Path:
        return self.root.joinpath(*check_key(key, prefix=prefix).split("/"))

    def local_path(self, key: str) -> Path:
        return self._path(key, prefix=True)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own per writer: two writers of one key never mix their bytes.
        temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}{PARTIAL}")
        try:
            with temporary.open("wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
            _fsync_directory(path.parent)
        finally:
            temporary.unlink(missing_ok=True)

    @contextlib.contextmanager
    def appender(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab", buffering=_APPEND_BUFFER) as out:
            try:
                yield out
            finally:
                out.flush()

    def rename(self, source: str, target: str) -> None:
        origin, destination = self._path(source), self._path(target)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            with origin.open("rb+") as written:
                os.fsync(written.fileno())
        except (FileNotFoundError, IsADirectoryError):
            raise NoSuchKey(f"there is no object {source!r} to rename") from None
        os.replace(origin, destination)
        _fsync_directory(destination.parent)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = path.with_name(path.name + LOCK)
        with lock_path.open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StorageBusy(f"{key!r} is locked by another holder") from None
            # The holder removes the lock file before it lets go: one locked after that
            # holds a file nobody else will find, so it counts as busy too.
            if not _same_file(lock_path, lock.fileno()):
                raise StorageBusy(f"{key!r} is locked by another holder")
            try:
                yield
            finally:
                lock_path.unlink(missing_ok=True)

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NoSuchKey(f"there is no object {key!r}") from None

    def size(self, key: str) -> int | None:
        try:
            found = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return found.st_size if stat.S_ISREG(found.st_mode) else None

    def listing(self, prefix: str, *, incomplete: bool = False) -> list[tuple[str, int]]:
        top = self._path(prefix, prefix=True)
        found: list[tuple[str, int]] = []
        if not top.is_dir():  # the common case of nothing there, answered with one stat
            return found
        for directory, _, names in os.walk(top):
            for name in names:
                if name.endswith(LOCK) or (name.endswith(PARTIAL) and not incomplete):
                    continue
                path = Path(directory, name)
                with contextlib.suppress(OSError):  # removed meanwhile
                    found.append((path.relative_to(top).as_posix(), path.stat().st_size))
        return sorted(found)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self._path(key).unlink()

    def delete_prefix(self, prefix: str) -> None:
        if not prefix:
            raise UnsafeKey("the whole storage is never removed: name a prefix")
        top = self._path(prefix)
        if top.is_dir():
            shutil.rmtree(top, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                top.unlink()


def _same_file(path: Path, descriptor: int) -> bool:
    """Whether ``path`` still names the open file ``descriptor``."""
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (some file systems refuse: then it is not)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


__all__ = [
    "LOCK",
    "PARTIAL",
    "DirectoryStorage",
    "NoSuchKey",
    "Storage",
    "StorageBusy",
    "StorageError",
    "UnsafeKey",
    "check_key",
    "join_key",
]
