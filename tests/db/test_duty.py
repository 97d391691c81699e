"""A replica's hold on a duty (bes.db.duty.Duty), on a fake clock: when it renews, until when it
holds, what it remembers; and two replicas' Duties on one database, written as the service
writes them."""

from __future__ import annotations

import datetime as dt

from bes.db import duty_rows
from bes.db.duty import Duty
from bes.db.store import Database

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


class Clock:
    """Wall time and monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = T0
        self.ticks = 1000.0

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)
        self.ticks += seconds

    def wall(self) -> dt.datetime:
        return self.now

    def monotonic(self) -> float:
        return self.ticks


def duty(clock: Clock, holder: str, *, renew_s: float = 5.0) -> Duty:
    return Duty(
        name="upkeep",
        holder=holder,
        hold_s=15.0,
        renew_s=renew_s,
        clock=clock.wall,
        monotonic=clock.monotonic,
    )


def hold(db: Database, d: Duty) -> bool:
    """What each user of a Duty does at a round."""
    return d.taken(db.write_sync(duty_rows.take_duties, d.take())) if d.due() else d.held


def test_the_holder_renews_every_renew_s_until_hold_s_from_now() -> None:
    clock = Clock()
    d = duty(clock, "a")
    assert d.due() and not d.held  # nothing held yet: take it

    take = d.take()
    assert (take.name, take.holder) == ("upkeep", "a")
    assert (take.now, take.until) == (T0, T0 + dt.timedelta(seconds=15))
    assert d.taken(True) and d.held
    clock.advance(4.9)
    assert not d.due()
    clock.advance(0.1)
    assert d.due()

    assert d.release() == ("upkeep", "a")
    assert not d.held and d.due()  # given up: taken again at the next round


def test_a_refused_take_leaves_the_duty_unheld_and_due() -> None:
    clock = Clock()
    d = duty(clock, "a")
    d.take()
    assert d.taken(True)
    clock.advance(5)
    d.take()
    assert not d.taken(False)  # another replica took it over
    assert not d.held and d.due()


def test_renew_s_zero_takes_at_every_round() -> None:
    d = duty(Clock(), "a", renew_s=0.0)
    d.take()
    assert d.taken(True) and d.due()


def test_two_replicas_one_holder_release_and_takeover(db: Database) -> None:
    clock = Clock()
    a, b = duty(clock, "a"), duty(clock, "b")
    assert hold(db, a) and not hold(db, b)
    clock.advance(10)  # a renewed at 5 s intervals would hold until T0+25
    assert hold(db, a) and not hold(db, b)
    (record,) = db.read_sync(duty_rows.duties, "upkeep")
    assert record.holder == "a" and record.until == T0 + dt.timedelta(seconds=25)

    assert db.write_sync(duty_rows.release_duties, a.release())  # a stops: b takes it at once
    assert hold(db, b) and not hold(db, a)
    assert db.write_sync(duty_rows.set_duty_status, b.say("scaling up"))
    assert not db.write_sync(duty_rows.set_duty_status, a.say("not mine"))

    clock.advance(14)  # b dies without a word: a takes over once b's hold lapses
    assert not hold(db, a)
    clock.advance(2)
    assert hold(db, a)
    (record,) = db.read_sync(duty_rows.duties, "upkeep")
    assert (record.holder, record.status) == ("a", "scaling up")
