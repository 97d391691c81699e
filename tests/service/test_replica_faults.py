"""Faults under load, on two ``bes serve`` replicas and a PostgreSQL server of the test's own:

* PostgreSQL stopped for ten seconds, or hung (it accepts connections but answers nothing):
  every request is answered within ten seconds, by a soap:Server fault saying to try again
  later while the database is away, and the service recovers by itself once it is back;
* the writer's long-lived connection, dropped by a restart, is replaced without failing a
  write;
* one replica SIGKILLed while clients create through both: no acknowledged activity is
  lost, and a client that retries its unanswered request on the other replica with the same
  ``wsa:MessageID`` gets the activity it created, never a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bes.activities import Activities
from bes.backends.desktopgrid.backend import DesktopGridBackend
from bes.backends.desktopgrid.config import DesktopGridConfig
from bes.db import duty_rows
from bes.db.store import Database
from bes.errors import StoreError
from bes.jsdl import load_job_definition
from bes.principal import Principal
from tests.service.test_metrics import parse
from tests.support import soap
from tests.support.postgres import PostgresServer, fresh_database, postgres_instance
from tests.support.server import LiveServer, live_server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

BOUND_S = 10.0
"""The longest any request may take, database or not."""
OUTAGE_S = 10.0
HUNG_S = 12.0
"""Longer than the bound: a request that waits for a hung server fails the test."""
CREATE = soap.ACTIONS + "CreateActivity"


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """A server of this module's own: the tests stop and freeze it."""
    with postgres_instance() as server:
        yield server


@contextlib.contextmanager
def two_replicas(tmp_path: Path, pg: PostgresServer, name: str) -> Iterator[list[LiveServer]]:
    url = fresh_database(pg.url, name)
    extra = ["--database-url", url, "--backend", "desktopgrid"]
    shared = tmp_path / "shared"
    with live_server(shared, extra=extra) as a, live_server(shared, extra=extra) as b:
        yield [a, b]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """One CreateActivity as a client saw it."""

    started: float
    took_s: float
    replica: int
    message_id: str
    activity_id: str | None = None
    fault: str | None = None
    """soap:Server's or soap:Client's faultcode and faultstring."""
    error: str | None = None
    """No answer at all (connection refused or dropped, timed out)."""


def create(server: LiveServer, message_id: str, *, timeout_s: float = 30.0) -> tuple[str, str]:
    """CreateActivity with a ``wsa:MessageID``: ``("ok", activity id)`` or ``("fault", code
    and string)``. Raises httpx.HTTPError if no answer came."""
    message = soap.envelope(
        soap.create_activity(), headers=soap.wsa_headers(CREATE, message_id=message_id)
    )
    answer = server.post(message, "CreateActivity", timeout_s=timeout_s)
    if answer.status_code == 200:
        (activity_id,) = soap.xpath(soap.body_of(answer.content), "//besa:ActivityId/text()")
        return "ok", str(activity_id)
    fault = soap.fault_of(answer.content)
    return "fault", f"{fault.findtext('faultcode')}: {fault.findtext('faultstring')}"


class Load:
    """Client threads creating activities through the replicas in turn, until stopped.

    Args:
        servers: The replicas.
        clients: Threads.
        failover: On no answer, send the same message (the same MessageID) to the next
            replica, as a client behind a load balancer retries; otherwise record it.
    """

    def __init__(self, servers: list[LiveServer], *, clients: int, failover: bool) -> None:
        self.servers = servers
        self.failover = failover
        self.outcomes: list[Outcome] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def since(self, t: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.started >= t]

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def _client(self, index: int) -> None:
        turn = itertools.count(index)
        while not self._stop.is_set():
            replica = next(turn) % len(self.servers)
            message_id = f"urn:uuid:{uuid.uuid4()}"
            for attempt in range(len(self.servers)):
                target = (replica + attempt) % len(self.servers)
                started = time.monotonic()
                try:
                    kind, text = create(self.servers[target], message_id)
                except httpx.HTTPError as exc:
                    failed = Outcome(
                        started=started - self.t0,
                        took_s=time.monotonic() - started,
                        replica=target,
                        message_id=message_id,
                        error=repr(exc),
                    )
                    self._record(failed)
                    if self.failover:
                        continue
                    break
                self._record(
                    Outcome(
                        started=started - self.t0,
                        took_s=time.monotonic() - started,
                        replica=target,
                        message_id=message_id,
                        activity_id=text if kind == "ok" else None,
                        fault=text if kind == "fault" else None,
                    )
                )
                if kind == "fault":
                    time.sleep(0.2)  # a client told to try later does not spin
                break


