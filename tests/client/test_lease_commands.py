"""The lease commands' own logic, without a service: what bes ssh hands the system ssh, and
what bes lease start refuses before sending anything."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from bes.cli import main
from bes.cli.lease import ssh_argv

FOUND = {"user": "debian", "tunnel": "wss://bes.example.org/bes/activities/A1/tunnel"}


def test_ssh_gets_the_tunnel_as_proxy_and_checks_the_host_key_strictly(tmp_path: Path) -> None:
    argv = ssh_argv(FOUND, "bes-A1", tmp_path / "known_hosts", None, ())
    assert argv[0] == "ssh"
    options = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-o")
    proxy = shlex.split(options["ProxyCommand"])
    assert proxy[-4:] == ["bes", "tunnel", FOUND["tunnel"], "22"]
    assert options["StrictHostKeyChecking"] == "yes"
    assert options["HostKeyAlias"] == "bes-A1"
    assert options["UserKnownHostsFile"] == str(tmp_path / "known_hosts")
    assert argv[-3:] == ["-l", "debian", "bes-A1"]


@pytest.mark.parametrize(
    ("given", "before", "after"),
    [
        (("uname", "-a"), [], ["uname", "-a"]),
        (("-L", "8888:localhost:8888", "-N"), ["-L", "8888:localhost:8888", "-N"], []),
        (
            ("-i", "key", "-o", "BatchMode=yes", "true"),
            ["-i", "key", "-o", "BatchMode=yes"],
            ["true"],
        ),
        (("-v", "--", "ls", "-l"), ["-v"], ["ls", "-l"]),
    ],
)
def test_ssh_options_go_before_the_host_and_the_command_after(
    tmp_path: Path, given: tuple[str, ...], before: list[str], after: list[str]
) -> None:
    argv = ssh_argv(FOUND, "bes-A1", tmp_path / "kh", "ana", given)
    host, login = argv.index("bes-A1"), argv.index("-l")
    assert argv[login + 1] == "ana"
    assert argv[login + 2 : host] == before
    assert argv[host + 1 :] == after


def test_lease_start_refuses_a_private_key_before_sending_anything(tmp_path: Path) -> None:
    private = tmp_path / "id_ed25519"
    private.write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    result = CliRunner().invoke(
        main, ["lease", "start", "--ssh-key", str(private), "--endpoint", "http://127.0.0.1:9/bes"]
    )
    assert result.exit_code == 2
    assert "is a private key; give its .pub file" in result.output


def test_lease_start_without_any_key_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["lease", "start", "--endpoint", "http://127.0.0.1:9/bes"])
    assert result.exit_code == 2
    assert "give --ssh-key FILE (make one with ssh-keygen -t ed25519)" in result.output
