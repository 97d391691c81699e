"""Duties one replica at a time carries out, shared through the database.

Several ``bes serve`` processes on one PostgreSQL must not each run a cloud pool's autoscaler
(they would each start instances for the same queue) or each rewrite the same waiting reasons.
A duty is a row: whoever holds it until a time in the future does the work and renews it before
then; when the holder dies its row expires and another replica takes it over. Taking is one
conditional UPDATE, so two replicas never both hold a duty.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, or_, select, update

from bes.db.prepared import from_db_time, insert_if_absent
from bes.db.tables import duty


@dataclass(frozen=True, slots=True, kw_only=True)
class Take:
    """``holder`` asks to hold duty ``name`` until ``until`` (renewing it if it holds it)."""

    name: str
    holder: str
    now: dt.datetime
    until: dt.datetime


def take_duties(conn: Connection, items: Sequence[Take]) -> list[bool]:
    """Take or renew each duty; True where the asker holds it now."""
    out = []
    for t in items:
        taken = conn.execute(
            update(duty)
            .where(
                duty.c.name == t.name,
                or_(duty.c.holder == t.holder, duty.c.until < t.now),
            )
            .values(holder=t.holder, until=t.until)
        ).rowcount
        if not taken:  # nobody ever held it: the first insert wins
            taken = insert_if_absent(
                conn, duty, duty.c.name, name=t.name, holder=t.holder, until=t.until
            )
        out.append(bool(taken))
    return out


def release_duties(conn: Connection, items: Sequence[tuple[str, str]]) -> list[bool]:
    """Give up duties ``(name, holder)`` (at shutdown), so another replica need not wait."""
    return [
        conn.execute(
            update(duty)
            .where(duty.c.name == name, duty.c.holder == holder)
            .values(until=dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
        ).rowcount
        > 0
        for name, holder in items
    ]


def set_duty_status(conn: Connection, items: Sequence[tuple[str, str, str | None]]) -> list[bool]:
    """Record what the holder says of a duty ``(name, holder, status)``; False if not held."""
    return [
        conn.execute(
            update(duty).where(duty.c.name == name, duty.c.holder == holder).values(status=status)
        ).rowcount
        > 0
        for name, holder, status in items
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class DutyRecord:
    """A duty as stored."""

    name: str
    holder: str
    until: dt.datetime
    status: str | None


def duties(conn: Connection, prefix: str = "") -> list[DutyRecord]:
    """The duties whose names start with ``prefix``."""
    rows = conn.execute(
        select(duty.c.name, duty.c.holder, duty.c.until, duty.c.status)
        .where(duty.c.name.startswith(prefix, autoescape=True))
        .order_by(duty.c.name)
    )
    return [DutyRecord(name=n, holder=h, until=from_db_time(u), status=s) for n, h, u, s in rows]
