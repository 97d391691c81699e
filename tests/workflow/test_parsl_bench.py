"""bench/parsl_bench.py runs its fast path end to end and prints the per-task figure."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "parsl_bench.py"


@pytest.mark.slow
def test_parsl_bench_fast_path_prints_seconds_per_task() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--tasks", "10", "--poll-s", "0.2"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    found = re.search(
        r"fast path: 10 trivial bash_apps.* (\d+) ms/task \(.*, (\d+) status calls\)", done.stdout
    )
    assert found is not None, done.stdout
    assert int(found[1]) > 0
    assert int(found[2]) < 10 * 3  # one vector call per round, not one per task and round
