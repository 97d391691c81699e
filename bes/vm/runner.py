"""The one way this package runs external commands (VBoxManage, qemu-img, apt-get, QEMU).

Argv lists only, never a shell; a timeout on every call; every call recorded in a trace log
(argv, exit code, duration, output tail) and its argv appended to a replay file, as BOINC's
vboxwrapper keeps vbox_trace.txt and vbox_replay.txt. Retries happen only for results the
caller classifies as transient. Tests replace ``_execute`` to replay captured output.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bes.errors import HypervisorError

log = logging.getLogger(__name__)

_TAIL_CHARS = 2000
_ROTATE_BYTES = 10 * 1024 * 1024  # a long-lived node keeps one previous file of each


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def output(self) -> str:
        """stdout and stderr together, as VBoxManage users read them."""
        return self.stdout + self.stderr


def never_transient(result: CommandResult) -> bool:
    return False


class CommandRunner:
    """Runs commands with timeouts, retries of transient failures, and a trace."""

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        trace_path: Path | None = None,
        replay_path: Path | None = None,
        transient: Callable[[CommandResult], bool] = never_transient,
        error_code: Callable[[CommandResult], str | None] = lambda result: None,
        retries: int = 5,
        backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._env = dict(env or {})
        self._trace_path = trace_path
        self._replay_path = replay_path
        self._transient = transient
        self._error_code = error_code
        self._retries = retries
        self._backoff_s = backoff_s
        self._sleep = sleep
        self._lock = threading.Lock()

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        check: bool = True,
        cwd: Path | None = None,
        input_text: str | None = None,
    ) -> CommandResult:
        """Run argv to completion; raise HypervisorError on failure if check is set."""
        attempt = 0
        while True:
            result = self._execute(tuple(argv), timeout_s, cwd, input_text)
            self._record(result)
            if result.exit_code == 0 or not self._transient(result) or attempt >= self._retries:
                break
            delay = self._backoff_s * (2**attempt)
            log.info("transient failure of %s; retry in %.1f s", argv[0], delay)
            self._sleep(delay)
            attempt += 1
        if check and result.exit_code != 0:
            log.warning(
                "command failed (exit %s): %s\n%s",
                result.exit_code,
                shlex.join(result.argv),
                result.output[-_TAIL_CHARS:],
            )
            raise HypervisorError(
                f"{Path(result.argv[0]).name} failed with exit status {result.exit_code}",
                argv=result.argv,
                exit_code=result.exit_code,
                code=self._error_code(result),
                stderr_tail=result.output[-_TAIL_CHARS:],
            )
        return result

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdout: Path,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process (a VM) in its own session, output to a file."""
        self._record_line(f"spawn {shlex.join(argv)}")
        self._replay(argv)
        with stdout.open("wb") as out:
            try:
                return subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=self._full_env(),
                    start_new_session=True,
                )
            except OSError as exc:
                raise HypervisorError(
                    f"cannot start {argv[0]}: {exc}", argv=argv, stderr_tail=str(exc)
                ) from exc

    def _execute(
        self,
        argv: tuple[str, ...],
        timeout_s: float,
        cwd: Path | None,
        input_text: str | None,
    ) -> CommandResult:
        started = time.monotonic()
        try:
            completed = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout_s,
                cwd=cwd,
                env=self._full_env(),
                input=input_text,
                stdin=None if input_text is not None else subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            tail = _text(exc.stdout) + _text(exc.stderr)
            return CommandResult(argv, 124, "", f"{tail}\ntimed out after {timeout_s} s", timeout_s)
        except OSError as exc:
            return CommandResult(argv, 127, "", str(exc), time.monotonic() - started)
        return CommandResult(
            argv,
            completed.returncode,
            completed.stdout,
            completed.stderr,
            time.monotonic() - started,
        )

    def _full_env(self) -> dict[str, str] | None:
        if not self._env:
            return None
        return {**os.environ, **self._env}

    def _record(self, result: CommandResult) -> None:
        tail = result.output[-_TAIL_CHARS:].rstrip()
        self._record_line(
            f"{shlex.join(result.argv)}\n  exit {result.exit_code} in {result.duration_s:.3f} s"
            + (f"\n  {tail}" if tail else "")
        )
        self._replay(result.argv)

    def _record_line(self, text: str) -> None:
        if self._trace_path is None:
            return
        with self._lock:
            _rotate(self._trace_path)
            with self._trace_path.open("a", encoding="utf-8") as trace:
                trace.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")

    def _replay(self, argv: Sequence[str]) -> None:
        if self._replay_path is None:
            return
        with self._lock:
            _rotate(self._replay_path)
            with self._replay_path.open("a", encoding="utf-8") as replay:
                replay.write(shlex.join(argv) + "\n")


def _rotate(path: Path) -> None:
    try:
        if path.stat().st_size > _ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    except OSError:
        pass


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data
