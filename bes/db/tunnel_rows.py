"""Which replica holds the tunnel of each VM lease's worker (bes.relay), so that a user's
stream reaching another replica is forwarded there."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select

from bes.db.prepared import from_db_time
from bes.db.tables import tunnel


@dataclass(frozen=True, slots=True, kw_only=True)
class Held:
    """A tunnel a replica holds: where another replica forwards streams, and the secret that
    authenticates it there."""

    activity_id: str
    replica: str
    relay_url: str
    secret: str
    connected_at: dt.datetime | None = None

    def __repr__(self) -> str:
        return f"Held({self.activity_id!r}, {self.replica!r}, {self.relay_url!r})"  # no secret


def hold(conn: Connection, items: Sequence[Held]) -> list[None]:
    """Record each tunnel as held by its replica (replacing an older record of the lease)."""
    now = dt.datetime.now(dt.UTC)
    for held in items:
        conn.execute(delete(tunnel).where(tunnel.c.activity_id == held.activity_id))
        conn.execute(
            insert(tunnel).values(
                activity_id=held.activity_id,
                replica=held.replica,
                relay_url=held.relay_url,
                secret=held.secret,
                connected_at=now,
            )
        )
    return [None] * len(items)


def release(conn: Connection, items: Sequence[tuple[str, str]]) -> list[bool]:
    """Forget each ``(activity, replica)`` tunnel, if that replica still holds it."""
    return [
        conn.execute(
            delete(tunnel).where(tunnel.c.activity_id == activity_id, tunnel.c.replica == replica)
        ).rowcount
        > 0
        for activity_id, replica in items
    ]


def release_replica(conn: Connection, replicas: Sequence[str]) -> list[int]:
    """Forget every tunnel of each replica (it starts, or stops: it holds none)."""
    return [
        conn.execute(delete(tunnel).where(tunnel.c.replica == replica)).rowcount
        for replica in replicas
    ]


def holder(conn: Connection, activity_id: str) -> Held | None:
    """The replica holding a lease's tunnel, if any does."""
    row = conn.execute(
        select(
            tunnel.c.activity_id,
            tunnel.c.replica,
            tunnel.c.relay_url,
            tunnel.c.secret,
            tunnel.c.connected_at,
        ).where(tunnel.c.activity_id == activity_id)
    ).first()
    if row is None:
        return None
    return Held(
        activity_id=row[0],
        replica=row[1],
        relay_url=row[2],
        secret=row[3],
        connected_at=from_db_time(row[4]),
    )
