"""What the libvirt provider writes and reads: domain and volume XML, our metadata, the seed.

Pure functions, no libvirt: the XML is built with ElementTree (so values are escaped) and the
only XML read back is libvirtd's own answer about what we wrote.
"""

from __future__ import annotations

import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bes.clouds.base import CloudError, CloudErrorKind, Flavor
from bes.errors import HypervisorError
from bes.ns import BES_CLOUD
from bes.vm.seed import write_seed


@dataclass(frozen=True, slots=True, kw_only=True)
class Metadata:
    """What a domain's ``<metadata>`` holds in our namespace.

    Attributes:
        tags: The instance's tags.
        volumes: The (storage pool, volume name) pairs made for it: its overlay, then its seed.
    """

    tags: Mapping[str, str]
    volumes: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Guest:
    """How every instance's domain looks, whatever its size (the provider's configuration).

    Attributes:
        domain_type: ``qemu`` (TCG) or ``kvm``.
        kernel: Host path of a kernel for direct boot; None boots the image's bootloader.
        initrd: Host path of its initramfs.
        cmdline: Its command line.
        network: ``user`` for QEMU user-mode networking, else a libvirt network's name.
        console_dir: Host directory of the serial console logs.
    """

    domain_type: str = "qemu"
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    network: str = "user"
    console_dir: str = "/var/log/libvirt/qemu"


def domain_xml(name: str, flavor: Flavor, metadata: Metadata, guest: Guest) -> str:
    """A persistent domain: the overlay as ``vda``, the seed as read-only ``vdb``, one NIC,
    the serial console to ``console_dir/NAME.console.log``."""
    root = ET.Element("domain", type=guest.domain_type)
    ET.SubElement(root, "name").text = name
    # Prefixed names spelled out: ElementTree would invent "ns0" for a namespaced tag.
    ours = ET.SubElement(ET.SubElement(root, "metadata"), "bes:instance")
    ours.set("xmlns:bes", BES_CLOUD)
    for key, value in sorted(metadata.tags.items()):
        ET.SubElement(ours, "bes:tag", name=key).text = value
    for pool, volume in metadata.volumes:
        ET.SubElement(ours, "bes:volume", pool=pool).text = volume
    ET.SubElement(root, "memory", unit="MiB").text = str(flavor.memory_mib)
    ET.SubElement(root, "vcpu").text = str(flavor.vcpus)
    os_ = ET.SubElement(root, "os")
    ET.SubElement(os_, "type").text = "hvm"
    if guest.kernel is None:
        ET.SubElement(os_, "boot", dev="hd")
    else:
        boot = (("kernel", guest.kernel), ("initrd", guest.initrd), ("cmdline", guest.cmdline))
        for tag, text in boot:
            if text is not None:
                ET.SubElement(os_, tag).text = text
    # Without ACPI a guest's poweroff only halts it and the domain stays "running".
    ET.SubElement(ET.SubElement(root, "features"), "acpi")
    for event, action in (("poweroff", "destroy"), ("reboot", "restart"), ("crash", "destroy")):
        ET.SubElement(root, f"on_{event}").text = action
    devices = ET.SubElement(root, "devices")
    for (pool, volume), fmt, dev in zip(
        metadata.volumes, ("qcow2", "raw"), ("vda", "vdb"), strict=True
    ):
        disk = ET.SubElement(devices, "disk", type="volume", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type=fmt)
        ET.SubElement(disk, "source", pool=pool, volume=volume)
        ET.SubElement(disk, "target", dev=dev, bus="virtio")
        if dev == "vdb":
            ET.SubElement(disk, "readonly")
    if guest.network == "user":
        interface = ET.SubElement(devices, "interface", type="user")
    else:
        interface = ET.SubElement(devices, "interface", type="network")
        ET.SubElement(interface, "source", network=guest.network)
    ET.SubElement(interface, "model", type="virtio")
    serial = ET.SubElement(devices, "serial", type="file")
    console = f"{guest.console_dir.rstrip('/')}/{name}.console.log"
    ET.SubElement(serial, "source", path=console)
    ET.SubElement(serial, "target", port="0")
    rng = ET.SubElement(devices, "rng", model="virtio")
    ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"
    return ET.tostring(root, encoding="unicode")


def parse_metadata(xml: str) -> Metadata:
    """Read what :func:`domain_xml` put in ``<metadata>``, as libvirtd returns it."""
    # libvirtd's own answer (it strips the namespace), holding what we wrote: not untrusted.
    root = ET.fromstring(xml)  # noqa: S314
    tags: dict[str, str] = {}
    volumes = []
    for element in root:
        tag = element.tag.rpartition("}")[2]
        name, pool = element.get("name"), element.get("pool")
        if tag == "tag" and name:
            tags[name] = element.text or ""
        elif tag == "volume" and pool and element.text:
            volumes.append((pool, element.text))
    return Metadata(tags=tags, volumes=tuple(volumes))


def volume_format(volume_xml: str) -> str:
    """A volume's format (``qcow2``, ``raw``) from libvirtd's description of it."""
    found = ET.fromstring(volume_xml).find("target/format")  # noqa: S314 - libvirtd's own
    return (found.get("type") if found is not None else None) or "raw"


def overlay_xml(name: str, capacity: int, *, backing_path: str, backing_format: str) -> str:
    """A qcow2 volume of ``capacity`` bytes backed by the worker image."""
    volume = _volume(name, capacity, "qcow2")
    backing = ET.SubElement(volume, "backingStore")
    ET.SubElement(backing, "path").text = backing_path
    ET.SubElement(backing, "format", type=backing_format)
    return ET.tostring(volume, encoding="unicode")


def seed_volume_xml(name: str, size: int) -> str:
    """A raw volume of ``size`` bytes for the seed."""
    return ET.tostring(_volume(name, size, "raw"), encoding="unicode")


def _volume(name: str, capacity: int, fmt: str) -> ET.Element:
    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(ET.SubElement(volume, "target"), "format", type=fmt)
    return volume


def seed_iso(name: str, user_data: str) -> bytes:
    """The NoCloud seed's bytes: instance-id = ``name``, local-hostname derived from it.

    Raises:
        CloudError: pycdlib could not build it (REFUSED).
    """
    hostname = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63] or "bes-worker"
    with tempfile.TemporaryDirectory(prefix="bes-seed-") as scratch:
        path = Path(scratch) / "seed.iso"
        try:
            write_seed(path, instance_id=name, hostname=hostname, user_data=user_data)
        except HypervisorError as exc:
            raise CloudError(CloudErrorKind.REFUSED, str(exc)) from exc
        return path.read_bytes()
