"""How the owner of a VM lease reaches its VM: the login, the guest's SSH host keys, and each
forwarded guest port with the port it got on the worker's loopback.

The worker reports it once the VM is up (``POST /worker/v1/leases/LEASE/access``); the
service keeps it with the activity (JSON) and shows it as ``besa:Access`` in the activity's
status, and as JSON to ``bes ssh`` and ``bes port-forward``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bes.errors import InvalidRequest

_MAX_KEY_CHARS = 16_384
_MAX_PORTS = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class Access:
    """A lease's way in, as its worker reported it."""

    user: str
    host_keys: tuple[str, ...]
    """OpenSSH public keys of the guest ("ssh-ed25519 AAAA..."), made before it booted."""
    ports: tuple[tuple[int, int], ...]
    """(guest port, port on the worker's loopback), for every TCP port forwarded."""

    def guest_ports(self) -> frozenset[int]:
        return frozenset(guest for guest, _ in self.ports)

    def to_json(self) -> str:
        return json.dumps(
            {
                "user": self.user,
                "host_keys": list(self.host_keys),
                "ports": [{"guest": g, "host": h} for g, h in self.ports],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Access:
        return cls.from_mapping(json.loads(text))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Access:
        """Read (and check) what a worker reported.

        Raises:
            InvalidRequest: Not the shape of an access report.
        """
        try:
            user = data["user"]
            keys = data.get("host_keys", [])
            ports = data.get("ports", [])
            if not isinstance(user, str) or not isinstance(keys, list):
                raise TypeError("user and host_keys")
            if not isinstance(ports, list) or len(ports) > _MAX_PORTS:
                raise TypeError("ports")
            parsed = tuple((_port(p["guest"]), _port(p["host"])) for p in ports)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequest(f"not a lease's access report: {exc}") from exc
        for key in keys:
            if not isinstance(key, str) or len(key) > _MAX_KEY_CHARS or "\n" in key:
                raise InvalidRequest("a host key is one OpenSSH public key line")
        return cls(user=user, host_keys=tuple(keys), ports=parsed)


def _port(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ValueError(f"{value!r} is not a port")
    return value
