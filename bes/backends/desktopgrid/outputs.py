"""Files that jobs produced, kept by the service for their owners.

Each attempt of a job (each lease) uploads under a prefix of its own,
``outputs/<job id>/<lease epoch>/``, so uploads of a worker whose lease ran out never mix with
those of the job's new owner. The attempt that completes is recorded in the queue; the files
of other attempts are removed. Files go through a :class:`~bes.storage.Storage` (the shared
directory every replica mounts, or later an object store), which makes each appear whole or
not at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from bes.errors import BesError, InvalidRequest
from bes.ids import BackendJobId
from bes.storage import LOCK, PARTIAL, Storage, StorageError, join_key
from bes.vm.media import UnsafePath, safe_relative


class OutputTooLarge(BesError):
    """An upload would take an attempt's files past the configured limit."""


class OutputStore:
    """Kept files in a storage (see the module docstring).

    Args:
        storage: Where the files are (shared by every replica).
        prefix: Where in the storage (empty: at its top, a directory of their own).
        max_bytes: Most bytes one attempt may store.
    """

    def __init__(self, storage: Storage, *, prefix: str = "outputs", max_bytes: int) -> None:
        self.storage = storage
        self.prefix = join_key(prefix)
        self.max_bytes = max_bytes

    @property
    def root(self) -> Path | None:
        """The directory holding every job's files, when the storage is a directory."""
        return self.storage.local_path(self.prefix)

    def attempt_key(self, job_id: BackendJobId, epoch: int) -> str:
        """The storage prefix of one attempt's files."""
        return join_key(self.prefix, _safe_component(job_id), str(int(epoch)))

    def attempt_dir(self, job_id: BackendJobId, epoch: int) -> Path:
        """The local directory of one attempt's files (for serving them as files).

        Raises:
            StorageError: The storage keeps no local files (an object store).
        """
        path = self.storage.local_path(self.attempt_key(job_id, epoch))
        if path is None:
            raise StorageError(f"{self.storage!r} has no local directories of kept outputs")
        return path

    @contextlib.contextmanager
    def writer(self, job_id: BackendJobId, epoch: int, name: str) -> Iterator[BinaryIO]:
        """A file to write one output into; it appears under its name only when closed
        without an error.

        Raises:
            UnsafePath: ``name`` would leave the attempt's directory.
        """
        with self.storage.writer(self._key(job_id, epoch, name)) as out:
            yield out

    def used_bytes(self, job_id: BackendJobId, epoch: int) -> int:
        """Bytes stored so far by one attempt (complete files and those being written)."""
        listed = self.storage.listing(self.attempt_key(job_id, epoch), incomplete=True)
        return sum(size for _, size in listed)

    def uploaded(self, job_id: BackendJobId, epoch: int, names: Sequence[str]) -> dict[str, int]:
        """The sizes of the files a worker says it uploaded for one attempt.

        Raises:
            InvalidRequest: One of them is not there.
            UnsafePath: A name leaves the attempt's directory.
        """
        sizes = {}
        for name in names:
            size = self.storage.size(self._key(job_id, epoch, name))
            if size is None:
                raise InvalidRequest(f"file {name!r} was not uploaded for this lease")
            sizes[safe_relative(name)] = size
        return sizes

    def files(self, job_id: BackendJobId, epoch: int) -> dict[str, int]:
        """One attempt's complete files: relative name to size in bytes."""
        return dict(self.storage.listing(self.attempt_key(job_id, epoch)))

    def drop_attempt(self, job_id: BackendJobId, epoch: int) -> None:
        """Remove what one attempt uploaded (it will not be the job's result)."""
        self.storage.delete_prefix(self.attempt_key(job_id, epoch))

    def keep_only(self, job_id: BackendJobId, epoch: int | None) -> None:
        """Remove every attempt's files but those of ``epoch`` (None: remove them all)."""
        job_key = join_key(self.prefix, _safe_component(job_id))
        if epoch is None:
            self.storage.delete_prefix(job_key)
            return
        listed = self.storage.listing(job_key, incomplete=True)
        attempts = {key.split("/", 1)[0] for key, _ in listed}
        for attempt in sorted(attempts - {str(int(epoch))}):
            self.storage.delete_prefix(join_key(job_key, attempt))

    def _key(self, job_id: BackendJobId, epoch: int, name: str) -> str:
        relative = safe_relative(name)
        if any(part.endswith((PARTIAL, LOCK)) for part in relative.split("/")):
            raise UnsafePath(f"{name!r}: names ending in {PARTIAL} or {LOCK} are not kept")
        return join_key(self.attempt_key(job_id, epoch), relative)


def _safe_component(job_id: str) -> str:
    if not job_id or "/" in job_id or job_id in (".", ".."):
        raise UnsafePath(f"{job_id!r} is not a job identifier")
    return job_id


__all__ = ["OutputStore", "OutputTooLarge", "UnsafePath"]
