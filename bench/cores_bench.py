"""Benchmark: durable CreateActivity/s on this machine's cores, one ``bes serve`` or several.

Usage::

    .venv/bin/python bench/cores_bench.py [--seconds 8] [--clients 32] [--processes 1,2]
                                          [--engines sqlite,postgresql]

For each engine and each number of processes it starts that many ``bes serve`` (backend
desktopgrid, no local worker, not pinned: they and the load generator share every core) on one
database: one SQLite file (each commit synced: ``synchronous=FULL``), or the throwaway
PostgreSQL the tests use (its commits synced too). The clients, keep-alive HTTP/1.1 connections
from this process, are spread evenly over the processes. Printed: creates per second, p50 and
p99 latency, and the ratio to one process. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bes_bench import ACTION, CREATE, _client, _pct, running
from tests.support.postgres import fresh_database, postgres_server
from tests.support.server import free_port


@contextlib.contextmanager
def replicas(count: int, url: str, data: Path) -> Iterator[list[int]]:
    with contextlib.ExitStack() as stack:
        ports = []
        for i in range(count):
            port = free_port()
            argv = [sys.executable, "-m", "bes", "serve", "--port", str(port)]
            argv += ["--data-dir", str(data / f"r{i}"), "--database-url", url]
            argv += ["--secret-key-file", str(data / "secret.key"), "--storage-dir", str(data)]
            argv += ["--backend", "desktopgrid", "--no-local-worker"]
            stack.enter_context(running(argv, port, "/healthz", start_s=60))
            ports.append(port)
        yield ports


async def spread(ports: list[int], clients: int, seconds: float) -> tuple[float, list[float]]:
    def request(port: int) -> bytes:
        return (
            b"POST /bes HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: text/xml; charset=utf-8"
            b'\r\nSOAPAction: "%s"\r\nContent-Length: %d\r\n\r\n'
            % (port, ACTION.encode(), len(CREATE))
        ) + CREATE

    chosen = [ports[i % len(ports)] for i in range(clients)]
    warm = time.perf_counter() + 0.5
    await asyncio.gather(*(_client(p, request(p), warm, [], []) for p in chosen))
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(*(_client(p, request(p), until, latencies, errors) for p in chosen))
    if errors:
        raise RuntimeError(f"{len(errors)} errors, e.g. HTTP {errors[0]}")
    return len(latencies) / (time.perf_counter() - started), sorted(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    figures: dict[str, dict[int, dict[str, float]]] = {}
    counts = [int(n) for n in args.processes.split(",")]
    print(f"cores benchmark: {os.cpu_count()} CPUs, {args.clients} clients, {args.seconds:g} s")
    print(
        f"{'engine':>10} | {'processes':>9} | {'creates/s':>9} | {'p50 ms':>7} | "
        f"{'p99 ms':>7} | ratio"
    )
    for engine in args.engines.split(","):
        base = None
        for count in counts:
            with (
                tempfile.TemporaryDirectory(prefix="bes-cores-") as tmp,
                contextlib.ExitStack() as stack,
            ):
                data = Path(tmp)
                if engine == "sqlite":
                    url = f"sqlite:///{data / 'bes.sqlite3'}"
                else:
                    url = fresh_database(stack.enter_context(postgres_server()), "cores")
                with replicas(count, url, data) as ports:
                    rate, latencies = asyncio.run(spread(ports, args.clients, args.seconds))
            base = base or rate
            figures.setdefault(engine, {})[count] = {
                "creates_per_s": rate,
                "p50_ms": _pct(latencies, 0.5),
                "p99_ms": _pct(latencies, 0.99),
            }
            print(
                f"{engine:>10} | {count:>9} | {rate:>9,.0f} | {_pct(latencies, 0.5):>7.2f} | "
                f"{_pct(latencies, 0.99):>7.2f} | {rate / base:.2f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
