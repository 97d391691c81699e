"""Cloud pools as a site configures them: one TOML file, ``bes serve --clouds FILE``.

::

    [pool.lab]                          # the pool cloud:lab
    provider = "libvirt"
    service_url = "http://10.0.2.2:8080" # how its instances reach this service
    max_instances = 4                   # also: min_instances, batch, idle_s,
    budget_instance_hours = 48          #   boot_timeout_s, burst_after_s, allow_network,
                                        #   overhead_mib, max_vms, ca_file, tls_server_name
    [pool.lab.libvirt]                  # the provider's own settings
    uris = ["qemu:///system"]
    image = "/var/lib/bes/worker.qcow2"
    flavors = [{ name = "w2", memory_mib = 2048, vcpus = 2 }]

    [pool.os]
    provider = "openstack"
    service_url = "https://bes.example.org"
    [pool.os.openstack]
    auth_url = "https://keystone.example.org:5000"
    application_credential_id = "…"
    application_credential_secret = "…"
    image = "bes-worker"
    network = "private"

The file is read once at start; secrets in it should be readable by the service's user only.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from bes.backends.desktopgrid.routing import CLOUD_PREFIX
from bes.clouds.base import CloudProvider, Flavor
from bes.clouds.plan import Limits
from bes.errors import ConfigError

_NAME: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,39}\Z")
_POOL_KEYS: Final = frozenset(
    {
        "provider",
        "service_url",
        "ca_file",
        "tls_server_name",
        "burst_after_s",
        "allow_network",
        "max_vms",
        *(f.name for f in fields(Limits)),
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    """One cloud pool.

    Attributes:
        name: The pool's name as jobs and workers see it: ``cloud:NAME``.
        provider: ``libvirt`` or ``openstack``.
        provider_options: The provider's own table.
        limits: Scaling settings.
        service_url: Where its instances reach the service.
        ca_pem: The CA of the service's certificate, handed to instances.
        tls_server_name: The name to check the service's certificate against.
        burst_after_s: Take volunteers' jobs unclaimed this long; None: never.
        allow_network: Whether job VMs on its instances may have a network.
        max_vms: Jobs one instance runs at once at most.
    """

    name: str
    provider: str
    provider_options: Mapping[str, Any]
    limits: Limits
    service_url: str
    ca_pem: str | None = None
    tls_server_name: str | None = None
    burst_after_s: float | None = None
    allow_network: bool = False
    max_vms: int = 4

    @property
    def key(self) -> str:
        """The pool's name in the file (``[pool.KEY]``), without ``cloud:``."""
        return self.name.removeprefix(CLOUD_PREFIX)


def load(path: Path) -> list[PoolConfig]:
    """The pools of a configuration file, in file order.

    Raises:
        ConfigError: The file is unreadable, not TOML, or a setting is wrong.
    """
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cloud pools file {path}: {exc}") from exc
    pools = document.get("pool")
    if not isinstance(pools, dict) or not pools:
        raise ConfigError(f"cloud pools file {path}: no [pool.NAME] table")
    return [_pool(name, table, path.parent) for name, table in pools.items()]


def _pool(name: str, table: Any, base: Path) -> PoolConfig:
    where = f"[pool.{name}]"
    if not _NAME.match(name):
        raise ConfigError(f"{where}: a pool name is 1 to 40 lowercase letters, digits or dashes")
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    provider = table.get("provider")
    if provider not in ("libvirt", "openstack"):
        raise ConfigError(f"{where}: provider must be libvirt or openstack, not {provider!r}")
    options = table.get(provider, {})
    unknown = set(table) - _POOL_KEYS - {provider}
    if unknown:
        raise ConfigError(f"{where}: unknown settings {', '.join(sorted(unknown))}")
    if "service_url" not in table:
        raise ConfigError(f"{where}: service_url (how its instances reach the service) is needed")
    limits = Limits(**{f.name: table[f.name] for f in fields(Limits) if f.name in table})
    if not 0 <= limits.min_instances <= limits.max_instances or limits.batch < 1:
        raise ConfigError(f"{where}: need 0 <= min_instances <= max_instances and batch >= 1")
    ca_pem = None
    if "ca_file" in table:
        try:
            ca_pem = (base / str(table["ca_file"])).read_text()
        except OSError as exc:
            raise ConfigError(f"{where}: ca_file: {exc}") from exc
    return PoolConfig(
        name=CLOUD_PREFIX + name,
        provider=provider,
        provider_options=options,
        limits=limits,
        service_url=str(table["service_url"]).rstrip("/"),
        ca_pem=ca_pem,
        tls_server_name=table.get("tls_server_name"),
        burst_after_s=float(table["burst_after_s"]) if "burst_after_s" in table else None,
        allow_network=bool(table.get("allow_network", False)),
        max_vms=int(table.get("max_vms", 4)),
    )


def flavors_of(options: Mapping[str, Any]) -> list[Flavor]:
    """``flavors = [{name, memory_mib, vcpus}, ...]`` of a provider table."""
    out = []
    for item in options.get("flavors", []):
        try:
            out.append(
                Flavor(
                    name=str(item["name"]),
                    memory_mib=int(item["memory_mib"]),
                    vcpus=int(item["vcpus"]),
                    disk_gb=int(item["disk_gb"]) if "disk_gb" in item else None,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"flavor {item!r}: needs name, memory_mib and vcpus") from exc
    return out


def build_provider(pool: PoolConfig) -> CloudProvider:
    """The provider of a pool (its library is imported only when used).

    Raises:
        ConfigError: Its settings are wrong or its library is not installed.
    """
    options = dict(pool.provider_options)
    if pool.provider == "libvirt":
        from bes.clouds.libvirt import LibvirtProvider  # noqa: PLC0415 - an optional extra

        flavors = flavors_of(options)
        options.pop("flavors", None)
        try:
            return LibvirtProvider(flavors=flavors, **options)
        except TypeError as exc:
            raise ConfigError(f"[pool.{pool.key}.libvirt]: {exc}") from exc
    from bes.clouds.openstack import (  # noqa: PLC0415 - an optional extra
        OpenStackConfig,
        OpenStackProvider,
    )

    if "flavors" in options:
        options["flavors"] = tuple(options["flavors"])
    try:
        return OpenStackProvider(OpenStackConfig(**options))
    except TypeError as exc:
        raise ConfigError(f"[pool.{pool.key}.openstack]: {exc}") from exc
