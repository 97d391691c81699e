"""``bes serve`` starting and stopping as an operator sees it: it says it is ready only once
it listens (a port that is taken never gets a "ready", nor a local worker), and SIGTERM stops
the HTTP side within 2 s even while a worker's claim long-poll is open (it is answered at
once, with no work)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bes.backends.desktopgrid.tokens import create_worker
from bes.db.engine import default_url
from bes.db.store import Database
from tests.support.server import LiveServer


def test_a_port_that_is_taken_gets_no_ready_and_no_local_worker(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable, "-m", "bes", "serve", "--port", str(port),
                "--data-dir", str(tmp_path / "data"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )  # fmt: skip
    assert done.returncode != 0
    assert "address already in use" in done.stderr.lower(), done.stderr
    assert "BES endpoint" not in done.stderr
    assert "ready" not in done.stderr.lower().replace("already", "")
    assert not (tmp_path / "data" / "worker").exists()  # the local worker never started


def test_sigterm_stops_http_within_two_seconds_with_a_long_poll_open(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", extra=["--backend", "desktopgrid"]).start()
    try:
        assert "; ready" in server.log.read_text()
        with Database(default_url(server.data_dir)) as db:
            token = create_worker(db, "volunteer")
        answer: dict[str, object] = {}

        def long_poll() -> None:
            started = time.monotonic()
            response = httpx.post(
                f"{server.url}/worker/v1/claim",
                json={"memory_mib": 1024, "vcpus": 1, "disk_mib": 10_000, "wait_s": 20.0},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            answer.update(status=response.status_code, json=response.json())
            answer["seconds"] = time.monotonic() - started

        poller = threading.Thread(target=long_poll)
        poller.start()
        time.sleep(1.0)  # the claim is waiting for work now
        assert server.proc is not None
        stopping = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        poller.join(5)
        server.proc.wait(10)
        stopped_s = time.monotonic() - stopping
        assert answer["status"] == 200
        assert answer["json"] == {"leases": []}
        assert float(answer["seconds"]) < 3.0  # type: ignore[arg-type]
        assert stopped_s < 2.0, stopped_s
        server.proc = None
    finally:
        server.stop()


def test_once_up_start_up_objects_are_out_of_the_collectors_sight() -> None:
    # bes serve calls it once it listens; run here in a child so that this process's
    # collector is left as it is.
    probe = (
        "import gc; from bes.cli import settle_heap; settle_heap(); "
        "print(gc.get_freeze_count(), gc.get_threshold()[0], gc.get_count()[2])"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    frozen, young, old = (int(n) for n in done.stdout.split())
    assert frozen > 10_000, "the modules and schemas loaded are frozen"
    assert young == 10_000 and old == 0
