"""Why is my job waiting? Every Pending activity says why in its status (besa:Message) and
where (besa:Pool), the reason changes as workers come and go, and /why (bes why) gives the
full analysis. Jobs naming a pool, or that no volunteer can run, go to a cloud pool."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bes.ns import BES_ACTIVITY
from tests.support import soap
from tests.support.ingrid import Grid, open_grid

pytestmark = pytest.mark.anyio

JOB = """<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
  xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix" xmlns:vm="urn:bes-grid:vm:1.0">
  <jsdl:JobDescription>
    <jsdl:Application>
      <posix:POSIXApplication><posix:Executable>/bin/fit</posix:Executable></posix:POSIXApplication>
      <vm:VirtualMachine><vm:Image><vm:Template>tiny</vm:Template></vm:Image>
        <vm:MemoryMiB>{memory}</vm:MemoryMiB>{pool}</vm:VirtualMachine>
    </jsdl:Application>
  </jsdl:JobDescription>
</jsdl:JobDefinition>"""


def job(memory: int = 2048, pool: str | None = None) -> bytes:
    named = f"<vm:Pool>{pool}</vm:Pool>" if pool else ""
    return JOB.format(memory=memory, pool=named).encode()


async def waiting(grid: Grid, activity: str) -> tuple[str | None, str | None]:
    """(besa:Message, besa:Pool) of a Pending activity, after the reasons pass ran."""
    deadline = time.monotonic() + 10.0
    while True:  # the service's own loop may be handing it to the grid right now
        grid.backend.refresh_reasons(now=True)
        status = await grid.status(activity)
        if status.find(f"{{{BES_ACTIVITY}}}Queued") is None or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    return (
        status.findtext(f"{{{BES_ACTIVITY}}}Message"),
        status.findtext(f"{{{BES_ACTIVITY}}}Pool"),
    )


async def register(grid: Grid, name: str, memory_mib: int) -> str:
    token = grid.token(name)
    facts = {"max_memory_mib": memory_mib, "max_vcpus": 2, "hypervisors": {"qemu": "7.2 tcg"}}
    await grid.worker(token, "register", {"facts": facts})
    grid.backend.pools.offers(fresh=True)
    return token


async def why(grid: Grid, activity: str) -> Any:
    response = await grid.http.get(f"/bes/activities/{activity}/why")
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_pending_job_says_why_it_waits_as_workers_come(tmp_path: Path) -> None:
    async with open_grid(tmp_path) as grid:
        activity = await grid.submit(job(memory=2048))
        message, pool = await waiting(grid, activity)
        assert pool == "volunteers"
        assert message == (
            "no worker is registered; start one with bes worker (see bes worker --help)"
        )

        await register(grid, "laptop", 1024)
        message, _ = await waiting(grid, activity)
        assert message == (
            "1 worker of pool volunteers, none can run it: laptop lacks memory 2048 MiB "
            "(it offers 1024 MiB)"
        )
        analysis = await why(grid, activity)
        assert analysis["state"] == "Pending" and analysis["pool"] == "volunteers"
        details = analysis["analysis"]
        assert details["needs"]["memory_mib"] == 2048
        assert details["position"] == 1
        assert details["workers"] == [
            {
                "name": "laptop",
                "pool": "volunteers",
                "lacks": ["memory 2048 MiB (it offers 1024 MiB)"],
            }
        ]

        big = await register(grid, "server", 8192)
        message, _ = await waiting(grid, activity)
        assert message == "waiting for a free worker: 1 of pool volunteers can run it, all busy"

        [lease] = await grid.claim(big)
        assert lease["activity"] == activity
        status = await grid.status(activity)
        assert status.findtext(f"{{{BES_ACTIVITY}}}Message") is None  # it waits no more
        assert status[0].tag.rpartition("}")[2] == "Provisioning"


async def test_another_users_activity_has_no_why(tmp_path: Path) -> None:
    async with open_grid(tmp_path) as grid:
        response = await grid.http.get("/bes/activities/AAAAAAAAAAAAAAAAAAAAAAAA/why")
        assert response.status_code == 404


async def test_a_pool_the_service_does_not_have_is_refused(tmp_path: Path) -> None:
    async with open_grid(tmp_path) as grid:
        answer = await grid.soap("CreateActivity", soap.create_activity(job(pool="cloud:gpu")))
        fault = soap.body_of(answer)
        text = " ".join(fault.itertext())
        assert "UnsupportedFeatureFault" in answer.decode()
        assert "vm:Pool 'cloud:gpu' (this service's pools: volunteers)" in text


def clouds_file(tmp_path: Path) -> Path:
    """A libvirt cloud pool on libvirt's test driver (an in-memory hypervisor)."""
    node = tmp_path / "node.xml"
    node.write_text(
        """<node><cpu><mhz>2000</mhz><model>x86_64</model><active>16</active><total>16</total>
        <nodes>1</nodes><sockets>1</sockets><cores>16</cores><threads>1</threads></cpu>
        <memory>67108864</memory>
        <pool type='dir'><name>default</name><target><path>/pool</path></target>
          <volume type='file'><name>worker.qcow2</name><capacity unit='bytes'>2147483648</capacity>
          <target><path>/pool/worker.qcow2</path><format type='qcow2'/></target></volume>
        </pool></node>"""
    )
    path = tmp_path / "clouds.toml"
    path.write_text(
        f"""
[pool.lab]
provider = "libvirt"
service_url = "http://10.0.2.2:8080"
max_instances = 2

[pool.lab.libvirt]
uris = ["test://{node}"]
image = "worker.qcow2"
kernel = "/srv/bes/vmlinux"
initrd = "/srv/bes/initrd"
flavors = [{{ name = "w8", memory_mib = 8192, vcpus = 4 }}]
"""
    )
    return path


