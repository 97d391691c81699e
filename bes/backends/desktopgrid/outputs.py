"""Files that jobs produced, kept by the service for their owners.

Each attempt of a job (each lease) uploads into a directory of its own,
``<root>/<job id>/<lease epoch>/``, so uploads of a worker whose lease ran out never mix with
those of the job's new owner. The attempt that completes is recorded in the queue; the
directories of other attempts are removed. Files are written as ``NAME.partial`` and renamed
when complete, so a reader never sees half a file.

Replicas of the service must share ``root`` (a network file system) until outputs move to an
object store.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from bes.backends.base import PARTIAL, kept_files
from bes.errors import BesError, InvalidRequest
from bes.ids import BackendJobId
from bes.vm.media import UnsafePath, safe_relative


class OutputTooLarge(BesError):
    """An upload would take an attempt's files past the configured limit."""


class OutputStore:
    """Kept files on the local disk (see the module docstring).

    Args:
        root: The directory holding every job's files.
        max_bytes: Most bytes one attempt may store.
    """

    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)

    def attempt_dir(self, job_id: BackendJobId, epoch: int) -> Path:
        """The directory of one attempt's files."""
        return self.root / _safe_component(job_id) / str(int(epoch))

    @contextlib.contextmanager
    def writer(self, job_id: BackendJobId, epoch: int, name: str) -> Iterator[BinaryIO]:
        """A file to write one output into; it appears under its name only when closed
        without an error.

        Raises:
            UnsafePath: ``name`` would leave the attempt's directory.
        """
        relative = safe_relative(name)
        target = self.attempt_dir(job_id, epoch) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + PARTIAL)
        try:
            with partial.open("wb") as out:
                yield out
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)

    def used_bytes(self, job_id: BackendJobId, epoch: int) -> int:
        """Bytes stored so far by one attempt (complete and partial files)."""
        return sum(size for _, size in kept_files(self.attempt_dir(job_id, epoch), partial=True))

    def uploaded(self, job_id: BackendJobId, epoch: int, names: Sequence[str]) -> dict[str, int]:
        """The sizes of the files a worker says it uploaded for one attempt.

        Raises:
            InvalidRequest: One of them is not there.
            UnsafePath: A name leaves the attempt's directory.
        """
        sizes = {}
        attempt = self.attempt_dir(job_id, epoch)
        for name in names:
            relative = safe_relative(name)
            try:
                sizes[relative] = (attempt / relative).stat().st_size
            except OSError:
                raise InvalidRequest(f"file {name!r} was not uploaded for this lease") from None
        return sizes

    def files(self, job_id: BackendJobId, epoch: int) -> dict[str, int]:
        """One attempt's complete files: relative name to size in bytes."""
        if not os.path.isdir(os.path.join(self.root, _safe_component(job_id))):
            return {}  # the common case of a job without uploads, answered with one stat
        return dict(kept_files(self.attempt_dir(job_id, epoch)))

    def keep_only(self, job_id: BackendJobId, epoch: int | None) -> None:
        """Remove every attempt's files but those of ``epoch`` (None: remove them all)."""
        job_dir = self.root / _safe_component(job_id)
        if not os.path.isdir(job_dir):
            return
        for attempt in job_dir.iterdir():
            if epoch is None or attempt.name != str(epoch):
                shutil.rmtree(attempt, ignore_errors=True)
        if epoch is None:
            shutil.rmtree(job_dir, ignore_errors=True)


def _safe_component(job_id: str) -> str:
    if not job_id or "/" in job_id or job_id in (".", ".."):
        raise UnsafePath(f"{job_id!r} is not a job identifier")
    return job_id


__all__ = ["OutputStore", "OutputTooLarge", "UnsafePath"]
