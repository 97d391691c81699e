"""Group commit: many small write transactions become one database transaction.

Every write of the service goes through one :class:`Committer` thread that owns the writer
connection. Callers submit *batch functions* with an argument and get a future; the thread
drains whatever has queued up, runs consecutive calls of the same batch function together (so
200 CreateActivity requests become two ``executemany`` statements), commits once, and only then
resolves the futures. A caller that sees its future resolved knows its write is on disk.

If anything in a batch raises, the batch is rolled back and each call is retried alone, so one
bad write cannot fail its neighbours.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

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
    future: Future[R]


class Committer:
    """The single writer of a database.

    Args:
        engine: The writer engine (one connection).
        max_batch: Most calls folded into one transaction.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 512) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Call[Any, Any] | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="bes-committer", daemon=True)
        self._closed = False
        self.transactions = 0
        """Transactions committed so far (for metrics and tests)."""
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
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Call[Any, Any]] = [first]  # type: ignore[list-item]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)  # type: ignore[arg-type]
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Call[Any, Any]]) -> None:
        try:
            results = self._transaction(batch)
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            for call in batch:
                try:
                    (result,) = self._transaction([call])
                except Exception as one:
                    self._fail(call, one)
                else:
                    _resolve(call.future, result)
            return
        for call, result in zip(batch, results, strict=True):
            _resolve(call.future, result)

    def _transaction(self, batch: list[_Call[Any, Any]]) -> list[Any]:
        results: list[Any] = []
        started = time.perf_counter()
        with self._engine.begin() as conn:
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
        self.transactions += 1
        log.debug(
            "committed %d writes in %.2f ms", len(batch), (time.perf_counter() - started) * 1e3
        )
        return results

    @staticmethod
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


def _resolve(future: Future[Any], result: Any) -> None:
    if not future.cancelled():
        future.set_result(result)
