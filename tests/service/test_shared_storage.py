"""Two ``bes serve`` replicas with data directories of their own, one PostgreSQL database and
one shared storage directory (``--storage-dir``, as a network file system mounted on both):
what a user or a worker stores through one replica is read through the other. Uploaded
files, an upload resumed on the other replica, and a desktop-grid job's outputs, uploaded by
a worker (the real worker protocol client, no VM) through one and read by their owner
through the other."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import httpx
import pytest

from bes.worker.client import ServiceClient, Work
from tests.support import soap
from tests.support.postgres import fresh_database
from tests.support.server import LiveServer, live_server
from tests.support.worker import bes_cli

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

KEPT_JOB = b"""<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
  xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix" xmlns:vm="urn:bes-grid:vm:1.0">
  <jsdl:JobDescription>
    <jsdl:JobIdentification><jsdl:JobName>fit</jsdl:JobName></jsdl:JobIdentification>
    <jsdl:Application>
      <posix:POSIXApplication><posix:Executable>/bin/fit</posix:Executable></posix:POSIXApplication>
      <vm:VirtualMachine><vm:Image><vm:Template>tiny</vm:Template></vm:Image>
        <vm:MemoryMiB>256</vm:MemoryMiB></vm:VirtualMachine>
    </jsdl:Application>
    <jsdl:DataStaging><jsdl:FileName>result.txt</jsdl:FileName>
      <jsdl:CreationFlag>overwrite</jsdl:CreationFlag></jsdl:DataStaging>
  </jsdl:JobDescription>
</jsdl:JobDefinition>"""


def submit(server: LiveServer, document: bytes) -> str:
    answer = server.post(soap.envelope(soap.create_activity(document)), "CreateActivity")
    assert answer.status_code == 200, answer.text
    (activity,) = soap.xpath(soap.body_of(answer.content), "//besa:ActivityId/text()")
    return str(activity)


def state(server: LiveServer, activity: str) -> str:
    request = soap.vector("GetActivityStatuses", [soap.epr(activity_id=activity)])
    answer = server.post(soap.envelope(request), "GetActivityStatuses")
    (status,) = soap.xpath(soap.body_of(answer.content), "//bes:ActivityStatus")
    return str(status.get("state"))


def claim_one(worker: ServiceClient, timeout_s: float = 30.0) -> Work:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        leased = worker.claim(
            slots=1,
            memory_mib=4096,
            vcpus=2,
            disk_mib=100_000,
            hypervisors=["qemu"],
            network=False,
            wait_s=1.0,
        )
        if leased:
            (work,) = leased
            return work
    raise AssertionError(f"no job to claim in {timeout_s}s")


def test_replicas_share_uploaded_files_and_kept_outputs(
    tmp_path: Path, postgres_admin_url: str
) -> None:
    url = fresh_database(postgres_admin_url, "shared_storage")
    shared = tmp_path / "shared"
    options = [
        "--backend", "desktopgrid", "--database-url", url,
        "--secret-key-file", str(tmp_path / "secret.key"), "--storage-dir", str(shared),
    ]  # fmt: skip
    with (
        live_server(tmp_path / "a", extra=options) as a,
        live_server(tmp_path / "b", extra=options) as b,
    ):
        # A file uploaded through A is downloaded through B.
        data = os.urandom(300_000)
        sha256 = hashlib.sha256(data).hexdigest()
        put = httpx.put(f"{a.endpoint}/files/sha256/{sha256}", content=data, timeout=30)
        assert put.status_code == 201, put.text
        got = httpx.get(f"{b.endpoint}/files/sha256/{sha256}", timeout=30)
        assert got.status_code == 200 and got.content == data
        listed = httpx.get(f"{b.endpoint}/files", timeout=30).json()
        assert [f["sha256"] for f in listed["files"]] == [sha256]

        # An upload cut short on A is resumed on B, from where A stopped.
        other = os.urandom(200_000)
        other_sha = hashlib.sha256(other).hexdigest()
        first = httpx.put(
            f"{a.endpoint}/files/sha256/{other_sha}",
            content=other[:120_000],
            headers={"Content-Range": f"bytes 0-119999/{len(other)}"},
            timeout=30,
        )
        assert first.status_code == 202, first.text
        head = httpx.head(f"{b.endpoint}/files/sha256/{other_sha}", timeout=30)
        assert head.status_code == 404 and head.headers["upload-offset"] == "120000"
        rest = httpx.put(
            f"{b.endpoint}/files/sha256/{other_sha}",
            content=other[120_000:],
            headers={"Content-Range": f"bytes 120000-{len(other) - 1}/{len(other)}"},
            timeout=30,
        )
        assert rest.status_code == 201, rest.text
        assert httpx.get(f"{a.endpoint}/files/sha256/{other_sha}", timeout=30).content == other

        # A worker reports a job's outputs through A; their owner reads them through B.
        created = bes_cli(
            "worker-token", "create", "w1", "--data-dir", str(a.data_dir), "--database-url", url
        )
        assert created.returncode == 0, created.stderr
        activity = submit(a, KEPT_JOB)
        worker = ServiceClient(a.url, created.stdout)
        worker.register({"cpus": 2})
        work = claim_one(worker)
        assert work.activity == activity
        sent = {"stdout": b"fitted\n", "stderr": b"", "outputs/result.txt": b"42\n"}
        for name, content in sent.items():
            path = tmp_path / "worker" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            worker.upload(work.lease, name, path)
        ended, _ = worker.complete(
            work.lease, exit_code=0, failure=None, timing={"vm": 1.0}, files=list(sent)
        )
        assert ended == "finished"
        deadline = time.monotonic() + 30
        while state(b, activity) != "Finished":
            assert time.monotonic() < deadline, "B never saw the activity finish"
            time.sleep(0.2)
        listing = httpx.get(f"{b.endpoint}/activities/{activity}/outputs", timeout=30)
        assert listing.status_code == 200, listing.text
        assert {f["name"]: f["bytes"] for f in listing.json()["files"]} == {
            name: len(content) for name, content in sent.items()
        }
        for name, content in sent.items():
            read = httpx.get(f"{b.endpoint}/activities/{activity}/outputs/{name}", timeout=30)
            assert read.status_code == 200 and read.content == content

    # Everything is in the shared directory, nothing in either replica's own.
    assert (shared / "outputs").is_dir() and (shared / "files").is_dir()
    for own in (a.data_dir, b.data_dir):
        assert not (own / "outputs").exists() and not (own / "files").exists()
