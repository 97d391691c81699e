"""Group commit: many small write transactions become one database transaction.

Callers submit *batch functions* with an argument and get a future. The committer takes every
call that has queued up, runs consecutive calls of the same batch function together (200
CreateActivity requests become two ``executemany`` statements), commits once, and only then
resolves the futures: a caller that sees its future resolved knows its write is on disk. If
anything in a batch raises, the batch is rolled back and each call is retried alone, so one bad
write cannot fail its neighbours.

Two committers share that logic:

* :class:`LoopCommitter` runs the statements inside the asyncio event loop. It is the
  service's writer on SQLite, where a statement is a few local C calls: running them in the
  loop avoids handing the GIL back and forth with a writer thread for every statement, which
  costs more than the work itself. Only the COMMIT, which waits for the disk, goes to a thread;
  batches form while it is on disk (measured with bench/grid_bench.py: 1,560 claim+complete
  cycles/s with the commit in the loop, 1,890-2,080 with it on a thread). A long write (a
  purge's batch, milliseconds of deletes) runs whole on that thread instead, so that the loop
  goes on serving meanwhile. Nor does the loop ever wait for another process's write lock
  (``bes purge``, a second ``bes serve`` on the file): its connection has no busy timeout, and
  a batch that finds the lock taken, or fails, is run again on the thread, which waits for
  the lock and isolates a failing call.
* :class:`ThreadCommitter` owns a thread. It serves blocking callers (command-line tools,
  tests) and databases reached over the network (PostgreSQL), where the loop must not wait.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from sqlalchemy import Connection, Engine, Transaction
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from bes.db.engine import BUSY_TIMEOUT_MS
from bes.errors import BesError, StoreError

log = logging.getLogger(__name__)

A = TypeVar("A")
R = TypeVar("R")

BatchFunction = Callable[[Connection, Sequence[A]], Sequence[R]]
"""Runs several calls' arguments in one go and returns one result per argument, in order."""

_STOP: Final = object()


@dataclass(slots=True)
class _Call(Generic[A, R]):
    fn: BatchFunction[A, R]
    arg: A
    future: Future[R] | asyncio.Future[R]
    off_loop: bool = False
    """Runs alone, statements and all, on the commit thread (:meth:`LoopCommitter.submit`)."""


