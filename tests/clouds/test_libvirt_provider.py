"""The libvirt provider: lifecycle, placement and errors on libvirt's test driver, then one
worker instance booted for real by a private libvirtd.

libvirt's test driver (``test:///PATH`` to a node description) is an in-memory hypervisor: it
defines and starts domains and makes volumes (with backing stores) without running anything.
Its volumes take no uploads, so the seed's contents and the boot itself are checked only by the
slow test, whose guest reads the seed and calls the host back over user-mode networking.
"""

from __future__ import annotations

import http.server
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from bes.clouds._libvirt_xml import seed_iso
from bes.clouds.base import (
    TAG_DEPLOYMENT,
    TAG_POOL,
    CloudError,
    CloudErrorKind,
    Flavor,
    InstanceRequest,
    InstanceState,
)
from bes.clouds.libvirt import LibvirtProvider
from bes.errors import ConfigError
from bes.vm.spec import ImageRef
from tests.support.libvirt_hosts import IMAGE_BYTES, Hosts
from tests.support.libvirtd import private_libvirtd
from tests.support.vm import qemu_processes, tiny_repository

try:
    import libvirt
except ImportError:
    if os.environ.get("BES_REQUIRE_VM") == "1":
        raise
    pytest.skip("pip install 'bes[libvirt]' (needs libvirt-dev)", allow_module_level=True)

SMALL = Flavor(name="small", memory_mib=1024, vcpus=1)
LARGE = Flavor(name="large", memory_mib=4096, vcpus=4, disk_gb=10)
TAGS = {TAG_DEPLOYMENT: "dep-1", TAG_POOL: "cloud:lv"}

DOWN = "qemu:///system?socket=/nonexistent/libvirt-sock"
log = logging.getLogger(__name__)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    made = Hosts(tmp_path)
    yield made
    made.close()


def provider(hosts: Hosts, uris: list[str], **kwargs: Any) -> LibvirtProvider:
    options: dict[str, Any] = {
        "image": "worker.qcow2",
        "flavors": [LARGE, SMALL],
        "kernel": "/srv/bes/vmlinux",
        "initrd": "/srv/bes/initramfs",
        "cmdline": "console=ttyS0 quiet",
        "connect": hosts.connect,
    }
    return LibvirtProvider(uris, **(options | kwargs))


def request(name: str = "w-1", flavor: Flavor = SMALL, **kwargs: Any) -> InstanceRequest:
    return InstanceRequest(
        name=name, flavor=flavor, user_data="#cloud-config\n{}\n", tags=TAGS, **kwargs
    )


def domain_of(hosts: Hosts, uri: str, instance_id: str) -> ET.Element:
    return ET.fromstring(hosts.connect(uri).lookupByUUIDString(instance_id).XMLDesc(0))


def test_an_instance_is_created_found_by_its_tags_and_destroyed(hosts: Hosts) -> None:
    uri = hosts.add("h1", memory_mib=8192, cpus=4)
    cloud = provider(hosts, [uri])
    assert [f.name for f in cloud.flavors()] == ["small", "large"]

    made = cloud.create(request())
    assert (made.name, made.state, made.host, dict(made.tags)) == ("w-1", "running", uri, TAGS)
    assert hosts.volumes(uri) == ["w-1-seed.iso", "w-1.qcow2", "worker.qcow2"]
    overlay = ET.fromstring(hosts.connect(uri).storageVolLookupByPath("/pool/w-1.qcow2").XMLDesc(0))
    assert overlay.findtext("backingStore/path") == "/pool/worker.qcow2"
    assert overlay.find("backingStore/format").get("type") == "qcow2"
    assert overlay.find("target/format").get("type") == "qcow2"
    assert int(overlay.findtext("capacity")) == IMAGE_BYTES  # no disk in the flavor: the image's

    domain = domain_of(hosts, uri, made.id)
    assert domain.get("type") == "qemu"
    assert domain.findtext("memory") == str(1024 * 1024)  # KiB
    assert domain.findtext("vcpu") == "1"
    assert [domain.findtext(f"os/{tag}") for tag in ("kernel", "initrd", "cmdline")] == [
        "/srv/bes/vmlinux",
        "/srv/bes/initramfs",
        "console=ttyS0 quiet",
    ]
    assert domain.find("features/acpi") is not None
    disks = {d.find("target").get("dev"): d for d in domain.iterfind("devices/disk")}
    assert disks["vda"].find("source").attrib == {"pool": "default", "volume": "w-1.qcow2"}
    assert disks["vdb"].find("source").attrib == {"pool": "default", "volume": "w-1-seed.iso"}
    assert disks["vdb"].find("readonly") is not None and disks["vda"].find("readonly") is None
    assert {d.find("target").get("bus") for d in disks.values()} == {"virtio"}
    interface = domain.find("devices/interface")
    assert (interface.get("type"), interface.find("model").get("type")) == ("user", "virtio")
    serial = domain.find("devices/serial")
    assert serial.get("type") == "file"
    assert serial.find("source").get("path") == "/var/log/libvirt/qemu/w-1.console.log"

    assert [i.id for i in cloud.instances(TAGS)] == [made.id]
    assert [i.id for i in cloud.instances({TAG_POOL: "cloud:lv"})] == [made.id]
    assert cloud.instances({**TAGS, TAG_POOL: "cloud:other"}) == []
    found = cloud.instances({})[0]
    assert (found.name, found.state, found.host, dict(found.tags)) == ("w-1", "running", uri, TAGS)

    assert cloud.destroy([made.id]) == {made.id: True}
    assert cloud.instances(TAGS) == []
    assert hosts.domains(uri) == []
    assert hosts.volumes(uri) == ["worker.qcow2"]
    assert cloud.destroy([made.id, "not-a-uuid"]) == {made.id: False, "not-a-uuid": False}
    cloud.close()


