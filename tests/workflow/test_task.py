"""A shell command with its local files, as the JSDL both workflow engines submit: guest names,
multi-line scripts that survive a JSDL Argument, and the document the service parses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bes.client import ActivityRef, ActivityStatus, State
from bes.jsdl.parse import load_job_definition
from bes.workflow.task import VmTask, ended, guest_name, one_line, script, to_jsdl

URL = "http://127.0.0.1:8080/bes/files/sha256/" + "a" * 64


def test_guest_names_are_relative_to_the_working_directory(tmp_path: Path) -> None:
    assert guest_name("data.csv", tmp_path) == "data.csv"
    assert guest_name("parts/../parts/1.txt", tmp_path) == "parts/1.txt"
    assert guest_name(tmp_path / "out" / "x.txt", tmp_path) == "out/x.txt"
    assert guest_name("../elsewhere.txt", tmp_path) is None
    assert guest_name("/etc/passwd", tmp_path) is None
    assert guest_name(".", tmp_path) is None


SCRIPTS = [
    "echo one-line > out.txt",
    'set -eu\nfor i in 1 2 3; do\n\techo "$i"\ndone > out.txt # a comment\n'
    "echo 'it''s' >> out.txt",
    'printf "%s|" "tab\there" "back\\\\slash" "\\n" > out.txt\necho "done\\c" >> out.txt',
]


@pytest.mark.parametrize("text", SCRIPTS, ids=["plain", "loop", "escapes"])
def test_one_line_runs_the_same_as_the_script(text: str, tmp_path: Path) -> None:
    """JSDL Arguments lose line breaks and tabs (xs:normalizedString): what is sent has none,
    and a POSIX shell runs it to the same result."""
    sent = one_line(text)
    assert not any(c in sent for c in "\n\r\t")
    results = []
    for variant in (text, sent):
        workdir = tmp_path / str(len(results))
        workdir.mkdir()
        run = subprocess.run(
            ["/bin/sh", "-c", variant], cwd=workdir, capture_output=True, check=False
        )
        assert run.returncode == 0, run.stderr
        results.append((workdir / "out.txt").read_bytes())
    assert results[0] == results[1]


def test_the_jsdl_of_a_task(tmp_path: Path) -> None:
    task = VmTask(
        name="count",
        command="wc -l < data.csv > counts/n.txt\necho counted",
        inputs={"data.csv": tmp_path / "data.csv"},
        sources={"extra.txt": "https://data.example.org/extra.txt"},
        outputs={"counts/n.txt": tmp_path / "counts" / "n.txt"},
        memory_mib=256,
        wall_time_s=600,
    )
    job = load_job_definition(to_jsdl(task, {"data.csv": URL}))  # the service's own parser
    posix = job.job_description.application.posix
    assert posix.executable.path == "/bin/sh"
    [flag, text] = [a.value for a in posix.argument]
    assert flag == "-c" and text == script(task)
    guest = tmp_path / "guest"  # the job's directory, as the guest's shell sees it
    guest.mkdir()
    (guest / "data.csv").write_text("a\nb\n")
    run = subprocess.run(
        ["/bin/sh", "-c", text], cwd=guest, capture_output=True, text=True, check=False
    )
    assert (run.returncode, run.stdout) == (0, "counted\n")
    assert (guest / "counts" / "n.txt").read_text().strip() == "2"  # its folder was made
    staging = {s.file_name: s for s in job.job_description.data_staging}
    assert staging["data.csv"].source == URL
    assert staging["extra.txt"].source == "https://data.example.org/extra.txt"
    kept = staging["counts/n.txt"]
    assert kept.source is None and kept.target is None and kept.delete_on_termination is False
    vm = job.job_description.virtual_machine
    assert (vm.image.template, vm.memory_mib, vm.wall_time_s) == ("tiny", 256, 600)
    assert job.job_name == "count"


def test_a_task_without_template_is_plain_jsdl() -> None:
    document = to_jsdl(VmTask(name="x", command="true", template=None), {})
    assert b"urn:bes-grid:vm" not in document
    assert load_job_definition(document).job_description.virtual_machine is None


def test_how_an_activity_ended_reads_for_people() -> None:
    ref = ActivityRef(address="http://h/bes/activities/A", epr=b"<x/>")
    failed = ActivityStatus(ref=ref, state=State.FAILED, exit_code=2, message="it broke")
    assert ended(failed) == "Failed (exit code 2): it broke"
    assert ended(ActivityStatus(ref=ref, state=State.FINISHED)) == "Finished"