def until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Wait for ``check``; how long it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.1)
    return time.monotonic() - started


def created_since(load: Load, t: float, replica: int) -> bool:
    return any(o.activity_id and o.replica == replica for o in load.since(t))


def unknown(server: LiveServer, ids: list[str]) -> list[str]:
    """Those of ``ids`` that GetActivityStatuses does not know."""
    missing = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        eprs = [soap.epr(activity_id=i) for i in chunk]
        message = soap.envelope(soap.vector("GetActivityStatuses", eprs))
        answer = server.post(message, "GetActivityStatuses")
        assert answer.status_code == 200, answer.text
        responses = soap.xpath(soap.body_of(answer.content), "bes:Response")
        assert len(responses) == len(chunk)
        missing += [i for i, r in zip(chunk, responses, strict=True) if soap.xpath(r, "bes:Fault")]
    return missing


def activities_stored(server: LiveServer) -> float:
    """Every activity of the service, in any state, as ``/metrics`` counts them."""
    scraped = parse(httpx.get(server.url + "/metrics", timeout=10).text)
    return sum(v for (name, _), v in scraped.items() if name == "bes_activities")


def check_outage(load: Load, servers: list[LiveServer], *, down: float, up: float) -> None:
    """What clients saw around an outage from ``down`` to ``up`` (times since the load's
    start): every request answered within the bound, faults that say to retry, recovery on
    every replica without a restart, and no acknowledged activity lost."""
    for replica in range(len(servers)):
        until(lambda r=replica: created_since(load, up, r), 15, "creates succeed again")
        back = min(
            o.started + o.took_s for o in load.since(up) if o.activity_id and o.replica == replica
        )
        assert back - up < 5.0, f"replica {replica} recovered {back - up:.1f} s after the database"
    outcomes = load.since(0.0)
    assert not [o for o in outcomes if o.error], "every request gets an answer"
    slowest = max(o.took_s for o in outcomes)
    assert slowest <= BOUND_S, f"a request took {slowest:.1f} s"
    faults = [o for o in outcomes if o.fault]
    assert faults, "requests during the outage were refused"
    assert {o.fault for o in faults} == {
        "soap:Server: the activity store is unavailable; please try again later"
    }
    assert all(down - BOUND_S <= o.started <= up for o in faults)  # none before, none after
    acknowledged = [o.activity_id for o in outcomes if o.activity_id]
    assert unknown(servers[1], acknowledged) == []


def outage_under_load(
    tmp_path: Path,
    pg: PostgresServer,
    label: str,
    *,
    halt: Callable[[], None],
    resume: Callable[[], None],
    seconds: float,
) -> None:
    """Two replicas under load while PostgreSQL is halted for ``seconds``; then the checks."""
    with (
        two_replicas(tmp_path, pg, label) as servers,
        Load(servers, clients=4, failover=False) as load,
    ):
        until(lambda: len(load.since(0.0)) >= 20, 20, "the load runs")
        down = time.monotonic() - load.t0
        halt()
        try:
            time.sleep(seconds)
        finally:
            resume()
        up = time.monotonic() - load.t0
        check_outage(load, servers, down=down, up=up)


def test_postgresql_stopped_for_ten_seconds_under_load(tmp_path: Path, pg: PostgresServer) -> None:
    outage_under_load(tmp_path, pg, "stopped", halt=pg.stop, resume=pg.start, seconds=OUTAGE_S)


