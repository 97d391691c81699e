"""The database as the rest of the service sees it: awaitable reads and group-committed writes.

Reads run on a small thread pool with pooled connections; writes go through the
:class:`~bes.db.committer.Committer`. Both have synchronous twins for command-line tools and
tests. SQLAlchemy errors are wrapped into :class:`~bes.errors.StoreError` here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from bes.db import migrate
from bes.db.committer import BatchFunction, Committer
from bes.db.engine import create_engines, dispose_quietly
from bes.errors import StoreError

log = logging.getLogger(__name__)

A = TypeVar("A")
R = TypeVar("R")
P = ParamSpec("P")


class Database:
    """One database: a writer (group commit) and a pool of readers.

    Args:
        url: SQLAlchemy URL, ``sqlite:///path`` or ``postgresql://...``.
        read_threads: Threads serving concurrent reads.
    """

    def __init__(self, url: str, *, read_threads: int = 4) -> None:
        self.url = url
        self._writer, self._reader = create_engines(url)
        self.dialect = self._writer.dialect.name
        self._committer: Committer | None = None
        self._pool = ThreadPoolExecutor(read_threads, thread_name_prefix="bes-read")

    def migrate(self) -> None:
        """Apply pending schema migrations (idempotent)."""
        migrate.upgrade(self._writer)

    @property
    def committer(self) -> Committer:
        """The group committer, started on first use."""
        if self._committer is None:
            self._committer = Committer(self._writer)
        return self._committer

    async def write(self, fn: BatchFunction[A, R], arg: A) -> R:
        """Run one call of a batch function in the next group commit; return its result."""
        return await asyncio.wrap_future(self.committer.submit(fn, arg))

    def write_sync(self, fn: BatchFunction[A, R], arg: A) -> R:
        """Blocking :meth:`write`."""
        return self.committer.submit(fn, arg).result()

    async def read(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run ``fn(connection, *args)`` on a reader connection in the thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: self.read_sync(fn, *args, **kwargs))

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

    def close(self) -> None:
        """Finish queued writes and close every connection."""
        if self._committer is not None:
            self._committer.close()
        self._pool.shutdown(wait=True)
        dispose_quietly(self._writer, self._reader)

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
