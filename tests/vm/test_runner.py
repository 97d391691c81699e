"""The command runner: timeouts, transient retries, trace and replay files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bes.errors import HypervisorError
from bes.vm.runner import CommandResult, CommandRunner


def test_a_command_runs_and_is_traced(tmp_path: Path) -> None:
    runner = CommandRunner(
        trace_path=tmp_path / "trace.txt",
        replay_path=tmp_path / "replay.txt",
        env={"BES_TEST_VALUE": "from the runner"},
    )
    result = runner.run(
        [sys.executable, "-c", "import os; print(os.environ['BES_TEST_VALUE'])"], timeout_s=30
    )
    assert result.exit_code == 0
    assert result.stdout == "from the runner\n"
    assert (tmp_path / "replay.txt").read_text().count("import os") == 1
    trace = (tmp_path / "trace.txt").read_text()
    assert "exit 0 in" in trace
    assert "from the runner" in trace


def test_a_failure_raises_with_exit_code_and_output(tmp_path: Path) -> None:
    runner = CommandRunner()
    with pytest.raises(HypervisorError) as caught:
        runner.run(
            [sys.executable, "-c", "import sys; sys.stderr.write('it broke'); sys.exit(3)"],
            timeout_s=30,
        )
    assert caught.value.exit_code == 3
    assert caught.value.stderr_tail == "it broke"
    assert caught.value.argv[0] == sys.executable


def test_a_hanging_command_is_killed_at_its_timeout() -> None:
    result = CommandRunner().run(
        [sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=0.5, check=False
    )
    assert result.exit_code == 124
    assert "timed out after 0.5 s" in result.stderr


def test_a_missing_program_is_exit_127() -> None:
    result = CommandRunner().run(["/no/such/program"], timeout_s=5, check=False)
    assert result.exit_code == 127


def test_only_transient_failures_are_retried(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    script = (
        "import pathlib, sys; p = pathlib.Path(sys.argv[1]); "
        "n = int(p.read_text()) if p.exists() else 0; p.write_text(str(n + 1)); "
        "print('BUSY' if n < 2 else 'done'); sys.exit(1 if n < 2 else 0)"
    )
    sleeps: list[float] = []

    def busy(result: CommandResult) -> bool:
        return "BUSY" in result.stdout

    runner = CommandRunner(transient=busy, sleep=sleeps.append, backoff_s=0.5)
    result = runner.run([sys.executable, "-c", script, str(counter)], timeout_s=30)
    assert result.stdout == "done\n"
    assert sleeps == [0.5, 1.0]

    counter.unlink()
    never = CommandRunner(sleep=sleeps.append)
    with pytest.raises(HypervisorError):
        never.run([sys.executable, "-c", script, str(counter)], timeout_s=30)
    assert counter.read_text() == "1"
