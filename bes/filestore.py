"""The file store: files users upload for their jobs, and outputs jobs deliver into it.

Files are content-addressed **per owner**: a file is named by its sha256 within its owner's
store, so a file uploaded twice is stored once, and the same bytes under two owners are two
copies (sharing them would let anyone probe for, or claim, another user's file by its hash).
Users may also bind names to their files (``…/files/name/PATH``), which is how one job's
output becomes the next one's input without leaving the service.

Blobs are the objects ``files/<owner key>/<sha256>`` of the service's storage
(:mod:`bes.storage`, shared by every replica; or ``<owner key>/<sha256>`` in a directory of
their own, ``bes serve --files-dir``); uploads grow ``…/<owner key>/partial/<key>`` until
their last byte is in and the checksum matches, then are renamed into place, so a job never
sees half a file. Which files exist, their names, the activities that use them, each owner's
usage and quota and the uploads under way are in the database (bes.db.file_rows), so quotas
hold across replicas sharing the database and the storage.

A file that no unended activity uses, and that nobody uploaded, named or used for
``expire_after_s``, expires: its blob goes, its row stays, so a job that still names it fails
saying the file expired rather than that it never existed.

In the jobs the service stores, Sources and Targets in the store are rewritten to
``bes-store:sha256/HEX`` and ``bes-store:name/PATH`` (:func:`store_uri`): workers fetch and
deliver those through the worker protocol, for the leases they hold, with their own token.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from bes.db import file_rows as rows
from bes.db.file_rows import StoredFile
from bes.db.store import Database
from bes.errors import InvalidRequest
from bes.filerefs import (
    ChecksumMismatch,
    FileExpired,
    FileInUse,
    FileRef,
    FileTooLarge,
    InvalidFileRequest,
    NoSuchFile,
    OffsetMismatch,
    OverQuota,
    UploadBusy,
    store_uri,
)
from bes.jsdl.model import JobDefinition
from bes.storage import DirectoryStorage, Storage, StorageBusy, StorageError, join_key

log = logging.getLogger(__name__)

_WRITE_BUFFER: Final = 1024 * 1024
_EXPIRE_BATCH: Final = 500
_UPLOAD_STALE_S: Final = 24 * 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Upload:
    """Where an upload stands."""

    complete: bool
    offset: int
    """Bytes of the file the service holds (all of them when complete)."""
    total: int
    existed: bool = False
    """The file was stored before this upload (whose bytes were not needed)."""


def owner_key(owner: str) -> str:
    """The directory of an owner's files (owner names may be certificate subjects)."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


