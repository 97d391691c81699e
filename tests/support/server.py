"""A real ``bes serve`` process on loopback, as a user would start it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.soap import ACTIONS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """``python -m bes serve`` in a subprocess; :meth:`start` waits until it answers."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        extra: list[str] | None = None,
        local_worker: bool = False,
        verbose: int = 0,
        ca_file: Path | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ):
        self.data_dir = data_dir
        self.host = host
        """Where it listens (another address than loopback needs TLS, or --insecure)."""
        # With a CA file the server speaks HTTPS (give it --tls-cert and --tls-key in extra).
        self.tls = ssl.create_default_context(cafile=ca_file) if ca_file is not None else None
        self.verbose = verbose
        """``bes -v`` (INFO, the default) or ``-vv`` (DEBUG) into the log."""
        self.port = port or free_port()
        # Tests of the SOAP edge run no VMs: no local worker unless a test asks for one.
        self.extra = (extra or []) + ([] if local_worker else ["--no-local-worker"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"serve-{self.port}.log"
        self.env = env or {}
        """More environment variables for ``bes serve``."""

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return self.url + "/bes"

    def post(self, envelope: bytes, operation: str, *, timeout_s: float = 30.0) -> httpx.Response:
        """POST a SOAP envelope of a BES-Factory ``operation`` (its SOAPAction) to the
        endpoint; the answer, whatever its status."""
        return httpx.post(
            self.endpoint,
            content=envelope,
            headers={"SOAPAction": ACTIONS + operation, "Content-Type": "text/xml"},
            timeout=timeout_s,
        )

    def start(self, timeout_s: float = 30.0) -> LiveServer:
        argv = [
            sys.executable,
            "-m",
            "bes",
            *(["-" + "v" * self.verbose] if self.verbose else []),
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.extra,
        ]
        with self.log.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"bes serve exited with {self.proc.returncode}:\n{self.log.read_text()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                health = httpx.get(self.url + "/healthz", timeout=1.0, verify=self.tls or True)
                if health.status_code == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"bes serve did not start in {timeout_s}s:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or power cut of the process."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


@contextlib.contextmanager
def live_server(data_dir: Path, **kwargs: object) -> Iterator[LiveServer]:
    server = LiveServer(data_dir, **kwargs).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
