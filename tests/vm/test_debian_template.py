"""The built-in template debian-12: what goes into it (unit tests, no build), and a real build
booted by QEMU running a Python job (slow: debootstrap once per machine, then a VM boot)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from bes.ids import new_activity_id
from bes.jsdl.parse import load_job_definition
from bes.vm import debian
from bes.vm.drivers.qemu import QemuDriver
from bes.vm.images import ImageCache, ImageError
from bes.vm.job import run_vm_job
from bes.vm.repository import DEBIAN_12, ImageRepository, Template
from bes.vm.runner import CommandRunner
from bes.vm.spec import ImageRef
from bes.vmjob import plan
from tests.support.vm import built_debian_repository

# -- what goes into the image (no build) ---------------------------------------------------


def test_debootstrap_installs_the_profile_packages_on_minbase_from_the_mirror(
    tmp_path: Path,
) -> None:
    argv = debian.debootstrap_argv(debian.TEMPLATE, tmp_path / "root", "http://mirror.test/debian")

    assert argv[0] == "debootstrap"
    assert "--variant=minbase" in argv
    assert argv[-3:] == ["bookworm", str(tmp_path / "root"), "http://mirror.test/debian"]
    (include,) = [a.removeprefix("--include=") for a in argv if a.startswith("--include=")]
    packages = include.split(",")
    for wanted in ("systemd-sysv", "cloud-init", "python3", "openssh-server"):
        assert wanted in packages
    assert "openssh-sftp-server" in packages  # SFTP for the SSH leases
    assert "linux-image-amd64" in packages  # the image boots its own kernel


def _installed_tree(root: Path) -> None:
    """What debootstrap leaves that must not go into the image."""
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_rsa_key"):
        (root / "etc/ssh").mkdir(parents=True, exist_ok=True)
        (root / "etc/ssh" / name).write_text("secret\n")
    (root / "etc/ssh/sshd_config").write_text("# stock\n")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc/hostname").write_text("build-host\n")
    (root / "etc/resolv.conf").write_text("nameserver 10.0.0.53\n")
    (root / "var/lib/apt/lists").mkdir(parents=True)
    (root / "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease").write_text("x")
    (root / "var/cache/apt/archives").mkdir(parents=True)
    (root / "var/cache/apt/archives/python3_3.11.2-1+b1_amd64.deb").write_text("x")
    (root / "var/log").mkdir(parents=True)
    (root / "var/log/dpkg.log").write_text("install python3\n")
    (root / "etc/systemd/system/timers.target.wants").mkdir(parents=True)
    (root / "etc/systemd/system/timers.target.wants/apt-daily.timer").symlink_to(
        "/lib/systemd/system/apt-daily.timer"
    )
    sound = root / "usr/lib/modules/6.1.0-1-amd64/kernel/sound/snd.ko"
    sound.parent.mkdir(parents=True)
    sound.write_bytes(b"\0")
    virtio = root / "usr/lib/modules/6.1.0-1-amd64/kernel/drivers/block/virtio_blk.ko"
    virtio.parent.mkdir(parents=True)
    virtio.write_bytes(b"\0")


def test_configure_leaves_no_identity_of_the_build_host(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _installed_tree(root)

    debian.configure(root, debian.TEMPLATE)

    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == ["sshd_config"]
    assert (root / "etc/machine-id").read_text() == ""  # systemd makes one at each boot
    assert (root / "etc/hostname").read_text() == "debian\n"
    assert (root / "etc/resolv.conf").read_text() == ""
    assert list((root / "var/lib/apt/lists").iterdir()) == []
    assert list((root / "var/cache/apt/archives").iterdir()) == []
    assert (root / "var/log/dpkg.log").read_text() == ""


def test_configure_masks_needless_units_and_drops_unneeded_modules(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _installed_tree(root)

    debian.configure(root, debian.TEMPLATE)

    systemd = root / "etc/systemd/system"
    for unit in ("apt-daily.timer", "getty@tty1.service", "systemd-firstboot.service"):
        assert os.readlink(systemd / unit) == "/dev/null", unit
    assert not (systemd / "serial-getty@ttyS0.service").exists()  # the console keeps a login
    modules = root / "usr/lib/modules/6.1.0-1-amd64/kernel"
    assert not (modules / "sound").exists()
    assert (modules / "drivers/block/virtio_blk.ko").exists()
    assert (root / "etc/fstab").read_text().split()[:3] == ["LABEL=bes-root", "/", "ext4"]


def test_cloud_init_reads_only_nocloud_and_runs_the_job_script(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    debian.configure(root, debian.TEMPLATE)

    config = yaml.safe_load((root / "etc/cloud/cloud.cfg.d/90-bes.cfg").read_text())

    assert config["datasource_list"] == ["NoCloud", "None"]
    assert "scripts-user" in config["cloud_final_modules"]  # the job is a "#!" user-data
    assert "power-state-change" in config["cloud_final_modules"]
    assert {"write-files", "users-groups", "ssh"} <= set(config["cloud_init_modules"])
    assert config["ssh_genkeytypes"] == ["ed25519"]


def test_the_mirror_is_the_one_apt_uses_unless_the_environment_names_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(debian.MIRROR_ENV, raising=False)
    sources = tmp_path / "sources.list.d"
    sources.mkdir()
    (sources / "debian.sources").write_text(
        "Types: deb\nURIs: http://ftp.example.org/debian/\nSuites: bookworm\n"
        "Components: main\n\nTypes: deb\nURIs: http://ftp.example.org/debian-security\n"
    )
    (sources / "other.list").write_text(
        "deb [arch=amd64] https://pkgs.example.com/apt stable main\n"
    )
    legacy = tmp_path / "sources.list"
    legacy.write_text("# deb http://old.example/debian bookworm main\n")

    assert debian.default_mirror([legacy, sources]) == "http://ftp.example.org/debian"
    legacy.write_text("deb [signed-by=/k.gpg] http://one.example/debian bookworm main\n")
    assert debian.default_mirror([legacy, sources]) == "http://one.example/debian"
    assert debian.default_mirror([tmp_path / "none"]) == debian.FALLBACK_MIRROR
    monkeypatch.setenv(debian.MIRROR_ENV, "http://local.mirror/debian")
    assert debian.default_mirror([legacy, sources]) == "http://local.mirror/debian"


def test_building_without_root_says_what_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(debian.os, "geteuid", lambda: 1000)
    replay = tmp_path / "replay"
    with pytest.raises(ImageError, match="needs root, for debootstrap"):
        debian.build(tmp_path / "out", CommandRunner(replay_path=replay))
    assert not replay.exists()  # nothing was run


def test_the_catalog_lists_debian_12_before_any_node_built_it(tmp_path: Path) -> None:
    catalog = ImageRepository(ImageCache(tmp_path / "images")).catalog()
    template = catalog.get(DEBIAN_12)
    assert template is not None
    assert template.runs_cloud_config
    assert template.sha256 is None  # each node builds its own
    assert "Python 3" in template.description


# -- a real build, booted ----------------------------------------------------------------


@pytest.fixture(scope="session")
def debian_repository() -> ImageRepository:
    """The shared test cache with debian-12 built (once per machine: about 2-3 minutes)."""
    return built_debian_repository()


@pytest.fixture(scope="session")
def debian_template(debian_repository: ImageRepository) -> Template:
    template = debian_repository.template(DEBIAN_12)
    assert template is not None
    return template


def _job(*, output: str) -> bytes:
    return f"""<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
        xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
        xmlns:vm="urn:bes-grid:vm:1.0">
      <jsdl:JobDescription>
        <jsdl:Application>
          <posix:POSIXApplication>
            <posix:Executable>python3</posix:Executable>
            <posix:Argument>summarize.py</posix:Argument>
            <posix:Argument>data.csv</posix:Argument>
          </posix:POSIXApplication>
          <vm:VirtualMachine><vm:Image><vm:Template>debian-12</vm:Template></vm:Image>
          </vm:VirtualMachine>
        </jsdl:Application>
        <jsdl:DataStaging><jsdl:FileName>summarize.py</jsdl:FileName>
          <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
          <jsdl:Source><jsdl:URI>file:///summarize.py</jsdl:URI></jsdl:Source></jsdl:DataStaging>
        <jsdl:DataStaging><jsdl:FileName>data.csv</jsdl:FileName>
          <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
          <jsdl:Source><jsdl:URI>file:///data.csv</jsdl:URI></jsdl:Source></jsdl:DataStaging>
        <jsdl:DataStaging><jsdl:FileName>{output}</jsdl:FileName>
          <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
          <jsdl:Target><jsdl:URI>file:///{output}</jsdl:URI></jsdl:Target></jsdl:DataStaging>
      </jsdl:JobDescription>
    </jsdl:JobDefinition>""".encode()


SUMMARIZE = """\
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))
total = sum(int(row["count"]) for row in rows)
json.dump({"rows": len(rows), "total": total}, open("summary.json", "w"))
print(sys.version.split()[0])
print(open("/etc/machine-id").read().strip())
sys.exit(3)
"""


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_python_job_reads_its_input_and_its_output_comes_back(
    debian_repository: ImageRepository, driver: QemuDriver, tmp_path: Path
) -> None:
    data = tmp_path / "data.csv"
    data.write_text("name,count\napples,3\npears,4\n")
    script = tmp_path / "summarize.py"
    script.write_text(SUMMARIZE)
    job = load_job_definition(_job(output="summary.json"))
    inputs = {"data.csv": data, "summarize.py": script}
    vm_job = plan(job, new_activity_id(), repository=debian_repository, inputs=inputs)
    assert vm_job.memory_mib >= 512

    outcome = run_vm_job(vm_job, driver, tmp_path / "results")

    assert outcome.completed, outcome.reason + "\n" + outcome.console_tail
    assert outcome.results is not None
    assert outcome.exit_code == 3, outcome.results.stderr.read_text()
    version, machine_id = outcome.results.stdout.read_text().split()
    assert version.startswith("3.11.")
    assert len(machine_id) == 32  # made at boot; the image has none
    assert outcome.results.stderr.read_text() == ""
    assert outcome.results.outputs["summary.json"].read_text() == '{"rows": 2, "total": 7}'
    # The guest powered itself off: the VM ended well before its wall-time limit.
    assert outcome.vm_seconds < vm_job.wall_time_s


def _debugfs(image: Path, request: str) -> str:
    done = subprocess.run(
        ["debugfs", "-R", request, str(image)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_image_has_no_host_keys_nor_machine_id_and_has_sftp(
    debian_repository: ImageRepository, debian_template: Template, tmp_path: Path
) -> None:
    assert debian_template.sha256 is not None
    raw = tmp_path / "root.raw"
    image = debian_repository.cache.path(debian_template.sha256)
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True, timeout=300
    )

    ssh = _debugfs(raw, "ls -l /etc/ssh")
    assert "sshd_config" in ssh
    assert "ssh_host_" not in ssh
    assert _debugfs(raw, "cat /etc/machine-id") == ""
    sftp = _debugfs(raw, "stat /usr/lib/openssh/sftp-server")
    assert "Type: regular" in sftp
    assert "Mode:  0755" in sftp


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_cached_build_is_used_again_without_debootstrap(
    debian_repository: ImageRepository, debian_template: Template, tmp_path: Path
) -> None:
    replay = tmp_path / "commands"
    again = ImageRepository(debian_repository.cache, runner=CommandRunner(replay_path=replay))

    boot, template = again.resolve(ImageRef(template=DEBIAN_12))

    assert template is not None
    assert template.sha256 == debian_template.sha256
    assert boot.disk is not None and boot.kernel is not None
    assert boot.disk.path == debian_repository.cache.path(debian_template.sha256)
    commands = replay.read_text() if replay.exists() else ""
    assert "debootstrap" not in commands
