"""Hot statements compiled once and executed on the DB-API cursor.

SQLAlchemy Core compiles and processes parameters on every execution; for the few statements
on the hottest path (CreateActivity inserts, worker claims) that costs more than the database
work itself. A :class:`Prepared` statement is compiled once per dialect from the same Core
construct, so the SQL stays portable, and its rows are passed straight to ``executemany``.
Values must be given in database form: see :func:`db_time`.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Connection, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import ClauseElement


class _Compiled:
    """A statement's SQL for one dialect and how to lay out its parameters."""

    __slots__ = ("_every", "defaults", "keys", "sql")

    def __init__(self, sql: str, keys: tuple[str, ...] | None, defaults: dict[str, Any]) -> None:
        self.sql = sql
        self.keys = keys
        self.defaults = defaults
        # Rows that give every key (most INSERTs) are laid out in C.
        self._every: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None
        if keys:
            getter = operator.itemgetter(*keys)
            self._every = getter if len(keys) > 1 else lambda row: (getter(row),)

    def params(self, row: Mapping[str, Any]) -> Any:
        if self.keys is None:
            return {**self.defaults, **row}
        defaults = self.defaults
        return tuple(row[k] if k in row else defaults[k] for k in self.keys)

    def params_of(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """:meth:`params` of each row."""
        every = self._every
        if every is not None:
            try:
                return [every(row) for row in rows]
            except KeyError:  # rows leave keys to their defaults: the general way from now on
                self._every = None
        return [self.params(row) for row in rows]


class Prepared:
    """A statement compiled per dialect on first use.

    Args:
        statement: A Core statement with bind parameters named like the keys of the rows.
        column_keys: For INSERTs, the columns the rows provide (others take their defaults).
    """

    def __init__(self, statement: ClauseElement, *, column_keys: Sequence[str] | None = None):
        self._statement = statement
        self._column_keys = list(column_keys) if column_keys is not None else None
        self._by_dialect: dict[str, _Compiled] = {}

    def _compiled(self, conn: Connection) -> _Compiled:
        name = conn.dialect.name
        found = self._by_dialect.get(name)
        if found is None:
            # Statements must not use IN lists of literal values (they compile to placeholders
            # expanded at execution); write them as ORs of equalities.
            compiled = self._statement.compile(dialect=conn.dialect, column_keys=self._column_keys)
            positions = getattr(compiled, "positiontup", None)  # None for named paramstyles
            # Values written into the statement itself (``state == 'queued'``) are anonymous
            # bind parameters: their values come from the compiled form, rows add the rest.
            found = _Compiled(
                compiled.string,
                tuple(positions) if positions is not None else None,
                dict(compiled.params),
            )
            self._by_dialect[name] = found
        return found

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run the statement once per row, in the connection's current transaction."""
        if not rows:
            return
        compiled = self._compiled(conn)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(compiled.sql, compiled.params_of(rows))
        finally:
            cursor.close()

    def execute(self, conn: Connection, row: Mapping[str, Any]) -> int:
        """Run the statement once; return how many rows it changed."""
        compiled = self._compiled(conn)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(compiled.sql, compiled.params(row))
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def fetchall(self, conn: Connection, row: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run the statement once and return all result rows as tuples."""
        compiled = self._compiled(conn)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(compiled.sql, compiled.params(row))
            return list(cursor.fetchall())
        finally:
            cursor.close()


def from_db_time(value: Any) -> dt.datetime:
    """The inverse of :func:`db_time`: an aware UTC datetime from what the driver returned."""
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)  # type: ignore[no-any-return]
    return value.astimezone(dt.UTC)  # type: ignore[no-any-return]


def db_time(conn: Connection, value: dt.datetime) -> Any:
    """A UTC datetime in the form the driver stores it as (matching ``UtcDateTime``).

    SQLite gets SQLAlchemy's own text form of naive UTC; PostgreSQL the aware datetime.
    """
    value = value.astimezone(dt.UTC)
    if conn.dialect.name == "sqlite":
        # The same text as strftime("%Y-%m-%d %H:%M:%S.%f"), several times faster.
        return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return value


def insert_if_absent(conn: Connection, table: Table, key: Column[Any], **values: Any) -> bool:
    """``INSERT … ON CONFLICT (key) DO NOTHING`` on SQLite or PostgreSQL; True if the row was
    inserted (read back with RETURNING: a driver's rowcount is not reliable for this)."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    inserted = conn.execute(
        dialect_insert(table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[key])
        .returning(key)
    ).first()
    return inserted is not None
