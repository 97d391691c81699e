"""Duties (bes.db.duty_rows): one holder at a time, renewed by it, taken over once expired."""

from __future__ import annotations

import datetime as dt

from bes.db import duty_rows
from bes.db.store import Database

T0 = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def take(db: Database, holder: str, at: dt.datetime, name: str = "autoscaler:cloud:lab") -> bool:
    ask = duty_rows.Take(name=name, holder=holder, now=at, until=at + dt.timedelta(seconds=30))
    return bool(db.write_sync(duty_rows.take_duties, ask))


def test_one_replica_holds_a_duty_until_it_lapses(db: Database) -> None:
    assert take(db, "replica-a", T0)
    assert not take(db, "replica-b", T0 + dt.timedelta(seconds=1))
    assert take(db, "replica-a", T0 + dt.timedelta(seconds=20))  # renewed until T0+50
    assert not take(db, "replica-b", T0 + dt.timedelta(seconds=45))
    assert take(db, "replica-b", T0 + dt.timedelta(seconds=51))  # a died: b takes over
    assert not take(db, "replica-a", T0 + dt.timedelta(seconds=52))
    assert take(db, "replica-a", T0, name="reasons")  # another duty, independent


def test_a_released_duty_is_taken_at_once_and_keeps_its_status(db: Database) -> None:
    assert take(db, "replica-a", T0)
    assert db.write_sync(duty_rows.set_duty_status, ("autoscaler:cloud:lab", "replica-a", "up"))
    assert not db.write_sync(duty_rows.set_duty_status, ("autoscaler:cloud:lab", "b", "no"))
    assert db.write_sync(duty_rows.release_duties, ("autoscaler:cloud:lab", "replica-a"))
    assert take(db, "replica-b", T0 + dt.timedelta(seconds=1))
    [found] = db.read_sync(duty_rows.duties, "autoscaler:")
    assert (found.holder, found.status) == ("replica-b", "up")
