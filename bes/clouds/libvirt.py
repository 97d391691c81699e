"""Worker instances as libvirt domains, on one or more hosts.

Hosts are libvirt URIs (``qemu:///system``, ``qemu+ssh://host/system``; ``test:///`` in tests).
What :meth:`LibvirtProvider.create` makes on the chosen host, all through the libvirt API (so a
remote host needs nothing but libvirtd and the worker image in a storage pool):

* a persistent domain, defined first, whose ``<metadata>`` (namespace :data:`bes.ns.BES_CLOUD`)
  holds the request's tags and the names of the volumes made for it. Defining it before making
  anything else means that whatever a crash leaves behind is found by :meth:`instances` and
  removed by :meth:`destroy`; persistent (not transient) so that a guest that powered itself
  off, or a libvirtd restart, leaves a listed ``stopped`` instance rather than orphan volumes;
* ``NAME.qcow2``, a qcow2 overlay backed by the worker image, and ``NAME-seed.iso``, the
  cloud-init NoCloud seed (volume label ``cidata``; meta-data: instance-id and local-hostname =
  the request's name, user-data = the request's), uploaded with the stream API. Both sit in the
  configured storage pool and are attached as virtio disks (``vda``, ``vdb`` read-only).

The guest boots the image's bootloader, or the configured kernel, initrd and command line (host
paths: QEMU direct kernel boot, for images without a bootloader). Networking is QEMU's user
mode by default: no bridge, dnsmasq or firewall on the host, and the guest reaches the host's
loopback at ``10.0.2.2`` (the service, or a proxy to it); another ``network`` names a libvirt
network. The serial console goes to ``CONSOLE_DIR/NAME.console.log`` on the host, which
:meth:`destroy` leaves in place, like libvirt's own per-domain logs, for post-mortems.

Placement: among the hosts that answer, the one with the most free memory (free, buffers and
page cache) holding the flavor's memory and with at least as many CPUs as its vCPUs, other than
``avoid_hosts`` when one of those fits. No reservation is subtracted: QEMU takes a guest's
memory as the guest touches it, so a burst of creates lands on one host until its guests grow.

libvirt's test driver keeps no disks: its volumes cannot take uploads (the seed is then skipped)
and it reports no real free memory (its total memory is used). Everything else is the same.
libvirt-python is an optional dependency (``pip install 'bes[libvirt]'``, built against
``libvirt-dev``); without it this module imports, and the provider refuses to be built.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Final

from bes.clouds._libvirt_xml import (
    Guest,
    Metadata,
    domain_xml,
    overlay_xml,
    parse_metadata,
    seed_iso,
    seed_volume_xml,
    volume_format,
)
from bes.clouds.base import (
    CloudError,
    CloudErrorKind,
    CloudProvider,
    Flavor,
    Instance,
    InstanceRequest,
    InstanceState,
)
from bes.errors import ConfigError
from bes.ns import BES_CLOUD

_MISSING: str | None = None
try:
    import libvirt
except ImportError as exc:  # the optional extra bes[libvirt] is not installed
    _MISSING = str(exc)

log = logging.getLogger(__name__)

_STATES: Final[Mapping[int, InstanceState]] = {
    0: InstanceState.PENDING,  # VIR_DOMAIN_NOSTATE
    1: InstanceState.RUNNING,  # VIR_DOMAIN_RUNNING
    2: InstanceState.RUNNING,  # VIR_DOMAIN_BLOCKED: running, waiting on a resource
    3: InstanceState.STOPPED,  # VIR_DOMAIN_PAUSED
    4: InstanceState.STOPPED,  # VIR_DOMAIN_SHUTDOWN: being shut down
    5: InstanceState.STOPPED,  # VIR_DOMAIN_SHUTOFF
    6: InstanceState.ERROR,  # VIR_DOMAIN_CRASHED
    7: InstanceState.STOPPED,  # VIR_DOMAIN_PMSUSPENDED
}
_TEST_DRIVER: Final = "TEST"  # virConnectGetType of libvirt's test:/// driver
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_UPLOAD_CHUNK: Final = 256 * 1024
_MIB: Final = 1024 * 1024


class LibvirtProvider(CloudProvider):
    """Starts worker instances as QEMU domains on libvirt hosts.

    Connections are opened on first use, kept, and opened again once they fail.
    """

    name = "libvirt"

    def __init__(
        self,
        uris: Sequence[str],
        *,
        image: str,
        flavors: Sequence[Flavor],
        storage_pool: str = "default",
        kernel: str | None = None,
        initrd: str | None = None,
        cmdline: str | None = None,
        network: str = "user",
        domain_type: str = "qemu",
        console_dir: str = "/var/log/libvirt/qemu",
        connect: Callable[[str], Any] | None = None,
    ) -> None:
        """Configure the provider; nothing is contacted yet.

        Args:
            uris: The hosts, as libvirt connection URIs.
            image: The worker image: a volume name in ``storage_pool`` on every host, or the
                absolute path of a volume in any of a host's pools.
            flavors: The sizes an instance can have.
            storage_pool: Where the image is and where overlays and seeds are made.
            kernel: Host path of a kernel to boot directly (images without a bootloader).
            initrd: Host path of its initramfs.
            cmdline: Its command line.
            network: ``user`` (QEMU user-mode networking) or a libvirt network's name.
            domain_type: ``qemu`` (TCG: works everywhere) or ``kvm``.
            console_dir: Host directory for the serial console logs.
            connect: Opens a connection (default ``libvirt.open``); the tests' seam.

        Raises:
            ConfigError: libvirt-python is missing, or the configuration is inconsistent.
        """
        if _MISSING is not None:
            raise ConfigError(
                "the libvirt cloud provider needs libvirt-python: pip install 'bes[libvirt]' "
                f"(it builds against libvirt-dev and pkg-config) ({_MISSING})"
            )
        if not uris:
            raise ConfigError("the libvirt provider needs at least one host URI")
        if not flavors:
            raise ConfigError("the libvirt provider needs at least one flavor")
        if kernel is None and (initrd is not None or cmdline is not None):
            raise ConfigError("an initrd or kernel command line needs a kernel")
        self._uris = tuple(dict.fromkeys(uris))
        self._image = image
        self._flavors = tuple(sorted(flavors, key=lambda f: (f.memory_mib, f.vcpus)))
        self._pool = storage_pool
        self._guest = Guest(
            domain_type=domain_type,
            kernel=kernel,
            initrd=initrd,
            cmdline=cmdline,
            network=network,
            console_dir=console_dir,
        )
        self._connect = connect or libvirt.open
        self._conns: dict[str, Any] = {}
        self._lock = threading.Lock()
        # libvirt prints every error on stderr by default; ours reach the caller as CloudError.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

    def flavors(self) -> Sequence[Flavor]:
        return self._flavors

    def create(self, request: InstanceRequest) -> Instance:
        name = request.name
        if not _NAME.fullmatch(name):
            raise CloudError(CloudErrorKind.REFUSED, f"{name!r} cannot name a libvirt domain")
        seed = seed_iso(name, request.user_data)
        uri, conn = self._place(request)
        started = time.monotonic()
        with self._guard(uri, f"finding the worker image {self._image}"):
            pool = conn.storagePoolLookupByName(self._pool)
            image = (
                conn.storageVolLookupByPath(self._image)
                if self._image.startswith("/")
                else pool.storageVolLookupByName(self._image)
            )
            image_format = volume_format(image.XMLDesc(0))
            capacity = max(int(image.info()[1]), (request.flavor.disk_gb or 0) * 1024 * _MIB)
        overlay, seed_volume = f"{name}.qcow2", f"{name}-seed.iso"
        metadata = Metadata(
            tags=dict(request.tags), volumes=((self._pool, overlay), (self._pool, seed_volume))
        )
        with self._guard(uri, f"defining {name}"):
            domain = conn.defineXML(domain_xml(name, request.flavor, metadata, self._guest))
        made: list[tuple[str, str]] = []  # on failure, delete these, not a namesake found there
        try:
            with self._guard(uri, f"starting {name}"):
                pool.createXML(
                    overlay_xml(
                        overlay, capacity, backing_path=image.path(), backing_format=image_format
                    ),
                    0,
                )
                made.append((self._pool, overlay))
                volume = pool.createXML(seed_volume_xml(seed_volume, len(seed)), 0)
                made.append((self._pool, seed_volume))
                _upload(conn, volume, seed)
                domain.create()
                instance = self._instance(uri, domain, metadata)
        except BaseException:
            with suppress(CloudError):
                self._remove(uri, conn, domain, volumes=made)
            raise
        log.info(
            "started instance %s (%s) on %s in %.2f s",
            name,
            request.flavor.name,
            uri,
            time.monotonic() - started,
        )
        return instance

    def instances(self, tags: Mapping[str, str]) -> Sequence[Instance]:
        found = []
        for uri in self._uris:
            conn = self._conn(uri)
            with self._guard(uri, "listing domains"):
                for domain in conn.listAllDomains(0):
                    try:
                        metadata = _metadata(domain)
                        if metadata is None or any(
                            metadata.tags.get(k) != v for k, v in tags.items()
                        ):
                            continue
                        found.append(self._instance(uri, domain, metadata))
                    except libvirt.libvirtError as exc:
                        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                            raise
                        # it went away while we looked
        return found

    def destroy(self, ids: Sequence[str]) -> Mapping[str, bool]:
        conns, down = {}, []
        for uri in self._uris:
            try:
                conns[uri] = self._conn(uri)
            except CloudError as exc:
                if exc.kind is not CloudErrorKind.UNAVAILABLE:
                    raise
                down.append(exc.message)
        outcome: dict[str, bool] = {}
        for instance_id in ids:
            outcome[instance_id] = False
            for uri, conn in conns.items():
                with self._guard(uri, f"looking up {instance_id}"):
                    domain = _lookup(conn, instance_id)
                if domain is not None:
                    self._remove(uri, conn, domain)
                    outcome[instance_id] = True
                    break
            if not outcome[instance_id] and down:
                raise CloudError(
                    CloudErrorKind.UNAVAILABLE,
                    f"instance {instance_id} may be on a host that did not answer: "
                    + "; ".join(down),
                )
        return outcome

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            with suppress(libvirt.libvirtError):
                conn.close()

    # -- hosts ---------------------------------------------------------------------------

    def _conn(self, uri: str) -> Any:
        with self._lock:
            conn = self._conns.get(uri)
            if conn is not None:
                with suppress(libvirt.libvirtError):
                    if conn.isAlive():
                        return conn
                del self._conns[uri]
                with suppress(libvirt.libvirtError):
                    conn.close()
            try:
                conn = self._connect(uri)
            except libvirt.libvirtError as exc:
                raise CloudError(
                    CloudErrorKind.UNAVAILABLE, f"cannot connect to {uri}: {_message(exc)}"
                ) from exc
            self._conns[uri] = conn
            return conn

    @contextmanager
    def _guard(self, uri: str, what: str) -> Iterator[None]:
        """Turn libvirt's errors into CloudError; forget a connection that failed."""
        try:
            yield
        except libvirt.libvirtError as exc:
            kind = _kind(exc)
            if kind is CloudErrorKind.UNAVAILABLE:
                with self._lock:
                    self._conns.pop(uri, None)
            raise CloudError(kind, f"{what} on {uri}: {_message(exc)}") from exc

    def _place(self, request: InstanceRequest) -> tuple[str, Any]:
        flavor = request.flavor
        fits: list[tuple[int, str, Any]] = []
        short, down = [], []
        for uri in self._uris:
            try:
                conn = self._conn(uri)
                with self._guard(uri, "reading free memory"):
                    free_mib, cpus = _capacity(conn)
            except CloudError as exc:
                if exc.kind is not CloudErrorKind.UNAVAILABLE:
                    raise
                log.warning("libvirt host left out of placement: %s", exc.message)
                down.append(exc.message)
                continue
            if free_mib >= flavor.memory_mib and cpus >= flavor.vcpus:
                fits.append((free_mib, uri, conn))
            else:
                short.append(f"{uri}: {free_mib} MiB free, {cpus} CPUs")
        if not fits:
            wanted = f"{flavor.memory_mib} MiB and {flavor.vcpus} vCPUs"
            if down:  # a host that did not answer may fit once it does
                raise CloudError(
                    CloudErrorKind.UNAVAILABLE,
                    f"no libvirt host that answered has {wanted} free; " + "; ".join(down),
                )
            raise CloudError(
                CloudErrorKind.FLAVOR, f"no libvirt host has {wanted} free ({'; '.join(short)})"
            )
        preferred = [fit for fit in fits if fit[1] not in request.avoid_hosts] or fits
        _free, uri, conn = max(preferred, key=lambda fit: fit[0])
        return uri, conn

    # -- domains -------------------------------------------------------------------------

    def _instance(self, uri: str, domain: Any, metadata: Metadata) -> Instance:
        state = int(domain.state(0)[0])
        if state not in _STATES:
            log.warning("domain %s is in unknown libvirt state %d", domain.name(), state)
        return Instance(
            id=str(domain.UUIDString()),
            name=str(domain.name()),
            state=_STATES.get(state, InstanceState.PENDING),
            tags=metadata.tags,
            host=uri,
        )

    def _remove(
        self,
        uri: str,
        conn: Any,
        domain: Any,
        *,
        volumes: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        """Power off and undefine a domain, then delete its volumes (default: those its
        metadata names)."""
        name = str(domain.name())
        with self._guard(uri, f"deleting {name}"):
            if volumes is None:
                metadata = _metadata(domain)
                volumes = metadata.volumes if metadata else ()
            with _unless(libvirt.VIR_ERR_OPERATION_INVALID):  # it stopped meanwhile
                if domain.isActive():
                    domain.destroy()
            with _unless(libvirt.VIR_ERR_NO_DOMAIN):  # transient, gone with its process
                domain.undefine()
            for pool_name, volume in volumes:
                with _unless(libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL):
                    conn.storagePoolLookupByName(pool_name).storageVolLookupByName(volume).delete(0)
        log.info("deleted instance %s on %s", name, uri)


# -- libvirt helpers ------------------------------------------------------------------------


def _capacity(conn: Any) -> tuple[int, int]:
    """Free memory (MiB) and CPUs of a host."""
    info = conn.getInfo()  # [model, memory MiB, CPUs, MHz, nodes, sockets, cores, threads]
    total_mib, cpus = int(info[1]), int(info[2])
    if conn.getType() == _TEST_DRIVER:
        return total_mib, cpus
    try:
        stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            raise
        return int(conn.getFreeMemory()) // _MIB, cpus
    # MemFree alone leaves out the page cache, which a host gives back on demand.
    free_kib = sum(int(stats.get(key, 0)) for key in ("free", "buffers", "cached"))
    return free_kib // 1024, cpus


def _lookup(conn: Any, instance_id: str) -> Any | None:
    """The domain with this UUID if it is one of ours."""
    try:
        domain = conn.lookupByUUIDString(instance_id)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
            return None
        raise
    return domain if _metadata(domain) is not None else None


def _metadata(domain: Any) -> Metadata | None:
    """Our metadata in a domain, None if it has none (not one of our instances)."""
    try:
        xml = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, BES_CLOUD, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise
    return parse_metadata(xml)


def _upload(conn: Any, volume: Any, data: bytes) -> None:
    stream = conn.newStream(0)
    try:
        volume.upload(stream, 0, len(data), 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT and conn.getType() == _TEST_DRIVER:
            log.debug("the test driver keeps no volume contents: seed not uploaded")
            return
        raise
    try:
        for offset in range(0, len(data), _UPLOAD_CHUNK):
            chunk = data[offset : offset + _UPLOAD_CHUNK]
            sent = 0
            while sent < len(chunk):
                count = int(stream.send(chunk[sent:]))
                if count <= 0:
                    raise CloudError(CloudErrorKind.REFUSED, "the seed upload stream stalled")
                sent += count
        stream.finish()
    except BaseException:
        with suppress(libvirt.libvirtError):
            stream.abort()
        raise


@contextmanager
def _unless(*codes: int) -> Iterator[None]:
    """Ignore the libvirt errors with these codes."""
    try:
        yield
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in codes:
            raise


def _kind(exc: Any) -> CloudErrorKind:
    code = exc.get_error_code()
    if exc.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE) or code in (
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_OPERATION_TIMEOUT,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
    ):
        return CloudErrorKind.UNAVAILABLE
    if code in (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL):
        return CloudErrorKind.IMAGE
    return CloudErrorKind.REFUSED


def _message(exc: Any) -> str:
    return str(exc.get_error_message() or exc)
