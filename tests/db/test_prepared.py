"""Prepared statements (bes.db.prepared) run with the values each row gives, and with the values
written into the statement itself, on both engines."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    select,
    update,
)

from bes.db.prepared import Prepared
from bes.db.store import Database

_METADATA = MetaData()
_THING = Table(
    "prepared_thing",
    _METADATA,
    Column("id", String(8), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("flag", Boolean, nullable=False),
)
_INSERT = Prepared(_THING.insert(), column_keys=["id", "size", "flag"])
# ``flag = true`` is written into the statement: rows give only the size.
_FLAG = Prepared(update(_THING).where(_THING.c.size == bindparam("at")).values(flag=True))


def _insert(conn: Connection, batches: list[list[dict[str, object]]]) -> list[None]:
    _METADATA.create_all(conn)
    for rows in batches:
        _INSERT.executemany(conn, rows)
    return [None] * len(batches)


def _flag(conn: Connection, batches: list[list[dict[str, object]]]) -> list[None]:
    for rows in batches:
        _FLAG.executemany(conn, rows)
    return [None] * len(batches)


def _stored(conn: Connection, _: object) -> list[tuple[str, int, bool]]:
    rows = conn.execute(select(_THING).order_by(_THING.c.id))
    return [(i, s, bool(f)) for i, s, f in rows]


def test_rows_values_and_the_statements_own(db: Database) -> None:
    db.write_sync(
        _insert, [{"id": "a", "size": 1, "flag": True}, {"id": "b", "size": 2, "flag": False}]
    )
    db.write_sync(_insert, [{"id": "c", "size": 3, "flag": False}])
    db.write_sync(_flag, [{"at": 2}, {"at": 3}])
    db.write_sync(_flag, [{"at": 4}])  # (none that size)
    db.write_sync(_insert, [{"id": "d", "size": 4, "flag": False}])

    assert db.read_sync(_stored, None) == [
        ("a", 1, True),
        ("b", 2, True),
        ("c", 3, True),
        ("d", 4, False),
    ]
