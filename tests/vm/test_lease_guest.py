"""The SSH-able lease guest: host keys, users' public keys and the cloud-config (fast, with
ssh-keygen and Debian's cloud-init), then a real debian-12 VM reached with the system ssh and
scp through a QEMU port forward (slow)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from bes.ids import new_activity_id
from bes.vm import seed
from bes.vm.drivers.base import VmHandle, VmState
from bes.vm.drivers.qemu import QemuDriver, free_port
from bes.vm.images import ImageCache, ImageError
from bes.vm.job import BootImage
from bes.vm.leaseguest import (
    DEFAULT_USER,
    HostKey,
    PublicKeyError,
    failed_marker,
    lease_hostname,
    lease_user_data,
    parse_public_key,
    ready_marker,
)
from bes.vm.repository import DEBIAN_12, ImageRepository
from bes.vm.spec import ImageRef, Network, NetworkMode, PortForward, VmSpec, vm_name
from tests.support.vm import cache_dir_for_tests, cloud_init_python, require

# -- keys ------------------------------------------------------------------------------------


def _keygen(tmp_path: Path, name: str, *args: str, comment: str = "alice@laptop") -> Path:
    key = tmp_path / name
    subprocess.run(
        [
            require("ssh-keygen", "openssh-client"),
            "-q",
            "-N",
            "",
            "-C",
            comment,
            "-f",
            str(key),
            *args,
        ],
        check=True,
        timeout=60,
    )
    return key


def test_the_host_key_is_an_ed25519_pair_that_ssh_keygen_reads(tmp_path: Path) -> None:
    key = HostKey.generate()
    private = tmp_path / "host_key"
    private.write_text(key.private_openssh)
    private.chmod(0o600)

    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(private)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    (tmp_path / "host_key.pub").write_text(key.public + "\n")
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(tmp_path / "host_key.pub")],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()

    assert key.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert key.public.startswith("ssh-ed25519 AAAA")
    assert len(key.public.split()) == 2  # no comment
    assert derived[:2] == key.public.split()
    assert listed[1] == key.fingerprint
    assert HostKey.from_private_openssh(key.private_openssh) == key
    assert HostKey.generate().public != key.public
    assert "PRIVATE" not in repr(key)
    assert key.private_openssh.splitlines()[1] not in repr(key)
    assert key.known_hosts_line("127.0.0.1", 2222) == f"[127.0.0.1]:2222 {key.public}\n"


@pytest.mark.parametrize(
    ("kind", "args"),
    [
        ("ed25519", ("-t", "ed25519")),
        ("ecdsa", ("-t", "ecdsa")),
        ("rsa", ("-t", "rsa", "-b", "3072")),
    ],
)
def test_users_public_keys_made_by_ssh_keygen_are_accepted(
    tmp_path: Path, kind: str, args: tuple[str, ...]
) -> None:
    key = _keygen(tmp_path, f"id_{kind}", *args)
    text = key.with_suffix(".pub").read_text()

    parsed = parse_public_key(text)

    assert parsed == text.strip()  # ssh-keygen's own form is already the normalized one
    assert parsed.endswith(" alice@laptop")
    assert parse_public_key(f"# my key\n\n  {text}\n") == parsed


def test_a_key_with_an_odd_comment_keeps_the_key_and_drops_the_comment(tmp_path: Path) -> None:
    text = _keygen(tmp_path, "id", "-t", "ed25519").with_suffix(".pub").read_text()
    key_type, data, _ = text.split()

    assert (
        parse_public_key(f"{key_type}   {data}\tbob  at  home") == f"{key_type} {data} bob at home"
    )
    assert parse_public_key(f"{key_type} {data} evil\x1b[2Jcomment") == f"{key_type} {data}"
    assert parse_public_key(f"{key_type} {data} {'x' * 300}") == f"{key_type} {data}"
    assert parse_public_key(f"{key_type} {data}") == f"{key_type} {data}"


def test_what_is_not_an_acceptable_public_key_is_refused_with_the_reason(tmp_path: Path) -> None:
    ed25519 = _keygen(tmp_path, "id_ed25519", "-t", "ed25519")
    public = ed25519.with_suffix(".pub").read_text()
    rsa1024 = _keygen(tmp_path, "id_rsa", "-t", "rsa", "-b", "1024").with_suffix(".pub")
    ecdsa = _keygen(tmp_path, "id_ecdsa", "-t", "ecdsa").with_suffix(".pub").read_text()
    key_type, data, _ = public.split()

    refusals = {
        "": "not an SSH public key",
        "hello world": "not an SSH public key",
        "ssh-ed25519": "without its key data",
        "ssh-ed25519 AAAA!!!notbase64": "not an SSH public key",
        f"ssh-ed25519 {ecdsa.split()[1]}": "not an SSH public key",  # type and data disagree
        ed25519.read_text(): "a private key was given; give the public key",
        rsa1024.read_text(): "RSA keys under 2048 bits are refused",
        f'command="/bin/sh" {public}': "options (such as command= or from=) are not accepted",
        f'no-pty,from="10.0.0.0/8" {public}': "options",
        f"ssh-dss {data}": "ssh-dss keys are not accepted",
        f"sk-ssh-ed25519@openssh.com {data}": "are not accepted",
        f"ssh-ed25519-cert-v01@openssh.com {data}": "are not accepted",
        public + ecdsa: "give one SSH public key at a time",
    }
    for text, reason in refusals.items():
        with pytest.raises(PublicKeyError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            parse_public_key(text)
    with pytest.raises(ValueError, match="not an SSH public key"):  # a ValueError too
        parse_public_key(f"{key_type} {data[:-8]}")


# -- the cloud-config ------------------------------------------------------------------------

CHECK_WITH_CLOUD_INIT = textwrap.dedent(
    """
    import json, sys
    from cloudinit import handlers, util
    from cloudinit.config.schema import get_schema, validate_cloudconfig_schema

    payload = open(sys.argv[1]).read()
    kind = handlers.type_from_starts_with(payload)
    config = util.load_yaml(payload)
    validate_cloudconfig_schema(config, get_schema(), strict=True)
    print(json.dumps({"type": kind, "config": config}))
    """
)


def test_the_user_data_is_a_cloud_config_that_cloud_init_validates(tmp_path: Path) -> None:
    owner = _keygen(tmp_path, "id_ed25519", "-t", "ed25519").with_suffix(".pub").read_text()
    other = _keygen(tmp_path, "id_rsa", "-t", "rsa", "-b", "3072", comment="ci")
    host_key = HostKey.generate()
    lease_id = new_activity_id()

    user_data = lease_user_data(
        lease_id=lease_id,
        authorized_keys=[owner, other.with_suffix(".pub").read_text()],
        host_key=host_key,
    )
    (tmp_path / "user-data").write_text(user_data)
    checked = subprocess.run(
        [cloud_init_python(), "-c", CHECK_WITH_CLOUD_INIT, str(tmp_path / "user-data")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert checked.returncode == 0, checked.stderr
    result = json.loads(checked.stdout.splitlines()[-1])
    assert result["type"] == "text/cloud-config"
    config = result["config"]
    assert config == yaml.safe_load(user_data)
    assert user_data.startswith("#cloud-config\n")
    assert config["hostname"] == lease_hostname(lease_id)
    assert config["ssh_keys"] == {
        "ed25519_private": host_key.private_openssh,
        "ed25519_public": host_key.public,
    }
    (user,) = config["users"]
    assert user["name"] == DEFAULT_USER == "debian"
    assert user["ssh_authorized_keys"] == [
        owner.strip(),
        parse_public_key(other.with_suffix(".pub").read_text()),
    ]
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert user["lock_passwd"] is True
    assert config["ssh_pwauth"] is False
    assert config["disable_root"] is True
    (sshd,) = config["write_files"]
    assert "PermitRootLogin no\n" in sshd["content"]
    assert "PasswordAuthentication no\n" in sshd["content"]
    assert "power_state" not in config  # a lease's guest never powers itself off
    (script,) = config["runcmd"]
    assert ready_marker(lease_id) in script
    assert failed_marker(lease_id) in script
    syntax = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr


def test_the_host_name_is_a_valid_dns_label_whatever_the_lease_id() -> None:
    assert lease_hostname("AaJGnMh2czKUqC9vEaN7o9wk") == "bes-AaJGnMh2czKUqC9vEaN7o9wk"
    assert lease_hostname("AaJGm7wH97_8Rx5pgLmf_-") == "bes-AaJGm7wH97-8Rx5pgLmf"
    assert lease_hostname("x" * 80) == "bes-" + "x" * 59
    for _ in range(200):
        name = lease_hostname(new_activity_id())
        assert re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", name), name


def test_the_user_data_refuses_a_lease_nobody_can_log_in_to(tmp_path: Path) -> None:
    key = _keygen(tmp_path, "id", "-t", "ed25519").with_suffix(".pub").read_text()
    host_key = HostKey.generate()

    with pytest.raises(PublicKeyError, match="at least one SSH public key"):
        lease_user_data(lease_id="L", authorized_keys=[], host_key=host_key)
    with pytest.raises(PublicKeyError, match="private key"):
        lease_user_data(lease_id="L", authorized_keys=[host_key.private_openssh], host_key=host_key)
    for user in ("root", "Alice", "a b", "x" * 40, ""):
        with pytest.raises(ValueError, match="not a login name"):
            lease_user_data(lease_id="L", authorized_keys=[key], host_key=host_key, user=user)
    assert '"name": "alice"' in lease_user_data(
        lease_id="L", authorized_keys=[key], host_key=host_key, user="alice"
    )


# -- a real guest ----------------------------------------------------------------------------

_READY_TIMEOUT_S = 600.0


@pytest.fixture(scope="module")
def debian_boot() -> BootImage:
    """debian-12 from the shared test cache (built there once per machine, as root)."""
    require("qemu-system-x86_64", "qemu-system-x86")
    require("qemu-img", "qemu-utils")
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    repository = ImageRepository(ImageCache(cache_dir_for_tests() / "images"))
    try:
        boot, _ = repository.resolve(ImageRef(template=DEBIAN_12))
    except ImageError as exc:
        if os.environ.get("BES_REQUIRE_VM") == "1":
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    return boot


def _wait_for_console(driver: QemuDriver, vm: VmHandle, lease_id: str) -> str:
    """Wait (bounded) for the ready or failed marker; return the console's text."""
    console = driver.console_log(vm)
    deadline = time.monotonic() + _READY_TIMEOUT_S
    text = ""
    while time.monotonic() < deadline:
        text = console.read_text(errors="replace") if console.exists() else ""
        if ready_marker(lease_id) in text or failed_marker(lease_id) in text:
            return text
        assert driver.state(vm) is VmState.RUNNING, "the VM ended:\n" + text[-3000:]
        time.sleep(0.2)
    pytest.fail(f"no lease marker within {_READY_TIMEOUT_S:g} s:\n{text[-3000:]}")


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_owner_logs_into_the_lease_guest_with_ssh_and_copies_files_with_scp(
    debian_boot: BootImage, driver: QemuDriver, tmp_path: Path
) -> None:
    ssh = require("ssh", "openssh-client")
    scp = require("scp", "openssh-client")
    key = _keygen(tmp_path, "id_ed25519", "-t", "ed25519")
    host_key = HostKey.generate()
    # An id with what a host name may not hold, as base64url ids sometimes do.
    lease_id = new_activity_id()[:-2] + "_-"
    name = vm_name(lease_id)
    port = free_port("127.0.0.1")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(host_key.known_hosts_line("127.0.0.1", port))
    workdir = driver.workdir_for(name)
    workdir.mkdir(parents=True, mode=0o700)
    seed.write_seed(
        workdir / "seed.iso",
        instance_id=lease_id,
        hostname=name,  # not a valid host name: the user-data's wins
        user_data=lease_user_data(
            lease_id=lease_id,
            authorized_keys=[key.with_suffix(".pub").read_text()],
            host_key=host_key,
        ),
    )
    spec = VmSpec(
        name=name,
        memory_mib=512,
        vcpus=1,
        os_type="Linux_64",
        base_disk=debian_boot.disk,
        kernel=debian_boot.kernel,
        seed=workdir / "seed.iso",
        network=Network(NetworkMode.NAT, False, (PortForward(22, port),)),
    )
    options = [
        "-F", "none",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "ConnectTimeout=30",
    ]  # fmt: skip

    def run_ssh(
        *command: str, identity: Path = key, known: Path = known_hosts
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                ssh,
                *options,
                "-o",
                f"UserKnownHostsFile={known}",
                "-i",
                str(identity),
                "-p",
                str(port),
                f"{DEFAULT_USER}@127.0.0.1",
                *command,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    vm = driver.create(spec, workdir)
    try:
        started = time.monotonic()
        driver.start(vm)
        console = _wait_for_console(driver, vm, lease_id)
        ready_s = time.monotonic() - started
        assert ready_marker(lease_id) in console, console[-3000:]

        uname = run_ssh("uname", "-a")
        ssh_s = time.monotonic() - started
        assert uname.returncode == 0, uname.stderr
        words = uname.stdout.split()
        assert words[0] == "Linux"
        assert words[1] == lease_hostname(lease_id)  # set from the seed
        assert words[2].endswith("-amd64")  # Debian's kernel
        assert words[-1] == "GNU/Linux"

        who = run_ssh("id -un; sudo -n id -u; sudo -n /usr/sbin/sshd -T")
        assert who.returncode == 0, who.stderr
        assert who.stderr == ""  # e.g. no "sudo: unable to resolve host"
        lines = who.stdout.splitlines()
        assert lines[:2] == [DEFAULT_USER, "0"]  # the owner's login, passwordless sudo
        assert "permitrootlogin no" in lines
        assert "passwordauthentication no" in lines
        assert "kbdinteractiveauthentication no" in lines

        payload = tmp_path / "payload.bin"
        payload.write_bytes(os.urandom(5 * 1024 * 1024))
        back = tmp_path / "back.bin"
        copy_options = [*options, "-o", f"UserKnownHostsFile={known_hosts}", "-i", str(key)]
        sent = subprocess.run(
            [scp, *copy_options, "-P", str(port), str(payload), f"{DEFAULT_USER}@127.0.0.1:in.bin"],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert sent.returncode == 0, sent.stderr
        remote = run_ssh("sha256sum in.bin && cp in.bin out.bin")
        digest = hashlib.sha256(payload.read_bytes()).hexdigest()
        assert remote.stdout.split()[0] == digest
        fetched = subprocess.run(
            [scp, *copy_options, "-P", str(port), f"{DEFAULT_USER}@127.0.0.1:out.bin", str(back)],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert fetched.returncode == 0, fetched.stderr
        assert hashlib.sha256(back.read_bytes()).hexdigest() == digest

        # A client that expects another host key refuses to talk to this guest.
        wrong = tmp_path / "wrong_known_hosts"
        wrong.write_text(HostKey.generate().known_hosts_line("127.0.0.1", port))
        refused = run_ssh("true", known=wrong)
        assert refused.returncode == 255
        assert "Host key verification failed" in refused.stderr
        # Nor does the guest let in a key it was not given.
        stranger = _keygen(tmp_path, "stranger", "-t", "ed25519")
        denied = run_ssh("true", identity=stranger)
        assert denied.returncode == 255
        assert "Permission denied (publickey)" in denied.stderr

        assert driver.state(vm) is VmState.RUNNING  # no job script: it stays up
        print(  # noqa: T201 - the measurement, shown with -s
            f"\nlease guest: ready marker {ready_s:.1f} s after start, "
            f"first ssh done {ssh_s:.1f} s after start ({driver.accelerator()})"
        )
    finally:
        driver.destroy(vm)
