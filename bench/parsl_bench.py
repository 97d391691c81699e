"""Benchmark of the Parsl executor's per-task overhead: N trivial bash_apps (``true``) submitted
at once through ``bes.workflow.parsl.BESExecutor``, seconds per task from the first submission
to the last result.

Usage::

    .venv/bin/python bench/parsl_bench.py [--tasks 100] [--vm-tasks 0] [--poll-s 1.0]

**Fast path** (the default, ``--tasks``): ``bes serve`` (desktop grid, SQLite in a temporary
directory, no local worker) and a protocol worker in this process that claims each job and
reports it finished at once, as ``bes worker`` would after a VM that takes no time. This
measures what the executor and the service add to every task (composing the command, JSDL,
CreateActivity, the shared status poller, the outputs listing) without the VM: a real VM
costs seconds per task on QEMU's software emulation, 100 of them on 2 cores take minutes
and would only measure QEMU. **VM path** (``--vm-tasks N``): the same with the service's local
worker running every task in a ``tiny`` VM (two at once), for the figure next to it.
Results are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
import parsl  # noqa: E402
from bes_bench import _pin, running  # noqa: E402
from parsl import bash_app  # noqa: E402

from bes.workflow.parsl import BESExecutor  # noqa: E402
from tests.support.grid import CLAIM, Worker  # noqa: E402
from tests.support.server import LiveServer, free_port, live_server  # noqa: E402
from tests.support.worker import shared_image_cache  # noqa: E402


@bash_app
def trivial(i: int) -> str:
    return "true"


class InstantWorker:
    """A desktop-grid worker that finishes every job it claims at once (no VM)."""

    def __init__(self, server: LiveServer) -> None:
        self.worker = Worker(server, "instant")
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> InstantWorker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            leases = self.worker.post("claim", {**CLAIM, "slots": 16, "wait_s": 0.5})["leases"]
            for lease in leases:
                self.worker.finish(lease["lease"], stdout=b"")
                self.done += 1


def run_tasks(endpoint: str, count: int, poll_s: float, run_dir: str) -> tuple[float, int]:
    """Seconds from the first submission to the last result, and the status calls made."""
    executor = BESExecutor(url=endpoint, poll_s=poll_s)
    parsl.load(parsl.Config(executors=[executor], run_dir=run_dir))
    try:
        trivial(0).result(timeout=600)  # loads the WSDL, warms the service
        started = time.perf_counter()
        futures = [trivial(i) for i in range(count)]
        for future in futures:
            future.result(timeout=3600)
        elapsed = time.perf_counter() - started
        rounds = executor.poller.rounds if executor.poller else 0
    finally:
        parsl.dfk().cleanup()
    return elapsed, rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--vm-tasks", type=int, default=0)
    parser.add_argument("--poll-s", type=float, default=1.0)
    args = parser.parse_args()
    print(
        f"bes Parsl executor benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"parsl {parsl.__version__}, poll every {args.poll_s} s"
    )
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bes-parsl-bench-") as scratch:
        os.chdir(scratch)
        data = Path(scratch) / "data"
        server = LiveServer(data, port=free_port())
        argv = [*_pin(0), sys.executable, "-m", "bes", "serve", "--port", str(server.port)]
        argv += ["--data-dir", str(data), "--no-local-worker"]
        with running(argv, server.port, "/healthz"), InstantWorker(server):
            elapsed, rounds = run_tasks(server.endpoint, args.tasks, args.poll_s, "runinfo-fast")
        rows.append(
            (
                f"fast path: {args.tasks} trivial bash_apps, worker finishes at once (no VM)",
                f"{elapsed / args.tasks * 1000:.0f} ms/task "
                f"({elapsed:.1f} s, {rounds} status calls)",
            )
        )
        if args.vm_tasks:
            vm_data = Path(scratch) / "vm-data"
            shared_image_cache(vm_data / "worker")
            options = ["--worker-option=--max-vms=2"]
            with live_server(vm_data, local_worker=True, extra=options) as vm_server:
                elapsed, rounds = run_tasks(
                    vm_server.endpoint, args.vm_tasks, args.poll_s, "runinfo-vm"
                )
            rows.append(
                (
                    f"VM path: {args.vm_tasks} trivial bash_apps in tiny VMs, 2 at once (QEMU)",
                    f"{elapsed / args.vm_tasks:.1f} s/task "
                    f"({elapsed:.1f} s, {rounds} status calls)",
                )
            )
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


if __name__ == "__main__":
    main()