def test_postgresql_that_answers_nothing_for_twelve_seconds(
    tmp_path: Path, pg: PostgresServer
) -> None:
    outage_under_load(tmp_path, pg, "frozen", halt=pg.freeze, resume=pg.thaw, seconds=HUNG_S)


def test_the_writer_reconnects_after_postgresql_restarts(pg: PostgresServer) -> None:
    """The committer keeps one connection; a restart drops it, and the next write (a single
    one, with no batch to retry) takes a new connection instead of failing."""
    url = fresh_database(pg.url, "writer")
    now = dt.datetime.now(dt.UTC)
    take = duty_rows.Take(name="d", holder="me", now=now, until=now + dt.timedelta(seconds=60))
    with Database(url) as db:
        db.migrate()
        assert db.write_sync(duty_rows.take_duties, take)
        pg.stop()
        pg.start()
        assert db.write_sync(duty_rows.take_duties, take)
        assert db.read_sync(duty_rows.duties)[0].holder == "me"


@pytest.mark.anyio
async def test_a_create_on_a_hung_database_gives_up_within_the_wait(
    tmp_path: Path, pg: PostgresServer
) -> None:
    """Before its row, a desktop-grid create reads the live workers' offers (every two
    seconds at most): that read, on a thread, waits no longer than any other read, and the
    create gives up with a StoreError (a soap:Server fault) instead of hanging until the
    database answers; once it does, creates go through."""
    with Database(fresh_database(pg.url, "hungoffers"), wait_s=1.0) as db:
        db.migrate()
        backend = DesktopGridBackend(db, DesktopGridConfig(outputs_dir=tmp_path / "outputs"))
        registry = Activities(db, backends={"desktopgrid": backend}, default_backend="desktopgrid")
        job = load_job_definition(soap.HELLO_JSDL)
        alice = Principal(name="alice")
        document = soap.HELLO_JSDL.decode()
        await registry.create(alice, job, document)  # the pools' connections are open
        await asyncio.sleep(2.1)  # and the offers read then are stale
        pg.freeze()
        try:
            started = time.monotonic()
            tries = [registry.create(alice, job, document) for _ in range(3)]
            outcomes = await asyncio.wait_for(asyncio.gather(*tries, return_exceptions=True), 10)
            took = time.monotonic() - started
        finally:
            pg.thaw()
        assert [type(o) for o in outcomes] == [StoreError] * 3
        assert took < 3.0, f"the creates waited {took:.1f} s for a database that did not answer"
        created = await registry.create(alice, job, document)
        assert (await registry.statuses(alice, [created]))[created].backend_job_id
        backend.close()


def test_a_replica_killed_under_load_loses_nothing_and_creates_nothing_twice(
    tmp_path: Path, pg: PostgresServer
) -> None:
    with two_replicas(tmp_path, pg, "killed") as servers:
        a, b = servers
        # A client whose answer was lost sends its request again, to the other replica.
        message_id = f"urn:uuid:{uuid.uuid4()}"
        first = create(a, message_id)
        assert first[0] == "ok"
        assert create(b, message_id) == first
        assert create(b, f"urn:uuid:{uuid.uuid4()}") != first

        # A dies with requests in flight (some committed but unanswered); their clients
        # retry on B with the same MessageID.
        with Load(servers, clients=4, failover=True) as load:
            until(lambda: len(load.since(0.0)) >= 40, 20, "the load runs")
            a.kill()
            killed = time.monotonic() - load.t0
            until(lambda: created_since(load, killed + 1.0, 1), 10, "B goes on")
        outcomes = load.since(0.0)
        assert not [o for o in outcomes if o.fault]
        acknowledged = {o.message_id: o.activity_id for o in outcomes if o.activity_id}
        assert unknown(b, [str(i) for i in acknowledged.values()]) == []  # none lost
        assert len(set(acknowledged.values())) == len(acknowledged)
        assert activities_stored(b) == len(acknowledged) + 2  # none twice (+ the two above)
