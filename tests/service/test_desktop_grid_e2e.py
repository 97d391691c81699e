"""The desktop grid end to end: ``bes serve`` and ``bes worker`` as separate processes on
loopback, a zeep client built from the official WSDL, and real VMs (the tiny template).

What a user checks: the job runs to Finished through its sub-states with its input staged from
a web server, its stdout and output file come back; a failing job keeps its exit code; a
terminated job ends Cancelled with its VM gone; a worker killed mid-job is replaced and the
job has exactly one result; workers survive a service that is down, stop when their token is
revoked, and hand work back on SIGTERM.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree

from bes.db.engine import default_url
from bes.db.store import Database
from bes.db.tables import grid_job
from tests.service.test_zeep_client import Recorder, official_clients
from tests.support.files import FileServer, file_server
from tests.support.server import LiveServer, free_port, live_server
from tests.support.vm import qemu_processes, tiny_repository
from tests.support.worker import WorkerProcess, bes_cli, issue_token

pytestmark = [pytest.mark.slow, pytest.mark.vm]

POSIX = "http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
VM = "urn:bes-grid:vm:1.0"
BESA = "urn:bes-grid:activity:1.0"
GRID_OPTIONS = [
    "--backend-option=lease_s=5",
    "--backend-option=heartbeat_s=1",
    "--backend-option=claim_wait_s=2",
]


def vm_job(
    name: str, script: str, *, stagings: list[dict[str, Any]] | None = None, wall_s: int = 120
) -> dict[str, Any]:
    """A JSDL job for zeep: /bin/sh -c SCRIPT in the tiny template."""
    application = etree.Element(f"{{{POSIX}}}POSIXApplication", nsmap={"posix": POSIX})
    etree.SubElement(application, f"{{{POSIX}}}Executable").text = "/bin/sh"
    etree.SubElement(application, f"{{{POSIX}}}Argument").text = "-c"
    etree.SubElement(application, f"{{{POSIX}}}Argument").text = script
    env = etree.SubElement(application, f"{{{POSIX}}}Environment", name="GREETING")
    env.text = "hello"
    machine = etree.Element(f"{{{VM}}}VirtualMachine", nsmap={"vm": VM})
    image = etree.SubElement(machine, f"{{{VM}}}Image")
    etree.SubElement(image, f"{{{VM}}}Template").text = "tiny"
    etree.SubElement(machine, f"{{{VM}}}MemoryMiB").text = "256"
    etree.SubElement(machine, f"{{{VM}}}WallTimeLimit").text = str(wall_s)
    return {
        "JobDefinition": {
            "JobDescription": {
                "JobIdentification": {"JobName": name},
                "Application": {"_value_1": [application, machine]},
                "DataStaging": stagings or [],
            }
        }
    }


class Bes:
    """A zeep BES client from the official WSDL, with what a user's script does."""

    def __init__(self, server: LiveServer, recorder: Recorder) -> None:
        self.factory, _, _ = official_clients(server, recorder, addressing=False)

    def submit(self, job: dict[str, Any]) -> Any:
        return self.factory.CreateActivity(ActivityDocument=job).ActivityIdentifier

    def status(self, epr: Any) -> Any:
        return self.factory.GetActivityStatuses(ActivityIdentifier=[epr]).Response[0].ActivityStatus

    def terminate(self, epr: Any) -> Any:
        return self.factory.TerminateActivities(ActivityIdentifier=[epr]).Response[0]

    def wait(
        self, epr: Any, states: tuple[str, ...], *, timeout_s: float = 120.0, substate: str = ""
    ) -> tuple[Any, list[tuple[str, str]]]:
        """Poll until the state is one of ``states`` (and the sub-state, if given); return the
        last status and every (state, sub-state) seen on the way."""
        seen: list[tuple[str, str]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status(epr)
            current = (status.state, substate_of(status))
            if not seen or seen[-1] != current:
                seen.append(current)
            if status.state in states and (not substate or current[1] == substate):
                return status, seen
            time.sleep(0.2)
        raise AssertionError(f"never reached {states} {substate}; saw {seen}")


def substate_of(status: Any) -> str:
    for child in status._value_1 or []:
        local = etree.QName(child).localname
        if local not in ("ExitCode", "Message", "Changed", "Outputs"):
            return local
    return ""


def detail(status: Any, local: str) -> str | None:
    for child in status._value_1 or []:
        if etree.QName(child) == etree.QName(BESA, local):
            return str(child.text)
    return None


def activity_id(epr: Any) -> str:
    return str(epr.Address._value_1).rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def files() -> Iterator[FileServer]:
    with file_server() as server:
        yield server


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, WorkerProcess]]:
    tiny_repository()  # QEMU is here (or the test is skipped / failed in CI)
    root = tmp_path_factory.mktemp("grid")
    with live_server(root / "data", extra=GRID_OPTIONS) as server:
        worker = WorkerProcess(server.url, issue_token(server.data_dir, "w1"), root / "w1")
        worker.start()
        try:
            worker.wait_for_log("registered with")
            yield server, worker
        finally:
            worker.stop()
    assert qemu_processes(str(root)) == [], "a VM outlived the test"