class FileStore:
    """Files of every owner in a storage, with their rows in ``db``.

    Args:
        db: The service's database.
        root: The storage of the blobs (shared by replicas that share the database), or a
            directory of their own (a :class:`~bes.storage.DirectoryStorage` of it).
        prefix: Where in the storage the blobs are (``files`` in the service's storage;
            empty: at its top).
        max_file_bytes: Largest file accepted.
        quota_bytes: Each owner's quota unless an administrator set another.
        expire_after_s: Unused files are removed after this long.
        clock: The current time (aware, UTC).
    """

    def __init__(
        self,
        db: Database,
        root: Path | Storage,
        *,
        prefix: str = "",
        max_file_bytes: int,
        quota_bytes: int,
        expire_after_s: float,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._db = db
        self.storage = root if isinstance(root, Storage) else DirectoryStorage(root)
        self._prefix = join_key(prefix)
        self.root = self.storage.local_path(self._prefix)
        """The directory of the blobs when the storage is a directory (None: not local)."""
        self.max_file_bytes = max_file_bytes
        self.quota_bytes = quota_bytes
        self.expire_after_s = expire_after_s
        self._clock = clock
        self._busy: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ paths

    def blob(self, owner: str, sha256: str) -> Path:
        """The local file of the owner's blob, to hand to an HTTP response or a tool.

        Raises:
            StorageError: The storage keeps no local files (an object store).
        """
        path = self.storage.local_path(self._blob(owner, sha256))
        if path is None:
            raise StorageError(f"{self.storage!r} has no local files")
        return path

    def _blob(self, owner: str, sha256: str) -> str:
        return join_key(self._prefix, owner_key(owner), sha256)

    def _stored(self, owner: str, sha256: str) -> bool:
        return self.storage.size(self._blob(owner, sha256)) is not None

    def _partial(self, owner: str, key: str) -> str:
        return join_key(self._prefix, owner_key(owner), "partial", key)

    # ------------------------------------------------------------------ reads

    async def live(self, owner: str, ref: FileRef) -> StoredFile:
        """The owner's live file ``ref`` names.

        Raises:
            FileExpired: It expired or was removed.
            NoSuchFile: The owner never stored it (or has no such name).
        """
        sha256 = ref.sha256
        if sha256 is None:
            sha256 = await self._db.read(rows.named, owner, ref.name or "")
            if sha256 is None:
                raise NoSuchFile(f"there is no file named {ref.name!r} in your file store")
        found = await self._db.read(rows.stored, owner, sha256)
        if found is None:
            raise NoSuchFile(f"there is no file with sha256 {sha256} in your file store")
        if found.expired_at is not None or not self._stored(owner, sha256):
            when = found.expired_at or found.last_used_at
            raise FileExpired(
                f"the uploaded file with sha256 {sha256} expired or was removed on "
                f"{when:%Y-%m-%d %H:%M} UTC (files unused for {self.expire_after_s / 86400:g} "
                "days expire); upload it again"
            )
        return found

    async def upload_state(self, owner: str, sha256: str) -> Upload:
        """Whether the owner holds the file, or how much of an upload of it."""
        found = await self._db.read(rows.stored, owner, sha256)
        if found is not None and found.expired_at is None and self._stored(owner, sha256):
            return Upload(complete=True, offset=found.bytes, total=found.bytes)
        total = await self._db.read(rows.upload_total, owner, sha256)
        held = self.storage.size(self._partial(owner, sha256)) if total is not None else None
        offset = held or 0
        return Upload(complete=False, offset=offset, total=total or 0)

    async def listing(self, owner: str, limit: int = 10_000) -> list[StoredFile]:
        return await self._db.read(rows.listing, owner, limit)

    async def usage(self, owner: str) -> tuple[int, int]:
        """The owner's used bytes and quota."""
        used, quota = await self._db.read(rows.usage, owner)
        return used, quota if quota is not None else self.quota_bytes

    # ------------------------------------------------------------------ uploads

    async def receive(
        self,
        owner: str,
        sha256: str,
        body: AsyncIterator[bytes],
        *,
        start: int,
        total: int,
    ) -> Upload:
        """Store the bytes ``[start, …)`` of the owner's file ``sha256`` of ``total`` bytes.

        Raises:
            FileTooLarge, OverQuota, OffsetMismatch, UploadBusy, ChecksumMismatch.
        """
        state = await self.upload_state(owner, sha256)
        if state.complete:
            await self._drain(body)
            return dataclasses.replace(state, existed=True)
        await self._reserve(owner, sha256, total)
        with self._exclusive(owner, sha256) as partial:
            offset = self.storage.size(partial) or 0
            if start != offset:
                await self._drain(body)
                raise OffsetMismatch(
                    f"this upload holds {offset} bytes; resume from there "
                    f"(Content-Range: bytes {offset}-{total - 1}/{total})",
                    offset,
                )
            digest = hashlib.sha256()
            if offset:
                await asyncio.to_thread(self._hash_into, digest, partial)
            received = await self._append(
                partial, body, offset=offset, total=total, upload=(owner, sha256), digest=digest
            )
            if received < total:
                return Upload(complete=False, offset=received, total=total)
            if digest.hexdigest() != sha256:
                self.storage.delete(partial)
                await self._db.write(rows.abandon_upload, (owner, sha256))
                raise ChecksumMismatch(
                    f"the {total} bytes received have sha256 {digest.hexdigest()}, "
                    f"not {sha256}; nothing was stored"
                )
            await self._commit(partial, owner, sha256, sha256)
        return Upload(complete=True, offset=total, total=total)

    async def store_stream(
        self, owner: str, body: AsyncIterator[bytes], *, total: int, name: str | None = None
    ) -> str:
        """Store a whole file whose sha256 is not known beforehand (a named PUT, a job's
        output); bind ``name`` to it. Returns its sha256.

        Raises:
            FileTooLarge, OverQuota, ChecksumMismatch (fewer bytes than ``total``).
        """
        key = "upload-" + secrets.token_hex(16)
        await self._reserve(owner, key, total)
        partial = self._partial(owner, key)
        digest = hashlib.sha256()
        try:
            received = await self._append(
                partial, body, offset=0, total=total, upload=(owner, key), digest=digest
            )
            if received != total:
                raise ChecksumMismatch(f"{received} bytes received of {total} announced")
        except BaseException:
            self.storage.delete(partial)
            await self._db.write(rows.abandon_upload, (owner, key))
            raise
        sha256 = digest.hexdigest()
        await self._commit(partial, owner, key, sha256)
        if name is not None:
            await self._db.write(rows.bind_name, (owner, name, sha256, self._clock()))
        return sha256

    async def _reserve(self, owner: str, key: str, total: int) -> None:
        if total > self.max_file_bytes:
            raise FileTooLarge(
                f"the file has {total} bytes; this service takes files of at most "
                f"{self.max_file_bytes} bytes"
            )
        granted = await self._db.write(
            rows.reserve_upload, (owner, key, total, self.quota_bytes, self._clock())
        )
        if not granted.granted:
            raise OverQuota(
                f"storing {total} bytes would exceed your quota: {granted.used_bytes} of "
                f"{granted.quota_bytes} bytes are used (remove files with DELETE, or ask "
                "the administrator for more)"
            )
        if granted.total_bytes != total:
            raise OffsetMismatch(
                f"an upload of this file of {granted.total_bytes} bytes is under way, not {total}",
                0,
            )

    async def _append(
        self,
        partial: str,
        body: AsyncIterator[bytes],
        *,
        offset: int,
        total: int,
        upload: tuple[str, str],
        digest: hashlib._Hash,
    ) -> int:
        """Append the body to ``partial``; bytes held after (never more than ``total``)."""
        received = offset
        touched = offset
        out: IO[bytes]
        with self.storage.appender(partial) as out:
            async for chunk in body:
                received += len(chunk)
                if received > total:
                    raise ChecksumMismatch(f"more than the {total} bytes announced")
                out.write(chunk)
                digest.update(chunk)
                if received - touched > 256 * _WRITE_BUFFER:
                    touched = received
                    await self._db.write(rows.touch_upload, (*upload, self._clock()))
        return received

    async def _commit(self, partial: str, owner: str, key: str, sha256: str) -> None:
        await asyncio.to_thread(self.storage.rename, partial, self._blob(owner, sha256))
        await self._db.write(rows.finish_upload, (owner, key, sha256, self._clock()))

    @staticmethod
    async def _drain(body: AsyncIterator[bytes]) -> None:
        async for _ in body:
            pass

    @contextlib.contextmanager
    def _exclusive(self, owner: str, key: str) -> Iterator[str]:
        """The partial object of an upload, held against other uploads of it (in this
        process, and through the storage's lock in others sharing it)."""
        if (owner, key) in self._busy:
            raise UploadBusy("another upload of this file is under way")
        partial = self._partial(owner, key)
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self.storage.lock(partial))
            except StorageBusy:
                raise UploadBusy("another upload of this file is under way") from None
            self._busy.add((owner, key))
            try:
                yield partial
            finally:
                self._busy.discard((owner, key))

    def _hash_into(self, digest: hashlib._Hash, partial: str) -> None:
        """Go on hashing with the bytes of ``partial`` (a resumed upload's stored part)."""
        with self.storage.open(partial) as source:
            while chunk := source.read(_WRITE_BUFFER):
                digest.update(chunk)

    # ------------------------------------------------------------------ names, removal, use

    async def bind(self, owner: str, name: str, sha256: str) -> None:
        if not await self._db.write(rows.bind_name, (owner, name, sha256, self._clock())):
            raise NoSuchFile(f"there is no file with sha256 {sha256} in your file store")

    async def unbind(self, owner: str, name: str) -> None:
        if not await self._db.write(rows.unbind_name, (owner, name)):
            raise NoSuchFile(f"there is no file named {name!r} in your file store")

    async def remove(self, owner: str, sha256: str) -> None:
        """Remove the owner's file (its names too).

        Raises:
            FileInUse: An activity that has not ended uses it, or it is one of their images.
            NoSuchFile: There is none.
        """
        user = await self._db.read(rows.in_use_by, owner, sha256)
        if user is not None:
            raise FileInUse(f"activity {user} uses this file; it can be removed once that ends")
        image = await self._db.read(rows.image_of, owner, sha256)
        if image is not None:
            raise FileInUse(f"it is your image {image!r}; remove the image first")
        if await self._db.write(rows.remove_file, (owner, sha256, self._clock())) is not None:
            self.storage.delete(self._blob(owner, sha256))
            return
        # An upload given up on: its part goes and its reservation is given back.
        if await self._db.read(rows.upload_total, owner, sha256) is None:
            raise NoSuchFile(f"there is no file with sha256 {sha256} in your file store")
        with self._exclusive(owner, sha256) as partial:
            self.storage.delete(partial)
            await self._db.write(rows.abandon_upload, (owner, sha256))

    async def localize(
        self, owner: str, job: JobDefinition, endpoint: str
    ) -> tuple[JobDefinition, list[str]]:
        """``job`` (of ``owner``, submitted at ``endpoint``) with its Sources and Targets in
        the store rewritten to ``bes-store:`` URIs, inputs named by their sha256 (names are
        resolved now); and the sha256 of the files it uses.

        Raises:
            InvalidRequest: It names a file the owner has not stored, or a Target by sha256.
        """
        stagings, used = [], []
        for given in job.job_description.data_staging:
            staging = given
            try:
                source = store_uri(staging.source, endpoint) if staging.source else None
                target = store_uri(staging.target, endpoint) if staging.target else None
            except InvalidFileRequest as exc:
                raise InvalidRequest(f"DataStaging {staging.file_name!r}: {exc}") from exc
            if source is not None:
                sha256 = source.sha256
                try:
                    sha256 = (await self.live(owner, source)).sha256
                except NoSuchFile as exc:
                    # An expired input named by its sha256 is taken: the job fails saying so
                    # when it is staged in.
                    if sha256 is None or not isinstance(exc, FileExpired):
                        raise InvalidRequest(f"input {staging.file_name!r}: {exc}") from exc
                used.append(sha256)
                staging = dataclasses.replace(
                    staging, source=FileRef(sha256=sha256).uri, credential=None
                )
            if target is not None:
                if target.name is None:
                    raise InvalidRequest(
                        f"output {staging.file_name!r}: a Target in the file store is "
                        ".../files/name/PATH (a file's sha256 is known only once it exists)"
                    )
                staging = dataclasses.replace(staging, target=target.uri, credential=None)
            stagings.append(staging)
        if stagings == list(job.job_description.data_staging):
            return job, used
        description = dataclasses.replace(job.job_description, data_staging=tuple(stagings))
        return dataclasses.replace(job, job_description=description), used

    async def use(self, activity_id: str, owner: str, sha256s: list[str]) -> None:
        """Record that an activity uses these files (they stay while it has not ended)."""
        at = self._clock()
        # Submitted together, so the group committer writes them in one transaction.
        await asyncio.gather(
            *(
                self._db.write(rows.use_files, (activity_id, owner, sha256, at))
                for sha256 in dict.fromkeys(sha256s)
            )
        )

    # ------------------------------------------------------------------ housekeeping

    async def expire_once(self) -> int:
        """Expire unused files and stale uploads; how many files went."""
        now = self._clock()
        before = now - dt.timedelta(seconds=self.expire_after_s)
        expired = await self._db.write(rows.expire_files, (before, now, _EXPIRE_BATCH))
        for owner, sha256 in expired:
            self.storage.delete(self._blob(owner, sha256))
        if expired:
            log.info("file store: %d unused files expired", len(expired))
        stale = await self._db.write(
            rows.stale_uploads, now - dt.timedelta(seconds=_UPLOAD_STALE_S)
        )
        for owner, key in stale:
            self.storage.delete(self._partial(owner, key))
        return len(expired)

    async def run(self, stop: asyncio.Event, every_s: float = 60.0) -> None:
        """Expire files every ``every_s`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.expire_once()
            except Exception:  # housekeeping must go on; the next round retries
                log.exception("file store housekeeping failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
