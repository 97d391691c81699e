"""Two ``bes serve`` processes on one PostgreSQL database, as a site runs replicas behind a
load balancer, behave as one service: an activity created on one is queried, read, terminated
and its outputs fetched on the other; a worker claims through one and reports through the
other; Stop/StartAcceptingNewActivities and a revoked worker token hold on both; a
PasswordDigest nonce or a signed message used on one is refused on the other; the desktop
grid's lease expiry happens once, on the replica holding the upkeep duty, and another takes
the duty over when that one dies; ``/metrics`` gives the whole service's figures on each."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from lxml import etree

from bes.worker.client import ServiceClient, Work, WorkerRefused
from tests.service.test_authorization import digest_header
from tests.service.test_metrics import Samples, parse, value
from tests.service.test_site_policy import signed
from tests.support import soap
from tests.support.grid import call, posix_job, submit
from tests.support.pki import make_pki
from tests.support.postgres import fresh_database
from tests.support.server import LiveServer, live_server
from tests.support.soap import MGMT, MGMT_ACTIONS
from tests.support.worker import bes_cli

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

T = TypeVar("T")


def digest_message(user: str, password: str) -> bytes:
    return soap.envelope(soap.create_activity(), headers=digest_header(user, password))


def accepted(server: LiveServer, message: bytes) -> bool:
    answer = server.post(message, "CreateActivity")
    if answer.status_code == 200:
        return True
    assert soap.fault_of(answer.content).findtext("faultstring") == "not authorized"
    return False


def test_replicas_share_users_nonces_and_signatures(
    tmp_path: Path, postgres_admin_url: str
) -> None:
    url = fresh_database(postgres_admin_url, "replicas")
    pki = make_pki(tmp_path / "pki")
    key = tmp_path / "secret.key"  # one sealing key for every replica
    password = tmp_path / "alice.pw"
    password.write_text("alice-Secret-9\n")
    added = bes_cli(
        "user", "add", "alice", "--password-file", str(password),
        "--certificate-subject", pki.alice_subject,
        "--database-url", url, "--secret-key-file", str(key), "--data-dir", str(tmp_path / "a"),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    options = ["--backend", "none", "--database-url", url, "--secret-key-file", str(key)]
    options += ["--tls-client-ca", str(pki.ca.cert)]  # trusted signers (HTTP here: digests)
    message = digest_message("alice", "alice-Secret-9")
    signed_message = signed(pki.alice.key, pki.alice.cert)
    with (
        live_server(tmp_path / "a", extra=options) as a,
        live_server(tmp_path / "b", extra=options) as b,
    ):
        assert accepted(a, message)
        assert not accepted(b, message)  # the nonce was used, on the other replica
        assert accepted(b, digest_message("alice", "alice-Secret-9"))
        assert accepted(b, signed_message)
        assert not accepted(a, signed_message)
    with live_server(tmp_path / "c", extra=options) as c:  # after a restart
        assert not accepted(c, message)
        assert not accepted(c, signed_message)


# ---------------------------------------------------------------------------- a grid on two


class Replicas:
    """Two replicas with the desktop grid on one database, sharing one data directory (the
    kept outputs and the sealing key), as the README's deployment does."""

    def __init__(self, a: LiveServer, b: LiveServer, *, url: str, data_dir: Path) -> None:
        self.a = a
        self.b = b
        self.url = url
        self.data_dir = data_dir

    def token(self, name: str) -> str:
        """``bes worker-token create NAME`` against the shared database."""
        created = bes_cli(
            "worker-token", "create", name, "--database-url", self.url,
            "--data-dir", str(self.data_dir),
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        return created.stdout.strip()


@contextlib.contextmanager
def replicas(tmp_path: Path, admin_url: str, name: str, *options: str) -> Iterator[Replicas]:
    """Start A, then B (each on its own port, the same database and data directory)."""
    url = fresh_database(admin_url, name)
    data_dir = tmp_path / "shared"
    extra = ["--database-url", url, "--backend", "desktopgrid"]
    extra += [f"--backend-option={o}" for o in options]
    with live_server(data_dir, extra=extra) as a, live_server(data_dir, extra=extra) as b:
        yield Replicas(a, b, url=url, data_dir=data_dir)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str) -> Iterator[Replicas]:
    with replicas(tmp_path_factory.mktemp("pair"), postgres_admin_url, "replica_pair") as both:
        yield both


def until(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Ask again until ``check`` answers (replicas apply what they hear within moments)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.1)


def responses(server: LiveServer, operation: str, ids: list[str]) -> list[etree._Element]:
    """One vector operation on ``ids``; its bes:Response elements."""
    eprs = [soap.epr(activity_id=i) for i in ids]
    answer = call(server, operation, soap.vector(operation, eprs))
    found: list[etree._Element] = soap.xpath(soap.body_of(answer), "bes:Response")
    return found


