"""The worker protocol of the desktop grid, in process: what a worker may do, what it may not,
and what the BES client sees meanwhile. Every JSON answer is checked against the service's
OpenAPI document."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bes.backends.desktopgrid.tokens import revoke_worker
from bes.ns import BES_ACTIVITY
from tests.support import soap
from tests.support.ingrid import Grid, check, open_grid

pytestmark = pytest.mark.anyio

VM_JOB = """<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
  xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix" xmlns:vm="urn:bes-grid:vm:1.0">
  <jsdl:JobDescription>
    <jsdl:JobIdentification><jsdl:JobName>fit</jsdl:JobName></jsdl:JobIdentification>
    <jsdl:Application>
      <posix:POSIXApplication><posix:Executable>/bin/fit</posix:Executable></posix:POSIXApplication>
      <vm:VirtualMachine><vm:Image><vm:Template>tiny</vm:Template></vm:Image>
        <vm:MemoryMiB>{memory}</vm:MemoryMiB></vm:VirtualMachine>
    </jsdl:Application>
    {staging}
  </jsdl:JobDescription>
</jsdl:JobDefinition>"""
KEPT = """<jsdl:DataStaging><jsdl:FileName>result.txt</jsdl:FileName>
      <jsdl:CreationFlag>overwrite</jsdl:CreationFlag></jsdl:DataStaging>"""


def vm_job(*, memory: int = 256, staging: str = "") -> bytes:
    return VM_JOB.format(memory=memory, staging=staging).encode()


@pytest.fixture
async def grid(tmp_path: Path) -> AsyncIterator[Grid]:
    async with open_grid(tmp_path) as opened:
        yield opened


async def test_a_worker_needs_a_live_token(grid: Grid) -> None:
    await grid.worker("", "claim", {"memory_mib": 1, "vcpus": 1, "disk_mib": 1}, status=401)
    await grid.worker("besw_nonsense", "register", status=401)
    token = grid.token("alpha")
    answer = await grid.worker(token, "register", {"facts": {"cpus": 2}})
    check("RegisterResponse", answer)
    assert answer["worker"] == "alpha"
    assert answer["heartbeat_s"] < answer["lease_s"]
    assert grid.app.db is not None
    revoke_worker(grid.app.db, "alpha")
    refused = await grid.worker(token, "heartbeat", {"leases": []}, status=401)
    assert "revoked" in refused["message"]


async def test_a_job_runs_from_claim_to_finished_with_its_outputs_kept(grid: Grid) -> None:
    token = grid.token("w1")
    activity = await grid.submit(vm_job(staging=KEPT))
    assert await grid.state(activity) == ("Pending", ["Submitted", "Message", "Changed", "Pool"])
    waiting = await grid.status(activity)
    assert waiting.findtext(f"{{{BES_ACTIVITY}}}Pool") == "volunteers"
    assert "no worker is registered" in (waiting.findtext(f"{{{BES_ACTIVITY}}}Message") or "")

    (lease,) = await grid.claim(token)
    assert lease["activity"] == activity and lease["attempt"] == 1
    assert lease["job"]["job_description"]["application"]["virtual_machine"]["memory_mib"] == 256
    assert await grid.state(activity) == ("Pending", ["Provisioning", "Changed", "Pool"])

    beat = await grid.worker(
        token, "heartbeat", {"leases": [{"lease": lease["lease"], "substate": "Staging-In"}]}
    )
    check("HeartbeatResponse", beat)
    assert beat["leases"] == {lease["lease"]: "continue"}
    assert await grid.state(activity) == ("Running", ["Staging-In", "Changed", "Pool"])

    for name, data in (("stdout", b"fitted\n"), ("stderr", b""), ("outputs/result.txt", b"42")):
        response = await grid.upload(token, lease["lease"], name, data)
        assert response.status_code == 200, response.text
        check("UploadResponse", response.json())
    done = await grid.worker(
        token,
        f"leases/{lease['lease']}/complete",
        {
            "exit_code": 0,
            "timing": {"vm": 3.5},
            "files": ["stdout", "stderr", "outputs/result.txt"],
        },
    )
    check("CompleteResponse", done)
    assert done == {"state": "finished"}

    status = await grid.status(activity)
    assert status.get("state") == "Finished"
    (exit_code,) = soap.xpath(status, "besa:ExitCode/text()")
    (outputs,) = soap.xpath(status, "besa:Outputs/text()")
    assert exit_code == "0" and outputs.endswith(f"/bes/activities/{activity}/outputs")
    listing = (await grid.http.get(outputs)).json()
    assert {f["name"]: f["bytes"] for f in listing["files"]} == {
        "stdout": 7,
        "stderr": 0,
        "outputs/result.txt": 2,
    }
    stdout = await grid.http.get(f"/bes/activities/{activity}/outputs/stdout")
    assert stdout.content == b"fitted\n"
    kept = await grid.http.get(f"/bes/activities/{activity}/outputs/outputs/result.txt")
    assert kept.content == b"42"
    escape = f"/bes/activities/{activity}/outputs/..%2F..%2F..%2Fbes.sqlite3"
    assert (await grid.http.get(escape)).status_code == 404


async def test_a_non_zero_exit_code_fails_the_activity_and_is_kept(grid: Grid) -> None:
    token = grid.token("w1")
    activity = await grid.submit(vm_job())
    (lease,) = await grid.claim(token)
    await grid.worker(token, f"leases/{lease['lease']}/complete", {"exit_code": 3})
    status = await grid.status(activity)
    assert status.get("state") == "Failed"
    assert soap.xpath(status, "besa:ExitCode/text()") == ["3"]
    assert "exited with status 3" in soap.xpath(status, "besa:Message/text()")[0]


async def test_termination_reaches_the_worker_through_its_heartbeat(grid: Grid) -> None:
    token = grid.token("w1")
    activity = await grid.submit(vm_job())
    (lease,) = await grid.claim(token)
    terminate = soap.vector("TerminateActivities", [soap.epr(activity_id=activity)])
    answer = soap.body_of(await grid.soap("TerminateActivities", terminate))
    assert soap.xpath(answer, "//bes:Terminated/text()") == ["false"]
    assert soap.xpath(answer, "//bes:OperationWillBeAppliedEventuallyFault")
    beat = await grid.worker(
        token, "heartbeat", {"leases": [{"lease": lease["lease"], "substate": "Executing"}]}
    )
    assert beat["leases"][lease["lease"]] == "cancel"
    released = await grid.worker(token, f"leases/{lease['lease']}/release", {"message": "stopped"})
    assert released == {"state": "cancelled"}
    assert (await grid.state(activity))[0] == "Cancelled"
    again = soap.body_of(await grid.soap("TerminateActivities", terminate))
    assert soap.xpath(again, "//bes:Terminated/text()") == ["true"]


async def test_a_job_nobody_took_is_cancelled_at_once(grid: Grid) -> None:
    activity = await grid.submit(vm_job())
    terminate = soap.vector("TerminateActivities", [soap.epr(activity_id=activity)])
    answer = soap.body_of(await grid.soap("TerminateActivities", terminate))
    assert soap.xpath(answer, "//bes:Terminated/text()") == ["true"]
    assert await grid.claim(grid.token("late")) == []


async def test_an_expired_lease_goes_to_another_worker_and_the_late_report_is_refused(
    grid: Grid,
) -> None:
    first, second = grid.token("first"), grid.token("second")
    activity = await grid.submit(vm_job())
    (old,) = await grid.claim(first)
    await grid.worker(
        first, "heartbeat", {"leases": [{"lease": old["lease"], "substate": "Executing"}]}
    )
    assert (await grid.state(activity))[0] == "Running"
    # The first worker goes silent past its lease.
    later = grid.backend.clock() + dt.timedelta(seconds=31)
    grid.backend.clock = lambda: later
    await asyncio.to_thread(grid.backend.sweep, now=True)
    status = await grid.status(activity)
    assert status.get("state") == "Running"
    assert "worker first stopped reporting" in soap.xpath(status, "besa:Message/text()")[0]

    (new,) = await grid.claim(second)
    assert new["activity"] == activity and new["attempt"] == 2
    late = await grid.worker(first, f"leases/{old['lease']}/complete", {"exit_code": 0}, status=409)
    assert late["error"] == "lease-lost"
    assert (await grid.upload(first, old["lease"], "stdout", b"stale")).status_code == 409
    beat = await grid.worker(first, "heartbeat", {"leases": [{"lease": old["lease"]}]})
    assert beat["leases"] == {old["lease"]: "lost"}

    await grid.upload(second, new["lease"], "stdout", b"fresh\n")
    await grid.worker(
        second, f"leases/{new['lease']}/complete", {"exit_code": 0, "files": ["stdout"]}
    )
    assert (await grid.state(activity))[0] == "Finished"
    stdout = await grid.http.get(f"/bes/activities/{activity}/outputs/stdout")
    assert stdout.content == b"fresh\n"


async def test_retryable_failures_requeue_until_the_attempts_are_used_up(grid: Grid) -> None:
    token = grid.token("flaky")
    activity = await grid.submit(vm_job())
    for attempt in (1, 2, 3):
        (lease,) = await grid.claim(token)
        assert lease["attempt"] == attempt
        answer = await grid.worker(
            token, f"leases/{lease['lease']}/fail", {"message": "VBoxManage failed", "retry": True}
        )
        assert answer["state"] == ("failed" if attempt == 3 else "queued")
    status = await grid.status(activity)
    assert status.get("state") == "Failed"
    assert (
        "given up: attempt 3 of 3 failed on worker flaky"
        in soap.xpath(status, "besa:Message/text()")[0]
    )


async def test_the_jobs_own_failure_is_not_retried(grid: Grid) -> None:
    token = grid.token("w")
    activity = await grid.submit(vm_job())
    (lease,) = await grid.claim(token)
    answer = await grid.worker(
        token,
        f"leases/{lease['lease']}/fail",
        {"message": "input 'data.csv': GET http://x/data.csv answered 404 Not Found"},
    )
    assert answer == {"state": "failed"}
    status = await grid.status(activity)
    assert status.get("state") == "Failed"
    assert "404" in soap.xpath(status, "besa:Message/text()")[0]


async def test_a_busy_worker_completes_and_claims_the_next_job_in_one_call(grid: Grid) -> None:
    token = grid.token("busy")
    first = await grid.submit(vm_job())
    second = await grid.submit(vm_job())
    (lease,) = await grid.claim(token)
    claim = {"memory_mib": 4096, "vcpus": 4, "disk_mib": 100_000, "hypervisors": ["qemu"]}
    answer = await grid.worker(
        token, f"leases/{lease['lease']}/complete", {"exit_code": 0, "claim": claim}
    )
    check("CompleteResponse", answer)
    assert answer["state"] == "finished"
    assert [next_one["activity"] for next_one in answer["leases"]] == [second]
    assert (await grid.state(first))[0] == "Finished"


async def test_completing_with_a_file_that_never_arrived_is_refused(grid: Grid) -> None:
    token = grid.token("w")
    await grid.submit(vm_job())
    (lease,) = await grid.claim(token)
    answer = await grid.worker(
        token,
        f"leases/{lease['lease']}/complete",
        {"exit_code": 0, "files": ["stdout"]},
        status=400,
    )
    assert "'stdout' was not uploaded" in answer["message"]


async def test_claims_offer_only_what_fits_the_worker(grid: Grid) -> None:
    token = grid.token("small")
    await grid.submit(vm_job(memory=8192))
    assert await grid.claim(token, memory_mib=2048) == []
    assert len(await grid.claim(token, memory_mib=16384)) == 1


async def test_a_waiting_claim_gets_work_that_arrives_meanwhile(grid: Grid) -> None:
    token = grid.token("patient")
    claim = asyncio.create_task(grid.claim(token, wait_s=10))
    await asyncio.sleep(0.2)
    assert not claim.done()
    activity = await grid.submit(vm_job())
    (lease,) = await asyncio.wait_for(claim, 10)
    assert lease["activity"] == activity


async def test_uploads_are_bounded_and_stay_inside_the_job(tmp_path: Path) -> None:
    async with open_grid(tmp_path, max_output_bytes="10") as grid:
        token = grid.token("w")
        await grid.submit(vm_job())
        (lease,) = await grid.claim(token)
        escape = await grid.upload(token, lease["lease"], "..%2F..%2Fescape", b"x")
        assert escape.status_code == 400
        check("Error", escape.json())
        assert not list(tmp_path.rglob("escape"))
        assert (await grid.upload(token, lease["lease"], "stdout", b"y" * 10)).status_code == 200
        big = await grid.upload(token, lease["lease"], "stderr", b"z")
        assert big.status_code == 413
        assert big.json()["error"] == "too-large"


async def test_bad_bodies_get_a_clear_400(grid: Grid) -> None:
    token = grid.token("w")
    response = await grid.http.post(
        "/worker/v1/claim", content=b"{not json", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 400 and response.json()["error"] == "bad-request"
    answer = await grid.worker(
        token, "claim", {"memory_mib": "lots", "vcpus": 1, "disk_mib": 1}, status=400
    )
    assert "memory_mib" in answer["message"]
    answer = await grid.worker(
        token,
        "claim",
        {"memory_mib": 1, "vcpus": 1, "disk_mib": 1, "hypervisors": ["xen"]},
        status=400,
    )
    assert "$.hypervisors[0]" in answer["message"] and "xen" in answer["message"]
    answer = await grid.worker(token, "leases/j.1/complete", {"exit_code": "0"}, status=400)
    assert "exit_code" in answer["message"]
    await grid.worker(token, "nonesuch", status=404)


async def test_the_openapi_document_is_served_and_names_every_route(grid: Grid) -> None:
    response = await grid.http.get("/worker/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        "/worker/v1/openapi.json",
        "/worker/v1/register",
        "/worker/v1/claim",
        "/worker/v1/heartbeat",
        "/worker/v1/leases/{lease}/files/{name}",
        "/worker/v1/leases/{lease}/store/{ref}",
        "/worker/v1/leases/{lease}/complete",
        "/worker/v1/leases/{lease}/fail",
        "/worker/v1/leases/{lease}/release",
        "/worker/v1/leases/{lease}/access",
        "/worker/v1/leases/{lease}/tunnel",
    }


async def test_the_desktop_grid_refuses_what_it_cannot_run_at_submission(grid: Grid) -> None:
    gsiftp = """<jsdl:DataStaging><jsdl:FileName>in</jsdl:FileName>
      <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
      <jsdl:Source><jsdl:URI>gsiftp://grid.example.org/in</jsdl:URI></jsdl:Source>
    </jsdl:DataStaging>"""
    answer = await grid.soap("CreateActivity", soap.create_activity(vm_job(staging=gsiftp)))
    fault = soap.fault_of(answer)
    assert soap.xpath(fault, "detail/bes:UnsupportedFeatureFault")
    assert "gsiftp" in soap.xpath(fault, "faultstring/text()")[0]
    unknown = vm_job().replace(b"<vm:Template>tiny", b"<vm:Template>alma9")
    fault = soap.fault_of(await grid.soap("CreateActivity", soap.create_activity(unknown)))
    assert "alma9" in soap.xpath(fault, "faultstring/text()")[0]
