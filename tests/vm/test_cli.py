"""``bes vm run``: the first thing a user tries, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.vm import cache_dir_for_tests, tiny_repository

pytestmark = [pytest.mark.vm, pytest.mark.slow]

ROOT = Path(__file__).parents[2]


def bes(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bes", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_hello_vm_on_a_fresh_machine(tmp_path: Path) -> None:
    """The README's example, with an empty cache: tiny is built from Debian packages first."""
    tiny_repository()  # skips (or fails in CI) when QEMU is missing
    result = bes(
        "vm",
        "run",
        str(ROOT / "examples" / "hello-vm.jsdl"),
        cwd=tmp_path,
        # a fresh machine: no node image cache either (the tests' one is named otherwise)
        env={"XDG_CACHE_HOME": str(tmp_path / "cache"), "BES_IMAGE_CACHE": ""},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from a VM\n"
    assert "results in" in result.stderr
    assert "building the template tiny" in result.stderr
    assert (tmp_path / "cache" / "bes" / "images").is_dir()  # the node's one image cache
    [results] = [p for p in tmp_path.iterdir() if p.name.startswith("hello-vm-")]
    assert (results / "stdout").read_text() == "hello from a VM\n"
    assert not list((tmp_path / "cache" / "bes" / "vms" / "qemu").glob("bes-*"))


def test_exit_status_outputs_and_failures(tmp_path: Path) -> None:
    tiny_repository()
    (tmp_path / "in.txt").write_text("4 5 6\n")
    document = tmp_path / "job.jsdl"
    document.write_text(
        """<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
            xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
            xmlns:vm="urn:bes-grid:vm:1.0">
          <jsdl:JobDescription>
            <jsdl:JobIdentification><jsdl:JobName>sum</jsdl:JobName></jsdl:JobIdentification>
            <jsdl:Application>
              <posix:POSIXApplication>
                <posix:Executable>/bin/sh</posix:Executable>
                <posix:Argument>-c</posix:Argument>
                <posix:Argument>tr ' ' '+' &lt; in.txt | bc &gt; sum.txt; exit 3</posix:Argument>
              </posix:POSIXApplication>
              <vm:VirtualMachine><vm:Image><vm:Template>tiny</vm:Template></vm:Image>
              </vm:VirtualMachine>
            </jsdl:Application>
            <jsdl:DataStaging><jsdl:FileName>in.txt</jsdl:FileName>
              <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
              <jsdl:Source><jsdl:URI>in.txt</jsdl:URI></jsdl:Source></jsdl:DataStaging>
            <jsdl:DataStaging><jsdl:FileName>sum.txt</jsdl:FileName>
              <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
              <jsdl:Target><jsdl:URI>out/sum.txt</jsdl:URI></jsdl:Target></jsdl:DataStaging>
          </jsdl:JobDescription>
        </jsdl:JobDefinition>"""
    )
    cache = str(cache_dir_for_tests())
    result = bes("vm", "run", "--cache-dir", cache, str(document), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert (tmp_path / "out" / "sum.txt").read_text() == "15\n"
    assert "exit status 3" in result.stderr

    hang = (
        document.read_text()
        .replace("exit 3", "sleep 100")
        .replace("</vm:Image>", "</vm:Image><vm:WallTimeLimit>5</vm:WallTimeLimit>")
    )
    document.write_text(hang)
    result = bes("vm", "run", "--cache-dir", cache, str(document), cwd=tmp_path)
    assert result.returncode == 125
    assert "wall-time limit of 5 s exceeded" in result.stderr


def test_a_bad_document_is_a_clear_error(tmp_path: Path) -> None:
    document = tmp_path / "bad.jsdl"
    document.write_text(
        "<jsdl:JobDefinition xmlns:jsdl='http://schemas.ggf.org/jsdl/2005/11/jsdl'>"
    )
    result = bes("vm", "run", str(document), cwd=tmp_path)
    assert result.returncode == 1
    assert "not well-formed XML" in result.stderr
    assert "Traceback" not in result.stderr
