"""Two dispatchers (two service replicas) never claim the same activity."""

from __future__ import annotations

import datetime as dt
import threading

from bes.db import activity_rows as rows
from bes.db.store import Database
from bes.ids import new_activity_id


def queued(now: dt.datetime) -> rows.NewActivity:
    return rows.NewActivity(
        id=new_activity_id(),
        owner="o",
        job_name=None,
        document="<d/>",
        job="{}",
        backend="fake",
        at=now,
    )


def test_concurrent_claims_never_overlap(db: Database) -> None:
    now = dt.datetime.now(dt.UTC)
    items = [queued(now) for _ in range(300)]
    for item in items:
        db.committer.submit(rows.create_activities, item)
    db.write_sync(rows.set_setting, ("flush", "1"))
    replicas = [Database(db.url) for _ in range(3)]
    claimed: list[str] = []
    lock = threading.Lock()

    def dispatcher(replica: Database, name: str) -> None:
        while True:
            got = replica.write_sync(
                rows.claim_for_dispatch, (name, 7, now, now + dt.timedelta(minutes=5))
            )
            if not got:
                return
            with lock:
                claimed.extend(i for i, _, _ in got)

    threads = [
        threading.Thread(target=dispatcher, args=(r, f"d{i}")) for i, r in enumerate(replicas)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in replicas:
        r.close()
    assert len(claimed) == 300
    assert len(set(claimed)) == 300, "an activity was claimed twice"


def test_expired_claims_are_taken_over(db: Database) -> None:
    now = dt.datetime.now(dt.UTC)
    item = queued(now)
    db.write_sync(rows.create_activities, item)
    first = db.write_sync(rows.claim_for_dispatch, ("a", 10, now, now + dt.timedelta(seconds=30)))
    assert [i for i, _, _ in first] == [item.id]
    assert (
        db.write_sync(rows.claim_for_dispatch, ("b", 10, now, now + dt.timedelta(seconds=30))) == []
    )
    later = now + dt.timedelta(seconds=31)
    again = db.write_sync(
        rows.claim_for_dispatch, ("b", 10, later, later + dt.timedelta(seconds=30))
    )
    assert [i for i, _, _ in again] == [item.id]
