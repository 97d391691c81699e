"""The OpenStack provider against recorded API answers served over real HTTP on 127.0.0.1.

Libcloud talks to :class:`RecordedCloud` through its ordinary HTTP stack (no mock connection
class); the server records every request, so the tests check what was really sent.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bes.clouds.base import (
    TAG_DEPLOYMENT,
    TAG_POOL,
    CloudError,
    CloudErrorKind,
    Flavor,
    InstanceRequest,
    InstanceState,
)
from bes.clouds.openstack import OpenStackConfig, OpenStackProvider
from bes.errors import ConfigError
from tests.clouds.openstack_api import GONE, IMAGE, SERVER, TOKEN, Answer, RecordedCloud

NETWORK = "7c1f0d2e-3b4a-4c5d-8e6f-9a0b1c2d3e4f"
GROUP = "2b6f3e1a-9c8d-4e7f-a6b5-c4d3e2f1a0b9"
TAGS = {TAG_DEPLOYMENT: "d-7f3c21", TAG_POOL: "cloud:os"}
USER_DATA = "#cloud-config\nruncmd:\n  - [bes, worker, --pool, 'cloud:os']\n"
SMALL = Flavor(name="m1.small", memory_mib=2048, vcpus=1, disk_gb=20)


@pytest.fixture
def cloud() -> Iterator[RecordedCloud]:
    server = RecordedCloud()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def config(cloud: RecordedCloud, **changes: Any) -> OpenStackConfig:
    options: dict[str, Any] = {
        "auth_url": f"{cloud.base}/identity/v3",  # as openrc files give it
        "username": "bes",
        "password": "s3cret",
        "project_name": "bes-workers",
        "image": "bes-worker-debian12",
        "network": "private",
        "timeout_s": 5.0,
    }
    options.update(changes)
    return OpenStackConfig(**options)


@pytest.fixture
def provider(cloud: RecordedCloud) -> Iterator[OpenStackProvider]:
    p = OpenStackProvider(config(cloud))
    yield p
    p.close()


def request(name: str = "bes-os-0001", flavor: Flavor = SMALL) -> InstanceRequest:
    return InstanceRequest(name=name, flavor=flavor, user_data=USER_DATA, tags=TAGS)


def create_error(provider: OpenStackProvider) -> CloudError:
    with pytest.raises(CloudError) as caught:
        provider.create(request())
    return caught.value


def test_create_sends_image_flavor_user_data_network_group_and_tags(
    cloud: RecordedCloud, provider: OpenStackProvider
) -> None:
    instance = provider.create(request())

    assert (instance.id, instance.name, instance.state) == (
        SERVER,
        "bes-os-0001",
        InstanceState.PENDING,
    )
    assert instance.tags == TAGS
    assert cloud.calls() == [
        "POST /identity/v3/auth/tokens",  # compute
        "GET /compute/v2.1/flavors/detail",
        "POST /identity/v3/auth/tokens",  # image
        "GET /image/v2/images",
        "POST /identity/v3/auth/tokens",  # network
        "GET /networking/v2.0/networks",
        "GET /networking/v2.0/security-groups",
        "POST /networking/v2.0/security-groups",
        "POST /compute/v2.1/servers",
        f"GET /compute/v2.1/servers/{SERVER}",
    ]
    auths = cloud.bodies("POST", "/identity/v3/auth/tokens")
    assert all(auth == auths[0] for auth in auths)
    assert auths[0]["auth"] == {
        "identity": {
            "methods": ["password"],
            "password": {
                "user": {"domain": {"name": "Default"}, "name": "bes", "password": "s3cret"}
            },
        },
        "scope": {"project": {"domain": {"id": "default"}, "name": "bes-workers"}},
    }
    (server,) = [b["server"] for b in cloud.bodies("POST", "/compute/v2.1/servers")]
    assert server["name"] == "bes-os-0001"
    assert server["flavorRef"] == "2"
    assert server["imageRef"] == IMAGE  # the newest active image of that name
    assert server["networks"] == [{"uuid": NETWORK}]
    assert server["security_groups"] == [{"name": GROUP}]
    assert server["metadata"] == TAGS
    assert base64.b64decode(server["user_data"]).decode() == USER_DATA
    assert all(s.headers["x-auth-token"] == TOKEN for s in cloud.sent if "/identity/" not in s.path)


def test_the_security_group_is_made_once_without_ingress(
    cloud: RecordedCloud, provider: OpenStackProvider
) -> None:
    provider.create(request())
    provider.create(request())

    lookups = [s for s in cloud.sent if s.path == "/networking/v2.0/security-groups"]
    assert [(s.method, s.query) for s in lookups] == [
        ("GET", {"name": ["bes-worker"]}),
        ("POST", {}),
    ]
    (made,) = cloud.bodies("POST", "/networking/v2.0/security-groups")
    assert made["security_group"]["name"] == "bes-worker"
    assert not [s for s in cloud.sent if "security-group-rules" in s.path]
    # The second create asks only for the server: image, network and group are known.
    assert cloud.calls()[-2:] == [
        "POST /compute/v2.1/servers",
        f"GET /compute/v2.1/servers/{SERVER}",
    ]
    assert len(cloud.bodies("POST", "/compute/v2.1/servers")) == 2
    assert len(cloud.bodies("GET", "/image/v2/images")) == 1


def test_an_existing_group_is_used_and_its_ingress_rules_reported(
    cloud: RecordedCloud, provider: OpenStackProvider, caplog: pytest.LogCaptureFixture
) -> None:
    cloud.routes[("GET", "/networking/v2.0/security-groups")] = Answer(
        status=200, fixture="neutron_security_groups_open.json"
    )
    with caplog.at_level(logging.WARNING, logger="bes.clouds.openstack"):
        provider.create(request())

    assert not cloud.bodies("POST", "/networking/v2.0/security-groups")
    (server,) = [b["server"] for b in cloud.bodies("POST", "/compute/v2.1/servers")]
    assert server["security_groups"] == [{"name": "6e2a4c8d-0f3b-4a5c-9d7e-9f2a4b6c8d0e"}]
    assert "lets in tcp 22-22 from 0.0.0.0/0" in caplog.text


def test_instances_are_found_by_tags_and_destroyed(
    cloud: RecordedCloud, provider: OpenStackProvider
) -> None:
    found = provider.instances(TAGS)

    assert [(i.name, i.state, i.host) for i in found] == [
        ("bes-os-0001", InstanceState.RUNNING, "nova"),
        ("bes-os-0002", InstanceState.ERROR, None),
        ("bes-os-0003", InstanceState.STOPPED, "nova"),  # SHELVED_OFFLOADED
    ]
    assert all(i.tags == TAGS for i in found)
    assert {i.name for i in provider.instances({TAG_DEPLOYMENT: "d-7f3c21"})} == {
        "bes-os-0001",
        "bes-os-0002",
        "bes-os-0003",
        "bes-gpu-0001",
    }

    assert provider.destroy([SERVER, GONE]) == {SERVER: True, GONE: False}
    assert cloud.calls()[-2:] == [
        f"DELETE /compute/v2.1/servers/{SERVER}",
        f"DELETE /compute/v2.1/servers/{GONE}",
    ]


def test_application_credentials_authenticate_without_a_scope(cloud: RecordedCloud) -> None:
    cloud.routes[("POST", "/identity/v3/auth/tokens")] = Answer(
        status=201, fixture="keystone_token_appcred.json", headers={"X-Subject-Token": TOKEN}
    )
    p = OpenStackProvider(
        config(
            cloud,
            auth_url=f"{cloud.base}/identity",
            username=None,
            password=None,
            project_name=None,
            application_credential_id="aa5f6e1c2b3d4e8f9a0b1c2d3e4f5a6b",
            application_credential_secret="app-s3cret",
        )
    )
    try:
        assert [i.name for i in p.instances(TAGS)][:1] == ["bes-os-0001"]
    finally:
        p.close()

    (auth,) = cloud.bodies("POST", "/identity/v3/auth/tokens")
    assert auth == {
        "auth": {
            "identity": {
                "methods": ["application_credential"],
                "application_credential": {
                    "id": "aa5f6e1c2b3d4e8f9a0b1c2d3e4f5a6b",
                    "secret": "app-s3cret",
                },
            }
        }
    }


def test_flavors_smallest_first_without_disabled_ones(provider: OpenStackProvider) -> None:
    assert [f.name for f in provider.flavors()] == [
        "m1.tiny",
        "m1.small",
        "ds2G",
        "m1.medium",
        "m1.large",
    ]
    assert provider.flavors()[1] == SMALL


def test_flavors_restricted_to_the_configured_names(cloud: RecordedCloud) -> None:
    p = OpenStackProvider(config(cloud, flavors=("m1.large", "ds2G", "m1.huge")))
    try:
        assert [f.name for f in p.flavors()] == ["ds2G", "m1.large"]
        with pytest.raises(CloudError) as caught:
            p.create(request(flavor=SMALL))
        assert caught.value.kind is CloudErrorKind.FLAVOR
    finally:
        p.close()
    assert not cloud.bodies("POST", "/compute/v2.1/servers")

    none = OpenStackProvider(config(cloud, flavors=("m1.huge",)))
    try:
        with pytest.raises(CloudError) as caught:
            none.flavors()
        assert caught.value.kind is CloudErrorKind.FLAVOR
    finally:
        none.close()


@pytest.mark.parametrize(
    ("status", "fixture", "words"),
    [
        (403, "nova_quota_exceeded_instances.json", "Quota exceeded for instances"),
        (413, "nova_quota_exceeded_cores_overlimit.json", "Quota exceeded for cores"),
    ],
)
def test_quota_exceeded_is_a_quota_error(
    cloud: RecordedCloud, provider: OpenStackProvider, status: int, fixture: str, words: str
) -> None:
    cloud.routes[("POST", "/compute/v2.1/servers")] = Answer(status=status, fixture=fixture)

    error = create_error(provider)

    assert error.kind is CloudErrorKind.QUOTA
    assert error.retryable
    assert words in error.message


def test_an_image_missing_from_glance_is_an_image_error(
    cloud: RecordedCloud, provider: OpenStackProvider
) -> None:
    cloud.routes[("GET", "/image/v2/images")] = Answer(
        status=200, fixture="glance_images_none.json"
    )

    error = create_error(provider)

    assert error.kind is CloudErrorKind.IMAGE
    assert not error.retryable
    assert "bes-worker-debian12" in error.message
    assert not cloud.bodies("POST", "/compute/v2.1/servers")


def test_an_image_id_glance_does_not_know_is_an_image_error(cloud: RecordedCloud) -> None:
    cloud.routes[("GET", f"/image/v2/images/{IMAGE}")] = Answer(
        status=404, fixture="glance_image_not_found.html"
    )
    p = OpenStackProvider(config(cloud, image=IMAGE))
    try:
        assert create_error(p).kind is CloudErrorKind.IMAGE
    finally:
        p.close()


def test_an_image_nova_cannot_find_is_an_image_error_and_is_looked_up_again(
    cloud: RecordedCloud, provider: OpenStackProvider
) -> None:
    cloud.routes[("POST", "/compute/v2.1/servers")] = Answer(
        status=400, fixture="nova_image_not_found.json"
    )

    error = create_error(provider)
    assert error.kind is CloudErrorKind.IMAGE
    assert f"Image {IMAGE} could not be found" in error.message

    create_error(provider)
    assert len(cloud.bodies("GET", "/image/v2/images")) == 2


@pytest.mark.parametrize(
    ("status", "fixture", "kind"),
    [
        (400, "nova_flavor_disk_too_small.json", CloudErrorKind.FLAVOR),
        (409, "nova_multiple_networks.json", CloudErrorKind.REFUSED),
    ],
)
def test_other_nova_refusals(
    cloud: RecordedCloud,
    provider: OpenStackProvider,
    status: int,
    fixture: str,
    kind: CloudErrorKind,
) -> None:
    cloud.routes[("POST", "/compute/v2.1/servers")] = Answer(status=status, fixture=fixture)
    error = create_error(provider)
    assert error.kind is kind
    assert not error.retryable


def test_refused_credentials(cloud: RecordedCloud, provider: OpenStackProvider) -> None:
    cloud.routes[("POST", "/identity/v3/auth/tokens")] = Answer(
        status=401, fixture="keystone_unauthorized.json"
    )
    error = create_error(provider)
    assert error.kind is CloudErrorKind.REFUSED
    assert not error.retryable


def test_an_api_that_is_down_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = OpenStackProvider(
        OpenStackConfig(
            auth_url=f"http://127.0.0.1:{port}/identity/v3",
            username="bes",
            password="s3cret",
            project_name="bes-workers",
            image="bes-worker-debian12",
            timeout_s=5.0,
        )
    )
    calls = {
        "create": lambda: p.create(request()),
        "flavors": p.flavors,
        "instances": lambda: p.instances(TAGS),
        "destroy": lambda: p.destroy([SERVER]),
    }
    try:
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(CloudError) as caught:
                call()
            assert caught.value.kind is CloudErrorKind.UNAVAILABLE, name
            assert caught.value.retryable
            assert time.monotonic() - started < 2.0, name
    finally:
        p.close()


@pytest.mark.parametrize(
    "route", [("POST", "/identity/v3/auth/tokens"), ("POST", "/compute/v2.1/servers")]
)
def test_a_slow_api_is_unavailable_within_the_timeout(
    cloud: RecordedCloud, route: tuple[str, str]
) -> None:
    slow = cloud.routes[route]
    cloud.routes[route] = Answer(
        status=slow.status, fixture=slow.fixture, headers=slow.headers, delay_s=30.0
    )
    p = OpenStackProvider(config(cloud, timeout_s=0.5))
    try:
        started = time.monotonic()
        error = create_error(p)
        elapsed = time.monotonic() - started
    finally:
        p.close()

    assert error.kind is CloudErrorKind.UNAVAILABLE
    assert 0.5 <= elapsed < 2.0
    assert f"{route[0]} {route[1]}" in cloud.calls()


def test_a_region_without_endpoints_is_refused(cloud: RecordedCloud) -> None:
    p = OpenStackProvider(config(cloud, region="RegionThree"))
    try:
        with pytest.raises(CloudError) as caught:
            p.flavors()
    finally:
        p.close()
    assert caught.value.kind is CloudErrorKind.REFUSED
    assert "endpoint" in caught.value.message
    assert cloud.calls() == ["POST /identity/v3/auth/tokens"]


def test_config_needs_one_kind_of_credentials() -> None:
    with pytest.raises(ConfigError):
        OpenStackConfig(auth_url="https://cloud.example:5000", image="w")
    with pytest.raises(ConfigError):
        OpenStackConfig(
            auth_url="https://cloud.example:5000",
            image="w",
            username="u",
            password="p",
            project_name="x",
            application_credential_id="i",
            application_credential_secret="s",
        )
    assert "s3cret" not in repr(
        OpenStackConfig(
            auth_url="https://cloud.example:5000",
            image="w",
            username="u",
            password="s3cret",
            project_name="x",
        )
    )
