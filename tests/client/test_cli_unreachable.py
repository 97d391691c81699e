"""The job list outlives the services it names: ``bes status --all`` after one test service was
stopped, and after another one's port went dark, as a user meets it."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bes.client.joblist import unreachable_reason
from tests.client.test_cli import Shell
from tests.support.server import LiveServer, free_port, live_server

EXAMPLE = str(Path(__file__).parents[2] / "examples" / "hello-vm.jsdl")


@contextmanager
def dark_port(port: int) -> Iterator[None]:
    """A listening socket on ``port`` whose accept queue is full: connections to it neither
    open nor fail, as with a host that went off the network."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(0)
    held = [socket.create_connection(("127.0.0.1", port), timeout=1.0)]
    try:
        yield
    finally:
        for connection in held:
            connection.close()
        listener.close()


def test_status_all_shows_what_it_reaches_and_says_what_it_does_not(
    server: LiveServer, tmp_path: Path
) -> None:
    bes = Shell(tmp_path / "home", server.endpoint)
    bes.home.mkdir()
    [live] = [bes("submit", EXAMPLE).stdout.strip()]
    stopped = LiveServer(tmp_path / "stopped").start()
    gone = [bes("submit", EXAMPLE, "-e", stopped.endpoint).stdout.strip() for _ in range(2)]
    stopped.stop()
    assert all(gone) and live

    shown = bes("status", "--all")
    assert shown.returncode == 4, shown.stderr  # the documented "could not be reached"
    rows = {line.split()[0]: line for line in shown.stdout.splitlines()[1:]}
    assert set(rows) == {live, *gone}
    assert rows[live].split()[2].startswith("Pending/")
    for activity in gone:
        assert re.search(rf"\bunreachable\s+{re.escape(stopped.endpoint)}$", rows[activity])
    reason = f"cannot connect to {stopped.endpoint}: connection refused"
    assert shown.stderr.count(reason) == 1, shown.stderr  # once per endpoint, not per job
    assert "2 activities unreachable: cannot connect" in shown.stderr
    assert "Traceback" not in shown.stderr

    listed = json.loads(bes("status", "--all", "--json").stdout)
    by_id = {row["id"]: row for row in listed}
    assert (by_id[live]["state"], by_id[live]["endpoint"]) == ("Pending", server.endpoint)
    for activity in gone:
        assert by_id[activity]["state"] == "unreachable"
        assert by_id[activity]["endpoint"] == stopped.endpoint
        assert by_id[activity]["message"].startswith(reason)
    assert bes("status", "--all", "--json").returncode == 4

    assert bes("status", live).returncode == 0  # naming only reachable ones is fine
    cancelled = bes("cancel", "--all")
    assert cancelled.returncode == 4
    assert re.search(rf"^{live}\s+terminated", cancelled.stdout, re.M)
    assert cancelled.stdout.count("not terminated: cannot connect") == 2


def test_an_endpoint_gone_dark_costs_one_short_timeout(server: LiveServer, tmp_path: Path) -> None:
    bes = Shell(tmp_path / "home", server.endpoint)
    bes.home.mkdir()
    live = bes("submit", EXAMPLE).stdout.strip()
    elsewhere = LiveServer(tmp_path / "elsewhere").start()
    dark = [bes("submit", EXAMPLE, "-e", elsewhere.endpoint).stdout.strip() for _ in range(3)]
    elsewhere.stop()
    with dark_port(elsewhere.port):
        started = time.monotonic()
        shown = bes("status", "--all")
        took = time.monotonic() - started
    assert shown.returncode == 4, shown.stderr
    assert f"cannot connect to {elsewhere.endpoint}: no connection within 3 s" in shown.stderr
    assert "3 activities unreachable: cannot connect" in shown.stderr
    assert re.search(rf"^{live}\s+\S*\s+Pending/", shown.stdout, re.M), shown.stdout
    assert sum(line.startswith(tuple(dark)) for line in shown.stdout.splitlines()) == 3
    assert took < 15, took  # one connect timeout of 3 s, not 3 request timeouts of 30 s
    bes("cancel", live)


def test_the_probe_answers_quickly_for_every_kind_of_absence() -> None:
    port = free_port()
    assert unreachable_reason(f"http://127.0.0.1:{port}/bes") == (
        f"cannot connect to http://127.0.0.1:{port}/bes: connection refused "
        "(is the service running, on this host and port?)"
    )
    with dark_port(port):
        started = time.monotonic()
        reason = unreachable_reason(f"http://127.0.0.1:{port}/bes", 0.5)
        assert time.monotonic() - started < 2
    assert reason is not None and "no connection within 0.5 s" in reason
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(4)
        assert unreachable_reason(f"http://127.0.0.1:{listening.getsockname()[1]}/x") is None


def test_an_endpoint_that_refuses_these_credentials_does_not_hide_the_others(
    server: LiveServer, tmp_path: Path
) -> None:
    secured = tmp_path / "secured"
    password = tmp_path / "alice.pw"
    password.write_text("alice-Secret-9\n")
    bes = Shell(tmp_path / "home", server.endpoint)
    bes.home.mkdir()
    added = bes(
        "user", "add", "alice", "--password-file", str(password), "--data-dir", str(secured)
    )
    assert added.returncode == 0, added.stderr
    (bes.home / "config" / "bes").mkdir(parents=True)
    (bes.home / "config" / "bes" / "client.toml").write_text("[auth]\ndigest = true\n")
    live = bes("submit", EXAMPLE).stdout.strip()
    with live_server(secured) as other:
        alice = ["-e", other.endpoint, "--username", "alice", "--password-file", str(password)]
        mine = bes("submit", EXAMPLE, *alice)
        assert mine.returncode == 0, mine.stderr

        shown = bes("status", "--all")  # no credentials: the secured service says no
        assert shown.returncode == 3, shown.stderr  # refused, not unreachable
        assert re.search(rf"^{live}\s+\S+\s+Pending/", shown.stdout, re.M), shown.stdout
        row = rf"^{mine.stdout.strip()}\s+\S+\s+refused\s+{re.escape(other.endpoint)}$"
        assert re.search(row, shown.stdout, re.M), shown.stdout
        assert f"1 activity refused: {other.endpoint} refused the request: " in shown.stderr
        bes("cancel", mine.stdout.strip(), *alice)
    bes("cancel", live)
