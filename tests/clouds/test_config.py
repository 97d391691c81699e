"""clouds.toml (bes.clouds.config): what a site writes, and clear errors for what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from bes.clouds.base import Flavor
from bes.clouds.config import build_provider, flavors_of, load
from bes.errors import ConfigError

GOOD = """
[pool.lab]
provider = "libvirt"
service_url = "http://10.0.2.2:8080/"
max_instances = 6
batch = 2
idle_s = 60
budget_instance_hours = 12.5
burst_after_s = 600
allow_network = true
ca_file = "ca.pem"
tls_server_name = "bes.example.org"

[pool.lab.libvirt]
uris = ["test:///default"]
image = "worker.qcow2"
flavors = [{ name = "w4", memory_mib = 4096, vcpus = 2 }]

[pool.os]
provider = "openstack"
service_url = "https://bes.example.org"
[pool.os.openstack]
auth_url = "https://keystone.example.org:5000/v3"
application_credential_id = "id"
application_credential_secret = "secret"
image = "bes-worker"
flavors = ["m1.medium"]
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    path = tmp_path / "clouds.toml"
    path.write_text(text)
    return path


def test_a_site_s_pools_are_read_in_order_with_their_settings(tmp_path: Path) -> None:
    lab, openstack = load(write(tmp_path, GOOD))
    assert (lab.name, lab.provider, openstack.name) == ("cloud:lab", "libvirt", "cloud:os")
    assert lab.service_url == "http://10.0.2.2:8080"
    assert (lab.limits.max_instances, lab.limits.batch, lab.limits.idle_s) == (6, 2, 60)
    assert lab.limits.budget_instance_hours == 12.5
    assert (lab.burst_after_s, lab.allow_network) == (600.0, True)
    assert lab.ca_pem is not None and lab.ca_pem.startswith("-----BEGIN")
    assert lab.tls_server_name == "bes.example.org"
    assert flavors_of(lab.provider_options) == [Flavor(name="w4", memory_mib=4096, vcpus=2)]
    assert openstack.limits.max_instances == 4 and openstack.burst_after_s is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "no [pool.NAME] table"),
        ("[pool.Lab]\nprovider='libvirt'\nservice_url='x'", "lowercase"),
        ("[pool.lab]\nprovider='ec2'\nservice_url='x'", "provider must be libvirt or openstack"),
        ("[pool.lab]\nprovider='libvirt'", "service_url"),
        ("[pool.lab]\nprovider='libvirt'\nservice_url='x'\nmax_instancez=3", "maxinstancez"),
        (
            "[pool.lab]\nprovider='libvirt'\nservice_url='x'\nmin_instances=5\nmax_instances=2",
            "min_instances <= max_instances",
        ),
        ("[pool.lab]\nprovider='libvirt'\nservice_url='x'\nca_file='none.pem'", "ca_file"),
        ("[pool.lab\n", "cloud pools file"),
    ],
)
def test_what_is_wrong_is_said(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(write(tmp_path, text))
    assert says.replace("maxinstancez", "max_instancez") in str(raised.value)


def test_a_flavor_without_its_sizes_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs name, memory_mib and vcpus"):
        flavors_of({"flavors": [{"name": "w4"}]})


def test_a_provider_s_unknown_setting_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace('image = "worker.qcow2"', 'image = "worker.qcow2"\nbogus = 1')
    [lab, _] = load(write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"\[pool.lab.libvirt\]"):
        build_provider(lab)


def test_the_readme_s_clouds_toml_is_what_the_service_reads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Cloud pools\n", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    lab, openstack = load(write(tmp_path, block))
    assert (lab.name, lab.provider, lab.limits.max_instances) == ("cloud:lab", "libvirt", 4)
    assert lab.limits.budget_instance_hours == 48
    assert flavors_of(lab.provider_options)[0].memory_mib == 4096
    assert (openstack.name, openstack.provider) == ("cloud:os", "openstack")
    assert openstack.provider_options["network"] == "private"
