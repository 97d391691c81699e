"""Real ``bes worker`` processes for end-to-end tests, with tokens from the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.vm import cache_dir_for_tests


def bes_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bes ARGS`` as an administrator would run it."""
    return subprocess.run(
        [sys.executable, "-m", "bes", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def issue_token(data_dir: Path, name: str) -> Path:
    """``bes worker-token create NAME``; the token goes into a file, as the README says."""
    created = bes_cli("worker-token", "create", name, "--data-dir", str(data_dir))
    assert created.returncode == 0, created.stderr
    token_file = data_dir.parent / f"{name}.token"
    token_file.write_text(created.stdout)
    token_file.chmod(0o600)
    return token_file


def shared_image_cache(cache_dir: Path) -> None:
    """Let a worker's cache use the tests' image cache (content-addressed, so sharing is safe):
    the tiny template is built once per machine, not once per worker."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    images = cache_dir_for_tests() / "images"
    images.mkdir(parents=True, exist_ok=True)
    link = cache_dir / "images"
    if not link.exists():
        link.symlink_to(images, target_is_directory=True)


class WorkerProcess:
    """``python -m bes worker`` in a subprocess, logging to a file."""

    def __init__(self, service: str, token_file: Path, cache_dir: Path, *extra: str) -> None:
        self.service = service
        self.token_file = token_file
        self.cache_dir = cache_dir
        self.extra = list(extra)
        self.log = cache_dir.parent / f"{cache_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self) -> WorkerProcess:
        shared_image_cache(self.cache_dir)
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        argv = [
            sys.executable,
            "-m",
            "bes",
            "-v",
            "worker",
            "--service",
            self.service,
            "--token-file",
            str(self.token_file),
            "--cache-dir",
            str(self.cache_dir),
            "--hypervisor",
            "qemu",
            "--accel",
            os.environ.get("BES_TEST_ACCEL", "auto"),
            *self.extra,
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        return self

    def text(self) -> str:
        """What this run of the worker logged (not earlier runs')."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as log:
            log.seek(self._offset)
            return log.read().decode(errors="replace")

    def wait_for_log(self, needle: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"worker log never said {needle!r}:\n{self.text()[-3000:]}")

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout_s)
        self.proc = None
        return code

    def terminate(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL: the worker dies as in a power cut (its VM may outlive it)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
        self.proc = None
