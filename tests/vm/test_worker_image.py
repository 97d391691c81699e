"""The cloud worker image: what goes into it and the contract its user-data follows (unit
tests, no build), and a real build booted under QEMU whose worker, started by user-data as an
autoscaler writes it, registers with a real service and runs a job in a nested VM (slow)."""

from __future__ import annotations

import json
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bes.client import BESClient
from bes.clouds.userdata import WorkerSettings, user_data
from bes.vm import debian, workerimage
from bes.vm.images import ImageError
from bes.vm.runner import CommandRunner
from bes.vm.seed import write_seed
from tests.support.cloudworker import (
    GREETING,
    GRID_OPTIONS,
    MARK,
    TINY_JOB,
    booted,
    cached_worker_image,
    instance_user_data,
    require_builder,
    wait_registered,
)
from tests.support.server import live_server
from tests.support.vm import qemu_processes
from tests.vm.test_seed import read_with_cloud_init

# -- what goes into the image (no build) ---------------------------------------------------


def test_the_worker_image_is_the_template_with_qemu_added() -> None:
    argv = debian.debootstrap_argv(workerimage.WORKER, Path("/r"), "http://mirror.test/debian")

    (include,) = [a.removeprefix("--include=") for a in argv if a.startswith("--include=")]
    packages = include.split(",")
    assert packages[: len(debian.TEMPLATE.packages)] == list(debian.TEMPLATE.packages)
    assert {"qemu-system-x86", "qemu-utils"} <= set(packages)
    assert argv[-3] == "bookworm"
    assert workerimage.WORKER.masked_units == debian.TEMPLATE.masked_units
    assert workerimage.WORKER.removed == debian.TEMPLATE.removed


