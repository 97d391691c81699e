"""Benchmark of what a user of the client and the status page waits for: the ``bes`` command's
start, a submission through ``bes.client`` against the same request sent bare, the status of
many activities, one ``bes submit`` from a shell, and the status page and ``/metrics`` with
many activities stored.

Usage::

    .venv/bin/python bench/client_bench.py [--submits 300] [--activities 10000]

It starts ``bes serve`` (SQLite in a temporary directory, ``--backend none``: activities stay
queued, so only the factory and the pages are measured) pinned to one CPU when ``taskset`` is
available, and drives it from this process on the other. Results are printed; nothing is
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from bes_bench import ACTION, CREATE, _pin, running  # noqa: E402

from bes.client import BESClient, jsdl  # noqa: E402
from tests.support.server import free_port  # noqa: E402


def timed(call: Callable[[], object], repeats: int) -> list[float]:
    """Seconds per call, sorted."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return sorted(times)


def ms(values: list[float], p: float = 0.5) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submits", type=int, default=300)
    parser.add_argument("--statuses", type=int, default=1000)
    parser.add_argument("--activities", type=int, default=10_000)
    args = parser.parse_args()
    print(
        f"bes client benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"server pinned: {bool(_pin(0))}"
    )
    if _pin(1):
        os.sched_setaffinity(0, {1})
    bes = [sys.executable, "-m", "bes"]
    rows: list[tuple[str, str, str]] = []

    start = timed(lambda: subprocess.run([*bes, "--help"], capture_output=True, check=True), 5)
    rows.append(("`bes --help` (interpreter start included)", f"{ms(start):.0f} ms", ""))

    with tempfile.TemporaryDirectory(prefix="bes-client-bench-") as data:
        port = free_port()
        url = f"http://127.0.0.1:{port}/bes"
        argv = [*_pin(0), *bes, "serve", "--port", str(port), "--data-dir", data]
        argv += ["--backend", "none", "--no-local-worker"]
        with running(argv, port, "/healthz"), BESClient(url) as client:
            document = jsdl.build(["/bin/echo", "hello"], name="bench")
            client.submit(document)  # loads the WSDL once
            refs = []
            submit = timed(lambda: refs.append(client.submit(document)), args.submits)
            unchecked = timed(lambda: client.submit(document, check=False), args.submits)
            with httpx.Client(timeout=30) as raw:
                headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": ACTION}
                bare = timed(lambda: raw.post(url, content=CREATE, headers=headers), args.submits)
            rows.append(
                (
                    "BESClient.submit, validated first (median, p99)",
                    f"{ms(submit):.1f} ms, {ms(submit, 0.99):.1f} ms",
                    f"{ms(submit) / ms(bare):.1f} x a bare POST",
                )
            )
            rows.append(
                (
                    "BESClient.submit(check=False) (median)",
                    f"{ms(unchecked):.1f} ms",
                    f"{ms(unchecked) / ms(bare):.1f} x a bare POST",
                )
            )
            rows.append(("the same CreateActivity as a bare httpx POST", f"{ms(bare):.1f} ms", ""))

            while len(refs) < args.statuses:
                refs.append(client.submit(document, check=False))
            many = refs[: args.statuses]
            status = timed(lambda: client.status(many), 5)
            rows.append(
                (
                    f"BESClient.status of {args.statuses} activities (batches of 500)",
                    f"{ms(status):.0f} ms",
                    f"{args.statuses / (ms(status) / 1000):,.0f} statuses/s",
                )
            )

            job = Path(data) / "bench.jsdl"
            job.write_bytes(document)
            env = {**os.environ, "BES_ENDPOINT": url, "XDG_DATA_HOME": data}
            shell = timed(
                lambda: subprocess.run(
                    [*bes, "submit", str(job)], capture_output=True, check=True, env=env
                ),
                5,
            )
            rows.append(("`bes submit JOB` from a shell (median of 5)", f"{ms(shell):.0f} ms", ""))

            deep = refs[100].activity_id  # 100 older ones behind it: a page deep in the list
            assert deep is not None
            rows += _pages(port, deep, len(refs), args.activities)

    width = max(len(r[0]) for r in rows)
    print()
    for what, figure, ratio in rows:
        print(f"{what:<{width}} | {figure:>16} | {ratio}")


def _pages(port: int, deep: str, stored: int, activities: int) -> list[tuple[str, str, str]]:
    """Fill the database to ``activities``, then time the pages a person opens."""
    if activities - stored > 0:
        asyncio.run(_fill(port, activities - stored))
    rows = []
    with httpx.Client(timeout=60) as web:
        base = f"http://127.0.0.1:{port}/bes/status"
        pages = {
            "status page, first 50": base,
            "status page, 50 deep in the list": f"{base}?after={deep}",
            "status page, Pending only": f"{base}?state=Pending",
            "one activity's page": f"{base}/activities/{deep}",
            "/metrics scrape": f"http://127.0.0.1:{port}/metrics",
        }
        for label, address in pages.items():
            got = timed(lambda a=address: web.get(a).raise_for_status(), 20)  # type: ignore[misc]
            rows.append((f"{label} ({activities:,} stored)", f"{ms(got):.1f} ms", ""))
    return rows


async def _fill(port: int, count: int) -> None:
    """Create ``count`` activities, 16 requests at a time."""
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": ACTION}
    url = f"http://127.0.0.1:{port}/bes"
    async with httpx.AsyncClient(timeout=60) as client:

        async def create(n: int) -> None:
            for _ in range(n):
                (await client.post(url, content=CREATE, headers=headers)).raise_for_status()

        share, rest = divmod(count, 16)
        await asyncio.gather(*(create(share + (i < rest)) for i in range(16)))


if __name__ == "__main__":
    main()
