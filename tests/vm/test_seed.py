"""Our NoCloud seed, read by cloud-init's own code (Debian's cloud-init package)."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from bes.vm import guest
from bes.vm.job import combined_user_data
from bes.vm.seed import write_seed
from tests.support.vm import cloud_init_python, require

# Runs under Debian's python3: point cloud-init's NoCloud datasource at the unpacked seed
# (no block-device scan, nothing mounted), then process user-data as cloud-init does.
READER = textwrap.dedent(
    """
    import json, sys
    from cloudinit import handlers, helpers, util
    from cloudinit.config.schema import get_schema, validate_cloudconfig_schema
    from cloudinit.sources import DataSourceNoCloud

    cloud = sys.argv[1]
    paths = helpers.Paths({"cloud_dir": cloud, "run_dir": cloud + "/run"})
    source = DataSourceNoCloud.DataSourceNoCloud(
        {"datasource": {"NoCloud": {"fs_label": None}}}, distro=None, paths=paths)
    found = source.get_data()
    parts = []
    for part in source.get_userdata().walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True).decode()
        kind = handlers.type_from_starts_with(payload) or part.get_content_type()
        if kind == "text/cloud-config":
            validate_cloudconfig_schema(util.load_yaml(payload), get_schema(), strict=True)
        parts.append({"type": kind, "start": payload[:40]})
    print(json.dumps({"found": found, "instance_id": source.get_instance_id(),
                      "hostname": source.metadata.get("local-hostname"), "parts": parts}))
    """
)


def read_with_cloud_init(seed: Path, tmp_path: Path) -> dict[str, object]:
    python = cloud_init_python()
    xorriso = require("xorriso", "xorriso")
    nocloud = tmp_path / "cloud" / "seed" / "nocloud"
    nocloud.parent.mkdir(parents=True)
    subprocess.run(
        [xorriso, "-osirrox", "on", "-indev", str(seed), "-extract", "/", str(nocloud)],
        check=True,
        capture_output=True,
    )
    result = subprocess.run(
        [python, "-c", READER, str(tmp_path / "cloud")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return data


@pytest.mark.vm
def test_cloud_init_reads_our_seed(tmp_path: Path) -> None:
    script = guest.user_data(guest.GuestTask("/bin/echo", ("hi",)), "AAAAAAAAAAAAAAAAAAAAAAAA")
    seed = tmp_path / "seed.iso"
    write_seed(seed, instance_id="AAAAAAAAAAAAAAAAAAAAAAAA", hostname="bes-x", user_data=script)

    found = read_with_cloud_init(seed, tmp_path)

    assert found["found"] is True
    assert found["instance_id"] == "AAAAAAAAAAAAAAAAAAAAAAAA"
    assert found["hostname"] == "bes-x"
    assert found["parts"] == [{"type": "text/x-shellscript", "start": script[:40]}]


@pytest.mark.vm
def test_extra_cloud_config_travels_beside_the_job_script(tmp_path: Path) -> None:
    script = guest.user_data(guest.GuestTask("/bin/true"), "BBBBBBBBBBBBBBBBBBBBBBBB")
    extra = "#cloud-config\nwrite_files:\n  - path: /etc/motd\n    content: hello\n"
    seed = tmp_path / "seed.iso"
    write_seed(
        seed,
        instance_id="BBBBBBBBBBBBBBBBBBBBBBBB",
        hostname="bes-y",
        user_data=combined_user_data(script, extra),
    )

    found = read_with_cloud_init(seed, tmp_path)

    assert [part["type"] for part in found["parts"]] == [  # type: ignore[index,union-attr]
        "text/cloud-config",
        "text/x-shellscript",
    ]
