"""The file store on its own (bes.filestore), with a clock the test moves: uploads in parts,
refusals that give the quota back, removal, and expiry of unused files and stale uploads, on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bes.db import file_rows as rows
from bes.db.store import Database
from bes.filerefs import (
    ChecksumMismatch,
    FileExpired,
    FileInUse,
    FileRef,
    FileTooLarge,
    NoSuchFile,
    OffsetMismatch,
    OverQuota,
    UploadBusy,
)
from bes.filestore import FileStore
from tests.db.test_file_rows import activity, end

pytestmark = pytest.mark.anyio

T0 = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
DAY = 86400.0


class Clock:
    """The store's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


async def body(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db: Database, tmp_path: Path, clock: Clock) -> FileStore:
    return FileStore(
        db,
        tmp_path / "files",
        max_file_bytes=1000,
        quota_bytes=1500,
        expire_after_s=7 * DAY,
        clock=clock,
    )


async def put(store: FileStore, owner: str, data: bytes) -> str:
    digest = sha(data)
    done = await store.receive(owner, digest, body(data), start=0, total=len(data))
    assert done.complete
    return digest


def store_ref(digest: str) -> FileRef:
    return FileRef(sha256=digest)


def partials(store: FileStore) -> list[Path]:
    """What uploads left behind (parts and their lock files)."""
    return list(store.root.glob("*/partial/*"))


async def test_an_upload_in_two_parts_is_invisible_until_its_last_byte(store: FileStore) -> None:
    data = b"0123456789" * 30
    digest = sha(data)
    first = await store.receive("alice", digest, body(data[:100]), start=0, total=len(data))
    assert (first.complete, first.offset) == (False, 100)
    assert (await store.upload_state("alice", digest)).offset == 100
    with pytest.raises(NoSuchFile):
        await store.live("alice", store_ref(digest))
    assert await store.listing("alice") == []
    # Resuming anywhere but where it stopped is refused, saying where.
    with pytest.raises(OffsetMismatch) as wrong:
        await store.receive("alice", digest, body(data[50:]), start=50, total=len(data))
    assert wrong.value.offset == 100 and "bytes 100-299/300" in str(wrong.value)
    rest = await store.receive("alice", digest, body(data[100:]), start=100, total=len(data))
    assert rest.complete
    assert store.blob("alice", digest).read_bytes() == data
    assert await store.usage("alice") == (300, 1500)
    assert partials(store) == []
    # The same file again is taken without storing anything more.
    again = await store.receive("alice", digest, body(data), start=0, total=len(data))
    assert again.complete and await store.usage("alice") == (300, 1500)


async def test_a_wrong_checksum_stores_nothing_and_gives_the_quota_back(store: FileStore) -> None:
    claimed = sha(b"what the client meant")
    with pytest.raises(ChecksumMismatch) as refused:
        await store.receive("alice", claimed, body(b"something else"), start=0, total=14)
    assert claimed in str(refused.value) and "nothing was stored" in str(refused.value)
    assert await store.usage("alice") == (0, 1500)
    assert not store.blob("alice", claimed).exists() and partials(store) == []
    assert (await store.upload_state("alice", claimed)).offset == 0


async def test_too_large_and_over_quota_say_the_limits(store: FileStore) -> None:
    with pytest.raises(FileTooLarge) as large:
        await store.receive("alice", sha(b"x"), body(b"x" * 1001), start=0, total=1001)
    assert "1001" in str(large.value) and "1000" in str(large.value)
    await put(store, "alice", b"a" * 900)
    with pytest.raises(OverQuota) as over:
        await store.receive("alice", sha(b"b" * 700), body(b"b" * 700), start=0, total=700)
    assert "900 of 1500" in str(over.value)
    # Another owner has a quota of their own.
    await put(store, "bob", b"b" * 700)
    assert await store.usage("bob") == (700, 1500)
    assert await store.usage("alice") == (900, 1500)


