"""Retention: ended activities, and what is kept of them, removed after a configured time.

``bes purge --older-than 30d`` does it once; ``bes serve --keep-ended 30d`` does it on its own,
every tenth of that time (between a second and five minutes), on the one replica that holds
the ``retention`` duty (:mod:`bes.db.duty_rows`).

A purge goes in batches, with a pause between transactions, so that the service's own writes
(CreateActivity above all) go on meanwhile. On SQLite, which has one writer, the service's
purge deletes in transactions of about 10 ms, each run whole on the commit thread
(``Database.write(long=True)``): the event loop goes on serving while one runs, and the
service's writes wait at most that long; ``bes purge``, run by an administrator in a process
of its own, deletes a whole ``--batch`` per transaction (the service's loop does not wait for
its lock either: :mod:`bes.db.committer`). For each batch of ended activities it

1. asks each backend to remove what it keeps of their jobs (:meth:`Backend.discard`: the
   desktop grid's kept outputs), off the event loop;
2. deletes the activities (their history, documents and requests go with them, and the
   sweeps left without points; :mod:`bes.db.retention_rows`);
3. on SQLite created with ``auto_vacuum=INCREMENTAL``, gives the freed pages back to the file
   system (``PRAGMA incremental_vacuum``), so the file shrinks to what is kept.

Files go before rows: a purge that stops half-way leaves rows whose files are gone (the next
purge deletes them), never files that nothing points to any more. On PostgreSQL the batches
are written on a connection of their own, beside the service's group commits rather than in
them. Measured figures: README.md (Retention) and ``bench/purge_bench.py``.

An SQLite database created before incremental auto-vacuum was set reuses freed pages but never
shrinks; :func:`vacuum` (``bes purge --vacuum``) converts it once. PostgreSQL's autovacuum
reuses the space of deleted rows by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from bes.backends.base import Backend
from bes.clock import utc_now
from bes.db import duty_rows
from bes.db import retention_rows as rows
from bes.db.duty import Duty
from bes.db.engine import create_engines, dispose_quietly
from bes.db.store import Database
from bes.errors import BesError, ConfigError, StoreError
from bes.ids import ActivityId, BackendJobId
from bes.states import TERMINAL_STATES

log = logging.getLogger(__name__)

DUTY: Final = "retention"
KEEP_REQUESTS: Final = dt.timedelta(days=7)
"""How long an answered CreateActivity request is remembered (clients retry within minutes)."""
_WRITE_S: Final = 0.01
"""About how long one of the service's purge transactions takes on SQLite (deleting
activities, giving pages back): the service's own writes wait behind it."""
_STATES: Final = sorted(TERMINAL_STATES)
_RENEW_S: Final = 10.0  # a long purge renews the duty this often


@dataclass(frozen=True, slots=True, kw_only=True)
class PurgeReport:
    """What one purge removed."""

    activities: int
    """Ended activities (plain ones and sweeps' points)."""
    sweeps: int
    """Parameter sweeps, gone with their last points."""
    requests: int
    """Remembered CreateActivity requests past :data:`KEEP_REQUESTS`."""
    output_bytes: int
    """Kept outputs removed by the backends."""
    freed_bytes: int
    """Database file space given back to the file system (SQLite)."""
    seconds: float
    batches: int = 0
    """Transactions that deleted activities (each committed before the next began)."""
    kept_back: int = 0
    """Ended activities left for later because their backend could not remove their files."""


@dataclass(slots=True)
class _Progress:
    """What a purge has done so far."""

    activities: int = 0
    sweeps: int = 0
    output_bytes: int = 0
    pages: int = 0
    kept_back: int = 0
    batches: int = 0


