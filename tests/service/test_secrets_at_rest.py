"""Staging passwords and bearer tokens of JSDL documents, through a live ``bes serve``: stored
sealed (never in clear in the database file), shown redacted (GetActivityDocuments, the status
page), never logged, and handed in clear only to the worker that leases the job."""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lxml import etree

from bes.jsdl import codec
from bes.jsdl.model import JobDefinition
from bes.jsdl.secrets import REDACTED, open_credentials
from bes.sealing import Sealer, UnsealError, is_sealed
from bes.worker.client import ServiceClient
from tests.support import soap
from tests.support.grid import Worker, call, submit
from tests.support.server import LiveServer
from tests.support.standards import assert_official

PASSWORD = "pw-" + secrets.token_hex(10)
TOKEN = "tok-" + secrets.token_hex(12)
SECRETS = (PASSWORD.encode(), TOKEN.encode())

NS = {
    **soap.NS,
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "jsdl-u": "http://www.unicore.eu/unicore/jsdl-extensions",
    "ac": "http://schemas.ogf.org/hpcp/2007/11/ac",
}

STAGING = f"""
    <jsdl:DataStaging>
      <jsdl:FileName>numbers.txt</jsdl:FileName>
      <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
      <jsdl:Source><jsdl:URI>ftp://files.example.org/numbers.txt</jsdl:URI></jsdl:Source>
      <ac:Credential>
        <wsse:UsernameToken>
          <wsse:Username>ftpuser</wsse:Username>
          <wsse:Password>{PASSWORD}</wsse:Password>
        </wsse:UsernameToken>
      </ac:Credential>
    </jsdl:DataStaging>
    <jsdl:DataStaging>
      <jsdl:FileName>model.bin</jsdl:FileName>
      <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
      <jsdl:Source><jsdl:URI>https://files.example.org/model.bin</jsdl:URI></jsdl:Source>
      <ac:Credential><jsdl-u:BearerToken>{TOKEN}</jsdl-u:BearerToken></ac:Credential>
    </jsdl:DataStaging>"""

SWEEP = """
  <sweep:Sweep>
    <sweep:Assignment>
      <sweep:DocumentNode>
        <sweep:NamespaceBinding ns="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
            prefix="posix"/>
        <sweep:Match>//posix:Argument[1]</sweep:Match>
      </sweep:DocumentNode>
      <sweepfunc:Values>
        <sweepfunc:Value>one</sweepfunc:Value>
        <sweepfunc:Value>two</sweepfunc:Value>
        <sweepfunc:Value>three</sweepfunc:Value>
      </sweepfunc:Values>
    </sweep:Assignment>
  </sweep:Sweep>"""


def document(name: str, *, sweep: bool = False) -> bytes:
    """A POSIX job staging in two files, one with a password and one with a bearer token."""
    return f"""<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
    xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
    xmlns:ac="{NS["ac"]}" xmlns:wsse="{NS["wsse"]}" xmlns:jsdl-u="{NS["jsdl-u"]}"
    xmlns:sweep="http://schemas.ogf.org/jsdl/2009/03/sweep"
    xmlns:sweepfunc="http://schemas.ogf.org/jsdl/2009/03/sweep/functions">
  <jsdl:JobDescription>
    <jsdl:JobIdentification><jsdl:JobName>{name}</jsdl:JobName></jsdl:JobIdentification>
    <jsdl:Application><posix:POSIXApplication>
      <posix:Executable>/bin/wc</posix:Executable>
      <posix:Argument>numbers.txt</posix:Argument>
    </posix:POSIXApplication></jsdl:Application>{STAGING}
  </jsdl:JobDescription>{SWEEP if sweep else ""}
</jsdl:JobDefinition>""".encode()


# ------------------------------------------------------------------------------ helpers


def database(server: LiveServer) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{server.data_dir / 'bes.sqlite3'}?mode=ro", uri=True)


def every_row(server: LiveServer) -> list[tuple[str, tuple[object, ...]]]:
    """Every row of every table: ``(table, row)``."""
    with contextlib.closing(database(server)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, row) for t in tables for row in db.execute(f'SELECT * FROM "{t}"')]