def test_a_bootloader_image_on_a_libvirt_network_with_the_flavors_disk(hosts: Hosts) -> None:
    uri = hosts.add("h1", memory_mib=8192, cpus=4)
    cloud = LibvirtProvider(
        [uri],
        image="/pool/worker.qcow2",  # by path, in whichever pool holds it
        flavors=[SMALL, LARGE],
        network="isolated",
        domain_type="kvm",
        console_dir="/srv/consoles/",
        connect=hosts.connect,
    )
    made = cloud.create(request(flavor=LARGE))
    domain = domain_of(hosts, uri, made.id)
    assert domain.get("type") == "kvm"
    assert domain.find("os/kernel") is None
    assert domain.find("os/boot").get("dev") == "hd"
    interface = domain.find("devices/interface")
    assert (interface.get("type"), interface.find("source").get("network")) == (
        "network",
        "isolated",
    )
    assert domain.find("devices/serial/source").get("path") == "/srv/consoles/w-1.console.log"
    assert domain.findtext("vcpu") == "4"
    overlay = hosts.connect(uri).storageVolLookupByPath("/pool/w-1.qcow2")
    assert overlay.info()[1] == 10 * 1024**3  # the flavor's disk, larger than the image
    assert cloud.destroy([made.id]) == {made.id: True}


def test_placement_takes_the_host_with_most_free_memory_that_fits(hosts: Hosts) -> None:
    small = hosts.add("small", memory_mib=2048, cpus=2)
    big = hosts.add("big", memory_mib=8192, cpus=4)
    cloud = provider(hosts, [small, big])

    assert cloud.create(request("a")).host == big
    # A host where an earlier instance failed to boot is avoided while another one fits...
    assert cloud.create(request("b", avoid_hosts=frozenset({big}))).host == small
    # ... and used when it is the only one that fits (4096 MiB, 4 vCPUs).
    assert cloud.create(request("c", LARGE, avoid_hosts=frozenset({big}))).host == big
    # CPUs count as well as memory.
    assert cloud.create(request("d", Flavor(name="cpus", memory_mib=512, vcpus=3))).host == big
    assert sorted(i.name for i in cloud.instances(TAGS) if i.host == big) == ["a", "c", "d"]

    with pytest.raises(CloudError) as caught:
        cloud.create(request("e", Flavor(name="huge", memory_mib=16384, vcpus=1)))
    assert caught.value.kind is CloudErrorKind.FLAVOR
    assert "16384 MiB" in caught.value.message and "8192 MiB free" in caught.value.message
    assert not caught.value.retryable
    ids = [i.id for i in cloud.instances(TAGS)]
    assert cloud.destroy(ids) == dict.fromkeys(ids, True)
    assert hosts.domains(small) == hosts.domains(big) == []


def test_a_host_that_does_not_answer_is_left_out_or_makes_the_call_unavailable(
    hosts: Hosts,
) -> None:
    up = hosts.add("up", memory_mib=2048, cpus=2)
    cloud = provider(hosts, [DOWN, up])
    made = cloud.create(request())
    assert made.host == up
    with pytest.raises(CloudError) as caught:
        cloud.create(request("w-2", LARGE))  # fits nowhere that answered: may fit later
    assert caught.value.kind is CloudErrorKind.UNAVAILABLE and caught.value.retryable
    assert "/nonexistent/libvirt-sock" in caught.value.message
    for call in (lambda: cloud.instances(TAGS), lambda: cloud.destroy(["0" * 32])):
        with pytest.raises(CloudError) as caught:
            call()  # a partial answer could make a reconciler forget instances
        assert caught.value.kind is CloudErrorKind.UNAVAILABLE
    assert cloud.destroy([made.id]) == {made.id: True}  # found on a host that answered


