"""Benchmark of a cloud pool's autoscaler: reaction to a burst of queued jobs, and what a bag
of short jobs costs in instance-seconds.

Usage::

    .venv/bin/python bench/cloud_bench.py [--burst 200] [--bag 50] [--boot-s 42] [--job-s 60]

The real autoscaler, queue (SQLite) and libvirt provider run against libvirt's test driver
(domains defined and started, nothing booted); time is a virtual clock advanced by the
autoscaler's 5 s interval, so the figures are the policy's, with its own cost per round
measured in wall-clock time. Instances "boot" in ``--boot-s`` (the worker image's measured
boot under TCG here is about 40 s) and then register, their workers claim what fits (two
jobs per instance of the flavor used) and each job runs ``--job-s``. Nothing is asserted;
figures are printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bes.backends.desktopgrid import DesktopGridBackend, DesktopGridConfig
from bes.clouds.base import Flavor
from bes.clouds.config import PoolConfig
from bes.clouds.libvirt import LibvirtProvider
from bes.clouds.plan import Limits
from bes.clouds.pools import CloudPools
from bes.db import cloud_rows
from bes.db import grid_rows as grid
from bes.db.cloud_rows import InstanceState
from bes.db.engine import default_url
from bes.db.grid_rows import GridState
from bes.db.store import Database
from tests.support.libvirt_hosts import Hosts
from tests.support.queue import claim, job

POOL = "cloud:bench"
FLAVOR = Flavor(name="w4", memory_mib=2816, vcpus=2)  # 2 jobs of 1 vCPU and 256 MiB each
T0 = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
STEP_S = 5.0


class Run:
    def __init__(self, root: Path, *, boot_s: float, job_s: float, limits: Limits) -> None:
        self.now = T0
        self.boot_s = boot_s
        self.job_s = job_s
        (root / "data").mkdir()
        self.db = Database(default_url(root / "data"))
        self.db.migrate()
        hosts = Hosts(root)
        node = root / "node.xml"  # a host of the test driver with room for many overlays
        node.write_text(
            "<node><cpu><mhz>2000</mhz><model>x86_64</model><active>512</active>"
            "<total>512</total><nodes>1</nodes><sockets>1</sockets><cores>512</cores>"
            "<threads>1</threads></cpu><memory>1073741824</memory>"
            "<pool type='dir'><name>default</name><target><path>/pool</path></target>"
            "<capacity unit='TiB'>100</capacity><available unit='TiB'>100</available>"
            "<volume type='file'><name>worker.qcow2</name><capacity unit='MiB'>64</capacity>"
            "<target><path>/pool/worker.qcow2</path><format type='qcow2'/></target>"
            "</volume></pool></node>"
        )
        uri = f"test://{node}"
        self.grid = DesktopGridBackend(
            self.db, DesktopGridConfig(outputs_dir=root / "outputs"), clock=lambda: self.now
        )
        provider = LibvirtProvider(
            [uri],
            image="worker.qcow2",
            flavors=[FLAVOR],
            kernel="/k",
            initrd="/i",
            connect=hosts.connect,
        )
        config = PoolConfig(
            name=POOL,
            provider="libvirt",
            provider_options={},
            limits=limits,
            service_url="http://10.0.2.2:8080",
        )
        self.pools = CloudPools(self.grid, [(config, provider)])
        self.running: dict[str, tuple[grid.Lease, dt.datetime]] = {}
        self.round_ms: list[float] = []

    def queue(self, count: int) -> None:
        self.db.write_sync(grid.add_grid_jobs, [job(pool=POOL, at=self.now) for _ in range(count)])

    def step(self) -> None:
        """One autoscaler interval: the round, then what the instances' workers do."""
        self.now += dt.timedelta(seconds=STEP_S)
        started = time.perf_counter()
        self.pools.round()
        self.round_ms.append((time.perf_counter() - started) * 1000)
        for lease, ends in list(self.running.values()):
            if ends <= self.now:
                self.db.write_sync(
                    grid.finish_leases,
                    grid.Finish(ref=lease.ref, state=GridState.FINISHED, exit_code=0, now=self.now),
                )
                del self.running[lease.ref.job_id]
        workers = {w.name: w for w in self.db.read_sync(grid.list_workers)}
        for instance in self.instances():
            worker = workers[instance.name]
            age = (self.now - instance.created_at).total_seconds()
            if age < self.boot_s:
                continue
            if worker.last_seen_at is None:
                facts = {"max_memory_mib": 2048, "max_vcpus": 2, "hypervisors": {"qemu": "x"}}
                self.db.write_sync(grid.register_worker, (worker.id, facts, self.now))
            free = 2 - instance.jobs
            if free > 0 and instance.state is not InstanceState.DRAINING:
                for lease in self._claim(worker.id, free):
                    ends = self.now + dt.timedelta(seconds=self.job_s)
                    self.running[lease.ref.job_id] = (lease, ends)

    def _claim(self, worker_id: str, limit: int) -> list[grid.Lease]:
        return claim(
            self.db,
            worker_id,
            now=self.now,
            limit=limit,
            memory_mib=2048,
            vcpus=2,
            lease=dt.timedelta(hours=1),  # jobs here send no heartbeats
        )

    def instances(self) -> list[cloud_rows.InstanceRecord]:
        return self.db.read_sync(cloud_rows.live_instances, POOL)

    def queued(self) -> int:
        return self.db.read_sync(grid.queue_counts)[GridState.QUEUED]

    def elapsed(self) -> float:
        return (self.now - T0).total_seconds()


