"""The issue's "done when", for real: a JSDL document with our VM extension, submitted by zeep
built from the official OGF WSDL, runs to Finished on a volunteer of the desktop grid and, the
same document once no volunteer can take it, on a libvirt cloud pool the routing policy
chose: the autoscaler boots the worker image on a private libvirtd (QEMU, TCG here), the
instance's worker registers over user-mode networking, runs the job in tiny nested in the
instance, and the outputs are identical. Then the pool scales down and nothing is left:
no domain, no volume but the image, no QEMU process, the instance's token revoked."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import zeep
from lxml import etree

from bes.db import grid_rows
from bes.db.engine import default_url
from bes.db.store import Database
from tests.support.cloudworker import (
    GREETING,
    GRID_OPTIONS,
    TINY_JOB,
    cached_worker_image,
    libvirt_pool,
    require_builder,
)
from tests.support.libvirtd import private_libvirtd
from tests.support.server import free_port, live_server
from tests.support.soap import BES
from tests.support.standards import standards_dir
from tests.support.vm import qemu_processes
from tests.support.worker import WorkerProcess, issue_token

libvirt = pytest.importorskip("libvirt")

BESA = "urn:bes-grid:activity:1.0"
FACTORY = f"{{{BES}}}BESFactoryBinding"
INSTANCE_TIMEOUT_S = 1200.0  # the worker image boots in about 40 s under TCG, tiny nested in it


def official_factory(endpoint: str) -> Any:
    """A client generated from the GridSAM copy of the final GFD.108 WSDL."""
    settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_external=True)
    wsdl = standards_dir() / "gridsam-bes" / "wsdl" / "bes-factory.wsdl"
    return zeep.Client(str(wsdl), settings=settings).create_service(FACTORY, endpoint)


def submit(factory: Any) -> str:
    """CreateActivity with TINY_JOB's JobDefinition, as a zeep program passes extension XML."""
    document = etree.fromstring(TINY_JOB.encode())
    application = document.find(".//{http://schemas.ggf.org/jsdl/2005/11/jsdl}Application")
    assert application is not None
    created = factory.CreateActivity(
        ActivityDocument={
            "JobDefinition": {"JobDescription": {"Application": {"_value_1": list(application)}}}
        }
    )
    reference = created.ActivityIdentifier.ReferenceParameters._value_1
    [activity_id] = [e.text for e in reference if etree.QName(e).localname == "ActivityId"]
    return str(activity_id)


def wait_finished(factory: Any, activity_id: str, timeout_s: float) -> dict[str, str]:
    """Poll GetActivityStatuses until the activity ends; its state and besa: details."""
    epr = {
        "Address": "ignored",
        "ReferenceParameters": {"_value_1": [_element("ActivityId", activity_id)]},
    }
    deadline = time.monotonic() + timeout_s
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        [response] = factory.GetActivityStatuses(ActivityIdentifier=[epr]).Response
        status = response.ActivityStatus
        seen = {"state": status.state}
        for element in status._value_1 or []:
            seen[etree.QName(element).localname] = element.text or ""
        if status.state in ("Finished", "Failed", "Cancelled"):
            return seen
        time.sleep(2.0)
    raise AssertionError(f"{activity_id} did not end in {timeout_s:.0f} s: {seen}")


def _element(name: str, text: str) -> etree._Element:
    element = etree.Element(f"{{{BESA}}}{name}", nsmap={"besa": BESA})
    element.text = text
    return element


def stdout_of(server_url: str, activity_id: str) -> str:
    response = httpx.get(f"{server_url}/bes/activities/{activity_id}/outputs/stdout", timeout=30)
    assert response.status_code == 200, response.text
    return response.text


def registered(data_dir: Path, name: str) -> bool:
    with Database(default_url(data_dir)) as db:
        return any(w.name == name and w.facts for w in db.read_sync(grid_rows.list_workers))


