"""Benchmark of the VM layer: submit-to-exit of the hello-world guest (TCG, and KVM where it
really runs guests), overlay creation from a cached image, and the bytes a second job with the
same image moves.

Usage::

    .venv/bin/python bench/vm_bench.py [--runs 5] [--cache-dir DIR]

"Submit to exit" is what a node spends on one job: planning (image lookup in the cache, seed
and disks), QEMU start, guest boot, the job, power-off, reading the results, cleanup. Results
are printed as a table; nothing is asserted. Targets (issue 3): <= 2 s with KVM, <= 10 s with
TCG, overlay < 50 ms, 0 bytes for the second job.
"""

from __future__ import annotations

import argparse
import http.server
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bes.ids import new_activity_id
from bes.jsdl.parse import load_job_definition
from bes.vm import kvm
from bes.vm.drivers.qemu import QemuDriver
from bes.vm.images import ImageCache, file_sha256
from bes.vm.job import run_vm_job
from bes.vm.repository import ImageRepository
from bes.vm.runner import CommandRunner
from bes.vm.spec import ImageFormat, ImageRef
from bes.vmjob import plan

ROOT = Path(__file__).resolve().parents[1]


def submit_to_exit(accelerator: str, runs: int, repository: ImageRepository) -> list[float]:
    job = load_job_definition((ROOT / "examples" / "hello-vm.jsdl").read_bytes())
    times = []
    with tempfile.TemporaryDirectory() as temp:
        driver = QemuDriver(Path(temp) / "vms", accelerator=accelerator)
        driver.accelerator()  # the probe is once per node, not per job
        for run in range(runs):
            started = time.perf_counter()
            vm_job = plan(job, new_activity_id(), repository=repository, inputs={})
            outcome = run_vm_job(vm_job, driver, Path(temp) / f"results-{run}")
            elapsed = time.perf_counter() - started
            if outcome.results is None or outcome.results.stdout.read_text() != "hello from a VM\n":
                raise SystemExit(f"run {run} failed: {outcome.reason}\n{outcome.console_tail}")
            times.append(elapsed)
    return times


def overlay_times(runs: int) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as temp:
        base = Path(temp) / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "10G"], check=True)
        raw = Path(temp) / "base.raw"
        with raw.open("wb") as out:
            out.write(b"\1" * (256 * 1024 * 1024))  # what a full copy would cost, for scale
        driver = QemuDriver(Path(temp) / "vms")
        times = []
        for run in range(runs):
            overlay = Path(temp) / f"o{run}.qcow2"
            started = time.perf_counter()
            driver.create_overlay(base, ImageFormat.QCOW2, overlay)
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        shutil.copyfile(raw, Path(temp) / "copy.raw")
        copy = time.perf_counter() - started
    return times, copy


def second_job_bytes() -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as temp:
        www = Path(temp) / "www"
        www.mkdir()
        image = www / "disk.img"
        image.write_bytes(b"\7" * (64 * 1024 * 1024))
        sha = file_sha256(image)
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0),
            lambda *a: _Quiet(*a, directory=str(www)),
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            cache = ImageCache(Path(temp) / "cache")
            url = f"http://127.0.0.1:{server.server_address[1]}/disk.img"
            cache.fetch(url, sha)
            first = cache.bytes_fetched
            cache.fetch(url, sha)
            second = cache.bytes_fetched - first
        finally:
            server.shutdown()
            server.server_close()
    return first, second


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def row(name: str, values: list[float], target: str) -> str:
    return (
        f"{name:<34} {min(values):8.3f} {statistics.median(values):8.3f} "
        f"{max(values):8.3f}   {target}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "bes-tests")
    args = parser.parse_args()

    repository = ImageRepository(ImageCache(args.cache_dir / "images"))
    started = time.perf_counter()
    repository.resolve(ImageRef(template="tiny"))
    prepare = time.perf_counter() - started

    verdict = kvm.probe(CommandRunner())
    print(f"KVM: {'usable' if verdict.usable else 'not usable'} ({verdict.reason})")
    print(f"tiny template ready in {prepare:.1f} s (built now if it was not cached)\n")
    print(f"{'seconds':<34} {'min':>8} {'median':>8} {'max':>8}   target")
    tcg = submit_to_exit("tcg", args.runs, repository)
    print(row(f"submit to exit, TCG ({args.runs} runs)", tcg, "<= 10 s"))
    if verdict.usable:
        kvm_times = submit_to_exit("kvm", args.runs, repository)
        print(row(f"submit to exit, KVM ({args.runs} runs)", kvm_times, "<= 2 s"))
    else:
        print(f"{'submit to exit, KVM':<34} {'-':>8} {'-':>8} {'-':>8}   <= 2 s (no usable KVM)")
    overlays, copy = overlay_times(20)
    print(row("overlay from a cached image (20)", overlays, "< 0.050 s"))
    print(
        f"{'  vs copying 256 MiB':<34} {copy:8.3f}"
        f"            ratio {copy / statistics.median(overlays):.0f}x"
    )
    first, second = second_job_bytes()
    print(
        f"\nbytes fetched: first job {first:,}; second job with the same image {second:,}"
        " (target 0)"
    )


if __name__ == "__main__":
    main()
