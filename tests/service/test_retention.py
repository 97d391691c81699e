"""Retention on a real ``bes serve``: an operator's ``bes purge`` while the service runs, and the
automatic purge of ``bes serve --keep-ended``. What a client sees afterwards: a purged
activity is unknown, its kept outputs are gone, the others are untouched, the counts right."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests.support import soap
from tests.support.grid import Worker, call, posix_job, submit, terminate
from tests.support.server import LiveServer, live_server


def states(server: LiveServer, ids: list[str]) -> list[str]:
    """Each activity's state as GetActivityStatuses answers, or the name of its fault."""
    answer = call(
        server,
        "GetActivityStatuses",
        soap.vector("GetActivityStatuses", [soap.epr(activity_id=i) for i in ids]),
    )
    out = []
    for response in soap.xpath(soap.body_of(answer), "bes:Response"):
        state = soap.xpath(response, "bes:ActivityStatus/@state")
        faults = soap.xpath(response, "bes:Fault/detail/*")
        out.append(str(state[0]) if state else etree.QName(faults[0]).localname)
    return out


def activities_by_state(server: LiveServer) -> dict[str, float]:
    """``bes_activities`` of a /metrics scrape (the counts the database keeps)."""
    from prometheus_client.parser import text_string_to_metric_families

    scraped = httpx.get(server.url + "/metrics", timeout=10)
    assert scraped.status_code == 200, scraped.text
    return {
        s.labels["state"]: s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
        if s.name == "bes_activities"
    }


def kept_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "outputs").rglob("*") if p.is_file()]


def until(check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        time.sleep(0.1)


UNKNOWN = "UnknownActivityIdentifierFault"


@pytest.mark.slow
def test_bes_purge_removes_ended_activities_and_their_outputs_while_the_service_runs(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with live_server(data) as server:
        done = [submit(server, posix_job(f"done-{i}")) for i in range(2)]
        cancelled = submit(server, posix_job("cancelled"))
        waiting = submit(server, posix_job("waiting"))
        terminate(server, cancelled)
        worker = Worker(server, "pc")
        worker.post("register", {"facts": {"max_vms": 2}})
        for expected in done:
            (lease,) = worker.claim()
            assert lease["activity"] == expected
            worker.finish(lease["lease"], stdout=b"kept for its owner\n" * 100)
        until(lambda: states(server, done) == ["Finished"] * 2, 10)
        assert states(server, [*done, cancelled, waiting]) == [
            "Finished",
            "Finished",
            "Cancelled",
            "Pending",
        ]
        assert len(kept_files(data)) == 2
        outputs = httpx.get(f"{server.endpoint}/activities/{done[0]}/outputs/stdout", timeout=10)
        assert outputs.status_code == 200

        purged = bes("purge", "--older-than", "0s", "--data-dir", str(data))

        assert purged.returncode == 0, purged.stderr
        assert "removed 3 ended activities" in purged.stdout
        assert "3,800 bytes of kept outputs" in purged.stdout
        assert states(server, [*done, cancelled, waiting]) == [UNKNOWN] * 3 + ["Pending"]
        gone = httpx.get(f"{server.endpoint}/activities/{done[0]}/outputs/stdout", timeout=10)
        assert gone.status_code == 404
        assert kept_files(data) == []
        counts = activities_by_state(server)
        assert counts["Pending"] == 1
        assert counts["Finished"] == counts["Cancelled"] == counts["Running"] == 0
        again = submit(server, posix_job("after"))  # the service goes on as before
        assert states(server, [again, waiting]) == ["Pending", "Pending"]


@pytest.mark.slow
def test_bes_serve_keep_ended_removes_what_ended_longer_ago_by_itself(tmp_path: Path) -> None:
    extra = ["--backend", "none", "--keep-ended", "1s"]
    with live_server(tmp_path / "data", extra=extra) as server:
        ended = [submit(server, posix_job(f"ended-{i}")) for i in range(3)]
        waiting = submit(server, posix_job("waiting"))
        for activity_id in ended:
            terminate(server, activity_id)
        assert states(server, ended) == ["Cancelled"] * 3

        until(lambda: states(server, ended) == [UNKNOWN] * 3, 20)

        assert states(server, [*ended, waiting]) == [UNKNOWN] * 3 + ["Pending"]
        counts = activities_by_state(server)
        assert counts["Cancelled"] == 0 and counts["Pending"] == 1
    log = server.log.read_text()
    assert "retention: removed" in log


def bes(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bes", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bes_purge_vacuum_converts_an_old_sqlite_database_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with (
        contextlib.closing(sqlite3.connect(data / "bes.sqlite3")) as conn,
        conn,
    ):  # made before incremental auto-vacuum
        conn.execute("CREATE TABLE made_before (x)")
    assert bes("purge", "--older-than", "30d", "--data-dir", str(data)).returncode == 0

    converted = bes("purge", "--vacuum", "--data-dir", str(data))

    assert converted.returncode == 0, converted.stderr
    assert "incremental auto-vacuum on" in converted.stdout
    with contextlib.closing(sqlite3.connect(data / "bes.sqlite3")) as conn, conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    nothing = bes("purge", "--data-dir", str(data))
    assert nothing.returncode == 2 and "--older-than" in nothing.stderr