def _unit(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a systemd unit, repeated keys kept."""
    entries, section = [], ""
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            entries.append((section, key, value))
    return entries


def test_configure_installs_the_worker_unit_without_enabling_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()

    debian.configure(root, workerimage.WORKER)

    unit = root / "etc/systemd/system/bes-worker.service"
    entries = _unit(unit.read_text())
    assert ("Service", "EnvironmentFile", "/etc/bes/worker.env") in entries
    assert ("Service", "ExecStart", workerimage.START_SCRIPT) in entries
    assert ("Service", "Restart", "on-failure") in entries
    assert ("Service", "RestartPreventExitStatus", "3") in entries  # the token was refused
    assert ("Unit", "ConditionPathExists", "/etc/bes/worker.env") in entries
    assert ("Unit", "ConditionPathExists", "/etc/bes/worker.token") in entries
    assert ("Unit", "After", "network-online.target") in entries
    assert ("Install", "WantedBy", "multi-user.target") in entries  # systemctl enable works
    enabled = [p for p in root.rglob("*.wants/*") if p.name == "bes-worker.service"]
    assert enabled == []  # user-data starts it


def test_cloud_init_reads_only_nocloud_and_grows_the_root_filesystem(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    debian.configure(root, workerimage.WORKER)

    config = yaml.safe_load((root / "etc/cloud/cloud.cfg.d/90-bes.cfg").read_text())

    assert config["datasource_list"] == ["NoCloud", "None"]
    assert "resizefs" in config["cloud_init_modules"]
    assert {"write-files", "runcmd"} <= set(config["cloud_init_modules"]) | set(
        config["cloud_config_modules"]
    )


def _start_script(tmp_path: Path) -> tuple[Path, Path]:
    """The unit's start script, with bes worker replaced by a program that prints its
    arguments and the CA file moved under tmp_path."""
    fake = tmp_path / "bes"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    ca = tmp_path / "ca.pem"
    text = workerimage.START_SCRIPT_TEXT.replace(f"{workerimage.VENV}/bin/bes", str(fake))
    script = tmp_path / "start"
    script.write_text(text.replace(workerimage.CA_FILE, str(ca)))
    return script, ca


def _run(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(script)],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_start_script_runs_bes_worker_as_worker_env_says(tmp_path: Path) -> None:
    script, ca = _start_script(tmp_path)

    missing = _run(script, {})
    plain = _run(script, {"BES_SERVICE": "https://bes.example.org"})
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    full = _run(
        script,
        {"BES_SERVICE": "https://bes.example.org", "BES_WORKER_ARGS": "--max-vms 2 -v"},
    )

    assert missing.returncode != 0
    assert "sets no BES_SERVICE" in missing.stderr
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.split("\n")[:-1] == [
        "worker",
        "--service",
        "https://bes.example.org",
        "--token-file",
        "/etc/bes/worker.token",
        "--cache-dir",
        "/var/cache/bes",
    ]
    args = full.stdout.split("\n")[:-1]
    assert args[args.index("--ca-file") + 1] == str(ca)
    assert args[-3:] == ["--max-vms", "2", "-v"]


def _user_data(**settings: object) -> dict[str, Any]:
    """The autoscaler's user-data for an instance (bes.clouds.userdata), parsed."""
    values: dict[str, Any] = {"max_memory_mib": 1024, "max_vcpus": 1, "max_vms": 1, **settings}
    text = user_data(WorkerSettings(**values), token="s3cret-token")
    assert text.startswith("#cloud-config\n")
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def test_the_autoscalers_user_data_writes_the_files_the_unit_reads(tmp_path: Path) -> None:
    config = _user_data(
        service_url="https://bes.example.org:8443",
        ca_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        tls_server_name="bes.example.org",
    )

    files = {entry["path"]: entry for entry in config["write_files"]}
    assert sorted(files) == sorted(
        [workerimage.ENV_FILE, workerimage.TOKEN_FILE, workerimage.CA_FILE]
    )
    assert files[workerimage.TOKEN_FILE]["content"].strip() == "s3cret-token"
    assert files[workerimage.TOKEN_FILE]["permissions"] == "0600"
    assert ["systemctl", "start", "--no-block", workerimage.SERVICE] in config["runcmd"]
    # What the start script makes of that env file (its quoting is the shell's, as systemd's):
    env = tmp_path / "worker.env"
    env.write_text(files[workerimage.ENV_FILE]["content"])
    script, ca = _start_script(tmp_path)
    ca.write_text(files[workerimage.CA_FILE]["content"])
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(f"set -a\n. {env}\nset +a\n. {script}\n")
    started = _run(wrapper, {})
    assert started.returncode == 0, started.stderr
    args = started.stdout.split("\n")[:-1]
    assert args[args.index("--service") + 1] == "https://bes.example.org:8443"
    assert args[args.index("--ca-file") + 1] == str(ca)
    assert args[args.index("--tls-server-name") + 1] == "bes.example.org"
    assert args[args.index("--max-memory-mib") + 1] == "1024"


@pytest.mark.vm
def test_cloud_init_accepts_the_autoscalers_user_data(tmp_path: Path) -> None:
    text = user_data(
        WorkerSettings(
            service_url="https://bes.example.org",
            ca_pem="PEM\n",
            max_memory_mib=1024,
            max_vcpus=1,
            max_vms=1,
        ),
        token="token",
    )
    seed = tmp_path / "seed.iso"
    write_seed(seed, instance_id="i-1", hostname="worker-1", user_data=text)

    found = read_with_cloud_init(seed, tmp_path)  # validates cloud-config strictly

    assert found["parts"] == [{"type": "text/cloud-config", "start": text[:40]}]


def test_dependencies_come_as_wheels_for_the_image_glibc_and_python(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(
        "Package: libc-bin\nVersion: 2.99-1\n\n"
        "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\n"
        "Version: 2.36-9+deb12u13\n\n"
    )
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/python3").symlink_to("python3.11")

    glibc = workerimage.image_glibc(root)
    platforms = workerimage.manylinux_platforms(glibc)

    assert glibc == (2, 36)
    assert workerimage.image_python(root) == "3.11"
    assert platforms[0] == "manylinux_2_36_x86_64"
    assert "manylinux_2_34_x86_64" in platforms  # cryptography's newest wheels
    assert {"manylinux2014_x86_64", "manylinux1_x86_64"} <= set(platforms)
    with pytest.raises(ImageError, match="too old"):
        workerimage.manylinux_platforms((2, 12))


def _wheel(path: Path, files: dict[str, bytes], year: int) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, (year, 1, 1, 0, 0, 0)), data)
    return path


