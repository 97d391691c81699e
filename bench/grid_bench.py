"""Benchmark of the desktop grid's worker protocol: claim+complete cycles per second with many
simulated workers against one service (no VMs), a claim-only floor in the same run, and a
count of double claims (must be 0).

Usage::

    .venv/bin/python bench/grid_bench.py [--workers 64] [--seconds 8] [--jobs 40000]

It starts ``bes serve`` (SQLite, synchronous=FULL, no local worker) pinned to one CPU when
``taskset`` is available, fills the queue through CreateActivity (SOAP, as clients do) and
waits until the service has handed every activity to the grid. Then the simulated workers,
each on a keep-alive HTTP/1.1 connection from this process (on the other CPU), loop:

* cycles: claim one job, complete it (exit code 0): the whole protocol of a job that runs;
* floor: claim only (the cheapest useful call: one authenticated UPDATE ... RETURNING).

Every leased job id is recorded; a job leased twice is a double claim. At the end it waits
for the registry to bring the completed activities to Finished and reports how long that
took. Nothing is asserted; figures are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bes_bench import _pin, running
from bes.backends.desktopgrid.tokens import new_token, token_hash
from bes.db import grid_rows
from bes.db.engine import default_url
from bes.db.store import Database
from bes.db.tables import activity, grid_job
from tests.support import soap
from tests.support.server import free_port

VM_JOB = b"""<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
  xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix" xmlns:vm="urn:bes-grid:vm:1.0">
  <jsdl:JobDescription><jsdl:JobIdentification><jsdl:JobName>bench</jsdl:JobName>
  </jsdl:JobIdentification><jsdl:Application>
    <posix:POSIXApplication><posix:Executable>/bin/true</posix:Executable></posix:POSIXApplication>
    <vm:VirtualMachine><vm:Image><vm:Template>tiny</vm:Template></vm:Image></vm:VirtualMachine>
  </jsdl:Application></jsdl:JobDescription></jsdl:JobDefinition>"""


class Connection:
    """One keep-alive HTTP/1.1 connection speaking the worker protocol."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.auth = f"Authorization: Bearer {token}\r\n".encode()

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"%sContent-Length: %d\r\n\r\n%s" % (path.encode(), self.auth, len(body), body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return int(head[9:12]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


CLAIM_REQUEST = {
    "slots": 1,
    "memory_mib": 4096,
    "vcpus": 4,
    "disk_mib": 100000,
    "hypervisors": ["qemu"],
}
CLAIM = json.dumps(CLAIM_REQUEST).encode()
COMPLETE = b'{"exit_code":0}'
COMPLETE_AND_CLAIM = json.dumps({"exit_code": 0, "claim": CLAIM_REQUEST}).encode()


async def worker_loop(
    conn: Connection, until: float, mode: str, leased: list[str], errors: list[int]
) -> int:
    """One simulated worker. ``mode``: floor (claim only), cycles (claim, then complete), or
    chained (each completion leases the next job in the same call)."""
    done = 0
    leases: list[dict[str, str]] = []
    while time.perf_counter() < until:
        if not leases:
            status, body = await conn.post("/worker/v1/claim", CLAIM)
            if status != 200:
                errors.append(status)
                continue
            leases = json.loads(body)["leases"]
            if not leases:
                return done  # the queue ran dry: the run must be longer
        lease = leases.pop()["lease"]
        leased.append(lease.rsplit(".", 1)[0])
        if mode != "floor":
            body = COMPLETE_AND_CLAIM if mode == "chained" else COMPLETE
            status, answer = await conn.post(f"/worker/v1/leases/{lease}/complete", body)
            if status != 200:
                errors.append(status)
                continue
            if mode == "chained":
                leases = json.loads(answer).get("leases", [])
        done += 1
    return done


async def phase(
    port: int, tokens: list[str], seconds: float, *, mode: str
) -> tuple[float, list[str], list[int]]:
    conns = [Connection(port, t) for t in tokens]
    await asyncio.gather(*(c.open() for c in conns))
    leased: list[str] = []
    errors: list[int] = []
    started = time.perf_counter()
    cpu = time.process_time()
    counts = await asyncio.gather(
        *(worker_loop(c, started + seconds, mode, leased, errors) for c in conns)
    )
    elapsed = time.perf_counter() - started
    phase.client_cpu = (time.process_time() - cpu) / elapsed  # type: ignore[attr-defined]
    for c in conns:
        c.close()
    return sum(counts) / elapsed, leased, errors


async def fill(port: int, jobs: int, clients: int = 32) -> float:
    body = soap.envelope(soap.create_activity(VM_JOB))
    request = (
        b"POST /bes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\n"
        b'SOAPAction: "%s"\r\nContent-Length: %d\r\n\r\n'
        % ((soap.ACTIONS + "CreateActivity").encode(), len(body))
    ) + body
    remaining = [jobs]
    started = time.perf_counter()

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while remaining[0] > 0:
            remaining[0] -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return jobs / (time.perf_counter() - started)


def count(db: Database, table: object, **where: str) -> int:
    from sqlalchemy import func, select

    def query(conn: object) -> int:
        statement = select(func.count()).select_from(table)  # type: ignore[arg-type]
        for column, value in where.items():
            statement = statement.where(table.c[column] == value)  # type: ignore[attr-defined]
        return int(conn.execute(statement).scalar_one())  # type: ignore[attr-defined]

    return db.read_sync(query)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--jobs", type=int, default=80000)
    parser.add_argument("--profile", help="record the server with py-spy into this file")
    args = parser.parse_args()
    print(
        f"grid benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"{args.workers} workers, {args.seconds:.0f} s per phase, server pinned: {bool(_pin(0))}"
    )
    with tempfile.TemporaryDirectory(prefix="bes-grid-bench-") as data:
        port = free_port()
        profiler = (
            ["py-spy", "record", "-f", "raw", "-o", args.profile, "--"] if args.profile else []
        )
        argv = [
            *_pin(0),
            *profiler,
            sys.executable,
            "-m",
            "bes",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            data,
            "--no-local-worker",
            "--backend-option=lease_s=600",
            "--backend-option=heartbeat_s=60",
        ]
        with running(argv, port, "/healthz"):
            if _pin(1):
                os.sched_setaffinity(0, {1})
            db = Database(default_url(Path(data)))
            tokens = []
            now = dt.datetime.now(dt.UTC)
            for i in range(args.workers):
                token = new_token()
                db.write_sync(
                    grid_rows.create_worker,
                    (f"w-{i}", f"bench-{i}", token_hash(token), now, "volunteers"),
                )
                tokens.append(token)
            rate = asyncio.run(fill(port, args.jobs))
            print(f"queue filled through CreateActivity: {args.jobs} jobs at {rate:,.0f}/s")
            deadline = time.monotonic() + 300
            while count(db, grid_job) < args.jobs and time.monotonic() < deadline:
                time.sleep(0.2)
            print(f"dispatched to the grid: {count(db, grid_job)} jobs")

            cycles, cycled, cycle_errors = asyncio.run(
                phase(port, tokens, args.seconds, mode="cycles")
            )
            chained, chained_ids, chained_errors = asyncio.run(
                phase(port, tokens, args.seconds, mode="chained")
            )
            completed = len(cycled) + len(chained_ids)
            started = time.monotonic()
            while (
                count(db, activity, state="Finished") < completed
                and time.monotonic() - started < 120
            ):
                time.sleep(0.05)
            lag = time.monotonic() - started
            finished = count(db, activity, state="Finished")
            claims, claimed, claim_errors = asyncio.run(
                phase(port, tokens, args.seconds, mode="floor")
            )
            db.close()
    report(
        cycles=(cycles, cycled, cycle_errors),
        chained=(chained, chained_ids, chained_errors),
        claims=(claims, claimed, claim_errors),
        finished=finished,
        lag=lag,
        jobs=args.jobs,
    )


Phase = tuple[float, list[str], list[int]]


def report(
    *, cycles: Phase, chained: Phase, claims: Phase, finished: int, lag: float, jobs: int
) -> None:
    (cycle_rate, cycled, cycle_errors) = cycles
    (chained_rate, chained_ids, chained_errors) = chained
    (claim_rate, claimed, claim_errors) = claims
    completed = len(cycled) + len(chained_ids)
    everything = cycled + chained_ids + claimed
    doubles = len(everything) - len(set(everything))
    print()
    print(f"{'':28} | {'per second':>10} | {'jobs':>7} | errors")
    print(
        f"{'claim + complete cycles':28} | {cycle_rate:>10,.0f} | {len(cycled):>7} | "
        f"{len(cycle_errors)}"
    )
    print(
        f"{'  chained (complete+claim)':28} | {chained_rate:>10,.0f} | {len(chained_ids):>7} | "
        f"{len(chained_errors)}"
    )
    print(
        f"{'claim only (floor)':28} | {claim_rate:>10,.0f} | {len(claimed):>7} | "
        f"{len(claim_errors)}"
    )
    print(f"{'ratio cycles / floor':28} | {cycle_rate / claim_rate:>10.2f} |")
    print(f"{'ratio chained / floor':28} | {chained_rate / claim_rate:>10.2f} |")
    print(f"load generator busy: {phase.client_cpu:.0%} of its CPU")  # type: ignore[attr-defined]
    print()
    print(f"double claims: {doubles} of {len(everything)} leases")
    print(
        f"activities Finished: {finished} of {completed} completed, "
        f"{lag:.2f} s after the last completion"
    )
    if len(everything) >= jobs - 64:
        print("warning: the queue ran dry; give more --jobs")


if __name__ == "__main__":
    main()