async def until_message(grid: Grid, activity: str, start: str, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    message = None
    while time.monotonic() < deadline:
        message, _ = await waiting(grid, activity)
        if message and message.startswith(start):
            return message
        await asyncio.sleep(0.2)
    raise AssertionError(f"the message stayed {message!r}")


async def test_jobs_go_to_a_cloud_pool_by_name_or_when_no_volunteer_can_run_them(
    tmp_path: Path,
) -> None:
    pytest.importorskip("libvirt")
    async with open_grid(tmp_path, clouds_file=clouds_file(tmp_path)) as grid:
        await register(grid, "laptop", 1024)
        named = await grid.submit(job(memory=256, pool="cloud:lab"))
        too_big = await grid.submit(job(memory=4096))
        fits = await grid.submit(job(memory=256))
        assert (await waiting(grid, fits))[1] == "volunteers"
        assert (await waiting(grid, named))[1] == "cloud:lab"
        assert (await waiting(grid, too_big))[1] == "cloud:lab"
        message = await until_message(grid, named, "pool cloud:lab: scaling up")
        assert "instance" in message
        analysis = (await why(grid, too_big))["analysis"]
        assert analysis["pool_status"].startswith("scaling up")
        # one instance per kind of job (each group takes its smallest flavor), at most two
        assert {i["state"] for i in analysis["instances"]} == {"booting"}
        assert 1 <= len(analysis["instances"]) <= 2
        assert all(i["name"].startswith("bes-lab-") for i in analysis["instances"])
        metrics = (await grid.http.get("/metrics")).text
        booting = len(analysis["instances"])
        assert f'bes_cloud_instances{{pool="cloud:lab",state="booting"}} {booting}.0' in metrics


def test_bes_serve_without_a_hypervisor_says_so_and_jobs_say_why_they_wait(
    tmp_path: Path,
) -> None:
    """A machine without QEMU (or VirtualBox): bes serve does not promise a local worker; it
    says what to install, at start and on the status page, and a submitted job says why it
    waits instead of staying Pending in silence."""
    import httpx

    from tests.support.server import live_server

    empty = tmp_path / "bin"  # no qemu-system-x86_64, no VBoxManage on this PATH
    empty.mkdir()
    with live_server(tmp_path / "data", local_worker=True, env={"PATH": str(empty)}) as server:
        said = server.log.read_text()
        assert "no local worker" in said
        assert "apt-get install qemu-system-x86 qemu-utils" in said
        page = httpx.get(server.url + "/bes/status", timeout=10).text
        assert 'class="notice"' in page and "no local worker" in page
        answer = server.post(soap.envelope(soap.create_activity(job(memory=256))), "CreateActivity")
        (activity,) = soap.xpath(soap.body_of(answer.content), "//besa:ActivityId/text()")
        query = soap.envelope(
            soap.vector("GetActivityStatuses", [soap.epr(activity_id=str(activity))])
        )
        deadline = time.monotonic() + 20
        message = ""
        while time.monotonic() < deadline:
            status = soap.body_of(server.post(query, "GetActivityStatuses").content)
            message = " ".join(soap.xpath(status, "//besa:Message/text()"))
            if message:
                break
            time.sleep(0.2)
        assert message.startswith("no worker is registered")
