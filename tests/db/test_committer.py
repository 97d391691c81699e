"""Group commit: batching, ordering, and isolation of a failing write."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import Connection, insert, select, text

from bes.db.store import Database
from bes.db.tables import setting
from bes.errors import StoreError


def put(conn: Connection, items: Sequence[tuple[str, str]]) -> list[str]:
    conn.execute(insert(setting), [{"name": n, "value": v} for n, v in items])
    return [n for n, _ in items]


def read_all(conn: Connection) -> dict[str, str]:
    return {r.name: r.value for r in conn.execute(select(setting))}


class Ticks:
    """Counts the running event loop's turns, one every 10 ms while it is free to run."""

    def __init__(self) -> None:
        self.count = 0
        self._task = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.count += 1

    def stop(self) -> None:
        self._task.cancel()


def test_writes_from_many_threads_share_transactions(db: Database) -> None:
    before = db.transactions
    barrier = threading.Barrier(16)
    results: list[str] = []

    def writer(i: int) -> None:
        barrier.wait()
        for j in range(25):
            results.append(db.write_sync(put, (f"k{i}-{j}", "v")))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 400
    assert len(db.read_sync(read_all)) == 400
    assert db.transactions - before < 400


def test_a_failing_write_does_not_fail_its_neighbours(db: Database) -> None:
    db.write_sync(put, ("taken", "1"))
    futures = [db.committer.submit(put, (name, "x")) for name in ("a", "taken", "b")]
    assert futures[0].result(10) == "a"
    with pytest.raises(StoreError) as info:
        futures[1].result(10)
    assert "IntegrityError" in str(info.value)
    assert futures[2].result(10) == "b"
    assert set(db.read_sync(read_all)) == {"taken", "a", "b"}


def test_read_errors_are_store_errors(db: Database) -> None:
    with pytest.raises(StoreError):
        db.read_sync(lambda conn: conn.execute(text("SELECT * FROM no_such_table")).all())


def test_closed_database_refuses_writes(db: Database) -> None:
    db.write_sync(put, ("x", "1"))
    db.committer.close()
    with pytest.raises(StoreError):
        db.write_sync(put, ("y", "1"))


@pytest.mark.anyio
async def test_loop_committer_isolates_a_failing_write_too(db: Database) -> None:
    import asyncio

    db.write_sync(put, ("taken", "1"))
    results = await asyncio.gather(
        *(db.write(put, (name, "x")) for name in ("a", "taken", "b")), return_exceptions=True
    )
    assert results[0] == "a" and results[2] == "b"
    assert isinstance(results[1], StoreError)
    assert set(await db.read(read_all)) == {"taken", "a", "b"}


@pytest.mark.anyio
async def test_writes_made_while_a_commit_is_on_disk_form_the_next_batch(tmp_path: Path) -> None:
    import asyncio

    with Database(f"sqlite:///{tmp_path / 'x.sqlite3'}") as db:
        db.migrate()
        first = asyncio.ensure_future(db.write(put, ("first", "1")))
        await asyncio.sleep(0)  # its statements ran; its commit is on the commit thread
        rest = [db.write(put, (f"k{i}", "v")) for i in range(50)]
        before = db.transactions
        await first
        assert await asyncio.gather(*rest) == [f"k{i}" for i in range(50)]
        assert db.transactions - before <= 2, "the 50 writes should share one commit"
        assert len(await db.read(read_all)) == 51


@pytest.mark.anyio
async def test_closing_waits_for_the_commit_under_way_and_writes_what_is_pending(
    tmp_path: Path,
) -> None:
    import asyncio

    url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    db = Database(url)
    db.migrate()
    first = asyncio.ensure_future(db.write(put, ("first", "1")))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(db.write(put, ("second", "2")))
    await asyncio.sleep(0)
    db.close()  # as the service does at shutdown, in the loop
    assert await first == "first" and await second == "second"
    with Database(url) as again:
        assert again.read_sync(read_all) == {"first": "1", "second": "2"}


@pytest.mark.anyio
async def test_a_long_write_runs_off_the_loop_alone_and_in_order(tmp_path: Path) -> None:
    import asyncio
    import time

    ran: list[tuple[str, str]] = []

    def logged(conn: Connection, items: Sequence[tuple[str, str]]) -> list[str]:
        ran.extend((name, threading.current_thread().name) for name, _ in items)
        return put(conn, items)

    def slow(conn: Connection, items: Sequence[tuple[str, str]]) -> list[str]:
        time.sleep(0.3)  # (SQLite, too, works without the GIL)
        return logged(conn, items)

    with Database(f"sqlite:///{tmp_path / 'x.sqlite3'}") as db:
        db.migrate()
        db.write_sync(put, ("taken", "1"))
        ticks = Ticks()
        results = await asyncio.gather(
            db.write(logged, ("before", "1")),
            db.write(slow, ("long", "1"), long=True),
            db.write(logged, ("after", "1")),
            db.write(slow, ("taken", "2"), long=True),
            db.write(logged, ("last", "1")),
            return_exceptions=True,
        )
        ticks.stop()
        assert results[:3] == ["before", "long", "after"] and results[4] == "last"
        assert isinstance(results[3], StoreError), "a long write fails alone"
        assert ticks.count >= 20, "the loop went on while the long writes ran"
        assert [name for name, _ in ran] == ["before", "long", "after", "taken", "last"]
        threads = dict(ran[:3])
        assert threads["long"].startswith("bes-commit") and threads["before"] == "MainThread"
        assert await db.read(read_all) == {
            "taken": "1",
            "before": "1",
            "long": "1",
            "after": "1",
            "last": "1",
        }


@pytest.mark.anyio
async def test_the_loop_never_waits_for_another_process_s_write_lock(tmp_path: Path) -> None:
    import asyncio
    import sqlite3
    import time

    path = tmp_path / "x.sqlite3"
    with Database(f"sqlite:///{path}") as db:
        db.migrate()
        assert await db.write(put, ("warm", "1")) == "warm"  # (the loop's connection is open)
        other = sqlite3.connect(path, isolation_level=None)  # bes purge, a second bes serve
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO setting (name, value) VALUES ('other', '1')")
        ticks = Ticks()
        writes = asyncio.gather(
            db.write(put, ("a", "1")), db.write(put, ("other", "2")), return_exceptions=True
        )
        await asyncio.sleep(0.5)  # the lock is held this long
        assert not writes.done()
        other.execute("COMMIT")
        other.close()
        started = time.monotonic()
        results = await writes
        assert time.monotonic() - started < 2
        ticks.stop()
        assert ticks.count >= 25, "the loop went on while the other process held the lock"
        assert results[0] == "a"
        assert isinstance(results[1], StoreError), "the clashing write fails, alone"
        assert await db.read(read_all) == {"warm": "1", "other": "1", "a": "1"}
