"""VM leases through a live ``bes serve`` over TLS, with the worker's real protocol client and
tunnel (``bes.worker``) and a TCP echo server standing in for the guest's sshd: the way in
is reported in the status, only the owner reaches the guest's declared ports, per-lease limits
hold and show in /metrics, suspend and resume reach the worker, and the end closes it all.
The VM itself is in tests/service/test_lease_e2e.py."""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from lxml import etree
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bes.access import Access
from bes.backends.desktopgrid.tokens import create_worker
from bes.client import BESClient, UsernameToken, jsdl
from bes.client.faults import ConnectionProblem, HttpProblem
from bes.client.stream import BlockingWebSocket
from bes.client.tunnel import PortForward, open_stream
from bes.db.engine import default_url
from bes.db.store import Database
from bes.errors import LeaseLost
from bes.schemas import schema_file
from bes.worker.client import ServiceClient, Work
from bes.worker.tunnel import LeaseTunnel
from tests.support import soap
from tests.support.postgres import fresh_database
from tests.support.server import LiveServer, live_server
from tests.support.standards import assert_official, assert_valid
from tests.support.worker import bes_cli

T = TypeVar("T")

KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"
)
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII9X13B8RUMr0JJOTFL0x9V29xSSsD61IcXSCShY35i5"


# ------------------------------------------------------------------------------ the guest


