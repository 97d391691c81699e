"""A VM lease's way in, as a worker reports it: read strictly (workers are other people's
machines), stored and shown unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from bes.access import Access
from bes.errors import InvalidRequest

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII9X13B8RUMr0JJOTFL0x9V29xSSsD61IcXSCShY35i5"


def test_a_report_round_trips_through_its_json() -> None:
    access = Access(user="debian", host_keys=(KEY,), ports=((22, 40022), (8888, 40023)))
    assert Access.from_json(access.to_json()) == access
    assert access.guest_ports() == {22, 8888}


@pytest.mark.parametrize(
    "report",
    [
        {},
        {"user": 3, "host_keys": [], "ports": []},
        {"user": "debian", "host_keys": [KEY + "\nssh-rsa AAAA"], "ports": []},
        {"user": "debian", "host_keys": [], "ports": [{"guest": 22}]},
        {"user": "debian", "host_keys": [], "ports": [{"guest": 0, "host": 2222}]},
        {"user": "debian", "host_keys": [], "ports": [{"guest": True, "host": 2222}]},
        {"user": "debian", "host_keys": [], "ports": [{"guest": 22, "host": 70000}]},
        {"user": "debian", "host_keys": [], "ports": [{"guest": 22, "host": 1}] * 65},
    ],
)
def test_a_malformed_report_is_refused(report: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        Access.from_mapping(report)
