"""A throwaway PostgreSQL server for the tests, started from the Debian binaries.

``.ci/run`` installs PostgreSQL and sets ``BES_REQUIRE_POSTGRES=1``, which turns a missing
installation into a failure instead of a skip.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import free_port


def _bindir() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if candidates:
        return candidates[0].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    """A server of our own: its admin URL, and :meth:`stop` / :meth:`start` on the same data
    directory and port, as an operator restarts PostgreSQL under a running service."""

    def __init__(self, bindir: Path, base: Path, run_as: list[str]) -> None:
        self._bindir = bindir
        self._base = base
        self._data = base / "data"
        self._run_as = run_as
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        """The admin URL (user postgres, database postgres)."""

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._run_as, *argv], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(
            str(self._bindir / "initdb"),
            "-D",
            str(self._data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        )

    def start(self) -> None:
        """Start it (again) and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self._base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=100"
        )
        self._run(
            str(self._bindir / "pg_ctl"),
            "-D",
            str(self._data),
            "-w",
            "-t",
            "30",
            "-l",
            str(self._base / "log"),
            "-o",
            options,
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop it: ``fast`` ends every session at once (its clients see their connections
        drop), ``immediate`` as in a crash."""
        self._run(str(self._bindir / "pg_ctl"), "-D", str(self._data), "-m", mode, "-w", "stop")

    def freeze(self) -> None:
        """SIGSTOP the server and its sessions: connections stay open and new ones are
        accepted by the kernel, but nothing answers (a hung server, or one cut off by the
        network), until :meth:`thaw`."""
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT what :meth:`freeze` stopped."""
        for pid in self._processes():
            os.kill(pid, signal.SIGCONT)

    def _processes(self) -> list[int]:
        """The postmaster (from its pid file) and its children."""
        postmaster = int((self._data / "postmaster.pid").read_text().split()[0])
        found = [postmaster]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # it ended meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:  # the field after (comm)
                found.append(int(entry.name))
        return found


@contextlib.contextmanager
def postgres_instance() -> Iterator[PostgresServer]:
    """Start a server on a free loopback port; yield it; remove it afterwards."""
    bindir = _bindir()
    if bindir is None:
        message = "PostgreSQL server binaries not installed (apt-get install postgresql)"
        if os.environ.get("BES_REQUIRE_POSTGRES") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    base = Path(tempfile.mkdtemp(prefix="bes-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    server = PostgresServer(bindir, base, run_as)
    server.init()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(OSError, ValueError):  # (a test that failed while frozen)
            server.thaw()
        with contextlib.suppress(subprocess.SubprocessError):
            server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server on a free loopback port; yield its admin URL; remove it afterwards."""
    with postgres_instance() as server:
        yield server.url


def fresh_database(admin_url: str, name: str) -> str:
    """Create an empty database on the server; return its URL."""
    import psycopg

    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name