class EchoServer:
    """A TCP server on loopback that sends back what it gets, then half-closes at EOF (a
    stand-in for the guest's forwarded port)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


def echo_through(websocket_factory: Callable[[], object], payload: bytes) -> bytes:
    """Send ``payload`` through a stream, half-close, and read everything back."""
    websocket = websocket_factory()
    received = bytearray()
    ended = threading.Event()

    def read() -> None:
        for message in websocket:  # type: ignore[attr-defined]
            if not message:
                ended.set()
                break
            received.extend(message)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    for start in range(0, len(payload), 50_000):
        websocket.send(payload[start : start + 50_000])  # type: ignore[attr-defined]
    websocket.send(b"")  # type: ignore[attr-defined]
    assert ended.wait(30), "the far end never ended its direction"
    websocket.close()  # type: ignore[attr-defined]
    return bytes(received)


# ------------------------------------------------------------------------------ the site


@dataclass
class Site:
    server: LiveServer
    ca: Path
    alice: BESClient
    bob: BESClient
    admin: BESClient
    worker: ServiceClient


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("leases")
    ca, data_dir = tmp / "ca", tmp / "data"
    for args in (("ca", "init", str(ca)), ("ca", "server", str(ca), "127.0.0.1")):
        assert bes_cli(*args).returncode == 0
    for name, extra in (("alice", ()), ("bob", ()), ("root", ("--admin",))):
        password = tmp / f"{name}.pw"
        password.write_text(f"{name}-Secret-1\n")
        added = bes_cli(
            "user", "add", name, "--password-file", str(password), "--data-dir", str(data_dir),
            *extra,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
    tls = ["--tls-cert", str(ca / "127.0.0.1.pem"), "--tls-key", str(ca / "127.0.0.1.key")]
    options = ["--backend", "desktopgrid", "--tunnel-streams", "3", *tls]
    with live_server(data_dir, extra=options, ca_file=ca / "ca.pem") as server:
        with Database(default_url(data_dir)) as db:
            token = create_worker(db, "volunteer")

        def client(name: str) -> BESClient:
            token = UsernameToken(name, f"{name}-Secret-1")
            return BESClient(server.endpoint, auth=token, ca_file=ca / "ca.pem")

        with client("alice") as alice, client("bob") as bob, client("root") as admin:
            yield Site(
                server=server,
                ca=ca,
                alice=alice,
                bob=bob,
                admin=admin,
                worker=ServiceClient(server.url, token, ca_file=ca / "ca.pem"),
            )


@dataclass
class RunningLease:
    work: Work
    echo: EchoServer
    tunnel: LeaseTunnel
    tunnel_url: str


def claim(site: Site) -> Work:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        works = site.worker.claim(
            slots=1, memory_mib=4096, vcpus=2, disk_mib=100_000, hypervisors=["qemu"],
            network=False, wait_s=2.0,
        )  # fmt: skip
        if works:
            (work,) = works
            return work
    raise AssertionError("the lease was never offered to the worker")


@contextlib.contextmanager
def running_lease(site: Site) -> Iterator[RunningLease]:
    """Alice's lease, claimed by the worker, its guest (an echo server on 22) reported ready
    and its tunnel open; ended and closed afterwards."""
    ref = site.alice.submit(jsdl.lease(ssh_keys=[KEY], ports=[8080], name="lease"))
    work = claim(site)
    assert work.activity == ref.activity_id
    site.worker.heartbeat([(work.lease, "Executing")])
    echo = EchoServer()
    access = Access(user="debian", host_keys=(HOST_KEY,), ports=((22, echo.port), (8080, 1)))
    site.worker.report_access(work.lease, access)
    tunnel = LeaseTunnel(site.worker.tunnel(work.lease), dict(access.ports), name=work.activity)
    tunnel.start()
    found = wait_for(lambda: _ready(site.alice, ref), "the lease to be ready")
    wait_for(lambda: tunnel.connections == 1, "the worker's tunnel to open")
    try:
        yield RunningLease(work=work, echo=echo, tunnel=tunnel, tunnel_url=found["tunnel"])
    finally:
        site.alice.cancel([ref])
        tunnel.close()
        echo.close()
        with contextlib.suppress(LeaseLost):  # (already handed back by the test)
            site.worker.release(work.lease, message="test over")


def _ready(client: BESClient, ref: object) -> dict[str, object] | None:
    found = client.lease(ref)  # type: ignore[arg-type]
    return found if found["ready"] else None


def wait_for(check: Callable[[], T | None], what: str, timeout_s: float = 30.0) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------------------ tests


def test_the_way_in_is_in_the_status_and_its_schema_holds(site: Site) -> None:
    with running_lease(site) as lease:
        (status,) = site.alice.status([site.alice.ref(lease.work.activity)])
        assert status.state.value == "Running"
        assert status.access is not None
        assert status.access.user == "debian"
        assert status.access.host_keys == (HOST_KEY,)
        assert dict(status.access.ports)[22] == lease.echo.port
        assert status.access.tunnel == lease.tunnel_url
        assert lease.tunnel_url.startswith("wss://127.0.0.1:")
        # The raw answer, as any BES client gets it: valid against the official schemas, and
        # its besa:Access against ours.
        answer = httpx.post(
            site.server.endpoint,
            content=soap.envelope(
                soap.vector("GetActivityStatuses", [soap.epr(activity_id=lease.work.activity)])
            ),
            headers={
                "SOAPAction": soap.ACTIONS + "GetActivityStatuses",
                "Content-Type": "text/xml",
            },
            auth=("alice", "alice-Secret-1"),
            verify=site.server.tls or True,
        )
        assert answer.status_code == 200, answer.text
        assert_official(answer.content, "GetActivityStatusesResponse")
        (access,) = soap.xpath(soap.body_of(answer.content), "//besa:Access")
        assert_valid(_activity_schema(), access, "besa:Access")
        assert soap.xpath(access, "besa:Port[@guestPort='22']/@hostPort") == [str(lease.echo.port)]
        # The owner's status page says how to log in.
        page = httpx.get(
            f"{site.server.url}/bes/status/activities/{lease.work.activity}",
            auth=("alice", "alice-Secret-1"),
            verify=site.server.tls or True,
        ).text
        assert f"bes ssh {lease.work.activity}" in page
        assert HOST_KEY in page


@functools.cache
def _activity_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(schema_file("bes-activity.xsd"))))


def test_the_owner_reaches_a_declared_port_through_the_service(site: Site) -> None:
    options = site.alice.tunnel_options()
    with running_lease(site) as lease:
        payload = bytes(range(256)) * 4096  # 1 MiB
        back = echo_through(lambda: open_stream(lease.tunnel_url, 22, options), payload)
        assert back == payload
        # Through a local port too, as bes port-forward does.
        forward = PortForward(lease.tunnel_url, 22, options)
        threading.Thread(target=forward.serve_forever, daemon=True).start()
        try:
            with socket.create_connection(("127.0.0.1", forward.port), timeout=10) as conn:
                conn.sendall(b"hello through the relay")
                conn.shutdown(socket.SHUT_WR)
                got = b""
                while chunk := conn.recv(65536):
                    got += chunk
            assert got == b"hello through the relay"
        finally:
            forward.close()


def test_others_and_undeclared_ports_are_refused(site: Site) -> None:
    with running_lease(site) as lease:
        with pytest.raises(HttpProblem) as theirs:
            open_stream(lease.tunnel_url, 22, site.bob.tunnel_options())
        assert theirs.value.status == 404  # another owner's lease looks like none
        with pytest.raises(HttpProblem) as undeclared:
            open_stream(lease.tunnel_url, 25, site.alice.tunnel_options())
        assert undeclared.value.status == 403
        assert "guest port 25 is not forwarded" in str(undeclared.value)
        anonymous = httpx.get(
            lease.tunnel_url.replace("wss", "https") + "?port=22", verify=site.server.tls or True
        )
        assert anonymous.status_code in (400, 401, 404, 426)
        # The administrator may (as for any activity).
        back = echo_through(
            lambda: open_stream(lease.tunnel_url, 22, site.admin.tunnel_options()), b"admin"
        )
        assert back == b"admin"
        # A port the lease declares but the worker has nothing on: refused with the reason.
        with pytest.raises(HttpProblem) as nothing:
            open_stream(lease.tunnel_url, 8080, site.alice.tunnel_options())
        assert nothing.value.status == 502
        assert "refused the connection" in str(nothing.value)


def test_streams_opened_many_at_once_over_tls_each_get_their_answer(site: Site) -> None:
    # CI saw one stream's opening request lost, and its client wait for ever: websockets'
    # threaded client read the TLS connection on one thread (the server's TLS 1.3 session
    # tickets) while it wrote the request on another, which OpenSSL does not allow.
    url = (
        site.server.url.replace("https://", "wss://")
        + "/bes/activities/AaJKnoSuchLease0000000/tunnel"
    )
    options = site.alice.tunnel_options()
    answers: Counter[int | str] = Counter()
    lock = threading.Lock()

    def open_some(count: int) -> None:
        for _ in range(count):
            try:
                open_stream(url, 22, options).close()
                answer: int | str = "opened"
            except HttpProblem as exc:
                answer = exc.status
            except ConnectionProblem as exc:
                answer = str(exc)
            with lock:
                answers[answer] += 1

    threads = [threading.Thread(target=open_some, args=(200,), daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 180
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert answers == {404: 1600}


def test_the_stream_limit_holds_and_metrics_show_it(site: Site) -> None:
    options = site.alice.tunnel_options()
    with running_lease(site) as lease:
        held = [open_stream(lease.tunnel_url, 22, options) for _ in range(3)]
        try:
            with pytest.raises(HttpProblem) as over:
                open_stream(lease.tunnel_url, 22, options)
            assert over.value.status == 429
            assert "3 streams open, its limit" in str(over.value)
            metrics = httpx.get(
                site.server.url + "/metrics",
                auth=("root", "root-Secret-1"),
                verify=site.server.tls or True,
            ).text
            activity = lease.work.activity
            assert f'bes_tunnel_streams{{activity="{activity}"}} 3.0' in metrics
            assert f'bes_tunnel_stream_limit{{activity="{activity}"}} 3.0' in metrics
            assert (
                f'bes_tunnel_streams_opened{{activity="{activity}",outcome="refused"}} 1.0'
                in metrics
            )
            assert "bes_tunnel_bandwidth_limit_bytes_per_second" in metrics
        finally:
            for websocket in held:
                websocket.close()
        wait_for(lambda: _open_streams(site, lease.work.activity) == 0, "the streams to close")
        assert echo_through(lambda: open_stream(lease.tunnel_url, 22, options), b"again")


def _open_streams(site: Site, activity: str) -> int | None:
    metrics = httpx.get(
        site.server.url + "/metrics", auth=("root", "root-Secret-1"), verify=site.server.tls or True
    ).text
    for line in metrics.splitlines():
        if line.startswith(f'bes_tunnel_streams{{activity="{activity}"}}'):
            return int(float(line.split()[-1]))
    return None


def test_suspend_and_resume_reach_the_worker_and_the_status(site: Site) -> None:
    with running_lease(site) as lease:
        ref = site.alice.ref(lease.work.activity)
        site.alice.suspend(ref)
        assert site.worker.heartbeat([(lease.work.lease, "Executing")]) == {
            lease.work.lease: "suspend"
        }
        site.worker.heartbeat([(lease.work.lease, "Suspended")])
        wait_for(lambda: "Suspended" in site.alice.status([ref])[0].substates, "Suspended")
        with pytest.raises(HttpProblem) as suspended:
            open_stream(lease.tunnel_url, 22, site.alice.tunnel_options())
        assert suspended.value.status == 409
        with pytest.raises(HttpProblem):
            site.bob.suspend(ref, suspended=False)  # not theirs
        site.alice.suspend(ref, suspended=False)
        assert site.worker.heartbeat([(lease.work.lease, "Suspended")]) == {
            lease.work.lease: "continue"
        }


def test_ending_the_lease_closes_its_streams(site: Site) -> None:
    options = site.alice.tunnel_options()
    with running_lease(site) as lease:
        websocket = open_stream(lease.tunnel_url, 22, options)
        websocket.send(b"before the end")
        assert websocket.recv(timeout=10) == b"before the end"
        ref = site.alice.ref(lease.work.activity)
        site.alice.cancel([ref])
        assert site.worker.heartbeat([(lease.work.lease, "Executing")]) == {
            lease.work.lease: "cancel"
        }
        site.worker.release(lease.work.lease, message="stopped: the activity was terminated")
        lease.tunnel.close()  # the worker ends the tunnel with the lease
        with pytest.raises(ConnectionClosed):  # not a TimeoutError: it really closes
            while True:
                websocket.recv(timeout=10)
        wait_for(lambda: site.alice.status([ref])[0].state.value == "Cancelled", "Cancelled")
        with pytest.raises(HttpProblem) as ended:
            open_stream(lease.tunnel_url, 22, options)
        assert ended.value.status == 409


def test_a_tunnel_that_drops_comes_back(site: Site) -> None:
    options = site.alice.tunnel_options()
    with running_lease(site) as lease:
        lease.tunnel.close()
        with pytest.raises(HttpProblem) as gone:
            open_stream(lease.tunnel_url, 22, options)
        assert gone.value.status == 503
        assert "no tunnel open" in str(gone.value)
        again = LeaseTunnel(
            site.worker.tunnel(lease.work.lease),
            {22: lease.echo.port},
            name=lease.work.activity,
        )
        again.start()
        try:
            wait_for(lambda: again.connections == 1, "the tunnel to reopen")
            assert echo_through(lambda: open_stream(lease.tunnel_url, 22, options), b"back")
        finally:
            again.close()


def test_only_the_worker_holding_the_lease_opens_its_tunnel(site: Site) -> None:
    def status_of(lease: str, token: str | None) -> int:
        endpoint = site.worker.tunnel(lease)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with pytest.raises(InvalidStatus) as refused:
            BlockingWebSocket.connect(
                endpoint.url, headers=headers, ssl=endpoint.ssl, open_timeout_s=30, max_size=1024
            )
        return refused.value.response.status_code

    with running_lease(site) as lease:
        token = dict(site.worker.tunnel(lease.work.lease).headers)["Authorization"][7:]
        assert status_of(lease.work.lease, None) == 401
        assert status_of(lease.work.lease, "not-a-token") == 401
        assert status_of("not a lease", token) == 400
        job, _, epoch = lease.work.lease.rpartition(".")
        assert status_of(f"{job}.{int(epoch) + 1}", token) == 409  # not (or no longer) its own
        with Database(default_url(site.server.data_dir)) as db:
            other = create_worker(db, "another")
        assert status_of(lease.work.lease, other) == 409


def test_the_worker_reconnects_when_the_service_restarts(tmp_path: Path) -> None:
    """The relay goes away (a restart): the worker's tunnel comes back by itself, with
    backoff, and streams work again; the lease itself never noticed."""
    data_dir = tmp_path / "data"
    with live_server(data_dir, extra=["--backend", "desktopgrid"]) as server:
        with Database(default_url(data_dir)) as db:
            token = create_worker(db, "volunteer")
        worker = ServiceClient(server.url, token)
        echo = EchoServer()
        with BESClient(server.endpoint) as client:
            ref = client.submit(jsdl.lease(ssh_keys=[KEY], name="lease"))
            works: list[Work] = []
            while not works:
                works = worker.claim(
                    slots=1, memory_mib=4096, vcpus=2, disk_mib=100_000, hypervisors=["qemu"],
                    network=False, wait_s=2.0,
                )  # fmt: skip
            (work,) = works
            worker.report_access(
                work.lease, Access(user="debian", host_keys=(HOST_KEY,), ports=((22, echo.port),))
            )
            tunnel = LeaseTunnel(worker.tunnel(work.lease), {22: echo.port}, name=work.activity)
            tunnel.start()
            try:
                found = wait_for(lambda: _ready(client, ref), "the lease to be ready")
                wait_for(lambda: tunnel.connections == 1, "the tunnel to open")
                options = client.tunnel_options()
                assert echo_through(lambda: open_stream(found["tunnel"], 22, options), b"1")
                server.stop()
                server.start()
                wait_for(lambda: tunnel.connections == 2, "the tunnel to reopen", timeout_s=60)
                assert echo_through(lambda: open_stream(found["tunnel"], 22, options), b"2")
                assert client.status([ref])[0].state.value == "Running"
            finally:
                client.cancel([ref])
                tunnel.close()
                echo.close()


# ------------------------------------------------------------------------------ replicas


@pytest.mark.slow
@pytest.mark.postgres
def test_a_stream_reaching_another_replica_is_forwarded_to_the_tunnel(
    tmp_path: Path, postgres_admin_url: str
) -> None:
    """Two replicas on one PostgreSQL, over TLS: the worker's tunnel reaches one, the user's
    stream the other, which forwards it, checking the first one's certificate (the user never
    needs the right replica)."""
    url = fresh_database(postgres_admin_url, "lease_replicas")
    key, ca = tmp_path / "secret.key", tmp_path / "ca"
    for args in (("ca", "init", str(ca)), ("ca", "server", str(ca), "127.0.0.1")):
        assert bes_cli(*args).returncode == 0
    options = ["--backend", "desktopgrid", "--database-url", url, "--secret-key-file", str(key)]
    options += ["--tls-cert", str(ca / "127.0.0.1.pem"), "--tls-key", str(ca / "127.0.0.1.key")]
    trust = {"ca_file": ca / "ca.pem"}
    with (
        live_server(tmp_path / "a", extra=options, **trust) as a,
        live_server(tmp_path / "b", extra=options, **trust) as b,
    ):
        with Database(url) as db:
            token = create_worker(db, "volunteer")
        worker = ServiceClient(a.url, token, **trust)
        echo = EchoServer()
        with BESClient(a.endpoint, **trust) as on_a, BESClient(b.endpoint, **trust) as on_b:
            ref = on_a.submit(jsdl.lease(ssh_keys=[KEY], name="lease"))
            works: list[Work] = []
            deadline = time.monotonic() + 30
            while not works and time.monotonic() < deadline:
                works = worker.claim(
                    slots=1, memory_mib=4096, vcpus=2, disk_mib=100_000, hypervisors=["qemu"],
                    network=False, wait_s=2.0,
                )  # fmt: skip
            (work,) = works
            access = Access(user="debian", host_keys=(HOST_KEY,), ports=((22, echo.port),))
            worker.report_access(work.lease, access)
            tunnel = LeaseTunnel(worker.tunnel(work.lease), {22: echo.port}, name=work.activity)
            tunnel.start()
            try:
                wait_for(lambda: tunnel.connections == 1, "the tunnel to open on replica a")
                found = wait_for(
                    lambda: _ready(on_b, on_b.ref(work.activity)), "replica b to see it ready"
                )
                assert found["tunnel"].startswith(f"wss://127.0.0.1:{b.port}/")
                payload = bytes(range(256)) * 1024
                back = echo_through(
                    lambda: open_stream(found["tunnel"], 22, on_b.tunnel_options()), payload
                )
                assert back == payload
                # The replica holding the tunnel counts the stream.
                metrics = httpx.get(a.url + "/metrics", verify=a.tls or True).text
                opened = f'bes_tunnel_streams_opened{{activity="{work.activity}",outcome="opened"}}'
                assert f"{opened} 1.0" in metrics
            finally:
                on_a.cancel([ref])
                tunnel.close()
                echo.close()