def state(server: LiveServer, activity_id: str) -> str:
    (response,) = responses(server, "GetActivityStatuses", [activity_id])
    assert not soap.xpath(response, "bes:Fault"), etree.tostring(response)
    (status,) = soap.xpath(response, "bes:ActivityStatus")
    return str(status.get("state"))


def manage(server: LiveServer, operation: str) -> httpx.Response:
    """A BES-Management operation (StopAcceptingNewActivities, StartAcceptingNewActivities)."""
    return httpx.post(
        server.endpoint,
        content=soap.envelope(f'<mgmt:{operation} xmlns:mgmt="{MGMT}"/>'),
        headers={"SOAPAction": MGMT_ACTIONS + operation, "Content-Type": "text/xml"},
        timeout=10,
    )


def claim(client: ServiceClient, wait_s: float) -> list[Work]:
    """A claim of a roomy worker, waiting up to ``wait_s`` for work."""
    return client.claim(
        slots=1,
        memory_mib=4096,
        vcpus=4,
        disk_mib=100_000,
        hypervisors=["qemu"],
        network=True,
        wait_s=wait_s,
    )


def scrape(server: LiveServer) -> Samples:
    response = httpx.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return parse(response.text)


def test_an_activity_created_on_one_replica_is_queried_read_and_terminated_on_the_other(
    pair: Replicas,
) -> None:
    a, b = pair.a, pair.b
    first = submit(a, posix_job("made-on-a"))
    second = submit(a, posix_job("also-on-a"))
    assert state(b, first) == "Pending"
    (document,) = responses(b, "GetActivityDocuments", [first])
    assert soap.xpath(document, ".//jsdl:JobName/text()") == ["made-on-a"]

    terminated = responses(b, "TerminateActivities", [first, second])
    assert [soap.xpath(t, "bes:Terminated/text()") for t in terminated] == [["true"], ["true"]]
    assert state(a, first) == state(a, second) == "Cancelled"  # queued: cancelled at once
    assert state(b, second) == "Cancelled"


def test_a_worker_claims_through_one_replica_and_reports_through_the_other(
    pair: Replicas, tmp_path: Path
) -> None:
    token = pair.token("across")
    via_a = ServiceClient(pair.a.url, token)
    via_b = ServiceClient(pair.b.url, token)
    assert via_b.register({"cpus": 4})["worker"] == "across"

    # A claim waiting on A sees a job created on B: claims look again every second.
    claimed: list[list[Work]] = []
    waiting = threading.Thread(target=lambda: claimed.append(list(claim(via_a, 10))))
    started = time.monotonic()
    waiting.start()
    time.sleep(0.5)
    activity = submit(pair.b, posix_job("claimed-on-a"))
    waiting.join(15)
    assert time.monotonic() - started < 5, "the waiting claim did not see the other's job"
    ((work,),) = claimed
    assert work.activity == activity and work.attempt == 1
    lease = work.lease

    assert via_b.heartbeat([(lease, "Executing")]) == {lease: "continue"}
    until(lambda: state(pair.a, activity) == "Running", 10, "Running on A")
    stdout = tmp_path / "stdout"
    stdout.write_text("ran across replicas\n")
    via_b.upload(lease, "stdout", stdout)
    finished, more = via_b.complete(
        lease, exit_code=0, failure=None, timing={"vm": 1.0}, files=["stdout"]
    )
    assert (finished, more) == ("finished", [])

    until(lambda: state(pair.a, activity) == "Finished", 10, "Finished on A")
    assert state(pair.b, activity) == "Finished"
    for server in (pair.b, pair.a):  # the outputs, reported through B, read on both
        listing = httpx.get(f"{server.endpoint}/activities/{activity}/outputs", timeout=10)
        assert listing.status_code == 200, listing.text
        assert {f["name"] for f in listing.json()["files"]} == {"stdout"}
        kept = httpx.get(f"{server.endpoint}/activities/{activity}/outputs/stdout", timeout=10)
        assert kept.content == b"ran across replicas\n"