class _Writer:
    """The writer connection and the batch logic both committers share."""

    def __init__(self, engine: Engine, max_batch: int) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._conn: Connection | None = None
        self._closed = False
        self.transactions = 0
        """Transactions committed so far (for metrics and tests)."""

    def _commit(self, batch: list[_Call[Any, Any]]) -> None:
        _settle_each(batch, self._outcomes(batch))

    def _outcomes(self, batch: list[_Call[Any, Any]]) -> list[Any]:
        """Commit a batch in one transaction or, if that fails, each call alone; per call its
        result or a :class:`_Refused` (no future is touched: any thread may run this)."""
        try:
            return self._transaction(batch)
        except Exception as exc:  # noqa: BLE001 - isolate the failing call(s) below
            if len(batch) == 1 or not self._connected():
                # Without a connection (the database is down or unreachable) each call alone
                # would only wait for it again: they all fail, at once.
                return [_Refused(exc)] * len(batch)
            out: list[Any] = []
            for call in batch:
                try:
                    (result,) = self._transaction([call])
                except Exception as one:  # noqa: BLE001 - reported through the future
                    out.append(_Refused(one))
                else:
                    out.append(result)
            return out

    def _connected(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.closed and not conn.invalidated

    def _connection(self) -> Connection:
        # One long-lived connection: a pool checkout and reset per transaction would cost more
        # than the inserts of a typical batch.
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            self._close_connection()
            conn = self._conn = self._engine.connect()
            self._connected_new(conn)
        return conn

    def _connected_new(self, conn: Connection) -> None:
        """A new writer connection was opened."""

    def _execute(self, batch: list[_Call[Any, Any]]) -> tuple[Transaction, list[Any]]:
        """Begin a transaction and run a batch's statements in it; the caller commits.

        The connection may have been dropped while it was idle (PostgreSQL restarted, a
        proxy timed it out): then the batch runs again once on a new connection. Nothing of a
        transaction whose connection broke before its COMMIT was written, so that is safe.
        """
        reused = self._connected()
        try:
            return self._begin(self._connection(), batch)
        except DBAPIError as exc:
            if not (reused and exc.connection_invalidated):
                raise
            log.warning("the database connection was lost (%s); reconnecting", exc.orig)
        return self._begin(self._connection(), batch)

    def _begin(
        self, conn: Connection, batch: list[_Call[Any, Any]]
    ) -> tuple[Transaction, list[Any]]:
        transaction = conn.begin()
        try:
            return transaction, self._statements(conn, batch)
        except BaseException:
            transaction.rollback()
            raise

    @staticmethod
    def _statements(conn: Connection, batch: list[_Call[Any, Any]]) -> list[Any]:
        """Run a batch's calls, consecutive calls of one function together."""
        results: list[Any] = []
        i = 0
        while i < len(batch):
            fn = batch[i].fn
            j = i
            while j < len(batch) and batch[j].fn is fn:
                j += 1
            out = fn(conn, [c.arg for c in batch[i:j]])
            if len(out) != j - i:
                raise StoreError(f"{fn.__name__} returned {len(out)} results for {j - i}")
            results.extend(out)
            i = j
        return results

    def _transaction(self, batch: list[_Call[Any, Any]]) -> list[Any]:
        started = time.perf_counter()
        transaction, results = self._execute(batch)
        transaction.commit()
        self.transactions += 1
        if log.isEnabledFor(logging.DEBUG):
            took_ms = (time.perf_counter() - started) * 1e3
            log.debug("committed %d writes in %.2f ms", len(batch), took_ms)
        return results

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ThreadCommitter(_Writer):
    """Group commit on a thread of its own; :meth:`submit` returns a concurrent future.

    Args:
        engine: The writer engine.
        max_batch: Most calls folded into one transaction.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 512) -> None:
        super().__init__(engine, max_batch)
        self._queue: queue.SimpleQueue[_Call[Any, Any] | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="bes-committer", daemon=True)
        self._thread.start()

    def submit(self, fn: BatchFunction[A, R], arg: A) -> Future[R]:
        """Queue one call of ``fn``; the future resolves after its transaction commits.

        Raises:
            StoreError: The committer was closed.
        """
        if self._closed:
            raise StoreError("the database writer is closed")
        future: Future[R] = Future()
        self._queue.put(_Call(fn, arg, future))
        return future

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish queued work, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch: list[_Call[Any, Any]] = []
            _take(batch, first)
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                _take(batch, nxt)
            if batch:
                self._commit(batch)
        self._close_connection()


class LoopCommitter(_Writer):
    """Group commit inside the running asyncio loop; :meth:`submit` returns an awaitable.

    Statements run in the loop (a few microseconds of C each); the COMMIT, which waits for the
    disk, runs on a thread of its own while the loop goes on serving requests. Writes
    submitted meanwhile form the next transaction, which starts once the commit is done: the
    slower the disk, the larger the batches, and the loop never waits for an fsync.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 512) -> None:
        super().__init__(engine, max_batch)
        self._pending: list[_Call[Any, Any]] = []
        self._off_loop = 0
        """Calls in ``_pending`` that run on the commit thread."""
        self._scheduled = False
        self._committing: Future[Any] | None = None
        self._in_flight: tuple[list[_Call[Any, Any]], list[Any] | None] = ([], [])
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="bes-commit")

    def submit(self, fn: BatchFunction[A, R], arg: A, *, off_loop: bool = False) -> Awaitable[R]:
        """Queue one call of ``fn``; await the result, available once it is committed.

        ``off_loop``: a long write (a purge's batch) that runs in a transaction of its own on
        the commit thread, statements included, so that the loop goes on serving requests
        meanwhile (SQLite works without the GIL); the writes queued behind it wait for it.

        Raises:
            StoreError: The committer was closed.
        """
        if self._closed:
            raise StoreError("the database writer is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append(_Call(fn, arg, future, off_loop))
        self._off_loop += off_loop
        if not self._scheduled and self._committing is None:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        if self._committing is not None or not self._pending:
            return
        if self._pending[0].off_loop:
            alone = [self._pending.pop(0)]
            self._off_loop -= 1
            self._start(self._syncer.submit(self._in_thread, alone), alone, None)
            return
        end = min(len(self._pending), self._max_batch)
        if self._off_loop:  # the batch stops before the first call that runs off the loop
            end = next((i for i in range(end) if self._pending[i].off_loop), end)
        batch = self._pending[:end]
        del self._pending[:end]
        try:
            transaction, results = self._execute(batch)
        except Exception:  # noqa: BLE001 - see _in_thread
            # Another process holds SQLite's write lock (bes purge, a second bes serve), or a
            # call failed: wait for the lock, or isolate the failing call, off the loop.
            self._start(self._syncer.submit(self._in_thread, batch), batch, None)
            return
        self._start(self._syncer.submit(transaction.commit), batch, results)

    def _connected_new(self, conn: Connection) -> None:
        # The loop never waits for another process's lock: BEGIN IMMEDIATE fails at once
        # (SQLITE_BUSY) and the batch goes to the commit thread, which waits.
        _busy_timeout(conn, 0)

    def _in_thread(self, batch: list[_Call[Any, Any]]) -> list[Any]:
        """On the commit thread: the batch's transaction (or each call's, if it fails),
        waiting for the write lock as long as the engine's busy timeout says; per call its
        result or a :class:`_Refused`."""
        conn = self._connection()
        _busy_timeout(conn, BUSY_TIMEOUT_MS)
        try:
            return self._outcomes(batch)
        finally:
            if self._connected():
                _busy_timeout(self._connection(), 0)

    def _start(
        self, committing: Future[Any], batch: list[_Call[Any, Any]], results: list[Any] | None
    ) -> None:
        """Wait for ``committing`` (its batch's results: ``results``, or what it returns)."""
        loop = asyncio.get_running_loop()
        self._committing = committing
        self._in_flight = (batch, results)
        committing.add_done_callback(
            lambda done: loop.call_soon_threadsafe(self._committed, done, batch, results)
        )

    def _committed(
        self, done: Future[Any], batch: list[_Call[Any, Any]], results: list[Any] | None
    ) -> None:
        if self._committing is not done:
            return  # close() has dealt with it already
        self._committing = None
        self._settle(done, batch, results)
        self._reschedule()

    def _settle(
        self, done: Future[Any], batch: list[_Call[Any, Any]], results: list[Any] | None
    ) -> None:
        error = done.exception()  # waits for the commit if it is still running
        if error is None:
            if results is None:  # (run on the commit thread: one outcome per call)
                _settle_each(batch, done.result())
                return
            self.transactions += 1
            for call, result in zip(batch, results, strict=True):
                _resolve(call.future, result)
            return
        log.error("database commit failed: %s", error)
        self._close_connection()
        for call in batch:
            _fail(call, error)

    def _reschedule(self) -> None:
        if self._pending and not self._scheduled and not self._closed:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def close(self) -> None:
        """Finish the commit under way, write what is pending, release the connection."""
        committing, in_flight = self._committing, self._in_flight
        self._committing = None
        if committing is not None:
            self._settle(committing, *in_flight)
        if self._pending:  # the last writes wait for another process's lock, if need be
            _busy_timeout(self._connection(), BUSY_TIMEOUT_MS)
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            self._commit(batch)
        self._off_loop = 0
        self._closed = True
        self._syncer.shutdown(wait=True)
        self._close_connection()


@dataclass(frozen=True, slots=True)
class _Refused:
    """The outcome of a call that failed (its transaction was rolled back)."""

    error: Exception


def _settle_each(batch: list[_Call[Any, Any]], outcomes: list[Any]) -> None:
    for call, outcome in zip(batch, outcomes, strict=True):
        if isinstance(outcome, _Refused):
            _fail(call, outcome.error)
        else:
            _resolve(call.future, outcome)


def _busy_timeout(conn: Connection, ms: int) -> None:
    """How long the SQLite connection waits for another's write lock (outside any
    transaction: straight on the driver's connection)."""
    conn.connection.driver_connection.execute(f"PRAGMA busy_timeout={int(ms)}")  # type: ignore[union-attr]


def _take(batch: list[_Call[Any, Any]], call: Any) -> None:
    """Add a queued call to the batch, unless its caller gave up waiting (cancelled it): a
    write nobody waits for any more is dropped, not written behind the caller's back."""
    future = call.future
    if isinstance(future, Future) and not future.set_running_or_notify_cancel():
        return
    batch.append(call)


def _fail(call: _Call[Any, Any], exc: BaseException) -> None:
    if isinstance(exc, BesError):
        error: BaseException = exc
    elif isinstance(exc, SQLAlchemyError):
        log.error("database write %s failed: %s", call.fn.__name__, exc)
        error = StoreError(f"database write failed: {exc.__class__.__name__}")
        error.__cause__ = exc
    else:
        log.error("database write %s failed", call.fn.__name__, exc_info=exc)
        error = StoreError("database write failed")
        error.__cause__ = exc
    if not call.future.cancelled():
        call.future.set_exception(error)


def _resolve(future: Future[Any] | asyncio.Future[Any], result: Any) -> None:
    if not future.cancelled():
        future.set_result(result)
