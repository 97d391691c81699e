"""VM leases as documents: vm:Lease parsed and checked, what makes a document a lease, what
the desktop grid refuses, and a lease's network (SSH always forwarded, host ports fixed)."""

from __future__ import annotations

import socket

import pytest

from bes.backends.desktopgrid._translate import unsupported
from bes.client import jsdl
from bes.errors import JsdlError
from bes.jsdl import load_job_definition
from bes.jsdl.codec import from_json, to_json
from bes.vm.lease import lease_network
from bes.vm.repository import BUILT_IN_TEMPLATES, Catalog
from bes.vm.spec import Lease, Network, NetworkMode, PortForward
from bes.vmjob import VmDefaults, lease_of
from tests.support.standards import assert_valid, official_schema

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop"
NS = (
    'xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl" '
    'xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix" '
    'xmlns:vm="urn:bes-grid:vm:1.0"'
)


def document(vm_children: str, *, application: str = "") -> bytes:
    return (
        f"<jsdl:JobDefinition {NS}><jsdl:JobDescription>{application}<jsdl:Resources>"
        f"<vm:VirtualMachine><vm:Image><vm:Template>debian-12</vm:Template></vm:Image>"
        f"{vm_children}</vm:VirtualMachine></jsdl:Resources>"
        "</jsdl:JobDescription></jsdl:JobDefinition>"
    ).encode()


def test_the_client_builds_a_lease_valid_for_the_official_schemas() -> None:
    data = jsdl.lease(ssh_keys=[KEY], ports=[8888], name="notebook", wall_time_s=7200)
    assert_valid(official_schema(), data, "lease document")
    job = load_job_definition(data)
    lease = lease_of(job)
    assert lease == Lease(user="debian", ssh_keys=(KEY,))
    machine = job.job_description.virtual_machine
    assert machine is not None
    assert machine.network.mode is NetworkMode.NAT
    assert [f.guest_port for f in machine.network.port_forwards] == [22, 8888]
    assert machine.wall_time_s == 7200
    assert from_json(to_json(job)) == job  # travels to workers intact


def test_a_vm_without_an_application_is_a_lease_without_keys() -> None:
    job = load_job_definition(document(""))
    assert lease_of(job) == Lease()


def test_a_job_with_an_application_is_not_a_lease() -> None:
    app = (
        "<jsdl:Application><posix:POSIXApplication><posix:Executable>/bin/true"
        "</posix:Executable></posix:POSIXApplication></jsdl:Application>"
    )
    assert lease_of(load_job_definition(document("", application=app))) is None
    with_lease = load_job_definition(
        document("<vm:Lease><vm:User>ana</vm:User></vm:Lease>", application=app)
    )
    assert lease_of(with_lease) == Lease(user="ana")
    problems = unsupported(
        with_lease, VmDefaults(), Catalog(list(BUILT_IN_TEMPLATES)), ["volunteers"]
    )
    assert problems == ["vm:Lease with an application (a lease runs none; drop one or the other)"]


def test_a_lease_in_tiny_is_refused_at_submission() -> None:
    data = document("<vm:Lease/>").replace(b"debian-12", b"tiny")
    problems = unsupported(
        load_job_definition(data), VmDefaults(), Catalog(list(BUILT_IN_TEMPLATES)), []
    )
    assert problems == [
        "vm:Lease in template 'tiny', which has no cloud-init to install SSH keys "
        "(use the template debian-12)"
    ]


@pytest.mark.parametrize(
    ("lease", "message"),
    [
        ("<vm:SSHPublicKey>not a key</vm:SSHPublicKey>", "not an SSH public key"),
        (
            "<vm:SSHPublicKey>-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n"
            "-----END OPENSSH PRIVATE KEY-----</vm:SSHPublicKey>",
            "private key",
        ),
        (f'<vm:SSHPublicKey>command="rm -rf /" {KEY}</vm:SSHPublicKey>', "option"),
        ("<vm:User>Root Admin</vm:User>", "not accepted by the pattern"),
    ],
)
def test_bad_keys_and_logins_are_refused_saying_why(lease: str, message: str) -> None:
    with pytest.raises(JsdlError, match=message):
        load_job_definition(document(f"<vm:Lease>{lease}</vm:Lease>"))


def test_a_lease_network_forwards_ssh_and_fixes_every_host_port() -> None:
    given = Network(port_forwards=(PortForward(guest_port=8888),))
    network = lease_network(given)
    assert network.mode is NetworkMode.NAT
    assert not network.outbound
    assert [f.guest_port for f in network.port_forwards] == [22, 8888]
    for forward in network.port_forwards:
        assert forward.host_port > 0
        with socket.socket() as probe:  # free now, on loopback
            probe.bind((forward.host_address, forward.host_port))
    pinned = lease_network(Network(mode=NetworkMode.NAT, outbound=True, port_forwards=(
        PortForward(guest_port=22, host_port=2222),
    )))  # fmt: skip
    assert [(f.guest_port, f.host_port) for f in pinned.port_forwards] == [(22, 2222)]
    assert pinned.outbound


def test_a_lease_port_is_never_exposed_on_the_volunteers_network() -> None:
    data = document(
        '<vm:Network mode="nat"><vm:PortForward guestPort="22" hostAddress="0.0.0.0"/>'
        "</vm:Network><vm:Lease/>"
    )
    problems = unsupported(
        load_job_definition(data), VmDefaults(), Catalog(list(BUILT_IN_TEMPLATES)), []
    )
    assert problems == [
        "vm:PortForward hostAddress '0.0.0.0' in a VM lease (its ports stay on the worker's "
        "loopback and are reached through the service)"
    ]