def test_libvirt_errors_become_cloud_errors_and_leave_nothing_behind(hosts: Hosts) -> None:
    with pytest.raises(CloudError) as caught:
        LibvirtProvider([DOWN], image="worker.qcow2", flavors=[SMALL]).create(request())
    assert caught.value.kind is CloudErrorKind.UNAVAILABLE
    assert "Failed to connect socket" in caught.value.message

    bare = hosts.add("bare", memory_mib=8192, cpus=4, image=False)
    for cloud in (provider(hosts, [bare]), provider(hosts, [bare], storage_pool="nowhere")):
        with pytest.raises(CloudError) as caught:
            cloud.create(request())
        assert caught.value.kind is CloudErrorKind.IMAGE, caught.value.message
        assert "worker image" in caught.value.message
    assert hosts.domains(bare) == [] and hosts.volumes(bare) == []

    uri = hosts.add("h1", memory_mib=8192, cpus=4)
    cloud = provider(hosts, [uri])
    first = cloud.create(request())
    with pytest.raises(CloudError) as caught:
        cloud.create(request())  # the name is taken
    assert caught.value.kind is CloudErrorKind.REFUSED
    assert [i.id for i in cloud.instances(TAGS)] == [first.id]
    assert cloud.destroy([first.id]) == {first.id: True}

    # A volume already bearing the overlay's name: refused after the domain was defined, which
    # is undefined again; the volume, not made by this call, stays.
    hosts.connect(uri).storagePoolLookupByName("default").createXML(
        "<volume><name>w-2.qcow2</name><capacity>1024</capacity></volume>", 0
    )
    with pytest.raises(CloudError) as caught:
        cloud.create(request("w-2"))
    assert caught.value.kind is CloudErrorKind.REFUSED
    assert hosts.domains(uri) == []
    assert hosts.volumes(uri) == ["w-2.qcow2", "worker.qcow2"]

    with pytest.raises(CloudError) as caught:
        cloud.create(request("../etc"))
    assert caught.value.kind is CloudErrorKind.REFUSED


def test_stopped_and_half_made_instances_are_listed_and_destroyed(hosts: Hosts) -> None:
    uri = hosts.add("h1", memory_mib=8192, cpus=4)
    cloud = provider(hosts, [uri])
    made = cloud.create(request())
    conn = hosts.connect(uri)
    conn.lookupByUUIDString(made.id).destroy()  # the guest powered itself off
    conn.storageVolLookupByPath("/pool/w-1-seed.iso").delete(0)  # as if a crash came first
    assert [(i.id, i.state) for i in cloud.instances(TAGS)] == [(made.id, InstanceState.STOPPED)]
    assert cloud.destroy([made.id]) == {made.id: True}
    assert hosts.domains(uri) == [] and hosts.volumes(uri) == ["worker.qcow2"]


