"""Benchmark of retention: purging a large number of ended activities, and what the service's
own writes feel meanwhile.

Usage::

    .venv/bin/python bench/purge_bench.py [--activities 1000000] [--database-url URL | --postgres]

It loads ``--activities`` activities that ended 45 days ago (each with a 1.2 KB JSDL document,
its parsed job and three history events, as CreateActivity and the backend's reports store
them; the tally's triggers active), plus a twentieth as many that must stay (ended yesterday,
or still pending), straight into the database in big transactions. Then, in one event loop as
in ``bes serve``, it measures a *trickle* of CreateActivity writes (one every 10 ms, each
committed as the service commits them; its latency counted from when it was due, so that
time the event loop spent busy counts) first alone, then while ``Retention.purge_once``
removes what ended more than 30 days ago, as ``bes serve --keep-ended`` does (on SQLite in
transactions of about 10 ms run off the event loop; ``--whole-batches``: a whole ``--batch``
per transaction, as ``bes purge`` does): activities per second of the purge, and the
trickle's p50/p99/max latency with and without it. On SQLite (the default, a temporary file;
created with incremental auto-vacuum) it also reports the file's size before and after;
``--postgres`` starts a throwaway PostgreSQL (tests/support/postgres.py, fsync off).
Nothing is asserted; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Connection, text

from bes.db import activity_rows as rows
from bes.db.prepared import Prepared, db_time
from bes.db.store import Database
from bes.db.tables import activity, activity_document, activity_event
from bes.ids import ActivityId, new_activity_id
from bes.retention import Retention
from bes.states import ActivityState

DOCUMENT = "<jsdl:JobDefinition>" + "x" * 1200 + "</jsdl:JobDefinition>"
JOB = '{"job_description": {' + '"y": 0, ' * 100 + '"z": 1}}'
CHUNK = 5000  # activities per loading transaction

_ACTIVITY = Prepared(
    activity.insert(),
    column_keys=[
        "id",
        "owner",
        "state",
        "substate",
        "job_name",
        "backend",
        "cancel_requested",
        "outputs",
        "children",
        "exit_code",
        "created_at",
        "changed_at",
    ],
)
_DOCUMENT = Prepared(activity_document.insert(), column_keys=["id", "document", "job"])
_EVENT = Prepared(
    activity_event.insert(), column_keys=["activity_id", "at", "state", "substate", "message"]
)


def _load(conn: Connection, items: Sequence[tuple[int, dt.datetime, ActivityState]]) -> list[None]:
    """Insert ``n`` activities created a day before ``at`` and in ``state`` since ``at``."""
    for n, at, state in items:
        created, changed = db_time(conn, at - dt.timedelta(days=1)), db_time(conn, at)
        ids = [new_activity_id() for _ in range(n)]
        _ACTIVITY.executemany(
            conn,
            [
                {
                    "id": i,
                    "owner": f"user{k % 50}",
                    "state": state.value,
                    "substate": None,
                    "job_name": "bench",
                    "backend": None,
                    "cancel_requested": False,
                    "outputs": False,
                    "children": 0,
                    "exit_code": 0 if state.terminal else None,
                    "created_at": created,
                    "changed_at": changed,
                }
                for k, i in enumerate(ids)
            ],
        )
        _DOCUMENT.executemany(conn, [{"id": i, "document": DOCUMENT, "job": JOB} for i in ids])
        steps: list[tuple[str, str | None, str | None, Any]] = [
            ("Pending", "Queued", "accepted", created)
        ]
        if state.terminal:
            steps += [("Running", "Executing", None, changed), (state.value, None, None, changed)]
        _EVENT.executemany(
            conn,
            [
                {"activity_id": i, "at": at_, "state": s, "substate": sub, "message": m}
                for i in ids
                for s, sub, m, at_ in steps
            ],
        )
    return [None] * len(items)


def load(db: Database, ended: int, kept: int, now: dt.datetime) -> float:
    """Load the activities; the seconds it took."""
    started = time.perf_counter()
    old = now - dt.timedelta(days=45)
    recent = now - dt.timedelta(days=1)
    plan = [(ended, old, ActivityState.FINISHED)]
    plan += [(kept // 2, recent, ActivityState.FINISHED)]
    plan += [(kept - kept // 2, recent, ActivityState.PENDING)]
    for total, at, state in plan:
        for start in range(0, total, CHUNK):
            db.write_sync(_load, (min(CHUNK, total - start), at, state))
            if start and start % 100_000 == 0:
                print(f"  loaded {start:,} ({state.value})", flush=True)
    return time.perf_counter() - started


def database_bytes(db: Database, path: Path | None) -> int:
    if path is not None:
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))

    def size(conn: Connection) -> int:
        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())

    return db.read_sync(size)


def _percentiles(samples: list[float]) -> dict[str, float]:
    if len(samples) < 2:
        return {"n": len(samples), "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "n": len(samples),
        "p50_ms": round(cuts[49] * 1e3, 2),
        "p99_ms": round(cuts[98] * 1e3, 2),
        "max_ms": round(max(samples) * 1e3, 2),
    }


async def trickle(db: Database, stop: asyncio.Event, latencies: list[float]) -> None:
    """One CreateActivity write 10 ms after the last one's answer until ``stop``; each one's
    latency, counted from when it was due: a write late to start because the event loop was
    busy (a purge's statements run in it) waited as a request arriving then would."""
    due = time.perf_counter()
    while not stop.is_set():
        new = rows.NewActivity(
            id=ActivityId(new_activity_id()),
            owner="trickle",
            job_name="trickle",
            document=DOCUMENT,
            job=JOB,
            backend=None,
            at=dt.datetime.now(dt.UTC),
        )
        await db.write(rows.create_activities, new)
        answered = time.perf_counter()
        latencies.append(answered - due)
        due = answered + 0.01
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.01)


