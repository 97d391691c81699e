"""Our JSDL extension, vm:VirtualMachine: parsed into a typed value, checked, round-tripped."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from bes.errors import JsdlError, UnsupportedFeature
from bes.jsdl import load_job_definition
from bes.jsdl.codec import from_json, to_json
from bes.vm.spec import (
    ContextFile,
    Hypervisor,
    ImageFormat,
    ImageRef,
    NetworkMode,
    PortForward,
    Protocol,
)
from tests.support.standards import assert_valid, official_schema

EXAMPLE = Path(__file__).parents[2] / "examples" / "hello-vm.jsdl"
NS = (
    'xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl" '
    'xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix" '
    'xmlns:vm="urn:bes-grid:vm:1.0" xmlns:other="urn:example:other"'
)
POSIX = (
    "<posix:POSIXApplication><posix:Executable>/bin/true</posix:Executable>"
    "</posix:POSIXApplication>"
)
SHA = "0123456789abcdef" * 4


def doc(vm: str, *, resources: str = "") -> bytes:
    return (
        f"<jsdl:JobDefinition {NS}><jsdl:JobDescription>"
        f"<jsdl:Application>{POSIX}{vm}</jsdl:Application>{resources}"
        "</jsdl:JobDescription></jsdl:JobDefinition>"
    ).encode()


def test_the_example_names_the_tiny_template() -> None:
    job = load_job_definition(EXAMPLE.read_bytes())
    machine = job.job_description.virtual_machine
    assert machine is not None
    assert machine.image == ImageRef(template="tiny")
    assert machine.memory_mib == 256
    assert machine.wall_time_s == 120
    assert machine.network.mode is NetworkMode.NONE


def test_the_example_is_valid_jsdl_for_the_official_schemas() -> None:
    """Other middleware validating with the OGF schemas accepts our documents too."""
    assert_valid(official_schema(), etree.fromstring(EXAMPLE.read_bytes()), "hello-vm.jsdl")


def test_every_element_of_the_extension() -> None:
    job = load_job_definition(
        doc(
            f"""<vm:VirtualMachine>
              <vm:Image><vm:URI>https://images.example.org/alma9.qcow2</vm:URI>
                <vm:SHA256>{SHA.upper()}</vm:SHA256><vm:Format>qcow2</vm:Format></vm:Image>
              <vm:OSType>RedHat_64</vm:OSType>
              <vm:MemoryMiB>2048</vm:MemoryMiB>
              <vm:VirtualCPUs>2</vm:VirtualCPUs>
              <vm:ScratchDiskMiB>10240</vm:ScratchDiskMiB>
              <vm:Network mode="nat" outbound="true">
                <vm:PortForward guestPort="22"/>
                <vm:PortForward guestPort="53" hostPort="5353" hostAddress="::1" protocol="udp"/>
              </vm:Network>
              <vm:Contextualization>
                <vm:UserData>#cloud-config
packages: [htop]</vm:UserData>
                <vm:File path="/etc/job.conf" mode="0600">key = value</vm:File>
              </vm:Contextualization>
              <vm:WallTimeLimit>7200</vm:WallTimeLimit>
              <vm:Hypervisor>virtualbox</vm:Hypervisor>
              <vm:Hypervisor>qemu</vm:Hypervisor>
            </vm:VirtualMachine>"""
        )
    )
    machine = job.job_description.virtual_machine
    assert machine is not None
    assert machine.image == ImageRef(
        uri="https://images.example.org/alma9.qcow2", sha256=SHA, format=ImageFormat.QCOW2
    )
    assert (machine.os_type, machine.memory_mib, machine.vcpus) == ("RedHat_64", 2048, 2)
    assert machine.scratch_disk_mib == 10240
    assert machine.network.mode is NetworkMode.NAT
    assert machine.network.outbound is True
    assert machine.network.port_forwards == (
        PortForward(guest_port=22),
        PortForward(53, 5353, "::1", Protocol.UDP),
    )
    assert machine.user_data == "#cloud-config\npackages: [htop]"
    assert machine.files == (ContextFile("/etc/job.conf", "key = value", 0o600),)
    assert machine.wall_time_s == 7200
    assert machine.hypervisors == (Hypervisor.VIRTUALBOX, Hypervisor.QEMU)
    assert from_json(to_json(job)) == job


def test_the_extension_may_stand_in_resources() -> None:
    job = load_job_definition(
        doc(
            "",
            resources="<jsdl:Resources><vm:VirtualMachine><vm:Image><vm:Template>tiny"
            "</vm:Template></vm:Image></vm:VirtualMachine></jsdl:Resources>",
        )
    )
    assert job.job_description.virtual_machine is not None
    assert job.job_description.virtual_machine.image.template == "tiny"


TINY = "<vm:Image><vm:Template>tiny</vm:Template></vm:Image>"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        pytest.param(
            doc(
                f"<vm:VirtualMachine>{TINY}</vm:VirtualMachine>",
                resources=f"<jsdl:Resources><vm:VirtualMachine>{TINY}</vm:VirtualMachine>"
                "</jsdl:Resources>",
            ),
            "second VirtualMachine",
            id="two machines",
        ),
        pytest.param(
            doc(
                f'<vm:VirtualMachine>{TINY}<vm:Network><vm:PortForward guestPort="22"/>'
                "</vm:Network></vm:VirtualMachine>"
            ),
            'port forwards need mode="nat"',
            id="forward without nat",
        ),
        pytest.param(
            doc(
                "<vm:VirtualMachine><vm:Image><vm:URI>http://x/y.img</vm:URI>"
                "<vm:SHA256>abc</vm:SHA256><vm:Format>raw</vm:Format></vm:Image>"
                "</vm:VirtualMachine>"
            ),
            "SHA256",
            id="short checksum",
        ),
        pytest.param(
            doc(
                "<vm:VirtualMachine><vm:Image><vm:URI>http://x/y.img</vm:URI></vm:Image></vm:VirtualMachine>"
            ),
            "Image",
            id="URI without checksum",
        ),
        pytest.param(
            doc(f"<vm:VirtualMachine>{TINY}<vm:MemoryMiB>0</vm:MemoryMiB></vm:VirtualMachine>"),
            "MemoryMiB",
            id="no memory",
        ),
        pytest.param(
            doc(f"<vm:VirtualMachine>{TINY}<vm:Hypervisor>xen</vm:Hypervisor></vm:VirtualMachine>"),
            "Hypervisor",
            id="unknown hypervisor",
        ),
        pytest.param(
            doc(
                f'<vm:VirtualMachine>{TINY}<vm:Contextualization><vm:File path="etc/x">y'
                "</vm:File></vm:Contextualization></vm:VirtualMachine>"
            ),
            "path",
            id="relative context file",
        ),
    ],
)
def test_bad_descriptions_are_refused_with_the_element_named(document: bytes, message: str) -> None:
    with pytest.raises(JsdlError, match=message) as caught:
        load_job_definition(document)
    assert any("VirtualMachine" in path for path in caught.value.invalid_elements)


def test_a_foreign_extension_inside_is_an_unsupported_feature() -> None:
    with pytest.raises(UnsupportedFeature) as caught:
        load_job_definition(doc(f"<vm:VirtualMachine>{TINY}<other:Gpu/></vm:VirtualMachine>"))
    assert list(caught.value.features) == [
        "{urn:example:other}Gpu in "
        "/jsdl:JobDefinition/jsdl:JobDescription/jsdl:Application/vm:VirtualMachine"
    ]
