"""The embedded default's own worker: ``bes serve`` starts one ``bes worker`` beside it.

It is a child process with a token of its own (kept in the data directory), talking to the
service over loopback exactly as a volunteer's worker would, and it stops when the service
stops (or dies: it watches its parent).

Over HTTPS it trusts the service's own certificate file (``--tls-cert``: the certificate and
its chain, each an anchor) and checks the certificate against one of its names rather than
against 127.0.0.1, so a certificate for a public host name serves the local worker too; the
connection is verified as any other.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from bes.authn import is_loopback
from bes.backends.desktopgrid.tokens import local_worker_token
from bes.certs import server_names
from bes.db.store import Database
from bes.errors import ConfigError
from bes.vmlocal import default_image_cache

log = logging.getLogger(__name__)

NAME: Final = "local"
TOKEN_FILE: Final = "local-worker.token"  # noqa: S105 - a file name


class LocalWorker:
    """The child ``bes worker`` process of ``bes serve``.

    Args:
        data_dir: The service's data directory (token file, worker cache).
        database_url: The service's database, where the worker's token is registered.
        service_url: Where the worker reaches the service.
        server_cert: The service's certificate file when it speaks HTTPS.
        extra: More ``bes worker`` options.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        database_url: str,
        service_url: str,
        server_cert: Path | None = None,
        extra: list[str],
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.database_url = database_url
        self.service_url = service_url
        self.server_cert = server_cert.resolve() if server_cert is not None else None
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Register the worker's token and start the process (once the service listens:
        its database is migrated by then)."""
        token_file = self.data_dir / TOKEN_FILE
        with Database(self.database_url) as db:
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
            # the node's image cache, shared with bes vm run: tiny is built once per machine
            "--image-cache",
            str(default_image_cache()),
            "--parent-pid",
            str(os.getpid()),
            *self._tls_options(),
            *self.extra,
        ]
        self.process = subprocess.Popen(argv)
        log.info("started the local worker (pid %d)", self.process.pid)

    def _tls_options(self) -> list[str]:
        if self.server_cert is None:
            return []
        names = server_names(self.server_cert)
        if not names:
            raise ConfigError(f"{self.server_cert} names no host; the local worker cannot check it")
        name = next((n for n in names if is_loopback(n)), names[0])
        return ["--ca-file", str(self.server_cert), "--tls-server-name", name]

    def stop(self, timeout_s: float = 40.0) -> None:
        """SIGTERM (running jobs are handed back), then SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        log.info("stopping the local worker: it hands its running jobs back first")
        started = time.monotonic()
        process.terminate()
        try:
            process.wait(timeout_s)
            log.info("the local worker stopped in %.1f s", time.monotonic() - started)
        except subprocess.TimeoutExpired:
            log.warning("the local worker did not stop in %.0f s; killing it", timeout_s)
            process.kill()
            process.wait(5.0)
