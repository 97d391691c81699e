"""Benchmark of the BES endpoint: durable CreateActivity throughput and latency, a 1,000-id
GetActivityStatuses, and the bare floor of the same HTTP stack, in one run.

Usage::

    .venv/bin/python bench/bes_bench.py [--seconds 8] [--clients 1,8,32] [--rounds 4]

It starts ``bes serve`` (SQLite in a temporary directory, synchronous=FULL: every acknowledged
CreateActivity is on disk) once per backend of ``--backends`` (default both, in the same run:
``none``, the factory alone, activities stay queued; ``desktopgrid``, each activity also queued
for the grid's workers, none of which runs), all on one CPU when ``taskset`` is available, and
loads them in turn, ``--rounds`` times, so that the host's slow spells (large on a shared
virtual machine) fall on each alike; the floor server (bench/floor.py) is measured first. The
load comes from this process (on the other CPU), over keep-alive HTTP/1.1 connections. Results
are printed as a table: each backend's rate, and its server's CPU time per create (all its
threads, from /proc schedstat), each also against the first backend's; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
from lxml import etree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The benchmark reuses the tests' message builders.
from tests.support import soap
from tests.support.server import free_port

CREATE = soap.envelope(soap.create_activity())
ACTION = soap.ACTIONS + "CreateActivity"


def _pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() > 1 else []


def serve_argv(
    port: int, data: str | Path, *options: str, python: str = sys.executable
) -> list[str]:
    """``bes serve`` on loopback ``port`` with its data in ``data``, pinned to CPU 0 (the
    benchmarks' clients take the other)."""
    return [
        *_pin(0),
        python,
        "-m",
        "bes",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data),
        *options,
    ]


