"""A VM lease end to end, as a volunteer cloud runs it: ``bes serve`` over TLS, a ``bes worker``
in a network namespace of its own (a veth pair to the service, no other route: the user cannot
reach it), a real debian-12 VM. The owner starts the lease with ``bes lease start``, logs in
with ``bes ssh`` (the guest's host key checked, not prompted), copies 50 MiB with scp through
``bes port-forward`` and back intact, another user is refused, and ``bes cancel`` ends the VM
and its tunnel."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bes.vm.leaseguest import lease_hostname
from tests.support.server import LiveServer, free_port
from tests.support.vm import (
    built_debian_repository,
    cache_dir_for_tests,
    qemu_processes,
    require,
)
from tests.support.worker import bes_cli, issue_token

pytestmark = [pytest.mark.slow, pytest.mark.vm, pytest.mark.timeout(2400)]

MIB = 1024 * 1024
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Namespace:
    name: str
    host_address: str
    worker_address: str


@contextlib.contextmanager
def worker_namespace() -> Iterator[Namespace]:
    """A network namespace joined to this one by a veth pair only (a /30 between them)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    require("ip", "iproute2")
    tag = os.getpid() % 100_000
    name, host_if, worker_if = f"bes-lease-{tag}", f"bl{tag}h", f"bl{tag}w"
    subnet = f"10.213.{tag % 250}"
    ns = Namespace(name=name, host_address=f"{subnet}.1", worker_address=f"{subnet}.2")

    def ip(*args: str, check: bool = True) -> None:
        subprocess.run(["ip", *args], check=check, capture_output=True, timeout=30)

    ip("netns", "del", name, check=False)
    ip("link", "del", host_if, check=False)
    try:
        ip("netns", "add", name)
        ip("link", "add", host_if, "type", "veth", "peer", "name", worker_if)
        ip("link", "set", worker_if, "netns", name)
        ip("addr", "add", f"{ns.host_address}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", name, "addr", "add", f"{ns.worker_address}/30", "dev", worker_if)
        ip("-n", name, "link", "set", worker_if, "up")
        ip("-n", name, "link", "set", "lo", "up")
        yield ns
    finally:
        ip("netns", "del", name, check=False)
        ip("link", "del", host_if, check=False)


def bes(
    *args: str, env: dict[str, str], timeout_s: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bes", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **env},
        check=False,
    )


def test_a_lease_on_a_worker_behind_nat_is_reached_through_the_service(tmp_path: Path) -> None:
    require("ssh", "openssh-client")
    require("qemu-system-x86_64", "qemu-system-x86")
    with worker_namespace() as ns:
        _run(tmp_path, ns)


