"""The database as the rest of the service sees it: awaitable reads and group-committed writes.

Writes are group-committed (:mod:`bes.db.committer`). On SQLite, a local file, the service's
reads and writes run inside the event loop: each is a few microseconds of C, and a thread
would spend more on handing the GIL back and forth than on the query. On PostgreSQL, reached
over the network, they run on threads so that the loop never waits for a round trip. Every
operation has a blocking twin for command-line tools and tests. SQLAlchemy errors are wrapped
into :class:`~bes.errors.StoreError` here.

A server that does not answer (stopped, frozen, cut off) must not hold requests for ever: on
PostgreSQL the service waits at most ``wait_s`` for a read or a write (or a backend's call that
reads or writes it: :meth:`Database.off_loop`), then raises
:class:`~bes.errors.StoreError` (a SOAP client sees a soap:Server fault saying to try again
later). A write that was still queued when its caller gave up is dropped, never written
behind its back; one the database had already begun may still commit (its outcome is
unknown to the caller, as with any lost answer: CreateActivity retried with the same
``wsa:MessageID`` finds it). When the server is back, the next calls succeed: the pools check
connections before use and the committer reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from bes.db import migrate
from bes.db.committer import BatchFunction, LoopCommitter, ThreadCommitter
from bes.db.engine import create_engines, dispose_quietly
from bes.errors import StoreError

log = logging.getLogger(__name__)

A = TypeVar("A")
R = TypeVar("R")
P = ParamSpec("P")

WAIT_S: Final = 8.0
"""The longest the service waits for PostgreSQL to answer a read or a write."""


class Database:
    """One database: a writer (group commit) and a pool of readers.

    Args:
        url: SQLAlchemy URL, ``sqlite:///path`` or ``postgresql://...``.
        read_threads: Threads serving concurrent reads.
        wait_s: The longest :meth:`read` and :meth:`write` wait for a database reached over
            the network (not SQLite, whose calls run in the loop).
    """

    def __init__(self, url: str, *, read_threads: int = 4, wait_s: float = WAIT_S) -> None:
        self.url = url
        self.wait_s = wait_s
        self._writer, self._reader = create_engines(url)
        self.dialect = self._writer.dialect.name
        self._inline = self.dialect == "sqlite"
        self._thread_committer: ThreadCommitter | None = None
        self._loop_committer: LoopCommitter | None = None
        self._pool = ThreadPoolExecutor(read_threads, thread_name_prefix="bes-read")
        self._lock = threading.Lock()
        self._loop_reader: Connection | None = None

    def migrate(self) -> None:
        """Apply pending schema migrations (idempotent)."""
        migrate.upgrade(self._writer)

    @property
    def committer(self) -> ThreadCommitter:
        """The thread committer (blocking writes), started on first use."""
        with self._lock:  # several threads may write first at the same moment
            if self._thread_committer is None:
                self._thread_committer = ThreadCommitter(self._writer)
            return self._thread_committer

    @property
    def transactions(self) -> int:
        """Write transactions committed by this process so far."""
        return sum(c.transactions for c in (self._thread_committer, self._loop_committer) if c)

    async def write(self, fn: BatchFunction[A, R], arg: A, *, long: bool = False) -> R:
        """Run one call of a batch function in the next group commit; return its result.

        ``long``: a write that takes milliseconds (a purge's batch): on SQLite it runs in a
        transaction of its own off the event loop (:meth:`LoopCommitter.submit`); elsewhere
        every write already runs off the loop.
        """
        if self._inline:
            if self._loop_committer is None:
                self._loop_committer = LoopCommitter(self._writer)
            return await self._loop_committer.submit(fn, arg, off_loop=long)
        # On a time-out the call is cancelled: if the committer has not begun it, it is dropped.
        return await self.bounded(asyncio.wrap_future(self.committer.submit(fn, arg)), "write", fn)

    def write_sync(self, fn: BatchFunction[A, R], arg: A) -> R:
        """Blocking :meth:`write`."""
        return self.committer.submit(fn, arg).result()

    async def read(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run ``fn(connection, *args)`` on a reader connection."""
        if self._inline:
            return self._read_in_loop(fn, *args, **kwargs)
        loop = asyncio.get_running_loop()
        return await self.bounded(
            loop.run_in_executor(self._pool, lambda: self.read_sync(fn, *args, **kwargs)),
            "read",
            fn,
        )

    async def off_loop(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn(*args, **kwargs)`` on a thread: blocking work that waits on this database (a
        backend's answer read from its tables), waited for no longer than :attr:`wait_s`, as
        a read or a write is. A request never hangs on a database that does not answer: it
        gets a StoreError; the thread goes on, and what it returns is dropped.

        Raises:
            StoreError: No result within :attr:`wait_s`.
        """
        return await self.bounded(asyncio.to_thread(fn, *args, **kwargs), "call", fn)

    async def bounded(self, waited: Awaitable[R], what: str, fn: Callable[..., Any]) -> R:
        """Wait at most :attr:`wait_s` for ``waited``, a ``what`` ("read", "write", "call")
        of ``fn`` that waits on the database.

        Raises:
            StoreError: No result within :attr:`wait_s`.
        """
        try:
            return await asyncio.wait_for(waited, self.wait_s)
        except TimeoutError:
            name = getattr(fn, "__name__", fn)
            log.error("database %s %s: no answer within %.0f s", what, name, self.wait_s)
            raise StoreError(
                f"the database did not answer within {self.wait_s:.0f} s ({what})"
            ) from None

    def read_sync(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Blocking :meth:`read`."""
        try:
            with self._reader.connect() as conn:
                return fn(conn, *args, **kwargs)
        except SQLAlchemyError as exc:
            log.error("database read %s failed: %s", getattr(fn, "__name__", fn), exc)
            raise StoreError(f"database read failed: {exc.__class__.__name__}") from exc

    def _read_in_loop(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """A read on the loop's own reader connection: kept open (a pool checkout costs more
        than a typical read), its snapshot released after every read."""
        conn = self._loop_reader
        try:
            if conn is None or conn.closed or conn.invalidated:
                conn = self._loop_reader = self._reader.connect()
            try:
                return fn(conn, *args, **kwargs)
            finally:
                if conn.in_transaction():
                    conn.rollback()
        except SQLAlchemyError as exc:
            log.error("database read %s failed: %s", getattr(fn, "__name__", fn), exc)
            if self._loop_reader is not None:
                self._loop_reader.invalidate()
                self._loop_reader = None
            raise StoreError(f"database read failed: {exc.__class__.__name__}") from exc

    def close(self) -> None:
        """Finish queued writes and close every connection."""
        if self._loop_committer is not None:
            self._loop_committer.close()
        if self._thread_committer is not None:
            self._thread_committer.close()
        self._pool.shutdown(wait=True)
        if self._loop_reader is not None:
            self._loop_reader.close()
            self._loop_reader = None
        dispose_quietly(self._writer, self._reader)

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