@contextlib.contextmanager
def running(
    argv: list[str], port: int, health: str, *, start_s: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` until the block ends, once ``health`` on ``port`` answers below 500."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + start_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}{health}", timeout=1).status_code < 500:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{argv} did not start")
        yield proc
    finally:
        proc.terminate()
        proc.wait(15)


async def _client(
    port: int, request: bytes, until: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


class Load(NamedTuple):
    """What one load of a server measured."""

    latencies: list[float]
    """Each answer's, in seconds, sorted."""
    errors: int
    """Answers other than 200."""
    seconds: float
    """How long the load lasted."""
    cpu_s: float
    """CPU time the server spent meanwhile (all its threads), if its pid was given; else 0."""

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        """Answers per second."""
        return self.requests / self.seconds


def create_request(port: int, body: bytes = CREATE) -> bytes:
    """The CreateActivity request (HTTP/1.1, keep-alive) with ``body`` to ``port``."""
    return (
        b"POST /bes HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: text/xml; charset=utf-8\r\n"
        b'SOAPAction: "%s"\r\nContent-Length: %d\r\n\r\n' % (port, ACTION.encode(), len(body))
    ) + body


async def load(
    port: int, body: bytes, clients: int, seconds: float, *, pid: int | None = None
) -> Load:
    """CreateActivity with ``body`` from ``clients`` connections for ``seconds``, after half a
    second of warm-up (:func:`drive`)."""
    request = create_request(port, body)
    await asyncio.gather(
        *(_client(port, request, time.perf_counter() + 0.5, [], []) for _ in range(clients))
    )
    return await drive(port, request, clients, seconds, pid=pid)


async def drive(
    port: int, request: bytes, clients: int, seconds: float, *, pid: int | None = None
) -> Load:
    """``request`` over and over from ``clients`` keep-alive connections for ``seconds``; with
    ``pid``, the server process's CPU time meanwhile too."""
    latencies: list[float] = []
    errors: list[int] = []
    cpu = server_cpu_s(pid) if pid is not None else 0.0
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(
        *(_client(port, request, until, latencies, errors) for _ in range(clients))
    )
    elapsed = time.perf_counter() - started
    cpu = server_cpu_s(pid) - cpu if pid is not None else 0.0
    return Load(sorted(latencies), len(errors), elapsed, cpu)


def server_cpu_s(pid: int) -> float:
    """The CPU time process ``pid``'s live threads have run, in seconds (nanoseconds in
    /proc/PID/task/TID/schedstat; /proc/PID/stat counts in 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _combined(parts: list[Load]) -> Load:
    """One result from the results of shares of the time."""
    return Load(
        sorted(latency for part in parts for latency in part.latencies),
        sum(part.errors for part in parts),
        sum(part.seconds for part in parts),
        sum(part.cpu_s for part in parts),
    )


def _cpu_us(result: Load) -> float:
    """The server's CPU time per answer, in microseconds."""
    return result.cpu_s / max(1, result.requests) * 1e6


def _pct(sorted_values: list[float], p: float) -> float:
    """The ``p`` quantile of ``sorted_values`` (seconds) in milliseconds; nan for none."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))] * 1000


async def statuses(port: int, count: int, repeats: int) -> list[float]:
    async with httpx.AsyncClient(timeout=60) as client:
        url = f"http://127.0.0.1:{port}/bes"
        eprs: list[bytes] = []
        while len(eprs) < count:
            r = await client.post(url, content=CREATE)
            eprs.append(
                etree_tostring(soap.xpath(soap.body_of(r.content), "bes:ActivityIdentifier")[0])
            )
        body = soap.envelope(soap.vector("GetActivityStatuses", eprs))
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            r = await client.post(url, content=body)
            times.append(time.perf_counter() - started)
            assert r.status_code == 200 and r.content.count(b"<bes-factory:Response>") == count
        return sorted(times)


def etree_tostring(element: object) -> bytes:
    return etree.tostring(element)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--status-ids", type=int, default=1000)
    parser.add_argument("--backends", default="none,desktopgrid")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="the backends take turns this many times, each for SECONDS/ROUNDS per level",
    )
    args = parser.parse_args()
    backends = args.backends.split(",")
    levels = [int(c) for c in args.clients.split(",")]
    python = sys.executable
    bench_dir = Path(__file__).resolve().parent
    print(
        f"bes benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"{args.seconds:.0f} s per level, server pinned: {bool(_pin(0))}"
    )
    if _pin(1):
        os.sched_setaffinity(0, {1})

    results: dict[str, dict[int, Load]] = {}
    port = free_port()
    floor_argv = [
        *_pin(0),
        python,
        "-m",
        "uvicorn",
        "floor:app",
        "--app-dir",
        str(bench_dir),
        "--port",
        str(port),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with running(floor_argv, port, "/"):
        results["floor"] = {c: asyncio.run(load(port, CREATE, c, args.seconds)) for c in levels}

    # Every backend's server runs from the start, each loaded in turn for a share of the time,
    # round after round: a slow spell of the host falls on all of them alike. The server's
    # CPU time per create, which such spells move much less than throughput, is measured too
    # (taskset execs: the pid is the server's).
    with contextlib.ExitStack() as stack:
        servers = {}
        for backend in backends:
            data = stack.enter_context(tempfile.TemporaryDirectory(prefix="bes-bench-"))
            port = free_port()
            argv = serve_argv(port, data, "--backend", backend, "--no-local-worker", python=python)
            servers[backend] = (port, stack.enter_context(running(argv, port, "/healthz")).pid)
        parts: dict[str, dict[int, list[Load]]] = {b: {c: [] for c in levels} for b in backends}
        share = args.seconds / args.rounds
        for _ in range(args.rounds):
            for backend, (port, pid) in servers.items():
                for c in levels:
                    parts[backend][c].append(asyncio.run(load(port, CREATE, c, share, pid=pid)))
        for backend in backends:
            results[backend] = {c: _combined(parts[backend][c]) for c in levels}
        status_times = asyncio.run(statuses(servers[backends[0]][0], args.status_ids, 30))

    first = results[backends[0]]
    print()
    print(
        f"{'backend':>11} | {'clients':>7} | {'CreateActivity/s':>16} | {'p50 ms':>7} | "
        f"{'p99 ms':>7} | {'floor req/s':>11} | {'floor p99':>9} | {'ratio':>5} | "
        f"{'vs ' + backends[0]:>8} | {'server CPU µs':>13} | {'vs ' + backends[0]:>8} | errors"
    )
    for backend in backends:
        for c in levels:
            result, floor = results[backend][c], results["floor"][c]
            print(
                f"{backend:>11} | {c:>7} | {result.rate:>16,.0f} | "
                f"{_pct(result.latencies, 0.5):>7.2f} | {_pct(result.latencies, 0.99):>7.2f} | "
                f"{floor.rate:>11,.0f} | {_pct(floor.latencies, 0.99):>9.2f} | "
                f"{result.rate / floor.rate:>5.2f} | {result.rate / first[c].rate:>8.2f} | "
                f"{_cpu_us(result):>13.0f} | {_cpu_us(result) / _cpu_us(first[c]):>8.2f} | "
                f"{result.errors}"
            )
    if args.json is not None:
        figures = {
            backend: {
                str(c): {
                    "creates_per_s": result.rate,
                    "p50_ms": _pct(result.latencies, 0.5),
                    "p99_ms": _pct(result.latencies, 0.99),
                    "errors": result.errors,
                    "vs_first": result.rate / first[c].rate,
                    "server_cpu_us": _cpu_us(result),
                }
                for c, result in results[backend].items()
            }
            for backend in backends
        }
        args.json.write_text(json.dumps(figures, indent=2))
    print()
    print(
        f"GetActivityStatuses, {args.status_ids} ids, 30 calls: "
        f"p50 {statistics.median(status_times) * 1000:.1f} ms, "
        f"p99 {_pct(status_times, 0.99):.1f} ms, min {status_times[0] * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
