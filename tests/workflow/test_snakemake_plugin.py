"""The Snakemake plugin's pure parts: a job becomes a VM task (its shell command, files and
resources), and rules that are not shell commands are refused with a reason, by the real
``snakemake`` command before anything is submitted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bes.workflow.snakemake import STRICT, ExecutorSettings, shell_command, vm_task
from bes.workflow.task import TaskError
from tests.support.server import free_port

SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def job(**overrides: object) -> SimpleNamespace:
    """What the plugin reads of a Snakemake job (the interface's attributes)."""
    values: dict[str, object] = {
        "name": "part",
        "jobid": 7,
        "rule": SimpleNamespace(name="part"),
        "is_group": lambda: False,
        "is_shell": True,
        "shellcmd": "grep -c a words.txt > parts/a.txt",
        "input": ["words.txt"],
        "output": ["parts/a.txt"],
        "log": ["logs/a.log"],
        "resources": {"_cores": 1, "tmpdir": "/tmp"},
        "threads": 1,
    }
    values.update(overrides)
    return SimpleNamespace(**values)


def test_a_shell_job_becomes_a_vm_task(tmp_path: Path) -> None:
    task = vm_task(job(), tmp_path, ExecutorSettings())  # type: ignore[arg-type]
    assert task.command == STRICT + "grep -c a words.txt > parts/a.txt"
    assert task.inputs == {"words.txt": tmp_path / "words.txt"}
    assert task.outputs == {
        "parts/a.txt": tmp_path / "parts" / "a.txt",
        "logs/a.log": tmp_path / "logs" / "a.log",
    }
    assert (task.template, task.memory_mib, task.vcpus) == ("tiny", None, None)
    assert task.name == "snakemake-part-7"


def test_settings_and_rule_resources_size_the_vm(tmp_path: Path) -> None:
    settings = ExecutorSettings(template="debian-12", memory_mib=512, wall_time_s=900)
    task = vm_task(job(threads=2), tmp_path, settings)  # type: ignore[arg-type]
    assert (task.template, task.memory_mib, task.vcpus, task.wall_time_s) == (
        "debian-12",
        512,
        2,
        900,
    )
    resources = {"bes_template": "tiny", "bes_memory_mib": 256, "bes_wall_time_s": 60}
    task = vm_task(job(resources=resources), tmp_path, settings)  # type: ignore[arg-type]
    assert (task.template, task.memory_mib, task.wall_time_s) == ("tiny", 256, 60)


@pytest.mark.parametrize(
    ("overrides", "directive"),
    [
        ({"is_shell": False, "shellcmd": None}, "run:"),
        ({"is_shell": False, "shellcmd": None, "is_script": True}, "script:"),
        ({"is_shell": False, "shellcmd": None, "is_wrapper": True}, "wrapper:"),
    ],
)
def test_rules_that_are_not_shell_commands_are_refused(
    overrides: dict[str, object], directive: str
) -> None:
    with pytest.raises(
        TaskError, match=f"rule part uses `{directive}`, but the bes executor runs only `shell:`"
    ):
        shell_command(job(**overrides))  # type: ignore[arg-type]


def test_files_outside_the_working_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"input /data/words\.txt is outside the working directory"):
        vm_task(job(input=["/data/words.txt"]), tmp_path, ExecutorSettings())  # type: ignore[arg-type]


def test_snakemake_reports_run_and_script_rules_before_submitting(tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: "a.txt", "b.txt"\n\n'
        'rule a:\n    output: "a.txt"\n    run:\n        open(output[0], "w").write("a")\n\n'
        'rule b:\n    output: "b.txt"\n    script: "make_b.py"\n'
    )
    (tmp_path / "make_b.py").write_text("open(snakemake.output[0], 'w').write('b')\n")
    nobody = f"http://127.0.0.1:{free_port()}/bes"  # nothing listens: nothing may be sent
    env = {**os.environ, "BES_ENDPOINT": nobody, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    run = subprocess.run(
        [str(SNAKEMAKE), "--executor", "bes", "--jobs", "2", "--keep-going"],
        cwd=tmp_path,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "rule a uses `run:`, but the bes executor runs only `shell:` rules" in output
    assert "rule b uses `script:`, but the bes executor runs only `shell:` rules" in output
    assert "is BES activity" not in output
    assert not (tmp_path / "a.txt").exists() and not (tmp_path / "b.txt").exists()
