"""Benchmark of a real libvirt cloud pool: time from CreateActivity to Finished when the pool
is cold (no instance: one is booted from the worker image) and when it is warm (its instance's
worker waits for work), and how long the idle instance takes to be deleted.

Usage (root: a private libvirtd, debootstrap for the worker image)::

    sudo .venv/bin/python bench/cloud_pool_bench.py [--warm 3] [--idle-s 20]

It starts a private libvirtd (tests/support/libvirtd.py), ``bes serve --no-local-worker
--clouds`` with one libvirt pool (max 1 instance of 2048 MiB, 1 vCPU) and submits a tiny job
(SOAP, as clients do) that only the pool can take. The worker image is the tests' cached one
(built, about 160 s, when bes changed). Nothing is asserted; figures are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import libvirt

from tests.support import soap
from tests.support.cloudworker import GRID_OPTIONS, TINY_JOB, cached_worker_image, libvirt_pool
from tests.support.libvirtd import private_libvirtd
from tests.support.server import LiveServer, free_port, live_server


def run_job(server: LiveServer, timeout_s: float) -> float:
    """Submit TINY_JOB; seconds until it is Finished."""
    started = time.monotonic()
    body = TINY_JOB.split("?>", 1)[-1].encode()
    answer = server.post(soap.envelope(soap.create_activity(body)), "CreateActivity")
    (activity,) = soap.xpath(soap.body_of(answer.content), "//besa:ActivityId/text()")
    query = soap.envelope(soap.vector("GetActivityStatuses", [soap.epr(activity_id=str(activity))]))
    while time.monotonic() - started < timeout_s:
        status = soap.body_of(server.post(query, "GetActivityStatuses").content)
        (state,) = soap.xpath(status, "//bes:ActivityStatus/@state")
        if state in ("Finished", "Failed", "Cancelled"):
            if state != "Finished":
                raise SystemExit(f"the job ended {state}")
            return time.monotonic() - started
        time.sleep(0.5)
    raise SystemExit(f"the job did not end in {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warm", type=int, default=3, help="jobs on the warm pool")
    parser.add_argument("--idle-s", type=float, default=20.0)
    args = parser.parse_args()
    started = time.monotonic()
    image = cached_worker_image()
    print(f"worker image {image.key} ready in {time.monotonic() - started:.0f} s")
    with tempfile.TemporaryDirectory() as scratch, private_libvirtd() as daemon:
        root = Path(scratch)
        port = free_port()
        clouds = libvirt_pool(
            daemon, image, root / "clouds.toml", name="bench", port=port, idle_s=args.idle_s
        )
        conn = libvirt.open(daemon.uri)
        extra = ["--clouds", str(clouds), *GRID_OPTIONS]
        with live_server(root / "data", port=port, extra=extra) as server:
            cold = run_job(server, 1200)
            print(f"cold pool: CreateActivity to Finished {cold:6.1f} s (boots the instance)")
            warm = [run_job(server, 600) for _ in range(args.warm)]
            print(
                f"warm pool: CreateActivity to Finished {statistics.median(warm):6.1f} s "
                f"median of {len(warm)} ({', '.join(f'{w:.1f}' for w in warm)})"
            )
            idle_from = time.monotonic()
            while conn.listAllDomains(0) and time.monotonic() - idle_from < 600:
                time.sleep(0.5)
            print(
                f"idle instance deleted {time.monotonic() - idle_from:6.1f} s after the last "
                f"job (idle_s {args.idle_s:.0f}, rounds every 5 s)"
            )


if __name__ == "__main__":
    main()
