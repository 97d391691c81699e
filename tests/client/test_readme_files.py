"""A user follows the README's "Files" section as written: a job reads a local file through
the file store, in a real VM, and a second submission sends nothing; the curl line uploads."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.client.test_cli import Shell
from tests.support.server import live_server
from tests.support.vm import qemu_processes
from tests.support.worker import shared_image_cache

pytestmark = [pytest.mark.slow, pytest.mark.vm]

README = Path(__file__).parents[2] / "README.md"


def files_section() -> str:
    text = README.read_text()
    return text[text.index("## Files: local inputs") : text.index("## Running the service")]


def test_the_files_section_runs_as_written(tmp_path: Path) -> None:
    blocks = re.findall(r"```sh\n(.*?)```", files_section(), re.S)
    commands, upload = blocks[0].strip().splitlines(), blocks[1].strip()
    shared_image_cache(tmp_path / "data" / "worker")
    home = tmp_path / "home"
    home.mkdir()
    with live_server(tmp_path / "data", local_worker=True) as server:
        shell = Shell(home, server.endpoint)
        said: list[str] = []
        outputs: list[str] = []
        for line in commands:
            command = line.split("#", 1)[0].strip()
            if not command.startswith(".venv/bin/bes"):
                subprocess.run(command, shell=True, cwd=home, check=True, timeout=10)
                continue
            result = shell(*shlex.split(command)[1:])
            assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            said.append(result.stdout + result.stderr)
            outputs.append(result.stdout)
        wait, again = said[1], said[2]
        assert "data.csv: uploaded 12 B" in wait and "Finished" in wait, wait
        assert "data.csv: already stored (0 bytes sent)" in again, again
        first, second = outputs[1].split()[0], outputs[2].split()[0]  # ids come first
        assert shell("wait", second).returncode == 0
        got = shell("get", first)
        assert got.returncode == 0, got.stderr
        assert (home / first / "outputs" / "counted.txt").read_text().strip() == "3"

        curl = upload.replace("http://127.0.0.1:8080", server.url)
        sent = subprocess.run(
            curl + " -s -o /dev/null -w '%{http_code}'",
            shell=True,  # our own documentation, run as written
            cwd=home,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert sent.stdout == "200", sent  # the store already held it (the submit uploaded it)
    assert qemu_processes(str(tmp_path)) == []
