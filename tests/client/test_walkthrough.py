"""A newcomer follows the README: ``bes serve``, then the commands of "Your first job" exactly
as written, then the same from Python; the outputs come back from real VMs and the status page
shows the activities."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import httpx
import pytest

from tests.client.test_cli import Shell
from tests.support.server import live_server
from tests.support.vm import qemu_processes
from tests.support.worker import shared_image_cache

pytestmark = [pytest.mark.slow, pytest.mark.vm]

README = Path(__file__).parents[2] / "README.md"


def first_job_section() -> str:
    text = README.read_text()
    return text[text.index("## Your first job") : text.index("### With any SOAP client")]


def test_a_newcomer_follows_the_readme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    section = first_job_section()
    [commands] = re.findall(r"```sh\n(.*?)```", section, re.S)
    [python] = re.findall(r"```python\n(.*?)```", section, re.S)
    shared_image_cache(tmp_path / "data" / "worker")
    home = tmp_path / "home"
    home.mkdir()
    with live_server(tmp_path / "data", local_worker=True) as server:
        shell = Shell(home, server.endpoint)
        submitted: list[str] = []
        for line in commands.strip().splitlines():
            argv = shlex.split(line)
            assert argv[0] == ".venv/bin/bes", line
            argv = [submitted[-1] if word == "ID" else word for word in argv[1:]]
            result = shell(*argv)
            assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            if argv[0] == "submit":
                submitted.append(result.stdout.split()[0])
                assert "Finished" in result.stdout, result.stdout
        [activity] = submitted
        results = home / activity
        assert (results / "outputs" / "greeting.txt").read_text() == "hello from a VM\n"
        assert (results / "stdout").read_text().startswith("Linux ")
        assert (results / "stderr").exists()

        monkeypatch.chdir(home)
        code = python.replace("http://127.0.0.1:8080", server.url)
        exec(compile(code, "README.md", "exec"), {})  # our own documentation, run as written
        assert capsys.readouterr().out.strip() == "Finished"
        assert (home / "py-hello" / "stdout").read_text() == "hello from Python\n"

        page = httpx.get(f"{server.url}/bes/status", timeout=10).text
        assert activity in page and "hello" in page and "py-hello" in page
        assert page.count("Finished") >= 2
    assert qemu_processes(str(tmp_path)) == []
