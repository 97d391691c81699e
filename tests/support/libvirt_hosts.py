"""Hosts of libvirt's test driver for the cloud tests: in-memory hypervisors described by node
files, with connections shared between the provider and the test (each opening of a node file
is a new, empty hypervisor)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

try:
    import libvirt
except ImportError:  # skips the test module importing this one
    if os.environ.get("BES_REQUIRE_VM") == "1":
        raise
    pytest.skip("pip install 'bes[libvirt]' (needs libvirt-dev)", allow_module_level=True)

IMAGE_BYTES = 2 * 1024**3


class Hosts:
    """Test-driver hosts described by node files (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._conns: dict[str, Any] = {}
        self.opened = 0

    def add(self, name: str, *, memory_mib: int, cpus: int, image: bool = True) -> str:
        volume = (
            "<volume type='file'><name>worker.qcow2</name>"
            f"<capacity unit='bytes'>{IMAGE_BYTES}</capacity>"
            "<target><path>/pool/worker.qcow2</path><format type='qcow2'/></target></volume>"
        )
        path = self._root / f"{name}.xml"
        path.write_text(
            f"""<node>
              <cpu><mhz>2000</mhz><model>x86_64</model><active>{cpus}</active>
                <total>{cpus}</total><nodes>1</nodes><sockets>1</sockets>
                <cores>{cpus}</cores><threads>1</threads></cpu>
              <memory>{memory_mib * 1024}</memory>
              <pool type='dir'><name>default</name><target><path>/pool</path></target>
                {volume if image else ""}</pool>
            </node>"""
        )
        return f"test://{path}"

    def connect(self, uri: str) -> Any:
        conn = self._conns.get(uri)
        if conn is None or not _alive(conn):
            conn = self._conns[uri] = libvirt.open(uri)
            self.opened += 1
        return conn

    def volumes(self, uri: str) -> list[str]:
        pool = self.connect(uri).storagePoolLookupByName("default")
        return sorted(volume.name() for volume in pool.listAllVolumes())

    def domains(self, uri: str) -> list[str]:
        return sorted(domain.name() for domain in self.connect(uri).listAllDomains())

    def close(self) -> None:
        for conn in self._conns.values():
            if _alive(conn):
                conn.close()


def _alive(conn: Any) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False