def _run(tmp: Path, ns: Namespace) -> None:
    # The worker's namespace reaches nothing but the service, so it cannot fetch Debian's
    # packages: the template it runs is built here first, into the image cache it is given.
    built_debian_repository()
    ca, data_dir = tmp / "ca", tmp / "data"
    assert bes_cli("ca", "init", str(ca)).returncode == 0
    assert bes_cli("ca", "server", str(ca), ns.host_address).returncode == 0
    for name in ("alice", "bob"):
        (tmp / f"{name}.pw").write_text(f"{name}-Secret-1\n")
        added = bes_cli(
            "user", "add", name, "--password-file", str(tmp / f"{name}.pw"),
            "--data-dir", str(data_dir),
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
    port = free_port()
    tls = [
        "--tls-cert", str(ca / f"{ns.host_address}.pem"),
        "--tls-key", str(ca / f"{ns.host_address}.key"),
    ]  # fmt: skip
    server = LiveServer(
        data_dir,
        port=port,
        extra=["--backend", "desktopgrid", *tls],
        ca_file=ca / "ca.pem",
        host=ns.host_address,
    ).start()
    endpoint = server.endpoint
    token = issue_token(data_dir, "volunteer")
    worker_log = (tmp / "worker.log").open("wb")
    worker = subprocess.Popen(
        [
            "ip", "netns", "exec", ns.name, sys.executable, "-m", "bes", "-v", "worker",
            "--service", f"https://{ns.host_address}:{port}",
            "--token-file", str(token), "--ca-file", str(ca / "ca.pem"),
            "--cache-dir", str(tmp / "worker"),
            "--image-cache", str(cache_dir_for_tests() / "images"),
            "--hypervisor", "qemu", "--accel", os.environ.get("BES_TEST_ACCEL", "auto"),
        ],
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    alice = {
        "BES_ENDPOINT": endpoint,
        "BES_USERNAME": "alice",
        "BES_PASSWORD": "alice-Secret-1",
        "BES_CA_FILE": str(ca / "ca.pem"),
        "XDG_DATA_HOME": str(tmp / "alice-data"),
        "XDG_CONFIG_HOME": str(tmp / "alice-config"),
    }
    bob = {**alice, "BES_USERNAME": "bob", "BES_PASSWORD": "bob-Secret-1"}
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ssh_options = ["-i", str(key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"]
    forward: subprocess.Popen[str] | None = None
    activity = ""
    try:
        begun = bes("lease", "start", "--ssh-key", f"{key}.pub", "--wait", env=alice)
        assert begun.returncode == 0, begun.stderr + _tail(tmp / "worker.log")
        activity = begun.stdout.strip()

        # A shell in the VM, through the service: the guest's kernel answers.
        logged_in = bes(
            "ssh", activity, "--", *ssh_options, "uname", "-a", env=alice, timeout_s=120
        )
        assert logged_in.returncode == 0, logged_in.stderr
        assert logged_in.stdout.startswith(f"Linux {lease_hostname(activity)} "), logged_in.stdout
        assert "x86_64" in logged_in.stdout

        # The worker's forwarded port is on its own loopback: not reachable from here.
        lease = _lease_json(activity, alice)
        (ssh_port,) = [p["host"] for p in lease["ports"] if p["guest"] == 22]
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", ssh_port), 2):
            pass

        # 50 MiB there and back with scp (SFTP) through bes port-forward.
        forward = subprocess.Popen(
            [sys.executable, "-m", "bes", "port-forward", activity, "22"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **alice},
        )
        assert forward.stdout is not None
        local_port = int(forward.stdout.readline())
        known_hosts = tmp / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{local_port} {lease['host_keys'][0]}\n")
        scp = ["scp", "-P", str(local_port), *ssh_options, *_KEEPALIVE]
        scp += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        payload = tmp / "payload.bin"
        payload.write_bytes(os.urandom(50 * MIB))
        _copy(scp, str(payload), "debian@127.0.0.1:payload.bin", tmp)
        back = tmp / "back.bin"
        _copy(scp, "debian@127.0.0.1:payload.bin", str(back), tmp)
        assert _sha256(back) == _sha256(payload)

        # Another user cannot open a stream to it.
        refused = bes("ssh", activity, "--", *ssh_options, "true", env=bob, timeout_s=60)
        assert refused.returncode != 0
        assert "no such activity" in refused.stderr or "404" in refused.stderr, refused.stderr

        # Cancel: the VM and its tunnel are gone.
        cancelled = bes("cancel", activity, env=alice, timeout_s=60)
        assert cancelled.returncode == 0, cancelled.stderr
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            _lease_json(activity, alice)["state"] != "Cancelled" or qemu_processes(activity)
        ):
            time.sleep(1)
        assert _lease_json(activity, alice)["state"] == "Cancelled"
        assert qemu_processes(activity) == []
        after = bes("ssh", activity, "--", *ssh_options, "true", env=alice, timeout_s=60)
        assert after.returncode != 0
        assert "Cancelled" in after.stderr, after.stderr

        # A guest that powers itself off ends its lease Finished.
        again = bes("lease", "start", "--ssh-key", f"{key}.pub", "--wait", env=alice)
        assert again.returncode == 0, again.stderr + _tail(tmp / "worker.log")
        second = again.stdout.strip()
        bes("ssh", second, "--", *ssh_options, "sudo", "poweroff", env=alice, timeout_s=120)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and _lease_json(second, alice)["state"] == "Running":
            time.sleep(1)
        assert _lease_json(second, alice)["state"] == "Finished"
        assert qemu_processes(second) == []
    finally:
        if forward is not None:
            forward.send_signal(signal.SIGINT)
            try:
                forward.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                forward.kill()
                forward.communicate()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(120)
        except subprocess.TimeoutExpired:
            worker.kill()
        worker_log.close()
        server.stop()


def _lease_json(activity: str, env: dict[str, str]) -> dict[str, object]:
    import json

    from bes.client import BESClient, UsernameToken

    with BESClient(
        env["BES_ENDPOINT"],
        auth=UsernameToken(env["BES_USERNAME"], env["BES_PASSWORD"]),
        ca_file=env["BES_CA_FILE"],
    ) as client:
        found = client.lease(client.ref(activity))
    return json.loads(json.dumps(found))


_KEEPALIVE = ["-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=6"]
"""ssh ends a session that answers nothing for a minute, instead of waiting for ever."""


def _copy(scp: list[str], source: str, target: str, tmp: Path) -> None:
    """One scp through the tunnel; a copy that stalls is tried once more.

    One CI run saw the 50 MiB download stall for 600 s after the upload had succeeded; dozens
    of runs here (KVM and TCG, idle and loaded) never did, and the stall was not located. So a
    stalled copy (ssh's keepalives end it in a minute) is retried once on a new stream, and
    what the first attempt said is logged (pytest shows it if the test fails).
    """
    for attempt in (1, 2):
        copied = subprocess.run(
            [*scp, source, target], capture_output=True, text=True, timeout=600, check=False
        )
        if copied.returncode == 0:
            return
        log.warning(
            "scp %s %s, attempt %d: %s\n%s\nworker:%s",
            source, target, attempt, copied.returncode, copied.stderr, _tail(tmp / "worker.log"),
        )  # fmt: skip
    raise AssertionError(f"scp {source} {target} failed twice: {copied.stderr}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _tail(path: Path) -> str:
    return "\n" + path.read_text(errors="replace")[-3000:] if path.exists() else ""
