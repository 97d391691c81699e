"""Worker instances on an OpenStack cloud (public or private), through Apache Libcloud.

Libcloud's ``OpenStack_2_NodeDriver`` covers what a worker pool needs: Keystone v3 with a
password or an application credential, Nova's servers and flavors (``create_node`` sends the
image, flavor, base64 user-data, networks, security groups and metadata), Glance v2 images and
Neutron networks and security groups; its errors carry the HTTP status and the API's message.
openstacksdk would model more of OpenStack, but it brings keystoneauth, os-service-types,
dogpile.cache and a dozen more packages for the same five calls, and it does not reach EC2, GCE
or Azure. Where Libcloud 3.9 falls short this module works around it, using Libcloud's own
authenticated connections:

* Neutron security group rules lose their direction (every rule reads as ``ingress``), so the
  group is read as the API returns it (``GET /v2.0/security-groups?name=...``).
* The catalog is searched by service name as well as type (``nova``, ``glance``, ``neutron``,
  as DevStack and most clouds name them); a cloud that names them otherwise needs a subclass.
* ``auth_url`` is the Keystone root: the ``/v3`` that ``openrc`` files carry is removed here.
* Listing flavors parsed Libcloud's 4.5 MB price file once per flavor: an empty OpenStack price
  table is registered first.
* The request timeout is per request: a slow API fails after ``timeout_s``, but a call makes
  several requests (token, lookups, the create and a read back), each bounded by it.

Tags go into server metadata (Nova keeps up to 128 pairs of 255 characters). The worker only
connects out to the service, so the security group made for it has no ingress rule at all:
Neutron's default egress rules are all it needs.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from libcloud import pricing
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError
from libcloud.compute.base import Node, NodeImage
from libcloud.compute.drivers.openstack import (
    OpenStack_2_NodeDriver,
    OpenStackNetwork,
    OpenStackSecurityGroup,
)
from libcloud.compute.types import NodeState

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

_log = logging.getLogger(__name__)

USER_DATA_MAX_BYTES: Final = 65535
"""Nova's limit on user-data, counted after base64 encoding."""

_UUID = re.compile(r"[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}")

# Libcloud's reading of Nova's status; its UNKNOWN also covers PAUSED, SHELVED(_OFFLOADED),
# SOFT_DELETED and MIGRATING, which _VM_STATES tells apart by the server's vm_state.
_STATES: Final[Mapping[str, InstanceState]] = {
    NodeState.PENDING: InstanceState.PENDING,
    NodeState.STARTING: InstanceState.PENDING,
    NodeState.REBOOTING: InstanceState.PENDING,
    NodeState.RECONFIGURING: InstanceState.PENDING,
    NodeState.MIGRATING: InstanceState.PENDING,
    NodeState.RUNNING: InstanceState.RUNNING,
    NodeState.STOPPED: InstanceState.STOPPED,
    NodeState.STOPPING: InstanceState.STOPPED,
    NodeState.SUSPENDED: InstanceState.STOPPED,
    NodeState.PAUSED: InstanceState.STOPPED,
    NodeState.TERMINATED: InstanceState.STOPPED,
    NodeState.ERROR: InstanceState.ERROR,
}
_VM_STATES: Final[Mapping[str, InstanceState]] = {
    "building": InstanceState.PENDING,
    "active": InstanceState.RUNNING,
    "resized": InstanceState.RUNNING,
    "paused": InstanceState.STOPPED,
    "suspended": InstanceState.STOPPED,
    "stopped": InstanceState.STOPPED,
    "rescued": InstanceState.STOPPED,
    "shelved": InstanceState.STOPPED,
    "shelved_offloaded": InstanceState.STOPPED,
    "soft_deleted": InstanceState.STOPPED,
    "deleted": InstanceState.STOPPED,
    "error": InstanceState.ERROR,
}