def test_the_image_key_follows_the_wheel_content_not_its_timestamps(tmp_path: Path) -> None:
    files = {"bes/__init__.py": b"", "bes/cli.py": b"print"}
    one = _wheel(tmp_path / "one.whl", files, 2020)
    same = _wheel(tmp_path / "same.whl", files, 2024)
    other = _wheel(tmp_path / "other.whl", {**files, "bes/cli.py": b"print()"}, 2020)

    assert workerimage.image_key(one) == workerimage.image_key(same)
    assert workerimage.image_key(one) != workerimage.image_key(other)


def test_building_without_root_says_what_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(debian.os, "geteuid", lambda: 1000)
    replay = tmp_path / "replay"
    wheel = _wheel(tmp_path / "bes-0.1.0-py3-none-any.whl", {"bes/__init__.py": b""}, 2020)
    with pytest.raises(ImageError, match="needs root"):
        workerimage.build(tmp_path / "out", CommandRunner(replay_path=replay), wheel=wheel)
    assert not replay.exists()  # nothing was run


def test_an_incomplete_build_is_not_taken_from_the_cache(tmp_path: Path) -> None:
    built = tmp_path / "0123456789abcdef"
    built.mkdir()
    assert workerimage.load(built) is None
    image = workerimage.WorkerImage(
        disk=built / "disk.qcow2",
        kernel=built / "vmlinux",
        initrd=built / "initramfs.cpio.gz",
        cmdline="console=ttyS0",
        kernel_version="6.1.0-1-amd64",
        python_version="3.11",
        package_count=247,
        bes_version="0.1.0",
        key=built.name,
    )
    (built / "worker-image.json").write_text(json.dumps(image.to_json()))
    for name in ("vmlinux", "initramfs.cpio.gz"):
        (built / name).write_bytes(b"x")
    assert workerimage.load(built) is None  # no disk
    (built / "disk.qcow2").write_bytes(b"x")
    assert workerimage.load(built) == image


# -- a real build, booted ----------------------------------------------------------------


@pytest.fixture(scope="session")
def worker_image() -> workerimage.WorkerImage:
    """The worker image of this source tree (built once per change of bes: about 3 min)."""
    require_builder()
    return cached_worker_image()


@pytest.fixture
def no_instance_left(tmp_path: Path) -> Iterator[None]:
    yield
    assert qemu_processes(str(tmp_path)) == [], "the instance outlived its test"


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_an_instance_registers_its_worker_and_runs_a_job_in_a_nested_vm(
    worker_image: workerimage.WorkerImage, tmp_path: Path, no_instance_left: None
) -> None:
    with live_server(tmp_path / "data", extra=GRID_OPTIONS) as server:
        user_data = instance_user_data(server, "cloud-1")
        with booted(worker_image, user_data, tmp_path / "instance") as instance:
            facts = wait_registered(server, "cloud-1", timeout_s=900)
            assert "'qemu'" in facts  # the instance's own QEMU, for the nested VMs
            version = instance.wait_for(rf"{MARK} version=bes, version (\S+)", timeout_s=300)
            assert version[1] == worker_image.bes_version
            client = BESClient(server.endpoint)
            try:
                ref = client.submit(TINY_JOB.encode())
                [status] = client.wait([ref], timeout_s=1200, max_poll_s=2.0)
                assert status.state.value == "Finished", status.message
                assert status.exit_code == 0
                client.outputs(ref, tmp_path / "outputs")
            finally:
                client.close()
    # The instance has no apt lists: the job could run only with tiny built into the image.
    stdout = (tmp_path / "outputs" / "stdout").read_text().splitlines()
    assert stdout[0] == GREETING
    assert stdout[1].endswith("-amd64")  # tiny's Debian kernel, in the nested VM
    assert not any(p.name.startswith("bes-") for p in (tmp_path / "instance/vms").iterdir())
