"""The Parsl executor's submit side: a bash_app's command composed here with its files renamed
for the guest, and a python_app packed for the guest's Python, run here by the same runner the
guest runs, and its result read back with nothing but standard types."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from parsl import File, bash_app, python_app
from parsl.app.errors import AppBadFormatting

from bes.client import BESClient
from bes.jsdl.parse import load_job_definition
from bes.workflow import _pycall
from bes.workflow.parsl import BESExecutor, _App, _Call
from bes.workflow.task import TaskError, to_jsdl

UNREACHABLE = "http://127.0.0.1:9/bes"


def square(i: int, inputs: Any = (), outputs: Any = (), stdout: Any = None) -> str:
    return f"awk 'NR == {i + 1} {{ print $1 * $1 }}' {inputs[0]} > {outputs[0]}"


def add(a: int, b: int, *, scale: float = 1.0) -> dict[str, Any]:
    import math  # apps import inside: the guest gets only this source

    return {"sum": (a + b) * scale, "sqrt": math.sqrt(a + b), "pair": (a, b)}


def reads(inputs: Any = ()) -> str:
    with open(inputs[0]) as handle:
        return handle.read().strip() + f" from {inputs[0].filepath}"


def fails() -> None:
    raise ValueError("no good")


def uses_a_global() -> str:
    return str(Path("x"))


def prepared(executor: BESExecutor, app: Any, *args: Any, **kwargs: Any) -> _App:
    """What the executor makes of an app call, as the DataFlowKernel would submit it."""
    func = app.wrapped_remote_function if hasattr(app, "wrapped_remote_function") else app.func
    call = _Call(tid=1, future=Future(), func=func, spec={}, args=args, kwargs=kwargs)
    return executor._prepare(call)


@pytest.fixture
def executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BESExecutor:
    monkeypatch.chdir(tmp_path)
    found = BESExecutor(client=BESClient(UNREACHABLE))
    found.run_dir = str(tmp_path / "runinfo")
    found._templates = frozenset()  # no catalog asked: this service is unreachable
    return found


def test_a_bash_app_becomes_a_shell_command_with_its_files(
    executor: BESExecutor, tmp_path: Path
) -> None:
    elsewhere = tmp_path.parent / "numbers.txt"
    app = prepared(
        executor,
        bash_app(square),
        2,
        inputs=[File(str(elsewhere))],
        outputs=[File("parts/2.txt")],
        stdout=("square.out", "w"),
    )
    assert app.command == "awk 'NR == 3 { print $1 * $1 }' _files/0/numbers.txt > parts/2.txt"
    assert app.task.inputs == {"_files/0/numbers.txt": elsewhere}
    assert app.task.outputs == {"parts/2.txt": tmp_path / "parts" / "2.txt"}
    assert app.stdout == ("square.out", "w")
    assert (app.task.template, app.task.shell, app.python) == ("tiny", "/bin/sh", False)
    job = load_job_definition(to_jsdl(app.task, {"_files/0/numbers.txt": "http://h/f"}))
    staging = {s.file_name: s.source for s in job.job_description.data_staging}
    assert staging == {"_files/0/numbers.txt": "http://h/f", "parts/2.txt": None}


def test_remote_inputs_are_fetched_by_the_service(executor: BESExecutor) -> None:
    app = prepared(
        executor,
        bash_app(square),
        0,
        inputs=[File("https://data.example.org/n.txt")],
        outputs=[File("out.txt")],
    )
    assert app.task.sources == {"_files/0/n.txt": "https://data.example.org/n.txt"}
    assert not app.task.inputs


def test_a_bash_app_that_cannot_format_fails_at_submission(executor: BESExecutor) -> None:
    with pytest.raises(AppBadFormatting):
        prepared(executor, bash_app(square), 0, inputs=[], outputs=[File("o")])


def test_resource_specification_sizes_the_vm(executor: BESExecutor) -> None:
    func = bash_app(square).wrapped_remote_function
    spec = {"cores": 2, "memory": 300, "running_time_min": 5}
    kwargs = {"inputs": [File("n.txt")], "outputs": [File("o.txt")]}
    call = _Call(tid=3, future=Future(), func=func, spec=spec, args=(0,), kwargs=kwargs)
    task = executor._prepare(call).task
    assert (task.vcpus, task.memory_mib, task.wall_time_s) == (2, 300, 5 * 60 + 120)
    with pytest.raises(TaskError, match="gpus are not known"):
        executor._prepare(
            _Call(tid=4, future=Future(), func=func, spec={"gpus": 1}, args=(0,), kwargs=kwargs)
        )


def guest_run(app: _App, workdir: Path) -> bytes:
    """Run the app's command as the guest would (a POSIX shell, ``python3`` on the PATH) in
    ``workdir``; the result file it leaves."""
    bindir = workdir.parent / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "python3").symlink_to(sys.executable)
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    run = subprocess.run(
        ["/bin/sh", "-c", app.command or app.task.command],
        cwd=workdir,
        env=env,
        capture_output=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return (workdir / _pycall.RESULT).read_bytes()


def test_a_python_app_runs_from_its_source(executor: BESExecutor, tmp_path: Path) -> None:
    app = prepared(executor, python_app(add), 2, 7, scale=0.5)
    assert (app.task.template, app.python) == ("debian-12", True)
    assert _pycall.RESULT in app.task.outputs
    guest = tmp_path / "guest"
    guest.mkdir()
    ok, value, _ = _pycall.unpack(guest_run(app, guest), name="add", file_of=app.files.file_of)
    assert ok, value
    assert value == {"sum": 4.5, "sqrt": 3.0, "pair": (2, 7)}


def test_a_python_app_reads_its_input_files(executor: BESExecutor, tmp_path: Path) -> None:
    app = prepared(executor, python_app(reads), inputs=[File("data/in.txt")])
    assert app.task.inputs == {"data/in.txt": tmp_path / "data" / "in.txt"}
    guest = tmp_path / "guest"
    (guest / "data").mkdir(parents=True)
    (guest / "data" / "in.txt").write_text("hello\n")
    ok, value, _ = _pycall.unpack(guest_run(app, guest), name="reads", file_of=app.files.file_of)
    assert ok and value == "hello from data/in.txt"


def test_a_python_apps_exception_comes_back(executor: BESExecutor, tmp_path: Path) -> None:
    app = prepared(executor, python_app(fails))
    guest = tmp_path / "guest"
    guest.mkdir()
    ok, error, trace = _pycall.unpack(
        guest_run(app, guest), name="fails", file_of=app.files.file_of
    )
    assert not ok and isinstance(error, ValueError) and str(error) == "no good"
    assert "in fails" in trace and "raise ValueError(" in trace  # the guest's traceback


def test_what_the_guest_could_not_load_is_refused_at_submission(executor: BESExecutor) -> None:
    scale = 2

    def closure() -> int:
        return scale

    class Point:
        pass

    with pytest.raises(TaskError, match="uses scale of the function it is defined in"):
        prepared(executor, python_app(closure))
    with pytest.raises(TaskError, match="uses Path from its module"):
        prepared(executor, python_app(uses_a_global))
    with pytest.raises(TaskError, match="only functions defined with def"):
        prepared(executor, python_app(lambda: 1))
    with pytest.raises(
        TaskError, match=r"an argument is a .*Point from tests\.workflow\.test_parsl_executor"
    ):
        prepared(executor, python_app(add), Point(), 1)


def test_a_python_app_needs_a_template_the_service_has(executor: BESExecutor) -> None:
    executor._templates = frozenset({"tiny"})
    with pytest.raises(TaskError, match=r"needs the template 'debian-12' .* \(it has: tiny\)"):
        prepared(executor, python_app(add), 1, 2)


def test_a_result_cannot_run_code_here() -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("echo pwned",))

    data = io.BytesIO()
    pickle.Pickler(data, 4).dump(("ok", Evil(), ""))
    with pytest.raises(TaskError, match=r"holds (posix|os)\.system, which is not among"):
        _pycall.unpack(data.getvalue(), name="x", file_of=lambda n, u: n)
