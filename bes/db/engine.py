"""Opening the database: engines tuned per dialect, and where the embedded default lives.

Two engines per database: a *writer* used only by the group committers (:mod:`bes.db.committer`,
one connection each), and a pooled *reader* for queries. On SQLite the writer takes the
write lock up front (``BEGIN IMMEDIATE``) and every commit is synced to disk
(``synchronous=FULL``): an acknowledged activity survives a crash and a power cut. WAL mode lets
readers run beside the writer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import QueuePool

from bes.errors import ConfigError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS: Final = 5000
"""How long an SQLite connection waits for another's write lock before SQLITE_BUSY."""

SQLITE_PRAGMAS = (
    # First, before any table exists: space freed by deletes (bes.retention) can then be given
    # back with PRAGMA incremental_vacuum. On a database that already has tables it changes
    # nothing until a VACUUM (bes purge --vacuum) rebuilds the file.
    "auto_vacuum=INCREMENTAL",
    "journal_mode=WAL",
    "synchronous=FULL",
    # How long to wait for another process's write lock (bes.db.committer: never in the loop).
    f"busy_timeout={BUSY_TIMEOUT_MS}",
    "foreign_keys=ON",
)


def default_url(data_dir: Path) -> str:
    """The embedded default: an SQLite file in the data directory."""
    return f"sqlite:///{(data_dir / 'bes.sqlite3').resolve()}"


def create_engines(url: str) -> tuple[Engine, Engine]:
    """Return ``(writer, reader)`` engines for ``url``.

    Raises:
        ConfigError: The URL is malformed or names an unsupported database.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"bad database URL: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, writer=True), _sqlite_engine(url, writer=False)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        writer = create_engine(
            parsed,
            poolclass=QueuePool,
            pool_size=2,
            max_overflow=0,
            connect_args=_pg_connect_args(parsed.query),
            **_PG_POOL,
        )
        reader = create_engine(
            parsed,
            pool_size=4,
            max_overflow=4,
            connect_args=_pg_connect_args(parsed.query, statement_timeout_ms=_READ_TIMEOUT_MS),
            **_PG_POOL,
        )
        return writer, reader
    raise ConfigError(
        f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql"
    )


# PostgreSQL is reached over the network, and may be restarted, be unreachable or hang: no
# wait on it is open-ended. Connections are checked before use (a restarted server dropped
# them), a connection attempt gives up after a few seconds (a host that does not answer would
# otherwise take the kernel's two minutes), TCP keepalives and tcp_user_timeout notice a
# peer that vanished under an open connection, and a session left idle inside a transaction
# (its replica frozen or cut off) is ended by the server, so its row locks cannot stall the
# other replicas. A server that accepts but never answers is bounded by the service's own
# wait (bes.db.store). A parameter given in the database URL wins (e.g. behind PgBouncer,
# which refuses the ``options`` startup parameter unless told to ignore it).
_PG_POOL: Final[dict[str, Any]] = {"pool_pre_ping": True, "pool_timeout": 10}
_READ_TIMEOUT_MS: Final = 30_000


def _pg_connect_args(given: Mapping[str, Any], *, statement_timeout_ms: int = 0) -> dict[str, Any]:
    """libpq connection parameters of the service's PostgreSQL sessions, except those the
    database URL sets itself.

    Args:
        given: The parameters in the database URL.
        statement_timeout_ms: Cancel a statement the server runs longer (0: never). Readers
            get one; the writer does not, as migrations and purges may take long.
    """
    options = "-c idle_in_transaction_session_timeout=60000"
    if statement_timeout_ms:
        options += f" -c statement_timeout={statement_timeout_ms}"
    ours: dict[str, Any] = {
        "connect_timeout": 5,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 3,
        "keepalives_count": 3,
        "tcp_user_timeout": 15_000,
        "options": options,
    }
    return {key: value for key, value in ours.items() if key not in given}


def _sqlite_engine(url: str, *, writer: bool) -> Engine:
    if ":memory:" in url or url.rstrip("/") == "sqlite:":
        raise ConfigError("an in-memory SQLite database cannot be shared; give a file")
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 5}}
    if writer:  # one connection for each committer (the loop's and the thread's)
        kwargs.update(poolclass=QueuePool, pool_size=2, max_overflow=0)
    else:
        kwargs.update(poolclass=QueuePool, pool_size=4, max_overflow=8)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite: it would otherwise BEGIN lazily (DEFERRED)
        # and upgrade the lock at the first write, which can deadlock two writers.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute("PRAGMA " + pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def dispose_quietly(*engines: Engine) -> None:
    """Close every pooled connection; errors at shutdown are logged, not raised."""
    for engine in engines:
        try:
            engine.dispose()
        except Exception:
            log.warning("closing %s failed", engine.url, exc_info=True)


__all__ = ["create_engines", "default_url", "dispose_quietly"]