async def test_removing_a_file_gives_its_bytes_back_unless_an_activity_uses_it(
    store: FileStore, db: Database, clock: Clock
) -> None:
    used = await put(store, "alice", b"input" * 100)
    spare = await put(store, "alice", b"spare" * 100)
    job = activity(db, "alice")
    await store.use(job, "alice", [used])
    with pytest.raises(FileInUse) as busy:
        await store.remove("alice", used)
    assert job in str(busy.value)
    with pytest.raises(NoSuchFile):
        await store.remove("bob", spare)  # not bob's
    await store.remove("alice", spare)
    assert not store.blob("alice", spare).exists()
    assert await store.usage("alice") == (500, 1500)
    end(db, job, clock())
    await store.remove("alice", used)
    assert await store.usage("alice") == (0, 1500)
    assert await store.listing("alice") == []


async def test_an_unused_file_expires_but_its_row_says_it_existed(
    store: FileStore, db: Database, clock: Clock
) -> None:
    digest = await put(store, "alice", b"old data")
    clock.advance(7 * DAY - 60)
    assert await store.expire_once() == 0
    assert (await store.live("alice", store_ref(digest))).bytes == 8
    clock.advance(120)
    assert await store.expire_once() == 1
    assert not store.blob("alice", digest).exists()
    assert await store.usage("alice") == (0, 1500)
    assert await store.listing("alice") == []
    found = db.read_sync(rows.stored, "alice", digest)
    assert found is not None and found.expired_at == clock()
    with pytest.raises(FileExpired) as gone:
        await store.live("alice", store_ref(digest))
    assert "expired" in str(gone.value) and digest in str(gone.value)
    # Uploaded again, it is back.
    await put(store, "alice", b"old data")
    assert (await store.live("alice", store_ref(digest))).expired_at is None
    assert await store.usage("alice") == (8, 1500)


async def test_a_file_an_unended_activity_uses_waits_for_its_end_and_then_the_delay(
    store: FileStore, db: Database, clock: Clock
) -> None:
    digest = await put(store, "alice", b"input of a long job")
    job = activity(db, "alice")
    await store.use(job, "alice", [digest])
    clock.advance(30 * DAY)
    assert await store.expire_once() == 0
    assert store.blob("alice", digest).exists()
    clock.advance(60)
    end(db, job, clock())
    clock.advance(DAY)
    assert await store.expire_once() == 0  # it was in use a day ago
    clock.advance(6 * DAY + 60)
    assert await store.expire_once() == 1
    assert not store.blob("alice", digest).exists()


async def test_a_stale_partial_upload_is_dropped_with_its_reservation(
    store: FileStore, clock: Clock
) -> None:
    data = b"z" * 800
    digest = sha(data)
    await store.receive("alice", digest, body(data[:300]), start=0, total=800)
    assert await store.usage("alice") == (800, 1500)  # reserved in full
    assert len(partials(store)) == 1
    clock.advance(23 * 3600)
    await store.expire_once()
    assert (await store.upload_state("alice", digest)).offset == 300  # still resumable
    clock.advance(2 * 3600)
    await store.expire_once()
    assert partials(store) == []
    assert await store.usage("alice") == (0, 1500)
    assert (await store.upload_state("alice", digest)).offset == 0
    # A new upload of it starts over and completes.
    assert (await store.receive("alice", digest, body(data), start=0, total=800)).complete


async def test_a_second_upload_of_a_file_under_way_is_told_it_is_busy(
    store: FileStore, db: Database, tmp_path: Path, clock: Clock
) -> None:
    data = b"q" * 600
    digest = sha(data)
    started, more = asyncio.Event(), asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield data[:100]
        started.set()
        await more.wait()
        yield data[100:]

    # The same directory and database, as another replica has them.
    replica = FileStore(
        db,
        store.root,
        max_file_bytes=1000,
        quota_bytes=1500,
        expire_after_s=7 * DAY,
        clock=clock,
    )
    first = asyncio.create_task(store.receive("alice", digest, slow(), start=0, total=600))
    await asyncio.wait_for(started.wait(), 10)
    for other in (store, replica):
        with pytest.raises(UploadBusy):
            await other.receive("alice", digest, body(data[100:]), start=100, total=600)
    more.set()
    assert (await asyncio.wait_for(first, 10)).complete
    assert partials(store) == []
    assert await store.usage("alice") == (600, 1500)
    again = await replica.receive("alice", digest, body(data), start=0, total=600)
    assert again.complete