async def measure(
    db: Database, batch: int, baseline_s: float, *, whole: bool = False
) -> dict[str, Any]:
    alone: list[float] = []
    stop = asyncio.Event()
    task = asyncio.create_task(trickle(db, stop, alone))
    await asyncio.sleep(baseline_s)
    stop.set()
    await task

    during: list[float] = []
    stop = asyncio.Event()
    task = asyncio.create_task(trickle(db, stop, during))
    # The loaded activities ran nowhere. As bes serve --keep-ended purges, or (whole) as
    # bes purge does, a whole batch per transaction.
    retention = Retention(db, lambda name: None, short=not whole)
    report = await retention.purge_once(dt.timedelta(days=30), batch=batch)
    await asyncio.to_thread(retention.close)
    stop.set()
    await task
    return {
        "purged": report.activities,
        "purge_s": round(report.seconds, 2),
        "activities_per_s": round(report.activities / report.seconds) if report.seconds else 0,
        "freed_bytes": report.freed_bytes,
        "trickle_alone": _percentiles(alone),
        "trickle_during_purge": _percentiles(during),
    }


@contextlib.contextmanager
def database_url(args: argparse.Namespace) -> Iterator[tuple[str, Path | None]]:
    if args.database_url:
        path = None
        if args.database_url.startswith("sqlite:///"):
            path = Path(args.database_url.removeprefix("sqlite:///"))
        yield args.database_url, path
        return
    if args.postgres:
        from tests.support.postgres import fresh_database, postgres_server

        with postgres_server() as admin:
            yield fresh_database(admin, "purge_bench"), None
        return
    with tempfile.TemporaryDirectory(prefix="bes-purge-bench-") as scratch:
        path = Path(scratch) / "bes.sqlite3"
        yield f"sqlite:///{path}", path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--activities", type=int, default=20_000, help="ended ones to purge")
    parser.add_argument("--database-url", help="an empty database (default: SQLite, temporary)")
    parser.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--baseline-s", type=float, default=3.0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--whole-batches",
        action="store_true",
        help="a whole batch per transaction, as bes purge (default: as bes serve --keep-ended)",
    )
    args = parser.parse_args()
    kept = max(10, args.activities // 20)
    now = dt.datetime.now(dt.UTC)
    with database_url(args) as (url, path):
        db = Database(url)
        try:
            db.migrate()
            print(f"loading {args.activities:,} ended activities and {kept:,} to keep ...")
            load_s = load(db, args.activities, kept, now)
            before = database_bytes(db, path)
            print(f"loaded in {load_s:.0f} s; database {before / 1e6:,.0f} MB")
            figures = asyncio.run(
                measure(db, args.batch, args.baseline_s, whole=args.whole_batches)
            )
            after = database_bytes(db, path)
            left = db.read_sync(rows.count_by_state, None)
        finally:
            db.close()
        if path is not None:  # after the last checkpoint: the file as it stays
            after = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    figures.update(
        engine=url.split(":", 1)[0].split("+")[0],
        activities=args.activities,
        kept=kept,
        batch=args.batch,
        whole_batches=args.whole_batches,
        load_s=round(load_s, 1),
        database_bytes_before=before,
        database_bytes_after=after,
        left=sum(left.values()),
    )
    alone, during = figures["trickle_alone"], figures["trickle_during_purge"]
    print(
        f"{figures['engine']}: purged {figures['purged']:,} ended activities in "
        f"{figures['purge_s']} s = {figures['activities_per_s']:,}/s (batches of {args.batch}"
        f"{', whole' if args.whole_batches else ''}); "
        f"{figures['left']:,} activities left\n"
        f"  database {before / 1e6:,.0f} MB -> {after / 1e6:,.0f} MB "
        f"(given back by incremental vacuum: {figures['freed_bytes'] / 1e6:,.0f} MB)\n"
        f"  CreateActivity commits, 100/s: alone p50 {alone['p50_ms']} ms p99 "
        f"{alone['p99_ms']} ms max {alone['max_ms']} ms; during the purge p50 "
        f"{during['p50_ms']} ms p99 {during['p99_ms']} ms max {during['max_ms']} ms "
        f"({during['n']} writes)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
