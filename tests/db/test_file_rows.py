"""The file store's SQL on SQLite and PostgreSQL: quota reservations that hold when replicas
race, uploads turned into files, names, use by activities, removal and expiry."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Sequence
from typing import Any

from bes.db import activity_rows
from bes.db import file_rows as rows
from bes.db.store import Database
from bes.ids import ActivityId, new_activity_id
from bes.states import ActivityState

T0 = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
A, B, C = "a" * 64, "b" * 64, "c" * 64
QUOTA = 1000


def reserve(db: Database, owner: str, key: str, size: int, at: dt.datetime = T0) -> Any:
    return db.write_sync(rows.reserve_upload, (owner, key, size, QUOTA, at))


def store(db: Database, owner: str, sha256: str, size: int, at: dt.datetime = T0) -> None:
    assert reserve(db, owner, sha256, size, at).granted
    assert db.write_sync(rows.finish_upload, (owner, sha256, sha256, at))


def used(db: Database, owner: str) -> int:
    return db.read_sync(rows.usage, owner)[0]


def activity(db: Database, owner: str) -> ActivityId:
    activity_id = new_activity_id()
    new = activity_rows.NewActivity(
        id=activity_id,
        owner=owner,
        job_name="j",
        document="<JobDefinition/>",
        job="{}",
        backend="desktopgrid",
        at=T0,
    )
    assert db.write_sync(activity_rows.create_activities, new)
    return activity_id


def end(db: Database, activity_id: ActivityId, at: dt.datetime) -> None:
    transition = activity_rows.Transition(id=activity_id, state=ActivityState.CANCELLED, at=at)
    assert db.write_sync(activity_rows.apply_transitions, transition).applied


def test_a_reservation_holds_the_quota_and_an_upload_under_way_keeps_its_size(
    db: Database,
) -> None:
    first = reserve(db, "alice", A, 600)
    assert first.granted and first.total_bytes == 600
    assert db.read_sync(rows.upload_total, "alice", A) == 600
    assert used(db, "alice") == 600
    # Resuming the same upload reserves nothing more and says its size.
    again = reserve(db, "alice", A, 600, T0 + HOUR)
    assert again.granted and again.total_bytes == 600 and used(db, "alice") == 600
    other = reserve(db, "alice", B, 500)
    assert not other.granted
    assert (other.used_bytes, other.quota_bytes) == (600, QUOTA)
    assert used(db, "alice") == 600 and db.read_sync(rows.upload_total, "alice", B) is None
    assert reserve(db, "bob", B, 1000).granted  # bob's quota is his own
    # An administrator's quota for one user replaces the default.
    assert db.write_sync(rows.set_quota, ("alice", 2000))
    assert reserve(db, "alice", B, 500).granted
    assert db.read_sync(rows.usage, "alice") == (1100, 2000)
    assert db.write_sync(rows.abandon_upload, ("alice", A))
    assert not db.write_sync(rows.abandon_upload, ("alice", A))
    assert used(db, "alice") == 500


def test_a_finished_upload_becomes_a_file_listed_with_its_names(db: Database) -> None:
    store(db, "alice", A, 100)
    store(db, "alice", B, 200, T0 + HOUR)
    assert not db.write_sync(rows.finish_upload, ("alice", C, C, T0))  # nothing under way
    assert db.read_sync(rows.upload_total, "alice", A) is None
    assert used(db, "alice") == 300
    assert db.write_sync(rows.bind_name, ("alice", "data/in.csv", A, T0))
    assert db.write_sync(rows.bind_name, ("alice", "latest", A, T0))
    assert db.write_sync(rows.bind_name, ("alice", "latest", B, T0))  # rebinds
    assert not db.write_sync(rows.bind_name, ("alice", "x", C, T0))  # no such file
    assert not db.write_sync(rows.bind_name, ("bob", "x", A, T0))  # not bob's
    files = db.read_sync(rows.listing, "alice", 100)
    assert [(f.sha256, f.bytes, f.names) for f in files] == [
        (B, 200, ("latest",)),
        (A, 100, ("data/in.csv",)),
    ]
    assert db.read_sync(rows.named, "alice", "latest") == B
    assert db.read_sync(rows.named, "bob", "latest") is None
    assert db.read_sync(rows.listing, "bob", 100) == []
    assert db.write_sync(rows.unbind_name, ("alice", "latest"))
    assert not db.write_sync(rows.unbind_name, ("alice", "latest"))
    assert db.read_sync(rows.named, "alice", "latest") is None


def test_the_same_file_uploaded_twice_at_once_counts_once(db: Database) -> None:
    # Two uploads of one file under two keys (a named PUT whose sha256 was not known).
    assert reserve(db, "alice", "upload-1", 300).granted
    assert reserve(db, "alice", "upload-2", 300).granted
    assert used(db, "alice") == 600
    assert db.write_sync(rows.finish_upload, ("alice", "upload-1", A, T0))
    assert db.write_sync(rows.finish_upload, ("alice", "upload-2", A, T0 + HOUR))
    assert used(db, "alice") == 300
    (only,) = db.read_sync(rows.listing, "alice", 10)
    assert only.sha256 == A and only.last_used_at == T0 + HOUR


def test_removal_gives_the_bytes_back_and_keeps_the_row(db: Database) -> None:
    store(db, "alice", A, 400)
    db.write_sync(rows.bind_name, ("alice", "n", A, T0))
    assert db.write_sync(rows.remove_file, ("bob", A, T0)) is None
    assert db.write_sync(rows.remove_file, ("alice", A, T0 + HOUR)) == 400
    assert db.write_sync(rows.remove_file, ("alice", A, T0 + HOUR)) is None
    assert used(db, "alice") == 0
    gone = db.read_sync(rows.stored, "alice", A)
    assert gone is not None and gone.expired_at == T0 + HOUR
    assert db.read_sync(rows.named, "alice", "n") is None
    assert db.read_sync(rows.listing, "alice", 10) == []
    # Uploaded again, the same row lives again.
    store(db, "alice", A, 400, T0 + 2 * HOUR)
    back = db.read_sync(rows.stored, "alice", A)
    assert back is not None and back.expired_at is None and back.created_at == T0 + 2 * HOUR
    assert used(db, "alice") == 400


def test_files_used_by_unended_activities_do_not_expire(db: Database) -> None:
    store(db, "alice", A, 10)
    store(db, "alice", B, 20)
    store(db, "bob", A, 30)
    job = activity(db, "alice")
    assert db.write_sync(rows.use_files, (job, "alice", A, T0))
    assert not db.write_sync(rows.use_files, (job, "alice", C, T0))  # not stored
    assert db.read_sync(rows.in_use_by, "alice", A) == job
    assert db.read_sync(rows.in_use_by, "bob", A) is None  # bob's copy is his own
    week = T0 + dt.timedelta(days=7)
    expired = db.write_sync(rows.expire_files, (week, week + HOUR, 100))
    assert sorted(expired) == [("alice", B), ("bob", A)]
    assert (used(db, "alice"), used(db, "bob")) == (10, 0)
    used_file = db.read_sync(rows.stored, "alice", A)
    assert used_file is not None and used_file.last_used_at == week + HOUR
    assert not db.write_sync(rows.use_files, (job, "alice", B, week))  # expired: refused
    end(db, job, week)
    assert db.read_sync(rows.in_use_by, "alice", A) is None
    assert db.write_sync(rows.expire_files, (week, week + 2 * HOUR, 100)) == []
    later = week + HOUR + dt.timedelta(days=7, seconds=1)
    assert db.write_sync(rows.expire_files, (later, later, 100)) == [("alice", A)]
    assert used(db, "alice") == 0


def test_stale_uploads_are_dropped_with_their_reservation(db: Database) -> None:
    assert reserve(db, "alice", A, 100, T0).granted
    assert reserve(db, "alice", B, 200, T0).granted
    assert db.write_sync(rows.touch_upload, ("alice", B, T0 + 2 * HOUR))
    assert not db.write_sync(rows.touch_upload, ("alice", C, T0))
    assert db.write_sync(rows.stale_uploads, T0 + HOUR) == [("alice", A)]
    assert used(db, "alice") == 200
    assert db.read_sync(rows.upload_total, "alice", A) is None
    assert db.read_sync(rows.upload_total, "alice", B) == 200


def race(db: Database, calls: Sequence[Callable[[Database], Any]]) -> list[Any]:
    """Run the calls at once, each on its own replica (a Database of its own)."""
    replicas = [Database(db.url) for _ in calls]
    results: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(index: int) -> None:
        start.wait(timeout=30)
        try:
            results[index] = calls[index](replicas[index])
        except Exception as exc:  # noqa: BLE001 - reported in the results
            results[index] = exc

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for replica in replicas:
            replica.close()
    return results


def test_replicas_racing_for_the_last_of_a_quota_grant_what_fits(db: Database) -> None:
    sizes = [300] * 8  # 1000 bytes of quota: three fit

    def reserving(key: str, size: int) -> Callable[[Database], Any]:
        return lambda r: r.write_sync(rows.reserve_upload, ("alice", key, size, QUOTA, T0))

    results = race(db, [reserving(f"k{i}", s) for i, s in enumerate(sizes)])
    assert all(isinstance(r, rows.Reservation) for r in results), results
    assert sum(r.granted for r in results) == 3
    assert used(db, "alice") == 900


def test_replicas_starting_one_upload_at_once_reserve_it_once(db: Database) -> None:
    calls = [
        (lambda r: r.write_sync(rows.reserve_upload, ("alice", A, 400, QUOTA, T0)))
        for _ in range(4)
    ]
    results = race(db, calls)
    assert all(isinstance(r, rows.Reservation) and r.granted for r in results), results
    assert used(db, "alice") == 400
