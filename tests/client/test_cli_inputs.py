"""Local input files, as a user types it: ``bes jsdl new --input data.csv``, then ``bes submit``
uploads the file to the service's file store (once), sends the document with the store's URL,
and the job reads the file in its VM."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bes.client import BESClient, staging
from bes.jsdl.parse import load_job_definition
from tests.client.test_cli import ID, Shell
from tests.support.server import LiveServer, live_server
from tests.support.vm import qemu_processes
from tests.support.worker import shared_image_cache


@pytest.fixture
def bes(server: LiveServer, tmp_path: Path) -> Shell:
    return Shell(tmp_path, server.endpoint)


def sources(document: Path) -> dict[str, str | None]:
    job = load_job_definition(document.read_bytes())
    return {s.file_name: s.source for s in job.job_description.data_staging}


def test_a_bare_input_path_is_written_relative_to_the_document(bes: Shell) -> None:
    (bes.home / "in").mkdir()
    (bes.home / "in" / "data set.csv").write_text("a,b\n")
    written = bes(
        "jsdl", "new", "-o", "jobs/job.jsdl", "--input", "in/data set.csv",
        "--input", "copy.csv=in/data set.csv", "--input", "web.csv=https://example.org/w.csv",
        "/bin/cat", "data set.csv",
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    found = sources(bes.home / "jobs" / "job.jsdl")
    assert found == {
        "data set.csv": "../in/data%20set.csv",  # the base name in the job, the path here
        "copy.csv": "../in/data%20set.csv",
        "web.csv": "https://example.org/w.csv",
    }
    for name in ("data set.csv", "copy.csv"):
        uri = found[name]
        assert uri is not None
        assert staging.local_path(uri, bes.home / "jobs") == bes.home / "jobs/../in/data set.csv"

    to_stdout = bes("jsdl", "new", "--input", "in/data set.csv", "/bin/true")
    assert "<jsdl:URI>in/data%20set.csv</jsdl:URI>" in to_stdout.stdout  # from the directory

    twice = bes("jsdl", "new", "--input", "a/x.csv", "--input", "b/x.csv", "/bin/true")
    assert twice.returncode == 2 and "two inputs are named 'x.csv'" in twice.stderr
    missing = bes("jsdl", "new", "-o", "j.jsdl", "--input", "later.csv", "/bin/true")
    assert missing.returncode == 0 and "later.csv: no such file yet" in missing.stderr


def test_a_missing_input_stops_everything_before_anything_is_sent(
    bes: Shell, server: LiveServer
) -> None:
    (bes.home / "data.csv").write_text("1\n2\n")
    assert bes("jsdl", "new", "-o", "good.jsdl", "--input", "data.csv", "/bin/true").returncode == 0
    assert bes("jsdl", "new", "-o", "bad.jsdl", "--input", "gone.csv", "/bin/true").returncode == 0
    before = BESClient(server.endpoint).files()
    refused = bes("submit", "good.jsdl", "bad.jsdl")
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(
        "Error: bad.jsdl: the input 'gone.csv' is the local file 'gone.csv' (gone.csv), "
        "which does not exist; nothing was sent"
    )
    assert refused.stdout == ""
    assert json.loads(bes("status", "--all", "--json").stdout) == []  # good.jsdl not sent either
    assert BESClient(server.endpoint).files() == before  # and data.csv not uploaded


def test_submit_uploads_once_and_sends_the_store_url(bes: Shell, server: LiveServer) -> None:
    data = os.urandom(300_000)
    (bes.home / "data").mkdir()
    (bes.home / "data" / "input.bin").write_bytes(data)
    written = bes(
        "jsdl", "new", "-o", "jobs/job.jsdl", "--input", "data/input.bin", "/bin/wc", "-c",
        "input.bin",
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    document = (bes.home / "jobs" / "job.jsdl").read_bytes()

    first = bes("submit", "jobs/job.jsdl")
    assert first.returncode == 0, first.stderr
    assert re.search(r"^data/input\.bin: uploaded 293\.0 KiB in \d", first.stderr, re.M)
    second = bes("submit", "jobs/job.jsdl")
    assert second.returncode == 0, second.stderr
    assert "data/input.bin: already stored (0 bytes sent)" in second.stderr
    assert (bes.home / "jobs" / "job.jsdl").read_bytes() == document  # the file is not changed

    client = BESClient(server.endpoint)
    stored = [f for f in client.files() if f["bytes"] == len(data)]
    assert len(stored) == 1
    for submitted in (first, second):
        activity = submitted.stdout.strip()
        assert ID.match(activity)
        sent = load_job_definition(client.document(client.ref(activity)))
        [source] = [s.source for s in sent.job_description.data_staging if s.source]
        assert source == stored[0]["url"]
        bes("cancel", activity)


def test_a_file_the_service_refuses_is_a_clear_fault(tmp_path: Path) -> None:
    with live_server(tmp_path / "data", extra=["--file-max-size", "1K"]) as small:
        bes = Shell(tmp_path, small.endpoint)
        (tmp_path / "big.csv").write_bytes(b"x" * 4096)
        bes("jsdl", "new", "-o", "job.jsdl", "--input", "big.csv", "/bin/true")
        refused = bes("submit", "job.jsdl")
    assert refused.returncode == 3, refused.stderr
    assert "big.csv:" in refused.stderr and "HTTP 413" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_a_large_upload_shows_progress_on_a_terminal_only(bes: Shell) -> None:
    with (bes.home / "large.bin").open("wb") as out:
        for _ in range(192):
            out.write(os.urandom(1 << 20))
    bes("jsdl", "new", "-o", "job.jsdl", "--input", "large.bin", "/bin/true")

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "bes", "submit", "job.jsdl"],
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=bes.env,
        cwd=bes.home,
    )
    os.close(terminal)
    seen = b""
    started = time.monotonic()
    while time.monotonic() - started < 120:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    assert process.wait(30) == 0
    text = seen.decode()
    updates = re.findall(r"large\.bin: ([\d.]+) MiB of 192\.0 MiB +(\d+)% +[\d.]+ [KMG]iB/s", text)
    assert updates, text
    assert all(0 <= int(percent) <= 100 for _, percent in updates)
    assert [float(sent) for sent, _ in updates] == sorted(float(sent) for sent, _ in updates)
    assert re.search(r"large\.bin: uploaded 192\.0 MiB in [\d.]+ s", text)

    again = bes("submit", "job.jsdl")  # stderr is a pipe: no progress line, the summary only
    assert again.returncode == 0
    assert again.stderr.splitlines()[0] == "large.bin: already stored (0 bytes sent)"
    assert "\r" not in again.stderr


@pytest.mark.slow
@pytest.mark.vm
def test_done_when_a_job_reads_my_local_file(tmp_path: Path) -> None:
    """The issue's line, as typed: bes jsdl new --input data.csv ... && bes submit --wait."""
    shared_image_cache(tmp_path / "data" / "worker")
    home = tmp_path / "home"
    home.mkdir()
    data = b"city,people\nLyon,522228\nNantes,320732\n"
    (home / "data.csv").write_bytes(data)
    with live_server(tmp_path / "data", local_worker=True) as server:
        bes = Shell(home, server.endpoint)
        command = (
            "bes jsdl new -o job.jsdl --name count --input data.csv /bin/sh -c "
            "'wc -l < data.csv; tail -n 1 data.csv' && bes submit job.jsdl --wait"
        )
        ran = subprocess.run(
            ["/bin/sh", "-c", command],
            capture_output=True,
            text=True,
            env={**bes.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
            cwd=home,
            timeout=600,
            check=False,
        )
        assert ran.returncode == 0, f"{ran.stdout}\n{ran.stderr}\n{server.log.read_text()[-3000:]}"
        assert f"data.csv: uploaded {len(data)} B in " in ran.stderr
        activity = ran.stdout.split()[0]
        assert "Finished" in ran.stdout
        fetched = bes("get", activity)
        assert fetched.returncode == 0, fetched.stderr
        assert (home / activity / "stdout").read_text().split() == ["3", "Nantes,320732"]

        again = bes("submit", "job.jsdl", "--wait")
        assert again.returncode == 0, again.stderr
        assert "data.csv: already stored (0 bytes sent)" in again.stderr
        stored = BESClient(server.endpoint).files()
        assert [f["bytes"] for f in stored] == [len(data)]
    assert qemu_processes(str(tmp_path)) == []