@pytest.fixture
def bes(grid: tuple[LiveServer, WorkerProcess], recorder: Recorder) -> Bes:
    return Bes(grid[0], recorder)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    from tests.support.standards import assert_official

    r = Recorder()
    yield r
    for envelope in r.received:
        assert_official(envelope, "response received by zeep")


def test_a_vm_job_stages_in_runs_and_returns_stdout_and_outputs(
    bes: Bes, files: FileServer
) -> None:
    files.files["/input.txt"] = b"grid computing\n"
    files.delays["/input.txt"] = 1.0  # long enough to be seen Staging-In
    job = vm_job(
        "upper",
        'tr a-z A-Z < input.txt > result.txt; cat result.txt; echo "$GREETING from $(hostname)"',
        stagings=[
            {
                "FileName": "input.txt",
                "CreationFlag": "overwrite",
                "Source": {"URI": f"{files.url}/input.txt"},
            },
            {
                "FileName": "result.txt",
                "CreationFlag": "overwrite",
                "DeleteOnTermination": False,
                "Target": {"URI": f"{files.url}/results/result.txt"},
            },
        ],
    )
    epr = bes.submit(job)
    status, seen = bes.wait(epr, ("Finished", "Failed", "Cancelled"))
    assert status.state == "Finished", detail(status, "Message")
    assert seen[0][0] == "Pending"
    assert ("Running", "Staging-In") in seen and ("Running", "Executing") in seen
    order = ["Pending", "Running", "Finished"]
    states = [order.index(state) for state, _ in seen]
    assert states == sorted(states), f"states went backwards: {seen}"
    assert detail(status, "ExitCode") == "0"
    outputs = detail(status, "Outputs")
    assert outputs is not None
    listing = {f["name"]: f["url"] for f in httpx.get(outputs).json()["files"]}
    stdout = httpx.get(listing["stdout"]).text
    assert stdout.startswith("GRID COMPUTING\nhello from bes-")
    assert httpx.get(listing["outputs/result.txt"]).content == b"GRID COMPUTING\n"
    assert files.files["/results/result.txt"] == b"GRID COMPUTING\n"


def test_a_failing_job_is_failed_with_its_exit_code_and_stderr(bes: Bes) -> None:
    epr = bes.submit(vm_job("fails", "echo 'no such dataset' >&2; exit 7"))
    status, _ = bes.wait(epr, ("Finished", "Failed", "Cancelled"))
    assert status.state == "Failed"
    assert detail(status, "ExitCode") == "7"
    assert "exited with status 7" in (detail(status, "Message") or "")
    stderr = httpx.get(f"{detail(status, 'Outputs')}/stderr")
    assert stderr.text == "no such dataset\n"


