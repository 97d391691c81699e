"""The embedded default's own worker: ``bes serve`` starts one ``bes worker`` beside it.

It is a child process with a token of its own (kept in the data directory), talking to the
service over loopback exactly as a volunteer's worker would, and it stops when the service
stops (or dies: it watches its parent).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

from bes.backends.desktopgrid.tokens import local_worker_token
from bes.db.store import Database

log = logging.getLogger(__name__)

NAME: Final = "local"
TOKEN_FILE: Final = "local-worker.token"  # noqa: S105 - a file name


class LocalWorker:
    """The child ``bes worker`` process of ``bes serve``.

    Args:
        data_dir: The service's data directory (token file, worker cache).
        database_url: The service's database, where the worker's token is registered.
        service_url: Where the worker reaches the service.
        extra: More ``bes worker`` options.
    """

    def __init__(
        self, *, data_dir: Path, database_url: str, service_url: str, extra: list[str]
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.database_url = database_url
        self.service_url = service_url
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Register the worker's token and start the process."""
        token_file = self.data_dir / TOKEN_FILE
        with Database(self.database_url) as db:
            db.migrate()
            local_worker_token(db, NAME, token_file)
        argv = [
            sys.executable,
            "-m",
            "bes",
            "worker",
            "--service",
            self.service_url,
            "--token-file",
            str(token_file),
            "--cache-dir",
            str(self.data_dir / "worker"),
            "--parent-pid",
            str(os.getpid()),
            *self.extra,
        ]
        self.process = subprocess.Popen(argv)
        log.info("started the local worker (pid %d)", self.process.pid)

    def stop(self, timeout_s: float = 40.0) -> None:
        """SIGTERM (running jobs are handed back), then SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("the local worker did not stop in %.0f s; killing it", timeout_s)
            process.kill()
            process.wait(5.0)