def stored(server: LiveServer, activity_id: str) -> tuple[str, str]:
    """The activity's stored ``(document, job)``."""
    with contextlib.closing(database(server)) as db:
        row = db.execute(
            "SELECT document, job FROM activity_document WHERE id = ?", (activity_id,)
        ).fetchone()
    assert row is not None, activity_id
    return str(row[0]), str(row[1])


def children(server: LiveServer, sweep_id: str) -> list[str]:
    with contextlib.closing(database(server)) as db:
        rows = db.execute("SELECT id FROM activity WHERE parent_id = ?", (sweep_id,)).fetchall()
    return [str(r[0]) for r in rows]


def wait_queued(server: LiveServer, activity_ids: list[str], timeout_s: float = 20.0) -> None:
    """Until the desktop grid's queue holds a job for each activity."""
    deadline = time.monotonic() + timeout_s
    marks = ",".join("?" * len(activity_ids))
    while True:
        with contextlib.closing(database(server)) as db:
            (n,) = db.execute(
                f"SELECT count(*) FROM grid_job WHERE activity_id IN ({marks})",
                activity_ids,
            ).fetchone()
        if n == len(activity_ids):
            return
        assert time.monotonic() < deadline, f"{n} of {len(activity_ids)} queued"
        time.sleep(0.1)


def assert_nowhere_in_clear(server: LiveServer) -> None:
    """No row of the database, no byte of any file the service keeps (the SQLite file, its
    write-ahead log, outputs, ...) and no line of its log holds a secret."""
    for table, row in every_row(server):
        text = repr(row).encode()
        assert not any(s in text for s in SECRETS), f"a secret in clear in {table}: {row}"
    files = [p for p in server.data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "bes.sqlite3" for p in files)
    for path in [*files, server.log]:
        data = path.read_bytes()
        assert not any(s in data for s in SECRETS), f"a secret in clear in {path}"


def documents(server: LiveServer, activity_id: str) -> etree._Element:
    """GetActivityDocuments of one activity: its JobDefinition, after checking the whole
    answer against the official schemas."""
    answer = call(
        server,
        "GetActivityDocuments",
        soap.vector("GetActivityDocuments", [soap.epr(activity_id=activity_id)]),
    )
    assert_official(answer, "GetActivityDocuments answer")
    assert not any(s in answer for s in SECRETS)
    (job,) = soap.xpath(soap.body_of(answer), "bes:Response/bes:JobDefinition")
    return job


def assert_redacted(job: etree._Element) -> None:
    assert job.xpath("//wsse:Password/text()", namespaces=NS) == [REDACTED]
    assert job.xpath("//jsdl-u:BearerToken/text()", namespaces=NS) == [REDACTED]
    assert job.xpath("//wsse:Username/text()", namespaces=NS) == ["ftpuser"]  # not a secret


def credentials(job: JobDefinition) -> list[tuple[str | None, str | None]]:
    """``(password, bearer token)`` of each staging credential."""
    out = []
    for staging in job.job_description.data_staging:
        if staging.credential is not None:
            token = staging.credential.username_token
            out.append((token.password if token else None, staging.credential.bearer_token))
    return out


CLEAR = [(PASSWORD, None), (None, TOKEN)]


def claim(server: LiveServer, token: str, slots: int = 1) -> list[tuple[str, JobDefinition]]:
    """Leases taken through the worker protocol by the worker's own client."""
    client = ServiceClient(server.url, token)
    work = client.claim(
        slots=slots,
        memory_mib=4096,
        vcpus=4,
        disk_mib=100_000,
        hypervisors=["qemu"],
        network=True,
        wait_s=5.0,
    )
    return [(w.activity, w.job) for w in work]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("secrets") / "data", verbose=2).start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------ tests


