"""Real workflows against a live ``bes serve`` whose local worker runs every task in a ``tiny``
VM: Snakemake's command line as a user types it (fan-out to three files, then a rule that
combines them) and a Parsl script (ten bash_apps, then a reduce). The endpoint comes from the
user's client configuration or environment; files move through the service's file store."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bes.client import BESClient
from tests.support.server import LiveServer, live_server
from tests.support.worker import shared_image_cache

pytestmark = [pytest.mark.slow, pytest.mark.vm]

SNAKEMAKE = Path(sys.executable).parent / "snakemake"

SNAKEFILE = """\
LETTERS = ["a", "b", "c"]

rule all:
    input: "summary.txt"

rule count:
    input: "words.txt"
    output: "counts/{letter}.txt"
    log: "logs/{letter}.log"
    shell:
        '''
        n=$(grep -c {wildcards.letter} {input})
        echo "{wildcards.letter} $n" > {output}
        echo "counted {wildcards.letter} in $(uname -s)" > {log}
        '''

rule summary:
    input: expand("counts/{letter}.txt", letter=LETTERS)
    output: "summary.txt"
    shell: "cat {input} | sort > {output}"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("workflow") / "data"
    shared_image_cache(data / "worker")  # tiny is built once per machine
    options = ["--worker-option=--max-vms=2"]
    with live_server(data, local_worker=True, extra=options) as running:
        yield running


def test_snakemake_runs_each_rule_in_a_vm(server: LiveServer, tmp_path: Path) -> None:
    """``snakemake --executor bes --jobs 3`` in a folder holding only the Snakefile and its
    input; the endpoint is in the user's client configuration file."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "Snakefile").write_text(SNAKEFILE)
    (work / "words.txt").write_text("apple\nbanana\ncherry\navocado\n")
    config = tmp_path / "config"
    (config / "bes").mkdir(parents=True)
    (config / "bes" / "client.toml").write_text(f'endpoint = "{server.endpoint}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("BES_")}
    env["XDG_CONFIG_HOME"] = str(config)
    run = subprocess.run(
        [str(SNAKEMAKE), "--executor", "bes", "--jobs", "3"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (work / "summary.txt").read_text() == "a 3\nb 1\nc 2\n"
    assert (work / "counts" / "b.txt").read_text() == "b 1\n"
    assert (work / "logs" / "a.log").read_text() == "counted a in Linux\n"
    assert run.stderr.count("is BES activity") == 4  # every job ran as an activity
    with BESClient(server.endpoint) as client:
        assert len(client.files()) == 4  # words.txt (stored once) and the three counts


def test_parsl_fans_out_ten_bash_apps_then_reduces(
    server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Parsl script with the endpoint in ``BES_ENDPOINT``: ten bash_apps each square one
    line of a local file, a reduce sums their outputs into a local file and its stdout."""
    import parsl
    from parsl import File, bash_app

    from bes.workflow.parsl import BESExecutor

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BES_ENDPOINT", server.endpoint)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    Path("numbers.txt").write_text("".join(f"{n}\n" for n in range(1, 11)))

    @bash_app
    def square(line: int, inputs: object = (), outputs: object = ()) -> str:
        return f"sed -n {line}p {inputs[0]} | awk '{{ print $1 * $1 }}' > {outputs[0]}"  # type: ignore[index]

    @bash_app
    def total(inputs: object = (), outputs: object = (), stdout: object = None) -> str:
        files = " ".join(str(f) for f in inputs)  # type: ignore[attr-defined]
        return f"cat {files} | awk '{{ s += $1 }} END {{ print s }}' > {outputs[0]}; echo summed"  # type: ignore[index]

    # No parsl.log: Parsl's cleanup unregisters its file handler without closing it, and the
    # open file would surface as a ResourceWarning (an error here) long after this test.
    config = parsl.Config(
        executors=[BESExecutor(poll_s=0.5)],
        run_dir=str(tmp_path / "runinfo"),
        initialize_logging=False,
    )
    parsl.load(config)
    try:
        squares = [
            square(n, inputs=[File("numbers.txt")], outputs=[File(f"squares/{n}.txt")])
            for n in range(1, 11)
        ]
        reduced = total(
            inputs=[s.outputs[0] for s in squares],
            outputs=[File("total.txt")],
            stdout="total.out",
        )
        assert reduced.result(timeout=900) == 0
    finally:
        parsl.dfk().cleanup()
    assert Path("total.txt").read_text() == f"{sum(n * n for n in range(1, 11))}\n"  # 385
    assert [Path(f"squares/{n}.txt").read_text() for n in (1, 7, 10)] == ["1\n", "49\n", "100\n"]
    assert Path("total.out").read_text() == "summed\n"