def test_domains_that_are_not_ours_are_neither_listed_nor_destroyed(hosts: Hosts) -> None:
    uri = hosts.add("h1", memory_mib=8192, cpus=4)
    cloud = provider(hosts, [uri])
    foreign = hosts.connect(uri).defineXML(
        "<domain type='qemu'><name>admin-vm</name><memory>131072</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    assert cloud.instances({}) == []
    assert cloud.destroy([foreign.UUIDString()]) == {foreign.UUIDString(): False}
    assert hosts.domains(uri) == ["admin-vm"]


def test_a_dropped_connection_is_opened_again(hosts: Hosts) -> None:
    uri = hosts.add("h1", memory_mib=8192, cpus=4)
    cloud = provider(hosts, [uri])
    assert cloud.instances(TAGS) == []
    hosts.connect(uri).close()
    assert cloud.instances(TAGS) == []
    assert hosts.opened == 2


def test_the_seed_is_a_nocloud_iso_with_the_users_data() -> None:
    data = seed_iso("Worker_7.a", "#!/bin/sh\necho hi\n")
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"

        def read(name: str) -> bytes:
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
            return out.getvalue()

        assert read("user-data") == b"#!/bin/sh\necho hi\n"
        meta = json.loads(read("meta-data"))
        assert meta == {"instance-id": "Worker_7.a", "local-hostname": "worker-7-a"}
    finally:
        iso.close()


def test_without_libvirt_python_the_module_imports_and_the_provider_says_why() -> None:
    code = (
        "import sys; sys.modules['libvirt'] = None\n"
        "from bes.clouds.libvirt import LibvirtProvider\n"
        "from bes.clouds.base import Flavor\n"
        "from bes.errors import ConfigError\n"
        "try:\n"
        "    LibvirtProvider(['test:///default'], image='x', flavors=[Flavor(name='s',"
        " memory_mib=1, vcpus=1)])\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'bes[libvirt]'" in out.stdout


def test_configuration_mistakes_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        LibvirtProvider([], image="x", flavors=[SMALL])
    with pytest.raises(ConfigError):
        LibvirtProvider(["test:///default"], image="x", flavors=[])
    with pytest.raises(ConfigError):
        LibvirtProvider(["test:///default"], image="x", flavors=[SMALL], initrd="/boot/initrd")


# -- a real guest --------------------------------------------------------------------------


class _Callbacks(http.server.BaseHTTPRequestHandler):
    paths: list[str]

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def callbacks() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on the host's loopback that records the paths guests ask for."""
    paths: list[str] = []
    handler = type("Handler", (_Callbacks,), {"paths": paths})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], paths
    server.shutdown()
    server.server_close()


@pytest.mark.slow
@pytest.mark.vm
def test_a_worker_instance_boots_on_a_real_libvirtd_and_calls_the_host(
    callbacks: tuple[int, list[str]],
) -> None:
    boot, _ = tiny_repository().resolve(ImageRef(template="tiny"))
    assert boot.kernel is not None and boot.kernel.initrd is not None
    port, paths = callbacks
    # tiny runs "#!" user-data: it configures the NIC by hand (no DHCP client in it) and asks
    # the host's loopback, 10.0.2.2 in QEMU's user-mode network, for a page.
    user_data = (
        "#!/bin/sh\n"
        'echo "bes-instance $(hostname) booted"\n'
        "ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0\n"
        f'wget -q -O - "http://10.0.2.2:{port}/hello/$(hostname)"\n'
        "sleep 600\n"
    )
    tiny_flavor = Flavor(name="tiny", memory_mib=256, vcpus=1)
    with private_libvirtd() as daemon:
        conn = libvirt.open(daemon.uri)
        pool = conn.storagePoolLookupByName(daemon.pool)
        # tiny needs no disk; the overlay is still made on a (blank) worker image.
        pool.createXML(
            "<volume><name>worker.qcow2</name><capacity unit='MiB'>64</capacity>"
            "<target><format type='qcow2'/></target></volume>",
            0,
        )
        cloud = LibvirtProvider(
            [daemon.uri],
            image="worker.qcow2",
            flavors=[tiny_flavor],
            kernel=str(boot.kernel.kernel),
            initrd=str(boot.kernel.initrd),
            cmdline=boot.kernel.cmdline,
        )
        try:
            started = time.monotonic()
            made = cloud.create(
                InstanceRequest(
                    name="bes-w-1", flavor=cloud.flavors()[0], user_data=user_data, tags=TAGS
                )
            )
            create_s = time.monotonic() - started
            assert made.state is InstanceState.RUNNING and made.host == daemon.uri
            deadline = time.monotonic() + 180
            while "/hello/bes-w-1" not in paths and time.monotonic() < deadline:
                time.sleep(0.2)
            called_s = time.monotonic() - started
            console = daemon.qemu_log_dir / "bes-w-1.console.log"
            assert "/hello/bes-w-1" in paths, console.read_text(errors="replace")[-2000:]
            assert "bes-instance bes-w-1 booted" in console.read_text(errors="replace")
            assert [(i.id, i.state) for i in cloud.instances(TAGS)] == [
                (made.id, InstanceState.RUNNING)
            ]
            assert qemu_processes("bes-w-1") != []

            assert cloud.destroy([made.id]) == {made.id: True}
            assert conn.listAllDomains(0) == []
            assert [v.name() for v in pool.listAllVolumes()] == ["worker.qcow2"]
            assert sorted(p.name for p in (daemon.root / "pool").iterdir()) == ["worker.qcow2"]
            assert qemu_processes("bes-w-1") == []

            # Errors that come back through libvirtd's remote protocol keep their kind.
            missing = LibvirtProvider([daemon.uri], image="missing.qcow2", flavors=[tiny_flavor])
            with pytest.raises(CloudError) as caught:
                missing.create(request("bes-w-2", tiny_flavor))
            missing.close()
            assert caught.value.kind is CloudErrorKind.IMAGE, caught.value.message
            assert conn.listAllDomains(0) == []
        finally:
            cloud.close()
            conn.close()
    log.info(
        "create %.2f s; the guest called the host %.2f s after create began", create_s, called_s
    )
