"""The README's first-job example works, as written, against a real server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.server import LiveServer

README = Path(__file__).parents[2] / "README.md"


def test_readme_python_example_runs(server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (example,) = [b for b in blocks if "CreateActivity" in b]
    code = example.replace("http://127.0.0.1:8080", server.url)
    exec(compile(code, "README.md", "exec"), {})  # our own documentation, run as a user would
    assert capsys.readouterr().out.strip() == "Pending"


def test_readme_commands_name_real_things() -> None:
    text = README.read_text()
    assert "scripts/test" in text and (README.parent / "scripts" / "test").is_file()
    assert ".venv/bin/bes serve" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "\nscripts/test\n" in ci
