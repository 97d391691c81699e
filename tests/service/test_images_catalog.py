"""The service serves its template image catalog, and takes VM jobs in CreateActivity."""

from __future__ import annotations

import httpx
import pytest

from bes.app import BesApp
from bes.vm.repository import Catalog, Template
from bes.vm.spec import ImageFormat
from tests.support import soap

pytestmark = pytest.mark.anyio


async def test_the_catalog_lists_the_site_templates_and_tiny(
    service: BesApp, client: httpx.AsyncClient
) -> None:
    Catalog(
        [
            Template(
                "alma9",
                "AlmaLinux 9 with cloud-init",
                os_type="RedHat_64",
                min_memory_mib=1024,
                format=ImageFormat.QCOW2,
                sha256="ab" * 32,
                uri="https://images.example.org/alma9.qcow2",
            )
        ]
    ).save(service.config.data_dir / "templates.json")

    response = await client.get("/bes/images")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    templates = {entry["name"]: entry for entry in response.json()["templates"]}
    assert templates["alma9"]["sha256"] == "ab" * 32
    assert templates["alma9"]["format"] == "qcow2"
    assert templates["tiny"]["runs_cloud_config"] is False


async def test_a_broken_catalog_is_a_503_not_a_traceback(
    service: BesApp, client: httpx.AsyncClient
) -> None:
    (service.config.data_dir / "templates.json").write_text("{not json")
    response = await client.get("/bes/images")
    assert response.status_code == 503
    assert "Traceback" not in response.text


VM_JOB = """<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
  xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix" xmlns:vm="urn:bes-grid:vm:1.0">
  <jsdl:JobDescription><jsdl:Application>
    <posix:POSIXApplication><posix:Executable>/bin/echo</posix:Executable></posix:POSIXApplication>
    <vm:VirtualMachine><vm:Image><vm:Template>tiny</vm:Template></vm:Image>{extra}
    </vm:VirtualMachine>
  </jsdl:Application></jsdl:JobDescription></jsdl:JobDefinition>"""


async def test_create_activity_accepts_a_vm_job(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/bes",
        content=soap.envelope(soap.create_activity(VM_JOB.format(extra="").encode())),
        headers={"SOAPAction": soap.ACTIONS + "CreateActivity", "Content-Type": "text/xml"},
    )
    assert response.status_code == 200, response.text


async def test_a_bad_vm_description_is_an_invalid_request_fault(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/bes",
        content=soap.envelope(
            soap.create_activity(VM_JOB.format(extra="<vm:MemoryMiB>lots</vm:MemoryMiB>").encode())
        ),
        headers={"SOAPAction": soap.ACTIONS + "CreateActivity", "Content-Type": "text/xml"},
    )
    assert response.status_code == 500
    assert "InvalidRequestMessageFault" in response.text
    assert "vm:MemoryMiB" in response.text