class Retention:
    """Removes ended activities older than a given age (see the module docstring).

    Args:
        db: The service's database.
        backend_for: The backend of a given name (for :meth:`Backend.discard`), None if there
            is none here (its activities' files are then left where they are, with a warning).
        holder: This replica's name, for the ``retention`` duty.
        pause_s: Pause between transactions, for the service's own writes.
        clock: The current time (aware, UTC).
        short: On SQLite, delete in transactions of about :data:`_WRITE_S` (the service's
            own purge); False: a whole batch per transaction (``bes purge``, an
            administrator's, in a process of its own). Either way they run off the event
            loop.
    """

    def __init__(
        self,
        db: Database,
        backend_for: Callable[[str], Backend | None],
        *,
        holder: str = "bes-purge",
        pause_s: float = 0.005,
        clock: Callable[[], dt.datetime] = utc_now,
        short: bool = True,
    ) -> None:
        self._db = db
        self._short = short and db.dialect != "postgresql"
        self._own: Database | None = None
        self._backend_for = backend_for
        self._holder = holder
        self._pause_s = pause_s
        self._clock = clock
        self._missing: set[str] = set()
        self._hinted = False
        self._vacuum_pages = 256  # pages per transaction, adapted to take _WRITE_S
        self._chunk = 50  # activities per transaction, adapted to take _WRITE_S

    async def purge_once(
        self,
        older_than: dt.timedelta,
        *,
        batch: int = 1000,
        stop: asyncio.Event | None = None,
        keep_duty: Callable[[], Awaitable[bool]] | None = None,
    ) -> PurgeReport:
        """Remove the activities that ended more than ``older_than`` ago, ``batch`` at a time,
        until none is left (or ``stop`` is set, or ``keep_duty``, asked after every batch,
        says the duty was lost).

        Raises:
            StoreError: The database failed (what was removed before stays removed).
        """
        started = time.perf_counter()
        cutoff = self._clock() - older_than
        space = await self._db.read(rows.file_space)
        vacuum = space is not None and space.auto_vacuum == 2
        if space is not None and not vacuum and not self._hinted:
            self._hinted = True
            log.info(
                "this SQLite database reuses the space of purged activities but does not give it "
                "back: run bes purge --vacuum once (service stopped) to convert it"
            )
        done = _Progress()
        lost = False

        def going() -> bool:
            return not lost and (stop is None or not stop.is_set())

        for state in _STATES:
            after = None
            while going():
                found = await self._db.read(rows.ended_activities, state, cutoff, batch, after)
                if not found:
                    break
                after = (found[-1].created_at, found[-1].id)
                if await self._purge_batch(found, cutoff, done, vacuum=vacuum):
                    done.pages += await self._give_back(going)
                await asyncio.sleep(self._pause_s)
                if keep_duty is not None:
                    lost = not await keep_duty()
                if len(found) < batch:
                    break
        requests = await self._purge_requests(batch)
        if vacuum and (done.batches or (space is not None and space.free_pages)):
            done.pages += await self._give_back(going)
        report = PurgeReport(
            activities=done.activities,
            sweeps=done.sweeps,
            requests=requests,
            output_bytes=done.output_bytes,
            freed_bytes=done.pages * space.page_size if space is not None else 0,
            seconds=time.perf_counter() - started,
            batches=done.batches,
            kept_back=done.kept_back,
        )
        if report.activities or report.sweeps or report.requests:
            log.info(
                "retention: removed %d ended activities, %d sweeps, %d old requests, "
                "%d bytes of outputs in %.1f s",
                report.activities,
                report.sweeps,
                report.requests,
                report.output_bytes,
                report.seconds,
            )
        return report

    async def _purge_batch(
        self, found: list[rows.Ended], cutoff: dt.datetime, done: _Progress, *, vacuum: bool
    ) -> bool:
        """Files first, then rows and (``vacuum``) the pages they freed, in transactions of
        about :data:`_WRITE_S` on SQLite (one on PostgreSQL); True if free pages are left
        over."""
        freed, ids = await self._discard(found)
        done.output_bytes += freed
        done.kept_back += len(found) - len(ids)
        if not ids:
            return vacuum
        # On SQLite the service's writes wait behind each transaction: short ones, unless
        # this is bes purge. On PostgreSQL they do not (a connection of its own): the whole
        # batch at once.
        size = self._chunk if self._short else len(ids)
        left_over = vacuum
        start = 0
        while start < len(ids):
            chunk = tuple(ids[start : start + size])
            start += len(chunk)
            give_back = 4 * len(chunk) if vacuum else 0  # an activity frees 1.5-3 pages of 4 KiB
            began = time.perf_counter()
            purged = await self._writer().write(
                rows.purge_activities,
                rows.Purge(ids=chunk, before=cutoff, give_back=give_back),
                long=True,
            )
            if self._short:
                self._chunk = size = _adapted(size, len(chunk), time.perf_counter() - began)
            done.activities += purged.activities
            done.sweeps += purged.sweeps
            done.pages += purged.pages
            done.batches += 1
            left_over = vacuum and purged.pages == give_back
            if start < len(ids):
                await asyncio.sleep(self._pause_s)
        return left_over

    async def _give_back(self, going: Callable[[], bool]) -> int:
        """Give every free page of the SQLite file back, in transactions of about
        :data:`_WRITE_S` each (SQLite has one writer); how many went.

        After every batch, while the free list is short: SQLite looks a page up in the free
        list by walking it, so a page costs ~20 us with a few thousand free, ~1 ms with
        hundreds of thousands (measured on a purge of a million activities)."""
        total = 0
        while going():
            started = time.perf_counter()
            freed = await self._db.write(rows.incremental_vacuum, self._vacuum_pages, long=True)
            took = time.perf_counter() - started
            total += freed
            if freed < self._vacuum_pages:
                return total
            scaled = int(self._vacuum_pages * _WRITE_S / max(took, 1e-4))
            self._vacuum_pages = min(4096, max(16, scaled))
            await asyncio.sleep(self._pause_s)
        return total

    def _writer(self) -> Database:
        """Where the purge writes: on PostgreSQL a connection of its own, so that the
        service's group commits never wait behind a batch (several writers run at once
        there); on SQLite, which has one writer, the service's own committer."""
        if self._db.dialect != "postgresql":
            return self._db
        if self._own is None:
            self._own = Database(self._db.url, read_threads=1)
        return self._own

    def close(self) -> None:
        """Close the connection of its own, if it opened one (blocking)."""
        if self._own is not None:
            self._own.close()
            self._own = None

    async def _discard(self, found: list[rows.Ended]) -> tuple[int, list[ActivityId]]:
        """Have the backends remove their files of ``found``; the bytes freed and the ids of
        the activities whose rows may go (those whose files are gone, or have none)."""
        by_backend: dict[str, list[BackendJobId]] = defaultdict(list)
        for ended in found:
            if ended.backend is not None and ended.backend_job_id is not None:
                by_backend[ended.backend].append(ended.backend_job_id)
        freed = 0
        failed: set[str] = set()
        for name, job_ids in by_backend.items():
            backend = self._backend_for(name)
            if backend is None:
                if name not in self._missing:
                    self._missing.add(name)
                    log.warning("retention: no backend %r here; its jobs' files stay", name)
                continue
            try:
                freed += await asyncio.to_thread(backend.discard, job_ids)
            except Exception:  # keep the rows: the next purge tries again
                log.exception("retention: backend %s could not remove its jobs' files", name)
                failed.add(name)
        ids = [e.id for e in found if e.backend not in failed or e.backend_job_id is None]
        return freed, ids

    async def _purge_requests(self, batch: int) -> int:
        before = self._clock() - KEEP_REQUESTS
        total = 0
        while True:
            n = await self._writer().write(
                rows.purge_requests, rows.RequestPurge(before=before, limit=batch), long=True
            )
            total += n
            if n < batch:
                return total
            await asyncio.sleep(self._pause_s)

    # ------------------------------------------------------------------ automatic

    async def run(
        self,
        stop: asyncio.Event,
        *,
        keep_ended: dt.timedelta,
        batch: int = 200,
        every_s: float | None = None,
    ) -> None:
        """Purge what ended more than ``keep_ended`` ago, every ``every_s`` (None: a tenth of
        ``keep_ended``, between 1 s and 5 min) until ``stop`` is set, while this replica holds
        the ``retention`` duty; give it up at the end."""
        if every_s is None:
            every_s = min(300.0, max(1.0, keep_ended.total_seconds() / 10))
        duty = Duty(
            name=DUTY,
            holder=self._holder,
            hold_s=2 * every_s + 30.0,
            renew_s=_RENEW_S,
            clock=self._clock,
        )

        async def take() -> bool:
            return duty.taken(await self._db.write(duty_rows.take_duties, duty.take()))

        async def keep() -> bool:  # during a long purge
            return await take() if duty.due() else True

        try:
            while not stop.is_set():
                try:
                    if await take():
                        await self.purge_once(keep_ended, batch=batch, stop=stop, keep_duty=keep)
                except Exception:  # housekeeping must go on; the next round retries
                    log.exception("retention failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every_s)
        finally:
            if duty.held:
                with contextlib.suppress(BesError):
                    await self._db.write(duty_rows.release_duties, duty.release())
            await asyncio.to_thread(self.close)


def _adapted(size: int, done: int, took_s: float) -> int:
    """The number of activities the next transaction deletes, for it to take about
    :data:`_WRITE_S`, from one that deleted ``done`` of ``size`` in ``took_s``."""
    if done < size:  # (a short last chunk says nothing about a full one)
        return size
    # Growing by half at most: the cost of an activity varies (pages to move, a checkpoint),
    # and one quick transaction must not make the next one long.
    scaled = min(int(size * _WRITE_S / max(took_s, 1e-4)), size + max(1, size // 2))
    return min(1000, max(5, scaled))


def vacuum(url: str) -> tuple[rows.FileSpace, rows.FileSpace]:
    """Rebuild an SQLite database with incremental auto-vacuum (once, for a database created
    before it was the default); the file's pages before and after. Blocking; it needs the
    database to itself (stop the service), takes about as long as copying the file, and
    needs as much free disk space again.

    Raises:
        ConfigError: ``url`` is not an SQLite database.
        StoreError: SQLite refused (e.g. the database is busy).
    """
    if make_url(url).get_backend_name() != "sqlite":
        raise ConfigError("only an SQLite database needs VACUUM; PostgreSQL's autovacuum suffices")
    writer, reader = create_engines(url)
    try:
        with reader.connect() as conn:
            before = rows.file_space(conn)
        raw = writer.raw_connection()
        try:
            cursor = raw.cursor()
            # Outside any transaction (the engine's connections run in autocommit mode until
            # a BEGIN); the pragma set at connect takes effect with the rebuild.
            cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
            cursor.execute("VACUUM")
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cursor.close()
        except Exception as exc:
            raise StoreError(f"VACUUM failed: {exc}") from exc
        finally:
            raw.close()
        reader.dispose()  # a connection opened before the VACUUM still reads the old mode
        with reader.connect() as conn:
            after = rows.file_space(conn)
    except SQLAlchemyError as exc:
        raise StoreError(f"the database cannot be read: {exc}") from exc
    finally:
        dispose_quietly(writer, reader)
    if before is None or after is None:  # not SQLite after all
        raise ConfigError("only an SQLite database needs VACUUM")
    return before, after


__all__ = ["DUTY", "KEEP_REQUESTS", "PurgeReport", "Retention", "vacuum"]