# Nova's messages: "Quota exceeded for instances: Requested 1, but already used 10 of 10
# instances" (403, 413 before microversion 2.1), "Maximum number of ports exceeded" (403),
# "Image <id> could not be found." / "is not active." (400), "Flavor <id> could not be found.",
# "Flavor's disk is too small for requested image." (400).
_QUOTA = re.compile(r"quota|maximum number of \w+ exceeded", re.IGNORECASE)
_FLAVOR = re.compile(r"\bflavor", re.IGNORECASE)
_IMAGE = re.compile(
    r"\bimage\b.*\b(could not be found|not found|is not active|is unacceptable)", re.IGNORECASE
)
_UNAVAILABLE_CODES: Final = frozenset({408, 429, 502, 503, 504})


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenStackConfig:
    """Where and how to start worker instances on an OpenStack cloud.

    Give either ``username``, ``password`` and ``project_name``, or an application
    credential (``application_credential_id`` and ``application_credential_secret``, which
    carry their project).

    Attributes:
        auth_url: Keystone's URL (``https://cloud.example:5000`` or ``.../v3``).
        image: The worker image, by Glance id or by name (the newest active one of that name).
        region: Region of the service catalog's endpoints.
        username: User name, for password authentication.
        password: Its password.
        project_name: Project (tenant) the instances are started in.
        user_domain_name: Domain of the user.
        project_domain_id: Domain of the project.
        application_credential_id: Application credential, instead of a password.
        application_credential_secret: Its secret.
        network: Network to attach, by id or name; None lets Nova choose (the project's only
            network).
        security_group: Security group of the instances; made (without ingress rules) on first
            use when no group has that name.
        flavors: Flavor names the pool may use; empty for every flavor the project sees.
        timeout_s: Limit on each API request: a slower answer counts as the API unavailable.
    """

    auth_url: str
    image: str
    region: str = "RegionOne"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    project_name: str | None = None
    user_domain_name: str = "Default"
    project_domain_id: str = "default"
    application_credential_id: str | None = None
    application_credential_secret: str | None = field(default=None, repr=False)
    network: str | None = None
    security_group: str = "bes-worker"
    flavors: tuple[str, ...] = ()
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        with_password = bool(self.username and self.password and self.project_name)
        with_credential = bool(
            self.application_credential_id and self.application_credential_secret
        )
        if with_password == with_credential:
            raise ConfigError(
                "OpenStack: give either username, password and project_name, or "
                "application_credential_id and application_credential_secret"
            )
        if not self.auth_url.startswith(("http://", "https://")):
            raise ConfigError(f"OpenStack: auth_url {self.auth_url!r} is not an http(s) URL")
        if self.timeout_s <= 0:
            raise ConfigError("OpenStack: timeout_s must be positive")


