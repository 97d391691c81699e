"""The README's Snakemake and Parsl examples, run as written against a live ``bes serve`` whose
local worker runs every task in a VM (``tiny`` for shell commands, ``debian-12`` for the
python_app): only the endpoint is this test's server, and ``.venv/bin`` this interpreter's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bes.client import BESClient
from tests.support.server import LiveServer, live_server
from tests.support.worker import shared_image_cache

pytestmark = [pytest.mark.slow, pytest.mark.vm]

README = Path(__file__).parents[2] / "README.md"
BIN = Path(sys.executable).parent


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(title)
    return text[start : text.index("\n### ", start + 1)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("readme-workflows") / "data"
    shared_image_cache(data / "worker")  # the templates are built once per machine
    # debian-12 wants 512 MiB; two tiny VMs at once besides it keep the fan-out quick.
    options = ["--worker-option=--max-vms=2", "--worker-option=--max-memory-mib=1024"]
    with live_server(data, local_worker=True, extra=options) as running:
        yield running


def user_environment(home: Path, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BES_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), BES_ENDPOINT=endpoint)
    return env


def test_the_snakemake_example_runs_as_written(server: LiveServer, tmp_path: Path) -> None:
    [script] = re.findall(r"```sh\n(.*?)```", section("### Snakemake:"), re.S)
    lines = [line for line in script.splitlines() if "pip install" not in line]
    script = "\n".join(lines).replace(".venv/bin/", f"{BIN}/")
    script = script.replace("http://127.0.0.1:8080/bes", server.endpoint)
    done = subprocess.run(
        ["bash", "-euc", script],
        cwd=tmp_path,
        env=user_environment(tmp_path, server.endpoint),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "summary.txt").read_text() == "a 2\nb 1\nc 1\n"
    assert done.stderr.count("is BES activity") == 4  # every job ran as an activity


def test_the_parsl_example_runs_as_written(server: LiveServer, tmp_path: Path) -> None:
    [code] = re.findall(r"```python\n(.*?)```", section("### Parsl:"), re.S)
    (tmp_path / "example.py").write_text(code)  # as a user saves it (python_apps need source)
    done = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        env=user_environment(tmp_path, server.endpoint),
        capture_output=True,
        text=True,
        timeout=1500,  # the first use of debian-12 on a machine builds it (minutes)
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["385", "2"]
    assert (tmp_path / "total.txt").read_text() == "385\n"
    assert (tmp_path / "squares" / "7.txt").read_text() == "49\n"
    with BESClient(server.endpoint) as client:
        statuses = client.status([client.ref(a) for a in activities_of(server)])
    assert len(statuses) >= 12 and all(s.state.value == "Finished" for s in statuses)


def activities_of(server: LiveServer) -> list[str]:
    """Every activity on the server (the status page's JSON would do; the job list is the
    example's own): read from the database the server uses."""
    import sqlite3

    database = server.data_dir / "bes.sqlite3"
    with sqlite3.connect(database) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM activity WHERE parent_id IS NULL")]