@pytest.mark.slow
@pytest.mark.vm
def test_the_same_document_runs_on_a_volunteer_and_on_a_libvirt_cloud_pool(
    tmp_path: Path,
) -> None:
    require_builder()
    image = cached_worker_image()
    with private_libvirtd() as daemon:
        port = free_port()
        clouds = libvirt_pool(
            daemon,
            image,
            tmp_path / "clouds.toml",
            name="lab",
            port=port,
            idle_s=5,
            boot_timeout_s=INSTANCE_TIMEOUT_S,
        )
        conn = libvirt.open(daemon.uri)
        pool = conn.storagePoolLookupByName(daemon.pool)
        data = tmp_path / "data"
        with live_server(data, port=port, extra=["--clouds", str(clouds), *GRID_OPTIONS]) as server:
            factory = official_factory(server.endpoint)

            # 1. A volunteer is registered and can run it: the desktop grid takes it.
            token = issue_token(data, "volunteer")
            volunteer = WorkerProcess(server.url, token, tmp_path / "volunteer").start()
            try:
                deadline = time.monotonic() + 60
                while not registered(data, "volunteer") and time.monotonic() < deadline:
                    time.sleep(0.2)
                time.sleep(2.5)  # the routing policy's view of the workers is 2 s old at most
                on_grid = submit(factory)
                grid_status = wait_finished(factory, on_grid, 300)
            finally:
                volunteer.stop()
            assert grid_status["state"] == "Finished", (grid_status, volunteer.text()[-3000:])
            assert grid_status["Pool"] == "volunteers"
            grid_stdout = stdout_of(server.url, on_grid)
            assert GREETING in grid_stdout

            # 2. No volunteer any more: the same document goes to the cloud pool, whose
            #    autoscaler boots an instance of the worker image for it.
            revoked = subprocess.run(
                [sys.executable, "-m", "bes", "worker-token", "revoke", "volunteer",
                 "--data-dir", str(data)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert revoked.returncode == 0, revoked.stderr
            time.sleep(2.5)
            on_cloud = submit(factory)
            cloud_status = wait_finished(factory, on_cloud, INSTANCE_TIMEOUT_S)
            consoles = "\n".join(
                p.read_text(errors="replace")[-3000:] for p in daemon.qemu_log_dir.glob("*.log")
            )
            assert cloud_status["state"] == "Finished", (cloud_status, consoles)
            assert cloud_status["Pool"] == "cloud:lab"
            assert stdout_of(server.url, on_cloud) == grid_stdout  # identical outputs

            # 3. Idle, the instance is drained and deleted: nothing is left running.
            deadline = time.monotonic() + 180
            while conn.listAllDomains(0) and time.monotonic() < deadline:
                time.sleep(1.0)
            assert conn.listAllDomains(0) == []
            assert [v.name() for v in pool.listAllVolumes()] == ["bes-worker.qcow2"]
            assert qemu_processes("bes-lab-") == []
            with Database(default_url(data)) as db:
                workers = db.read_sync(grid_rows.list_workers)
            instances = [w for w in workers if w.pool == "cloud:lab"]
            assert instances and all(w.revoked_at is not None for w in instances)


def pool_job() -> bytes:
    """A tiny job naming the pool cloud:lab (as XML text for a SOAP body)."""
    named = TINY_JOB.replace(
        "</vm:VirtualMachine>", "<vm:Pool>cloud:lab</vm:Pool></vm:VirtualMachine>"
    )
    assert named != TINY_JOB
    return named.split("?>", 1)[-1].encode()


@pytest.mark.slow
@pytest.mark.vm
def test_nothing_is_left_running_after_the_service_is_killed(tmp_path: Path) -> None:
    """SIGKILL of bes serve while its pool's instance boots: the instance outlives it, the
    restarted service adopts it (no second instance), and once the job is terminated the
    instance, which never registers (tiny's kernel stands in for the worker image), is deleted
    at its boot timeout. Nothing is left on the real libvirtd."""
    from bes.vm.spec import ImageRef
    from tests.support import soap
    from tests.support.server import LiveServer
    from tests.support.vm import tiny_repository

    boot, _ = tiny_repository().resolve(ImageRef(template="tiny"))
    assert boot.kernel is not None and boot.kernel.initrd is not None
    with private_libvirtd() as daemon:
        conn = libvirt.open(daemon.uri)
        conn.storagePoolLookupByName(daemon.pool).createXML(
            "<volume><name>bes-worker.qcow2</name><capacity unit='MiB'>64</capacity>"
            "<target><format type='qcow2'/></target></volume>",
            0,
        )
        port = free_port()
        clouds = tmp_path / "clouds.toml"
        clouds.write_text(
            f"""[pool.lab]
provider = "libvirt"
service_url = "http://10.0.2.2:{port}"
max_instances = 1
boot_timeout_s = 40
[pool.lab.libvirt]
uris = ["{daemon.uri}"]
image = "bes-worker.qcow2"
kernel = "{boot.kernel.kernel}"
initrd = "{boot.kernel.initrd}"
cmdline = "{boot.kernel.cmdline}"
flavors = [{{ name = "w1", memory_mib = 1024, vcpus = 1 }}]
"""
        )
        data = tmp_path / "data"
        extra = ["--clouds", str(clouds), *GRID_OPTIONS]
        first = LiveServer(data, port=port, extra=extra).start()
        try:
            answer = first.post(soap.envelope(soap.create_activity(pool_job())), "CreateActivity")
            (activity,) = soap.xpath(soap.body_of(answer.content), "//besa:ActivityId/text()")
            deadline = time.monotonic() + 60
            while not conn.listAllDomains(0) and time.monotonic() < deadline:
                time.sleep(0.2)
            [instance] = [d.name() for d in conn.listAllDomains(0)]
        finally:
            first.kill()
        assert [d.name() for d in conn.listAllDomains(0)] == [instance]  # it outlived bes serve

        with live_server(data, port=port, extra=extra) as second:
            time.sleep(12)  # two rounds of the restarted autoscaler
            assert [d.name() for d in conn.listAllDomains(0)] == [instance]  # adopted
            terminate = soap.vector("TerminateActivities", [soap.epr(activity_id=str(activity))])
            assert second.post(soap.envelope(terminate), "TerminateActivities").status_code == 200
            deadline = time.monotonic() + 120
            while conn.listAllDomains(0) and time.monotonic() < deadline:
                time.sleep(1.0)
            assert conn.listAllDomains(0) == []
        assert [v.name() for v in conn.storagePoolLookupByName(daemon.pool).listAllVolumes()] == [
            "bes-worker.qcow2"
        ]
        assert qemu_processes(instance) == []