class OpenStackProvider(CloudProvider):
    """Starts, lists and deletes worker instances on one OpenStack project and region.

    Nothing is asked of the cloud until the first call. The first :meth:`create` finds the
    image, network and security group (making the group if needed) and keeps them; an image
    that Nova no longer finds is looked up again on the next call. Calls are serialized: a
    Libcloud driver is not safe for concurrent use.

    ``InstanceRequest.avoid_hosts`` is not honored: choosing hosts needs an administrator's
    rights in Nova (or a server group), and failed boots are rare enough to retry as they come.
    """

    name = "openstack"

    def __init__(self, config: OpenStackConfig) -> None:
        self._config = config
        self._driver: Any = _driver(config)
        self._lock = threading.Lock()
        self._flavors: dict[str, tuple[Flavor, Any]] | None = None
        self._image: Any = None
        self._networks: list[Any] | None = None
        self._groups: list[Any] | None = None

    def flavors(self) -> Sequence[Flavor]:
        """The flavors the project may use (restricted to the configured ones), smallest first.

        Raises:
            CloudError: The API could not be asked, or none of the configured flavors exists.
        """
        with self._lock, _calling("list flavors"):
            return [flavor for flavor, _ in self._flavor_table().values()]

    def create(self, request: InstanceRequest) -> Instance:
        """Start one server with the request's flavor, user-data and tags (as metadata).

        Raises:
            CloudError: QUOTA, IMAGE, FLAVOR from Nova's answer; UNAVAILABLE when the API did
                not answer within ``timeout_s``; REFUSED for anything else.
        """
        encoded = len(base64.b64encode(request.user_data.encode()))
        if encoded > USER_DATA_MAX_BYTES:
            raise CloudError(
                CloudErrorKind.REFUSED,
                f"user-data of {request.name} is {encoded} bytes in base64, "
                f"Nova takes at most {USER_DATA_MAX_BYTES}",
            )
        with self._lock:
            try:
                with _calling(f"create {request.name}"):
                    node = self._driver.create_node(
                        name=request.name,
                        size=self._size(request.flavor.name),
                        image=self._worker_image(),
                        networks=self._worker_networks(),
                        ex_security_groups=self._worker_groups(),
                        ex_userdata=request.user_data,
                        ex_metadata=dict(request.tags),
                    )
            except CloudError as exc:
                if exc.kind is CloudErrorKind.IMAGE:
                    self._image = None  # replaced under the same name, perhaps: look again
                raise
            instance = _to_instance(node)
        _log.info("OpenStack: created server %s (%s)", instance.name, instance.id)
        return instance

    def instances(self, tags: Mapping[str, str]) -> Sequence[Instance]:
        """The project's servers whose metadata holds all of ``tags``."""
        with self._lock, _calling("list servers"):
            nodes = self._driver.list_nodes()
            found = [_to_instance(node) for node in nodes]
        return [i for i in found if all(i.tags.get(k) == v for k, v in tags.items())]

    def destroy(self, ids: Sequence[str]) -> Mapping[str, bool]:
        """Delete servers (Nova removes the ports and disks it made for them)."""
        outcome: dict[str, bool] = {}
        with self._lock, _calling("delete servers"):
            for server_id in ids:
                node = Node(server_id, "", NodeState.UNKNOWN, [], [], self._driver)
                try:
                    self._driver.destroy_node(node)
                except BaseHTTPError as exc:
                    if exc.code != 404:
                        raise
                    outcome[server_id] = False
                else:
                    outcome[server_id] = True
        return outcome

    def close(self) -> None:
        """Close the HTTP sessions of the driver's connections (and of their Keystone ones)."""
        driver = self._driver
        for service in (driver.connection, driver.image_connection, driver.network_connection):
            for connection in (service, service.get_auth_class()):
                if connection.connection is not None:
                    connection.connection.session.close()

    def _flavor_table(self) -> dict[str, tuple[Flavor, Any]]:
        if self._flavors is None:
            wanted = set(self._config.flavors)
            table: dict[str, tuple[Flavor, Any]] = {}
            for size in self._driver.list_sizes():
                if size.extra.get("disabled") or (wanted and size.name not in wanted):
                    continue
                flavor = Flavor(
                    name=str(size.name),
                    memory_mib=int(size.ram),
                    vcpus=int(size.vcpus),
                    disk_gb=int(size.disk) if size.disk else None,
                )
                table[flavor.name] = (flavor, size)
            if missing := sorted(wanted - table.keys()):
                _log.warning("OpenStack: no flavor named %s in this project", ", ".join(missing))
            if not table:
                raise CloudError(
                    CloudErrorKind.FLAVOR,
                    f"no usable flavor in region {self._config.region}"
                    + (f" among {', '.join(sorted(wanted))}" if wanted else ""),
                )
            order = sorted(table.values(), key=lambda item: _size_key(item[0]))
            self._flavors = {flavor.name: (flavor, size) for flavor, size in order}
        return self._flavors

    def _size(self, flavor_name: str) -> Any:
        entry = self._flavor_table().get(flavor_name)
        if entry is None:
            raise CloudError(CloudErrorKind.FLAVOR, f"no usable flavor named {flavor_name}")
        return entry[1]

    def _worker_image(self) -> Any:
        if self._image is None:
            self._image = self._find_image(self._config.image)
        return self._image

    def _find_image(self, ref: str) -> Any:
        if _UUID.fullmatch(ref):
            try:
                image = self._driver.get_image(ref)
            except BaseHTTPError as exc:
                if exc.code != 404:
                    raise
                raise CloudError(CloudErrorKind.IMAGE, f"no image with id {ref}") from exc
        else:
            named = [i for i in self._driver.list_images() if i.name == ref]
            active = [i for i in named if i.extra.get("status") == "active"]
            if not active:
                raise CloudError(
                    CloudErrorKind.IMAGE,
                    f"no active image named {ref}" + (" (only inactive ones)" if named else ""),
                )
            image = max(active, key=lambda i: str(i.extra.get("created") or ""))
        if image.extra.get("status") != "active":
            raise CloudError(
                CloudErrorKind.IMAGE, f"image {ref} is {image.extra.get('status')}, not active"
            )
        _log.info("OpenStack: worker image %s is %s", ref, image.id)
        return NodeImage(id=image.id, name=image.name, driver=self._driver)

    def _worker_networks(self) -> list[Any]:
        ref = self._config.network
        if ref is None:
            return []
        if self._networks is None:
            found = [n for n in self._driver.ex_list_networks() if ref in (n.id, n.name)]
            if len(found) != 1:
                raise CloudError(
                    CloudErrorKind.REFUSED,
                    f"{len(found) or 'no'} networks named {ref}"
                    + (": name it by id" if found else ""),
                )
            self._networks = [OpenStackNetwork(found[0].id, found[0].name, None, self._driver)]
        return self._networks

    def _worker_groups(self) -> list[Any]:
        if self._groups is None:
            name = self._config.security_group
            # Raw JSON: Libcloud drops each rule's direction.
            answer = self._driver.network_connection.request(
                "/v2.0/security-groups", params={"name": name}
            )
            groups = answer.object["security_groups"]
            if groups:
                group = groups[0]
                _warn_open(name, group)
                if len(groups) > 1:
                    _log.warning("OpenStack: %d security groups named %s", len(groups), name)
                group_id = str(group["id"])
            else:
                created = self._driver.ex_create_security_group(
                    name, "bes workers: no ingress, they only connect out to the service"
                )
                group_id = str(created.id)
                _log.info("OpenStack: made security group %s (%s)", name, group_id)
            # Nova takes a group's id where it asks for its name; an id cannot be ambiguous.
            self._groups = [OpenStackSecurityGroup(group_id, None, group_id, "", self._driver)]
        return self._groups


