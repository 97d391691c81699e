"""bench/security_bench.py runs as an operator would set a secure service up (bes ca, bes user
add, bes serve --tls-cert ...), and every authenticated request it sends is accepted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "security_bench.py"


def run_bench(script: Path, tmp_path: Path, *args: str, timeout_s: float) -> tuple[Any, str]:
    """Run a benchmark with ``--json``; its figures and what it printed."""
    figures = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(script), *args, "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(figures.read_text()), done.stdout


@pytest.mark.slow
def test_security_bench_quick_run_is_accepted_in_every_mode(tmp_path: Path) -> None:
    results, printed = run_bench(BENCH, tmp_path, "--quick", "--clients", "8", timeout_s=240)
    assert set(results) == {"plain", "digest", "signed"}
    for mode, levels in results.items():
        phase = levels["8"]
        assert phase["skipped"] is None, (mode, phase["first_error"])
        assert phase["errors"] == 0, (mode, phase["first_error"])
        assert phase["requests"] > 50, (mode, phase)
        assert phase["p99_ms"] >= phase["p50_ms"] > 0
    assert "digest at 8 clients:" in printed
    assert "signed at 8 clients:" in printed


FILES_BENCH = Path(__file__).resolve().parents[1] / "bench" / "files_bench.py"


@pytest.mark.slow
def test_files_bench_moves_the_file_both_ways_and_sends_nothing_the_second_time(
    tmp_path: Path,
) -> None:
    results, printed = run_bench(
        FILES_BENCH, tmp_path, "--size-mib", "16", "--rounds", "1", timeout_s=240
    )
    assert results["again_sent_bytes"] == 0
    assert results["ratio_up"] > 0 and results["ratio_down"] > 0
    assert "second upload of the same file: 0 bytes sent" in printed


CLOUD_BENCH = Path(__file__).resolve().parents[1] / "bench" / "cloud_bench.py"


def test_cloud_bench_runs_every_job_and_leaves_no_instance() -> None:
    pytest.importorskip("libvirt")
    done = subprocess.run(
        [sys.executable, str(CLOUD_BENCH), "--burst", "20", "--bag", "10"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "every job done after" in done.stdout
    assert "every instance deleted after" in done.stdout
    assert "pool empty again after" in done.stdout


TUNNEL_BENCH = BENCH.parent / "tunnel_bench.py"


@pytest.mark.slow
def test_tunnel_bench_carries_every_byte_through_the_relay(tmp_path: Path) -> None:
    measured, printed = run_bench(
        TUNNEL_BENCH, tmp_path, "--mib", "8", "--pings", "50", timeout_s=180
    )
    for path in ("direct", "relay"):
        assert measured[path]["up_mb_s"] > 0
        assert measured[path]["down_mb_s"] > 0
        assert measured[path]["rtt_p50_ms"] > 0
    assert "relay/direct" in printed


PURGE_BENCH = Path(__file__).resolve().parents[1] / "bench" / "purge_bench.py"


def test_purge_bench_removes_every_ended_activity_and_keeps_the_others(tmp_path: Path) -> None:
    results, printed = run_bench(
        PURGE_BENCH,
        tmp_path,
        *("--activities", "3000", "--batch", "500", "--baseline-s", "0.5"),
        timeout_s=120,
    )
    assert results["purged"] == 3000
    trickled = results["trickle_alone"]["n"] + results["trickle_during_purge"]["n"]
    assert results["left"] == results["kept"] + trickled  # the kept ones and the new ones
    assert results["trickle_during_purge"]["n"] > 0 and results["activities_per_s"] > 0
    assert results["database_bytes_after"] < results["database_bytes_before"] / 2
    assert "purged 3,000 ended activities" in printed


BES_BENCH = Path(__file__).resolve().parents[1] / "bench" / "bes_bench.py"


@pytest.mark.slow
def test_bes_bench_loads_each_backend_in_turn_and_compares_them(tmp_path: Path) -> None:
    figures, printed = run_bench(
        BES_BENCH,
        tmp_path,
        *("--seconds", "2", "--rounds", "2", "--clients", "4", "--status-ids", "20"),
        timeout_s=240,
    )
    assert set(figures) == {"none", "desktopgrid"}
    for backend, by_clients in figures.items():
        row = by_clients["4"]
        assert row["errors"] == 0, backend
        assert row["creates_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
        assert row["server_cpu_us"] > 0
    assert figures["none"]["4"]["vs_first"] == 1.0
    assert figures["desktopgrid"]["4"]["vs_first"] > 0
    assert "vs none" in printed


VIEWS_BENCH = Path(__file__).resolve().parents[1] / "bench" / "views_bench.py"
CORES_BENCH = Path(__file__).resolve().parents[1] / "bench" / "cores_bench.py"


@pytest.mark.slow
@pytest.mark.postgres
def test_views_bench_measures_every_view_at_each_size_on_both_engines(tmp_path: Path) -> None:
    results, printed = run_bench(VIEWS_BENCH, tmp_path, "--sizes", "300,1500", timeout_s=400)
    assert set(results) == {"sqlite", "postgresql"}
    for by_size in results.values():
        assert set(by_size) == {"300", "1500"}
        for row in by_size.values():
            assert row["CreateActivity/s, 32 clients"] > 0
            assert row["status page, first page, p50 ms"] > 0
            assert row["/metrics scrape, p50 ms"] > 0
    assert "ratio" in printed


@pytest.mark.slow
def test_views_bench_queues_every_activity_for_the_desktop_grid(tmp_path: Path) -> None:
    results, _ = run_bench(
        VIEWS_BENCH,
        tmp_path,
        *("--sizes", "300,1500", "--engines", "sqlite", "--backend", "desktopgrid"),
        timeout_s=400,
    )
    for row in results["sqlite"].values():
        assert row["CreateActivity/s, 32 clients"] > 0
        assert row["/metrics scrape, p50 ms"] > 0


@pytest.mark.slow
def test_cores_bench_drives_one_and_two_processes_on_one_sqlite_file(tmp_path: Path) -> None:
    figures, _ = run_bench(
        CORES_BENCH,
        tmp_path,
        *("--seconds", "1", "--clients", "8", "--engines", "sqlite"),
        timeout_s=240,
    )
    results = figures["sqlite"]
    assert set(results) == {"1", "2"}
    assert all(r["creates_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in results.values())