def burst(count: int, boot_s: float, job_s: float) -> None:
    limits = Limits(max_instances=50, batch=10, idle_s=120, boot_timeout_s=900, overhead_mib=768)
    with tempfile.TemporaryDirectory() as scratch:
        run = Run(Path(scratch), boot_s=boot_s, job_s=job_s, limits=limits)
        run.queue(count)
        first = started_all = None
        most, full = 0, 0.0
        while run.queued() or run.running:
            run.step()
            live = len(run.instances())
            if first is None and live:
                first = run.elapsed()
            if live > most:
                most, full = live, run.elapsed()
            if started_all is None and not run.queued():
                started_all = run.elapsed()
            if run.elapsed() > 24 * 3600:
                break
        done = run.elapsed()
        while run.instances() and run.elapsed() < done + 3600:
            run.step()
        used = run.db.read_sync(cloud_rows.instance_seconds, POOL, T0, run.now)
        print(f"burst of {count} jobs of {job_s:.0f} s, instances boot in {boot_s:.0f} s:")
        print(f"  first instance requested after        {first:7.0f} s (one round)")
        print(f"  most instances ({most:3d}) requested after {full:7.0f} s")
        print(f"  every job started after               {started_all:7.0f} s")
        print(f"  every job done after                  {done:7.0f} s")
        print(f"  every instance deleted after          {run.elapsed():7.0f} s")
        print(f"  instance-seconds per job              {used / count:7.1f}")
        print(
            f"  autoscaler round, wall clock: median {statistics.median(run.round_ms):.1f} ms, "
            f"max {max(run.round_ms):.1f} ms"
        )


def bag(count: int, boot_s: float, job_s: float) -> None:
    limits = Limits(max_instances=10, batch=10, idle_s=120, boot_timeout_s=900, overhead_mib=768)
    with tempfile.TemporaryDirectory() as scratch:
        run = Run(Path(scratch), boot_s=boot_s, job_s=job_s, limits=limits)
        run.queue(count)
        while run.queued() or run.running:
            run.step()
        done = run.elapsed()
        while run.instances():
            run.step()
        used = run.db.read_sync(cloud_rows.instance_seconds, POOL, T0, run.now)
        busy = count * job_s
        print(f"bag of {count} jobs of {job_s:.0f} s on at most {limits.max_instances} instances:")
        print(f"  makespan {done:.0f} s; pool empty again after {run.elapsed():.0f} s")
        print(
            f"  instance-seconds per job {used / count:.1f} (a job runs {job_s:.0f} s; an "
            f"instance runs 2 at once, so {busy / (2 * used):.0%} of its job slots' time ran "
            "jobs; the rest is boot, the last jobs' stragglers and the idle_s tail)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--bag", type=int, default=50)
    parser.add_argument("--boot-s", type=float, default=42.0)
    parser.add_argument("--job-s", type=float, default=60.0)
    args = parser.parse_args()
    burst(args.burst, args.boot_s, args.job_s)
    bag(args.bag, args.boot_s, args.job_s)


if __name__ == "__main__":
    main()