def _driver(config: OpenStackConfig) -> Any:
    """A Libcloud driver for the config's cloud; it asks nothing until used."""
    # Libcloud has no OpenStack prices and looks for them in its 4.5 MB pricing.json, parsed
    # again for every flavor listed (50 ms each); an empty price table spares that.
    if "openstack" not in pricing.PRICING_DATA["compute"]:
        pricing.set_pricing(driver_type="compute", driver_name="openstack", pricing={})
    auth_url = re.sub(r"/v3/?$", "", config.auth_url.rstrip("/"))
    options: dict[str, Any] = {
        "ex_force_auth_url": auth_url,
        "ex_force_service_region": config.region,
        "timeout": config.timeout_s,
    }
    key: str | None
    secret: str | None
    if config.application_credential_id:
        options["ex_force_auth_version"] = "3.x_appcred"
        key, secret = config.application_credential_id, config.application_credential_secret
    else:
        options["ex_force_auth_version"] = "3.x_password"
        options["ex_tenant_name"] = config.project_name
        options["ex_domain_name"] = config.user_domain_name
        options["ex_tenant_domain_id"] = config.project_domain_id
        key, secret = config.username, config.password
    return OpenStack_2_NodeDriver(key, secret, **options)


@contextlib.contextmanager
def _calling(action: str) -> Iterator[None]:
    """Turn whatever Libcloud, requests or the socket raise into a :class:`CloudError`."""
    try:
        yield
    except CloudError as exc:
        _log.warning("OpenStack: %s: %s (%s)", action, exc.message, exc.kind)
        raise
    except Exception as exc:
        error = _to_cloud_error(exc)
        _log.warning("OpenStack: %s: %s (%s)", action, error.message, error.kind)
        raise error from exc


def _to_cloud_error(exc: Exception) -> CloudError:
    if isinstance(exc, InvalidCredsError):
        return CloudError(CloudErrorKind.REFUSED, "Keystone refused the credentials")
    if isinstance(exc, BaseHTTPError):
        code, message = int(exc.code), str(exc.message)
        if code in (403, 413) and _QUOTA.search(message):
            kind = CloudErrorKind.QUOTA
        elif code in _UNAVAILABLE_CODES:
            kind = CloudErrorKind.UNAVAILABLE
        elif code == 401:
            kind, message = CloudErrorKind.REFUSED, f"not authorized: {message}"
        elif _FLAVOR.search(message):
            kind = CloudErrorKind.FLAVOR
        elif _IMAGE.search(message):
            kind = CloudErrorKind.IMAGE
        else:
            kind = CloudErrorKind.REFUSED
        return CloudError(kind, message)
    if isinstance(exc, OSError):  # requests' ConnectionError and Timeout, socket errors
        return CloudError(CloudErrorKind.UNAVAILABLE, f"the API did not answer: {exc}")
    return CloudError(CloudErrorKind.REFUSED, f"{type(exc).__name__}: {exc}")


def _warn_open(name: str, group: Mapping[str, Any]) -> None:
    ingress = [
        "{} {}-{} from {}".format(
            rule.get("protocol") or "any",
            rule.get("port_range_min") or "*",
            rule.get("port_range_max") or "*",
            rule.get("remote_ip_prefix") or rule.get("remote_group_id") or "anywhere",
        )
        for rule in group.get("security_group_rules") or ()
        if rule.get("direction") == "ingress"
    ]
    if ingress:
        _log.warning(
            "OpenStack: security group %s lets in %s; workers need no ingress at all",
            name,
            "; ".join(ingress),
        )


def _size_key(flavor: Flavor) -> tuple[int, int, int, str]:
    return (flavor.memory_mib, flavor.vcpus, flavor.disk_gb or 0, flavor.name)


def _to_instance(node: Any) -> Instance:
    extra = node.extra or {}
    state = _STATES.get(node.state)
    if state is None:
        vm_state = str(extra.get("vm_state") or "")
        state = _VM_STATES.get(vm_state)
        if state is None:
            _log.warning("OpenStack: server %s is in unknown state %r", node.id, vm_state)
            state = InstanceState.ERROR
    metadata = extra.get("metadata") or {}
    return Instance(
        id=str(node.id),
        name=str(node.name),
        state=state,
        tags={str(k): str(v) for k, v in metadata.items()},
        host=str(extra.get("availability_zone") or "") or None,
    )
