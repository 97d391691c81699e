"""Benchmark of the built-in templates: boot-to-result time of a trivial job in ``debian-12``
(systemd, cloud-init, Python 3) next to ``tiny`` (busybox), N runs each.

Usage::

    .venv/bin/python bench/template_boot_bench.py [--runs 3] [--accel auto|kvm|tcg]
        [--cache-dir DIR] [--json FILE]

"Boot to result" is what a node spends on one job: planning (image lookup in the cache, seed
and disks), QEMU start, guest boot, the job (``/bin/echo``), power-off, reading the results,
cleanup. Each template is built first if the cache lacks it (debian-12 needs root, for
debootstrap); that one-time cost is printed on its own. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bes.ids import new_activity_id
from bes.jsdl.parse import load_job_definition
from bes.vm.drivers.qemu import ACCELERATORS, QemuDriver
from bes.vm.images import ImageCache
from bes.vm.job import run_vm_job
from bes.vm.repository import DEBIAN_12, TINY, ImageRepository
from bes.vm.spec import ImageRef
from bes.vmjob import plan

TEMPLATES = (TINY, DEBIAN_12)
GREETING = "hello from a VM"

JOB = """<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
    xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix" xmlns:vm="urn:bes-grid:vm:1.0">
  <jsdl:JobDescription><jsdl:Application>
    <posix:POSIXApplication>
      <posix:Executable>/bin/echo</posix:Executable><posix:Argument>{greeting}</posix:Argument>
    </posix:POSIXApplication>
    <vm:VirtualMachine><vm:Image><vm:Template>{template}</vm:Template></vm:Image>
      <vm:WallTimeLimit>600</vm:WallTimeLimit></vm:VirtualMachine>
  </jsdl:Application></jsdl:JobDescription>
</jsdl:JobDefinition>"""


def boot_to_result(
    template: str, runs: int, repository: ImageRepository, driver: QemuDriver, temp: Path
) -> list[float]:
    job = load_job_definition(JOB.format(greeting=GREETING, template=template).encode())
    times = []
    for run in range(runs):
        started = time.perf_counter()
        vm_job = plan(job, new_activity_id(), repository=repository, inputs={})
        outcome = run_vm_job(vm_job, driver, temp / f"{template}-{run}")
        elapsed = time.perf_counter() - started
        stdout = outcome.results.stdout.read_text() if outcome.results is not None else ""
        if stdout != f"{GREETING}\n":
            raise SystemExit(
                f"{template} run {run} failed: {outcome.reason}\n{outcome.console_tail}"
            )
        times.append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--accel", choices=ACCELERATORS, default="auto")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "bes-tests")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    repository = ImageRepository(ImageCache(args.cache_dir / "images"))
    figures: dict[str, dict[str, float]] = {}
    medians: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as temp:
        driver = QemuDriver(Path(temp) / "vms", accelerator=args.accel)
        accelerator = driver.accelerator()  # probed once per node, not per job
        print(f"accelerator: {accelerator}")
        for template in TEMPLATES:
            started = time.perf_counter()
            repository.resolve(ImageRef(template=template))
            ready = time.perf_counter() - started
            print(f"{template}: ready in {ready:.1f} s (built now if it was not cached)")
            figures[template] = {"ready_s": round(ready, 3)}
        print(f"\n{'boot to result, seconds':<28} {'runs':>4} {'min':>8} {'median':>8} {'max':>8}")
        for template in TEMPLATES:
            times = boot_to_result(template, args.runs, repository, driver, Path(temp))
            medians[template] = statistics.median(times)
            figures[template].update(
                runs=args.runs,
                min_s=round(min(times), 3),
                median_s=round(medians[template], 3),
                max_s=round(max(times), 3),
            )
            print(
                f"{template:<28} {args.runs:>4} {min(times):8.2f} "
                f"{statistics.median(times):8.2f} {max(times):8.2f}"
            )
    ratio = medians[DEBIAN_12] / medians[TINY]
    print(f"\n{DEBIAN_12} / {TINY} (median): {ratio:.1f}x ({accelerator})")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"accelerator": accelerator, "ratio": round(ratio, 2), **figures}, indent=1)
        )


if __name__ == "__main__":
    main()
