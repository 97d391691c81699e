"""Benchmark of the views that summarize everything stored, at 10 k and at 1 M activities.

Usage::

    .venv/bin/python bench/views_bench.py [--sizes 10000,1000000] [--engines sqlite,postgresql]
        [--ended 0.9] [--backend desktopgrid]

For each engine it fills one database step by step to each size, through the store's own
CreateActivity batch function (the rows, the documents, the events and the counts the database
keeps are exactly what CreateActivity writes; it only skips HTTP, to load a million in minutes)
and leaves them Pending (as CreateActivity with backend none does: the worst case for the
list of active activities), or, with ``--ended 0.9``, ends nine in ten as a site's history
looks. With ``--backend desktopgrid`` every activity is also in the desktop grid's queue, as
CreateActivity leaves it when no worker runs (the service's polls and waiting reasons then
look at a queue of that size). At each size it starts ``bes serve`` (that backend, pinned to
one CPU) on that database and measures, from the other CPU: CreateActivity/s with 32
keep-alive clients, a 1,000-id GetActivityStatuses, GetFactoryAttributesDocument, the status
page's first page (everyone's, as the administrator sees it) and a /metrics scrape (p50 of 100
calls each), the service's RSS and the database's size. It prints one table and the 1 M / 10 k
ratios; nothing is asserted.
PostgreSQL is the throwaway server the tests use (initdb in a temporary directory); after each
load it is vacuumed and analyzed, as its autovacuum would soon do, so that this does not run
during the measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import httpx
from sqlalchemy import Connection, text, update

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bes_bench import CREATE, _pct, load, running, serve_argv, statuses
from bes.backends.desktopgrid.routing import VOLUNTEERS, Needs, waiting_reason
from bes.db import activity_rows as rows
from bes.db import grid_rows as grid
from bes.db.store import Database
from bes.db.tables import activity
from bes.ids import BackendJobId, new_activity_id, new_ordered_id
from bes.jsdl import codec, load_job_definition
from tests.support import soap
from tests.support.postgres import fresh_database, postgres_server
from tests.support.server import free_port

_BATCH = 5000
_OWNERS = ("alice", "bob", "carol", "dave")
ATTRIBUTES = soap.envelope(f'<bes:GetFactoryAttributesDocument xmlns:bes="{soap.BES}"/>')


def _load(
    conn: Connection, items: Sequence[tuple[Sequence[rows.NewActivity], float]]
) -> list[None]:
    for batch, ended in items:
        rows.create_activities(conn, batch)
        ids = [a.id for a in batch]
        cut = int(len(ids) * ended)
        # Of the ended ones, nine in ten Finished and one Failed: one UPDATE per kind.
        for state, chosen in (
            ("Finished", ids[: cut * 9 // 10]),
            ("Failed", ids[cut * 9 // 10 : cut]),
        ):
            if chosen:
                conn.execute(
                    update(activity)
                    .where(activity.c.id.in_(chosen))
                    .values(state=state, substate=None)
                )
    return [None] * len(items)


def fill(db: Database, have: int, want: int, ended: float, backend: str) -> float:
    """Add activities until ``want`` (queued for the desktop grid with ``backend``
    desktopgrid); return the seconds it took."""
    job = codec.to_json(load_job_definition(soap.HELLO_JSDL))
    document = soap.HELLO_JSDL.decode()
    started = time.perf_counter()
    at = dt.datetime.now(dt.UTC)
    while have < want:
        n = min(_BATCH, want - have)
        batch = [
            rows.NewActivity(
                id=new_activity_id(),
                owner=_OWNERS[(have + i) % len(_OWNERS)],
                job_name="hello",
                document=document,
                job=job,
                backend=None if backend == "none" else backend,
                at=at - dt.timedelta(seconds=want - have - i),
            )
            for i in range(n)
        ]
        if backend == "desktopgrid":
            batch = [replace(a, enqueued=_queued(a)) for a in batch]
        db.write_sync(_load, (batch, ended))
        have += n
    return time.perf_counter() - started


def _queued(new: rows.NewActivity) -> rows.Enqueued:
    """The desktop grid's queue row of a new activity, as its backend makes one for the hello
    job (the tiny template's needs; no worker: the reason says so)."""
    needs = Needs(memory_mib=256, vcpus=1, disk_mib=1024, network=False, hypervisors=())
    reason = waiting_reason(needs, VOLUNTEERS, workers=[])
    job = grid.NewGridJob(
        id=BackendJobId("g" + new_ordered_id()),
        activity_id=new.id,
        memory_mib=needs.memory_mib,
        vcpus=needs.vcpus,
        disk_mib=needs.disk_mib,
        needs_network=needs.network,
        hypervisors=needs.hypervisors,
        max_attempts=3,
        at=new.at,
        reason=reason,
    )
    return rows.Enqueued(
        job_id=job.id, pool=VOLUNTEERS, message=reason, write=grid.queue_jobs, row=job
    )


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def serving(url: str, data: Path, backend: str) -> Iterator[tuple[int, int]]:
    port = free_port()
    argv = serve_argv(port, data, "--backend", backend, "--no-local-worker", "--database-url", url)
    with running(argv, port, "/healthz", start_s=60) as proc:
        yield port, proc.pid


def timed(port: int, method: str, path: str, body: bytes | None, repeats: int = 100) -> float:
    """p50 in ms of ``repeats`` calls, after ten to warm up (the views take a few ms: fewer
    calls would measure the machine's noise)."""
    times = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for i in range(repeats + 10):
            started = time.perf_counter()
            answer = client.request(method, path, content=body)
            if i >= 10:
                times.append(time.perf_counter() - started)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    return statistics.median(times) * 1000


def measure(url: str, data: Path, db_size: float, backend: str) -> dict[str, float]:
    with serving(url, data, backend) as (port, pid):
        created = asyncio.run(load(port, CREATE, 32, 4.0))
        rate, latencies = created.rate, created.latencies
        status_times = asyncio.run(statuses(port, 1000, 10))
        return {
            "CreateActivity/s, 32 clients": rate,
            "CreateActivity p99 ms": _pct(latencies, 0.99),
            "GetActivityStatuses 1,000 ids, p50 ms": statistics.median(status_times) * 1000,
            "GetFactoryAttributesDocument, p50 ms": timed(port, "POST", "/bes", ATTRIBUTES),
            "status page, first page, p50 ms": timed(port, "GET", "/bes/status", None),
            "/metrics scrape, p50 ms": timed(port, "GET", "/metrics", None),
            "service RSS MB": _rss_mb(pid),
            "database MB": db_size,
        }


def _size_mb(db: Database, url: str, data: Path) -> float:
    if url.startswith("sqlite"):
        return sum(f.stat().st_size for f in data.glob("bench.sqlite3*")) / 1e6
    size = db.read_sync(
        lambda c: c.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
    )
    return int(size) / 1e6


def _vacuum_analyze(url: str) -> None:
    import psycopg

    with psycopg.connect(
        url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as c:
        c.execute("VACUUM (ANALYZE)")


def run_engine(
    engine: str, sizes: list[int], data: Path, url: str, *, ended: float, backend: str
) -> dict[int, dict[str, float]]:
    db = Database(url)
    db.migrate()
    results: dict[int, dict[str, float]] = {}
    have = 0
    for size in sizes:
        took = fill(db, have, size, ended, backend)
        print(
            f"{engine}: {size:,} activities stored ({took:.0f} s to add {size - have:,})",
            flush=True,
        )
        have = size
        if engine == "postgresql":  # what autovacuum does soon anyway: not during the figures
            _vacuum_analyze(url)
        db_size = _size_mb(db, url, data)
        results[size] = measure(url, data, db_size, backend)
    db.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument(
        "--ended",
        type=float,
        default=0.0,
        help="the fraction of activities that ended (0: all Pending)",
    )
    parser.add_argument(
        "--backend",
        choices=("none", "desktopgrid"),
        default="none",
        help="desktopgrid: every activity also queued for the grid (with --ended 0 only)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.backend != "none" and args.ended:
        parser.error("--backend desktopgrid leaves every activity queued: give no --ended")
    sizes = [int(s) for s in args.sizes.split(",")]
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})
    print(f"views benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    table: dict[str, dict[int, dict[str, float]]] = {}
    for engine in args.engines.split(","):
        with tempfile.TemporaryDirectory(prefix="bes-views-") as tmp:
            data = Path(tmp)
            if engine == "sqlite":
                sqlite_url = f"sqlite:///{data / 'bench.sqlite3'}"
                table[engine] = run_engine(
                    engine, sizes, data, sqlite_url, ended=args.ended, backend=args.backend
                )
            else:
                with postgres_server() as admin:
                    url = fresh_database(admin, "views")
                    table[engine] = run_engine(
                        engine, sizes, data, url, ended=args.ended, backend=args.backend
                    )
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    for engine, by_size in table.items():
        print()
        first = sizes[0]
        print(f"{engine:<40} | " + " | ".join(f"{s:>10,}" for s in sizes) + " |  ratio")
        for what in by_size[first]:
            values = [by_size[s][what] for s in sizes]
            ratio = values[-1] / values[0] if values[0] else float("nan")
            print(
                f"{what:<40} | " + " | ".join(f"{v:>10,.1f}" for v in values) + f" | {ratio:>6.2f}"
            )


if __name__ == "__main__":
    main()