def test_terminating_a_running_job_cancels_it_and_its_vm_is_gone(
    bes: Bes, grid: tuple[LiveServer, WorkerProcess]
) -> None:
    epr = bes.submit(vm_job("sleeper", "sleep 600"))
    bes.wait(epr, ("Running",), substate="Executing")
    assert qemu_processes(activity_id(epr)), "the VM should be running"
    answer = bes.terminate(epr)
    if not answer.Terminated:  # the worker is told at its next heartbeat
        assert answer.Fault is not None
    status, _ = bes.wait(epr, ("Cancelled", "Finished", "Failed"), timeout_s=60)
    assert status.state == "Cancelled"
    deadline = time.monotonic() + 20
    while qemu_processes(activity_id(epr)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert qemu_processes(activity_id(epr)) == []
    assert bes.terminate(epr).Terminated is True


def test_a_worker_killed_mid_job_is_replaced_and_the_job_has_one_result(
    tmp_path: Path, recorder: Recorder
) -> None:
    with live_server(tmp_path / "data", extra=GRID_OPTIONS) as server:
        bes = Bes(server, recorder)
        first = WorkerProcess(server.url, issue_token(server.data_dir, "first"), tmp_path / "first")
        second_token = issue_token(server.data_dir, "second")
        first.start().wait_for_log("registered with")
        epr = bes.submit(vm_job("survivor", "sleep 3; echo finished once"))
        bes.wait(epr, ("Running",), substate="Executing")
        first.kill()  # the VM it started lives on, unsupervised

        second = WorkerProcess(server.url, second_token, tmp_path / "second").start()
        try:
            status, seen = bes.wait(epr, ("Finished", "Failed", "Cancelled"), timeout_s=120)
        finally:
            second.stop()
        assert status.state == "Finished", detail(status, "Message")
        started = [state for state, _ in seen].index("Running")
        assert all(state != "Pending" for state, _ in seen[started:]), seen
        stdout = httpx.get(f"{detail(status, 'Outputs')}/stdout").text
        assert stdout == "finished once\n"
        with Database(default_url(server.data_dir)) as db:
            (job,) = db.read_sync(lambda c: c.execute(grid_job.select()).all())
        assert job.attempts == 2 and job.state == "finished"
        assert "second" in second.text() and "claimed" in second.text()

        # The first worker comes back: it finds the VM its earlier run left and removes it.
        again = WorkerProcess(server.url, tmp_path / "first.token", tmp_path / "first").start()
        try:
            again.wait_for_log("registered with")
            assert "left by an earlier run" in again.text()
        finally:
            again.stop()
        assert qemu_processes(str(tmp_path)) == []
        assert not list((tmp_path / "first" / "vms" / "qemu").glob("bes-*"))


def test_a_worker_waits_for_a_service_that_is_down(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    # The token is issued before the service's first start (the database is made for it).
    token = issue_token(data, "early")
    worker = WorkerProcess(f"http://127.0.0.1:{port}", token, tmp_path / "early").start()
    try:
        worker.wait_for_log("cannot register")
        with live_server(data, port=port, extra=GRID_OPTIONS):
            worker.wait_for_log("registered with")
            listed = bes_cli("worker-token", "list", "--data-dir", str(data))
            assert "early" in listed.stdout and "last seen never" not in listed.stdout
    finally:
        worker.stop()
    retries = worker.text().count("cannot register")
    assert 1 <= retries < 30, "the worker must back off, not spin"


def test_a_revoked_token_stops_the_worker(tmp_path: Path) -> None:
    with live_server(tmp_path / "data", extra=GRID_OPTIONS) as server:
        worker = WorkerProcess(
            server.url, issue_token(server.data_dir, "doomed"), tmp_path / "doomed"
        ).start()
        worker.wait_for_log("registered with")
        revoked = bes_cli("worker-token", "revoke", "doomed", "--data-dir", str(server.data_dir))
        assert revoked.returncode == 0, revoked.stderr
        assert worker.wait(30) == 3
        assert "was revoked" in worker.text()


def test_sigterm_hands_running_work_back(tmp_path: Path, recorder: Recorder) -> None:
    with live_server(tmp_path / "data", extra=GRID_OPTIONS) as server:
        bes = Bes(server, recorder)
        worker = WorkerProcess(server.url, issue_token(server.data_dir, "leaving"), tmp_path / "w")
        worker.start().wait_for_log("registered with")
        epr = bes.submit(vm_job("long", "sleep 600"))
        bes.wait(epr, ("Running",), substate="Executing")
        assert worker.terminate(60) == 0
        assert qemu_processes(activity_id(epr)) == []
        # The hand-back reaches the activity moments after the worker's exit (pushed changes
        # are applied in batches every PUSH_GATHER_S): wait for it, within bounds.
        deadline = time.monotonic() + 10
        status = bes.status(epr)
        while (
            "handed back" not in (detail(status, "Message") or "") and time.monotonic() < deadline
        ):
            time.sleep(0.1)
            status = bes.status(epr)
        assert status.state == "Running"
        assert "handed back by worker leaving" in (detail(status, "Message") or "")
        bes.terminate(epr)
        status, _ = bes.wait(epr, ("Cancelled",), timeout_s=30)


def test_bes_serve_alone_runs_the_hello_example(tmp_path: Path) -> None:
    """The embedded default: one command, a local worker, and examples/hello-vm.jsdl runs,
    on the node's one image cache: tiny, built there before (as bes vm run would have), is not
    built again for the new data directory."""
    from bes.vm.spec import ImageRef
    from tests.support import soap
    from tests.support.vm import tiny_repository

    tiny_repository().resolve(ImageRef(template="tiny"))  # built (once) in the node cache
    example = (Path(__file__).parents[2] / "examples" / "hello-vm.jsdl").read_bytes()
    example = example.split(b"?>", 1)[1]
    with live_server(tmp_path / "data", local_worker=True) as server:
        created = httpx.post(
            server.endpoint,
            content=soap.envelope(soap.create_activity(example)),
            headers={"SOAPAction": soap.ACTIONS + "CreateActivity", "Content-Type": "text/xml"},
        )
        assert created.status_code == 200, created.text
        (aid,) = soap.xpath(soap.body_of(created.content), "//besa:ActivityId/text()")
        query = soap.envelope(soap.vector("GetActivityStatuses", [soap.epr(activity_id=str(aid))]))
        deadline = time.monotonic() + 120
        state = ""
        while time.monotonic() < deadline:
            answer = httpx.post(
                server.endpoint,
                content=query,
                headers={"SOAPAction": soap.ACTIONS + "GetActivityStatuses"},
            )
            (state,) = soap.xpath(soap.body_of(answer.content), "//bes:ActivityStatus/@state")
            if state in ("Finished", "Failed", "Cancelled"):
                break
            time.sleep(0.3)
        assert state == "Finished"
        stdout = httpx.get(f"{server.url}/bes/activities/{aid}/outputs/stdout")
        assert stdout.text == "hello from a VM\n"
        assert "building the template" not in server.log.read_text()
    assert qemu_processes(str(tmp_path)) == []