def test_secrets_are_sealed_at_rest_redacted_on_the_wire_and_opened_for_the_worker(
    service: LiveServer,
) -> None:
    activity_id = submit(service, document("staging-with-secrets"))
    wait_queued(service, [activity_id])

    # At rest: the document redacted, the job sealed (and the service's key opens it).
    stored_document, stored_job = stored(service, activity_id)
    assert stored_document.count(REDACTED) == 2
    sealed = credentials(codec.from_json(stored_job))
    assert all(is_sealed(v) for pair in sealed for v in pair if v is not None)
    key = service.data_dir / "secret.key"
    assert key.stat().st_mode & 0o777 == 0o600
    opened = open_credentials(codec.from_json(stored_job), Sealer.from_file(key))
    assert credentials(opened) == CLEAR
    assert_nowhere_in_clear(service)

    # On the wire: GetActivityDocuments shows the marker, and is valid as before.
    assert_redacted(documents(service, activity_id))
    for path in ("/bes/status", f"/bes/status/activities/{activity_id}", "/metrics"):
        page = httpx.get(service.url + path, timeout=10).content
        assert not any(s in page for s in SECRETS), path

    # The worker that leases the job gets the values in clear, in the job it decodes.
    worker = Worker(service, "secrets-worker")
    ((leased, job),) = claim(service, worker.token)
    assert leased == activity_id
    assert credentials(job) == CLEAR

    # ... and only that answer: nothing stored or logged meanwhile holds them.
    assert stored(service, activity_id)[1] == stored_job
    assert_nowhere_in_clear(service)
    log = service.log.read_text()
    assert activity_id in log and "DEBUG" in log  # the log is there, and verbose


def test_every_point_of_a_sweep_is_sealed_and_redacted(service: LiveServer) -> None:
    sweep_id = submit(service, document("sweep-with-secrets", sweep=True))
    points = children(service, sweep_id)
    assert len(points) == 3
    wait_queued(service, points)

    assert stored(service, sweep_id)[0].count(REDACTED) == 2
    for point in points:
        point_document, point_job = stored(service, point)
        assert point_document.count(REDACTED) == 2
        values = [v for pair in credentials(codec.from_json(point_job)) for v in pair if v]
        assert len(values) == 2 and all(is_sealed(v) for v in values)
    assert_redacted(documents(service, sweep_id))
    assert_redacted(documents(service, points[1]))
    assert_nowhere_in_clear(service)

    worker = Worker(service, "sweep-worker")
    leased = dict(claim(service, worker.token, slots=3))
    assert sorted(leased) == sorted(points)
    assert [credentials(job) for job in leased.values()] == [CLEAR] * 3
    assert_nowhere_in_clear(service)


def test_another_key_opens_nothing_and_rows_stored_in_clear_still_run(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data").start()
    try:
        sealed_id = submit(server, document("sealed"))
        old_id = submit(server, document("stored-before-sealing"))
        wait_queued(server, [sealed_id, old_id])
    finally:
        server.stop()
    key = server.data_dir / "secret.key"
    sealer = Sealer.from_file(key)
    other = Sealer.from_file(tmp_path / "other.key", create=True)
    sealed_job = codec.from_json(stored(server, sealed_id)[1])
    with pytest.raises(UnsealError):
        open_credentials(sealed_job, other)
    assert credentials(open_credentials(sealed_job, sealer)) == CLEAR

    # A row as the service stored it before sealing (document and job in clear), and a key
    # file that was replaced: the first still runs; the second fails with the reason, opened
    # by no one.
    clear = codec.to_json(open_credentials(codec.from_json(stored(server, old_id)[1]), sealer))
    with sqlite3.connect(server.data_dir / "bes.sqlite3") as db:
        db.execute(
            "UPDATE activity_document SET job = ?, document = ? WHERE id = ?",
            (clear, document("stored-before-sealing").decode(), old_id),
        )
    db.close()
    key.unlink()
    server = LiveServer(server.data_dir).start()
    try:
        assert_redacted(documents(server, old_id))  # redacted on the way out too
        worker = Worker(server, "after-the-key-changed")
        leased = dict(claim(server, worker.token, slots=2))
        assert list(leased) == [old_id]
        assert credentials(leased[old_id]) == CLEAR
        deadline = time.monotonic() + 20
        while True:
            answer = call(
                server,
                "GetActivityStatuses",
                soap.vector("GetActivityStatuses", [soap.epr(activity_id=sealed_id)]),
            )
            status = soap.xpath(soap.body_of(answer), "//bes:ActivityStatus")[0]
            if status.get("state") == "Failed":
                break
            assert time.monotonic() < deadline, etree.tostring(status)
            time.sleep(0.2)
        assert b"cannot be opened" in answer and b"another key file" in answer
        log = server.log.read_text()
        assert sealed_id in log and "cannot be opened" in log
        assert not any(s.decode() in log for s in SECRETS)
    finally:
        server.stop()