def test_stop_accepting_and_worker_revocation_hold_on_every_replica(pair: Replicas) -> None:
    a, b = pair.a, pair.b
    stopped = manage(a, "StopAcceptingNewActivities")
    assert stopped.status_code == 200, stopped.text
    try:
        refused = b.post(soap.envelope(soap.create_activity()), "CreateActivity")
        assert refused.status_code == 500
        fault = soap.fault_of(refused.content)
        assert [etree.QName(d).localname for d in fault.xpath("detail/*")] == [
            "NotAcceptingNewActivitiesFault"
        ]
        attributes = call(
            b, "GetFactoryAttributesDocument", soap.vector("GetFactoryAttributesDocument", [])
        )
        assert soap.xpath(soap.body_of(attributes), "//bes:IsAcceptingNewActivities/text()") == [
            "false"
        ]
    finally:
        started = manage(b, "StartAcceptingNewActivities")
        assert started.status_code == 200, started.text
    submit(a, posix_job("accepted-again"))

    token = pair.token("revoked")
    via_a, via_b = ServiceClient(a.url, token), ServiceClient(b.url, token)
    via_a.register({"cpus": 1})  # both replicas know the token now
    via_b.register({"cpus": 1})
    revoked = bes_cli(
        "worker-token", "revoke", "revoked", "--database-url", pair.url,
        "--data-dir", str(pair.data_dir),
    )  # fmt: skip
    assert revoked.returncode == 0, revoked.stderr
    for client in (via_a, via_b):
        with pytest.raises(WorkerRefused, match="revoked"):
            client.heartbeat([])
        with pytest.raises(WorkerRefused, match="revoked"):
            claim(client, 0)


# ---------------------------------------------------------------------------- upkeep


HOLDS = "holds the upkeep duty"


def holds_upkeep(server: LiveServer) -> bool:
    return HOLDS in server.log.read_text()


def expiries(server: LiveServer) -> float:
    return value(scrape(server), "bes_lease_expiries_total")


def test_lease_expiry_runs_once_on_the_replica_holding_the_upkeep_duty(
    tmp_path: Path, postgres_admin_url: str
) -> None:
    options = ("lease_s=2", "heartbeat_s=1", "claim_wait_s=2")
    with replicas(tmp_path, postgres_admin_url, "replica_upkeep", *options) as both:
        a, b = both.a, both.b
        until(lambda: holds_upkeep(a) or holds_upkeep(b), 10, "a replica takes the upkeep duty")
        time.sleep(2)  # (the other had its chance to take it too)
        assert [holds_upkeep(a), holds_upkeep(b)].count(True) == 1
        holder, other = (a, b) if holds_upkeep(a) else (b, a)

        token = both.token("silent")
        worker = ServiceClient(other.url, token)
        activity = submit(a, posix_job("expires"))
        (work,) = claim(worker, 5)
        assert work.activity == activity and work.attempt == 1
        # The worker goes silent; its lease (2 s) expires, once.
        until(lambda: expiries(a) + expiries(b) >= 1, 15, "the lease expires")
        time.sleep(3)  # both replicas had rounds enough to take it back a second time
        assert expiries(a) + expiries(b) == 1
        (status,) = responses(b, "GetActivityStatuses", [activity])
        (message,) = soap.xpath(status, ".//besa:Message/text()")
        assert "worker silent stopped reporting" in message
        assert "attempt 1 of 3 used" in message
        (again,) = claim(worker, 5)
        assert again.activity == activity and again.attempt == 2  # counted once

        # The holder dies: its duty lapses, the other takes it over and takes the lease back.
        before = expiries(other)
        holder.kill()
        until(lambda: holds_upkeep(other), 25, "the survivor takes the upkeep duty over")
        until(lambda: expiries(other) > before, 10, "the survivor takes the lease back")
        assert expiries(other) == before + 1
        (third,) = claim(worker, 5)
        assert third.activity == activity and third.attempt == 3


# ---------------------------------------------------------------------------- metrics


def settled(server: LiveServer) -> Samples | None:
    """A scrape once the four jobs left are queued (dispatch may take a moment)."""
    samples = scrape(server)
    return samples if value(samples, "bes_queue_jobs", state="queued") == 4 else None


def test_metrics_on_each_replica_count_the_whole_service(
    tmp_path: Path, postgres_admin_url: str
) -> None:
    with replicas(tmp_path, postgres_admin_url, "replica_metrics") as both:
        a, b = both.a, both.b
        made_on_a = [submit(a, posix_job(f"a{i}")) for i in range(3)]
        for i in range(2):
            submit(b, posix_job(f"b{i}"))
        responses(b, "TerminateActivities", made_on_a[:1])

        for server, submitted in ((a, 3), (b, 2)):
            samples = until(lambda: settled(server), 10, "the queue holds 4 jobs")  # noqa: B023
            assert value(samples, "bes_activities", state="Pending") == 4
            assert value(samples, "bes_activities", state="Cancelled") == 1
            assert value(samples, "bes_activities", state="Running") == 0
            assert value(samples, "bes_queue_jobs", state="cancelled") == 1
            assert value(samples, "bes_accepting_new_activities") == 1
            # Counters are the process's own: a Prometheus sum gives the service's.
            assert value(samples, "bes_submissions_total") == submitted
