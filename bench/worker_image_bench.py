"""Benchmark of the cloud worker image: its build, its size, an instance's boot to a
registered worker, and jobs run by that worker in VMs nested in the instance.

Usage::

    .venv/bin/python bench/worker_image_bench.py [--jobs 3] [--rebuild] [--memory-mib 2048]
        [--vcpus 1] [--nested-accel auto|kvm|tcg] [--json FILE]

Needs root (debootstrap) the first time, or with ``--rebuild``, which builds into a scratch
directory instead of taking the image of the current source from the tests' cache
(``BES_TEST_CACHE``, default ``~/.cache/bes-tests``). A real ``bes serve`` runs on loopback;
the instance (QEMU, user-mode network, as tests/support/cloudworker.py boots it) reaches it
at 10.0.2.2 and starts its worker from the user-data an autoscaler would write
(bes.vm.workerimage). The jobs are submitted one at a time once the worker has registered:
"submit to Finished" is CreateActivity to a Finished status, the first with the worker's
first VM, the others warm. Nothing is asserted beyond each job's stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bes.client import BESClient
from bes.vm import workerimage
from bes.vm.runner import CommandRunner
from tests.support.cloudworker import (
    GREETING,
    GRID_OPTIONS,
    MARK,
    TINY_JOB,
    booted,
    cached_worker_image,
    instance_user_data,
    wait_registered,
)
from tests.support.server import live_server

_MIB = 1024 * 1024


def image(rebuild: bool, scratch: Path) -> tuple[workerimage.WorkerImage, float]:
    started = time.perf_counter()
    if rebuild:
        built = workerimage.cached(scratch / "worker-image", CommandRunner())
    else:
        built = cached_worker_image()
    return built, time.perf_counter() - started


def run_jobs(client: BESClient, count: int, results: Path) -> list[float]:
    times = []
    for number in range(count):
        started = time.perf_counter()
        ref = client.submit(TINY_JOB.encode())
        [status] = client.wait([ref], timeout_s=1800, poll_s=0.5, max_poll_s=1.0)
        elapsed = time.perf_counter() - started
        if status.state.value != "Finished":
            raise SystemExit(f"job {number} ended {status.state.value}: {status.message}")
        client.outputs(ref, results / ref.name)
        stdout = (results / ref.name / "stdout").read_text()
        if not stdout.startswith(GREETING):
            raise SystemExit(f"job {number} printed {stdout!r}")
        times.append(elapsed)
        print(f"  job {number + 1}: {elapsed:.1f} s")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true", help="build afresh, timed")
    parser.add_argument("--memory-mib", type=int, default=2048)
    parser.add_argument("--vcpus", type=int, default=1)
    parser.add_argument(
        "--nested-accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="the worker's --accel (auto: KVM where the instance's CPU offers it)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as temp:
        scratch = Path(temp)
        built, build_s = image(args.rebuild, scratch)
        files = (built.disk, built.kernel, built.initrd)
        size = sum(f.stat().st_size for f in files)
        print(f"image {built.key}: bes {built.bes_version}, Python {built.python_version},")
        print(f"  {built.package_count} Debian packages, Linux {built.kernel_version}")
        print(f"  ready in {build_s:.0f} s (built now if the cache lacked it)")
        print(
            f"  size {size / _MIB:.0f} MiB: disk {built.disk.stat().st_size / _MIB:.0f} MiB "
            f"(qcow2, compressed), kernel {built.kernel.stat().st_size / _MIB:.0f} MiB, "
            f"initramfs {built.initrd.stat().st_size / _MIB:.1f} MiB"
        )
        figures.update(ready_s=round(build_s, 1), size_mib=round(size / _MIB, 1))
        with live_server(scratch / "data", extra=GRID_OPTIONS) as server:
            name = "cloud-1"
            user_data = instance_user_data(server, name, worker_args=("--accel", args.nested_accel))
            with booted(
                built,
                user_data,
                scratch / "instance",
                memory_mib=args.memory_mib,
                vcpus=args.vcpus,
            ) as instance:
                mark = instance.wait_for(rf"{MARK} runcmd uptime=([\d.]+)", timeout_s=900)
                runcmd_s = time.monotonic() - instance.started
                facts = wait_registered(server, name, timeout_s=900)
                registered_s = time.monotonic() - instance.started
                hypervisors = re.search(r"'hypervisors': (\{[^}]*\})", facts)
                print(f"instance ({args.memory_mib} MiB, {args.vcpus} vCPU, TCG or KVM as here):")
                print(f"  cloud-init runcmd after {runcmd_s:.1f} s (guest uptime {mark[1]} s)")
                print(f"  worker registered after {registered_s:.1f} s")
                print(f"  its hypervisors: {hypervisors[1] if hypervisors else facts}")
                client = BESClient(server.endpoint)
                try:
                    times = run_jobs(client, args.jobs, scratch / "results")
                finally:
                    client.close()
        print(
            f"submit to Finished, tiny job nested in the instance: first {times[0]:.1f} s"
            + (f", then median {statistics.median(times[1:]):.1f} s" if len(times) > 1 else "")
        )
        figures.update(
            runcmd_s=round(runcmd_s, 1),
            registered_s=round(registered_s, 1),
            nested_hypervisor=hypervisors[1] if hypervisors else None,
            job_s=[round(t, 1) for t in times],
        )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
