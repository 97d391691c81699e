"""The file store as its users meet it: files put with ``BESClient.upload_file`` (or plain
HTTP) into a real ``bes serve``, resumed after a cut, refused with a clear error when wrong,
too large or over quota, each user's own; jobs that name them (the JSDL keeps its URLs, the
stored job names ``bes-store:`` URIs); workers that fetch them through their leases; expiry;
and one quota for replicas sharing a PostgreSQL database."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import select
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree
from sqlalchemy import select as sql_select

from bes.app import BesApp, create_app
from bes.client import BESClient
from bes.client.auth import UsernameToken
from bes.client.faults import HttpProblem
from bes.client.files import UploadRefused
from bes.config import ServiceConfig
from bes.db.tables import activity_document
from bes.filestore import FileStore
from tests.service.test_authorization import add_users, basic
from tests.service.test_submission_checks import job, refusal, staging, sweep_of
from tests.service.test_worker_api import Grid, check, open_grid, vm_job
from tests.support import soap
from tests.support.postgres import fresh_database
from tests.support.server import LiveServer, live_server
from tests.support.worker import bes_cli

MIB = 1024 * 1024
MAX_FILE = 4 * MIB
QUOTA = 6 * MIB
LIMITS = ["--file-max-size", "4M", "--file-quota", "6M"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def local_file(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def error_of(response: httpx.Response, kind: str) -> str:
    """The JSON error's message, checked to be of ``kind``."""
    answer = response.json()
    assert answer["error"] == kind, answer
    return str(answer["message"])


# ------------------------------------------------------------------------------ a live service


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("files") / "data"
    with live_server(data, extra=["--backend", "none", *LIMITS]) as server:
        yield server


@pytest.fixture
def bes(live: LiveServer) -> Iterator[BESClient]:
    """A client of the live service; the files it leaves are removed afterwards."""
    with BESClient(live.endpoint) as client:
        yield client
        for stored in client.files():
            httpx.delete(stored["url"], timeout=10)
        assert usage(live) == 0


def usage(server: LiveServer) -> int:
    listing = httpx.get(server.endpoint + "/files", timeout=10).json()
    return int(listing["used_bytes"])


def soap_call(server: LiveServer, operation: str, body: str) -> httpx.Response:
    return server.post(soap.envelope(body), operation)


def created_id(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    (activity_id,) = soap.xpath(soap.body_of(response.content), "//besa:ActivityId/text()")
    return str(activity_id)


def test_a_file_goes_up_comes_back_and_is_sent_only_once(
    bes: BESClient, live: LiveServer, tmp_path: Path
) -> None:
    data = os.urandom(3 * MIB + 7)
    path = local_file(tmp_path, "data.bin", data)
    seen: list[tuple[int, int]] = []
    up = bes.upload_file(path, progress=lambda sent, total: seen.append((sent, total)))
    assert up.url == f"{live.endpoint}/files/sha256/{sha(data)}"
    assert (up.sha256, up.size_bytes, up.sent_bytes) == (sha(data), len(data), len(data))
    assert seen[-1] == (len(data), len(data))
    assert bes.download(up.url, tmp_path / "back.bin") == len(data)
    assert (tmp_path / "back.bin").read_bytes() == data
    (listed,) = bes.files()
    assert (listed["sha256"], listed["bytes"], listed["url"]) == (sha(data), len(data), up.url)
    # The second time nothing is sent: the service has it.
    again = bes.upload_file(path)
    assert (again.url, again.sent_bytes) == (up.url, 0)
    assert len(bes.files()) == 1 and usage(live) == len(data)


def test_a_file_of_zero_bytes_is_a_file(bes: BESClient, tmp_path: Path) -> None:
    up = bes.upload_file(local_file(tmp_path, "empty", b""))
    assert up.sha256 == sha(b"") and up.size_bytes == 0
    head = httpx.head(up.url, timeout=10)
    assert head.status_code == 200 and head.headers["content-length"] == "0"
    assert bes.download(up.url, tmp_path / "back") == 0
    assert (tmp_path / "back").read_bytes() == b""
    assert [(f["sha256"], f["bytes"]) for f in bes.files()] == [(sha(b""), 0)]


def test_a_partial_upload_is_resumed_where_the_service_says(
    bes: BESClient, live: LiveServer, tmp_path: Path
) -> None:
    data = os.urandom(MIB)
    url = f"{live.endpoint}/files/sha256/{sha(data)}"
    first = httpx.put(
        url, content=data[:400_000], headers={"Content-Range": f"bytes 0-399999/{MIB}"}
    )
    assert first.status_code == 202 and first.json()["offset"] == 400_000
    head = httpx.head(url)
    assert head.status_code == 404 and head.headers["upload-offset"] == "400000"
    assert httpx.get(url).status_code == 404  # half a file is nobody's file
    assert bes.files() == []
    # Resuming from anywhere else is refused, saying where to resume from.
    wrong = httpx.put(
        url, content=data[500_000:], headers={"Content-Range": f"bytes 500000-{MIB - 1}/{MIB}"}
    )
    assert wrong.status_code == 409 and wrong.headers["upload-offset"] == "400000"
    assert "400000" in error_of(wrong, "offset-mismatch")
    up = bes.upload_file(local_file(tmp_path, "data.bin", data))
    assert up.sent_bytes == MIB - 400_000
    assert httpx.get(url).content == data


def put_and_hang_up(server: LiveServer, path: str, data: bytes, sent: int) -> None:
    """A PUT of ``data`` whose client goes away after ``sent`` bytes of the body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        head = (
            f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        raw.sendall(head.encode() + data[:sent])
        time.sleep(0.2)


def test_an_interrupted_upload_leaves_nothing_visible_and_is_resumed(
    bes: BESClient, live: LiveServer, tmp_path: Path
) -> None:
    data = os.urandom(3 * MIB)
    url = f"{live.endpoint}/files/sha256/{sha(data)}"
    put_and_hang_up(live, f"/bes/files/sha256/{sha(data)}", data, len(data) // 2)
    offset, deadline = 0, time.monotonic() + 10
    while offset < len(data) // 2 and time.monotonic() < deadline:
        head = httpx.head(url)
        assert head.status_code == 404
        offset = int(head.headers["upload-offset"])
        time.sleep(0.05)
    assert offset == len(data) // 2  # what arrived is kept for a resume
    get = httpx.get(url)
    assert get.status_code == 404 and error_of(get, "not-found")
    assert bes.files() == []
    # A job cannot name it either.
    refused = soap_call(
        live, "CreateActivity", soap.create_activity(job(staging("in.bin", source=url)))
    )
    assert refused.status_code == 500
    assert "no file with sha256" in str(soap.fault_of(refused.content).findtext("faultstring"))
    up = bes.upload_file(local_file(tmp_path, "data.bin", data))
    assert up.sent_bytes == len(data) - offset
    assert bes.download(up.url, tmp_path / "back.bin") == len(data)
    assert (tmp_path / "back.bin").read_bytes() == data
    assert list((live.data_dir / "files").glob("*/partial/*")) == []  # nothing left behind


def test_an_upload_given_up_on_is_deleted_and_its_room_given_back(
    bes: BESClient, live: LiveServer
) -> None:
    data = os.urandom(2 * MIB)
    url = f"{live.endpoint}/files/sha256/{sha(data)}"
    part = httpx.put(
        url, content=data[:MIB], headers={"Content-Range": f"bytes 0-{MIB - 1}/{2 * MIB}"}
    )
    assert part.status_code == 202
    assert usage(live) == 2 * MIB  # the upload under way holds its room
    assert httpx.delete(url).status_code == 204
    assert usage(live) == 0
    assert httpx.head(url).headers["upload-offset"] == "0"
    assert list((live.data_dir / "files").glob("*/partial/*")) == []
    assert httpx.delete(url).status_code == 404


def test_a_wrong_checksum_stores_nothing_and_gives_the_quota_back(
    bes: BESClient, live: LiveServer
) -> None:
    claimed = sha(b"what I meant to send")
    url = f"{live.endpoint}/files/sha256/{claimed}"
    answer = httpx.put(url, content=b"what arrived instead")
    assert answer.status_code == 400
    message = error_of(answer, "checksum-mismatch")
    assert claimed in message and sha(b"what arrived instead") in message
    assert httpx.get(url).status_code == 404
    assert httpx.head(url).headers["upload-offset"] == "0"
    assert bes.files() == [] and usage(live) == 0


def test_malformed_requests_are_refused_saying_why(bes: BESClient, live: LiveServer) -> None:
    files = f"{live.endpoint}/files"
    url = f"{files}/sha256/{sha(b'abc')}"

    def chunks() -> Iterator[bytes]:
        yield b"abc"

    unsized = httpx.put(url, content=chunks())  # chunked, as `curl -T -` sends it
    assert unsized.status_code == 411 and "Content-Length" in error_of(unsized, "length-required")
    for path, words in (
        (f"{files}/sha256/{sha(b'abc').upper()}", "not a sha256"),
        (f"{files}/md5/{'0' * 32}", "sha256/HEX"),
    ):
        refused = httpx.put(path, content=b"abc")
        assert refused.status_code == 400 and words in error_of(refused, "bad-request")
    for headers in ({"Content-Range": "bytes 0-9/3"}, {"Content-Range": "bytes=0-2/3"}):
        refused = httpx.put(url, content=b"abc", headers=headers)
        assert refused.status_code == 400 and "Content-Range" in error_of(refused, "bad-request")
    named = httpx.put(f"{files}/name/x", content=b"abc", headers={"Content-Range": "bytes 0-2/3"})
    assert named.status_code == 400
    assert httpx.post(url, content=b"abc").status_code == 405
    assert bes.files() == [] and usage(live) == 0


def test_too_large_and_over_quota_are_clear_errors(
    bes: BESClient, live: LiveServer, tmp_path: Path
) -> None:
    with pytest.raises(UploadRefused) as large:
        bes.upload_file(local_file(tmp_path, "large", os.urandom(MAX_FILE + 1)))
    assert large.value.status == 413
    assert str(MAX_FILE) in str(large.value) and str(MAX_FILE + 1) in str(large.value)
    first = bes.upload_file(local_file(tmp_path, "first", os.urandom(3 * MIB)))
    second = local_file(tmp_path, "second", os.urandom(3 * MIB + 1))
    with pytest.raises(UploadRefused) as over:
        bes.upload_file(second)
    assert over.value.status == 507
    assert f"{3 * MIB} of {QUOTA} bytes are used" in str(over.value)
    assert usage(live) == 3 * MIB  # the refused one holds nothing
    # Deleting a file gives its bytes back.
    assert httpx.delete(first.url).status_code == 204
    assert httpx.get(first.url).status_code in (404, 410)
    assert usage(live) == 0
    assert bes.upload_file(second).sent_bytes == 3 * MIB + 1


def test_a_name_binds_to_the_last_file_put_under_it(bes: BESClient, live: LiveServer) -> None:
    named = f"{live.endpoint}/files/name/runs/1/in.csv"
    first = httpx.put(named, content=b"v1\n")
    assert first.status_code == 201
    assert first.json() == {"url": named, "sha256": sha(b"v1\n"), "bytes": 3}
    assert httpx.put(named, content=b"v2!\n").status_code == 201
    assert httpx.get(named).content == b"v2!\n"
    listed = {f["sha256"]: f["names"] for f in bes.files()}
    assert listed == {sha(b"v1\n"): [], sha(b"v2!\n"): ["runs/1/in.csv"]}
    assert httpx.delete(named).status_code == 204
    assert httpx.get(named).status_code == 404
    # The file stays, by its sha256.
    second = sha(b"v2!\n")
    assert httpx.get(f"{live.endpoint}/files/sha256/{second}").content == b"v2!\n"
    for bad in ("runs/%2E%2E/x", "a//b", "tab%09x"):
        refused = httpx.put(f"{live.endpoint}/files/name/{bad}", content=b"x")
        assert refused.status_code == 400 and "not a file name" in error_of(refused, "bad-request")


def test_a_file_a_running_activity_uses_cannot_be_deleted(
    bes: BESClient, live: LiveServer, tmp_path: Path
) -> None:
    up = bes.upload_file(local_file(tmp_path, "input.csv", b"a,b\n1,2\n"))
    document = job(staging("input.csv", source=up.url))
    activity_id = created_id(soap_call(live, "CreateActivity", soap.create_activity(document)))
    busy = httpx.delete(up.url)
    assert busy.status_code == 409
    assert activity_id in error_of(busy, "in-use")
    assert httpx.get(up.url).content == b"a,b\n1,2\n"
    epr = soap.epr(activity_id=activity_id)
    assert soap_call(live, "TerminateActivities", soap.vector("TerminateActivities", [epr]))
    deadline = time.monotonic() + 10
    while httpx.delete(up.url).status_code == 409 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert bes.files() == []


def test_every_point_of_a_sweep_keeps_the_file_it_names(
    bes: BESClient, live: LiveServer, tmp_path: Path
) -> None:
    ups = [bes.upload_file(local_file(tmp_path, f"part{i}.csv", b"%d\n" % i)) for i in (1, 2)]
    points = sweep_of("//jsdl:DataStaging/jsdl:Source/jsdl:URI", *(up.url for up in ups))
    document = job(staging("in.txt", source=ups[0].url), sweep=points)
    sweep_id = created_id(soap_call(live, "CreateActivity", soap.create_activity(document)))
    for up in ups:
        busy = httpx.delete(up.url)
        assert busy.status_code == 409, busy.text
        assert "activity" in error_of(busy, "in-use")
    epr = soap.epr(activity_id=sweep_id)
    assert soap_call(live, "TerminateActivities", soap.vector("TerminateActivities", [epr]))
    deadline = time.monotonic() + 10
    while any(httpx.delete(up.url).status_code == 409 for up in ups):
        assert time.monotonic() < deadline, "the sweep's points still hold their files"
        time.sleep(0.1)
    assert bes.files() == []


# ------------------------------------------------------------------------------ two users


@pytest.fixture
async def users(tmp_path: Path) -> AsyncIterator[BesApp]:
    app = create_app(ServiceConfig(data_dir=tmp_path / "data"))
    await app.startup()
    try:
        await add_users(app)
        yield app
    finally:
        await app.shutdown()


async def call(
    app: BesApp,
    method: str,
    path: str,
    *,
    user: str | None = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """A request to the service in process, over an https scope, as ``user``."""
    sent = {**(headers or {}), **(basic(user) if user else {})}
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="https://bes.test") as client:
        return await client.request(method, path, content=content, headers=sent)


async def submit(app: BesApp, user: str, document: bytes) -> httpx.Response:
    return await call(
        app,
        "POST",
        "/bes",
        user=user,
        content=soap.envelope(soap.create_activity(document)),
        headers={"SOAPAction": soap.ACTIONS + "CreateActivity", "Content-Type": "text/xml"},
    )


async def stored_job(app: BesApp, activity_id: str) -> dict[str, Any]:
    """The job as the service stored it (what workers are given)."""
    assert app.db is not None
    text = await app.db.read(
        lambda conn: conn.execute(
            sql_select(activity_document.c.job).where(activity_document.c.id == activity_id)
        ).scalar_one()
    )
    found: dict[str, Any] = json.loads(text)
    return found


def uris(stored: dict[str, Any], side: str) -> list[str]:
    return [s[side] for s in stored["job_description"]["data_staging"] if s.get(side)]


ALICE_DATA = b"alice's measurements\n"
URL = "https://bes.test/bes/files/sha256/" + sha(ALICE_DATA)
PATH = "/bes/files/sha256/" + sha(ALICE_DATA)


@pytest.mark.anyio
async def test_a_user_cannot_reach_another_users_file_by_its_url(users: BesApp) -> None:
    stored = await call(users, "PUT", PATH, user="alice", content=ALICE_DATA)
    assert stored.status_code == 201 and stored.json()["url"] == URL
    never = "/bes/files/sha256/" + sha(b"nobody has this")
    for method in ("GET", "DELETE"):
        refused = await call(users, method, PATH, user="bob")
        assert refused.status_code == 404, method
        assert ALICE_DATA not in refused.content
    # HEAD answers bob exactly as for a file nobody ever uploaded.
    theirs = await call(users, "HEAD", PATH, user="bob")
    unknown = await call(users, "HEAD", never, user="bob")
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.headers["upload-offset"] == unknown.headers["upload-offset"] == "0"
    assert theirs.content == unknown.content == b""
    assert (await call(users, "GET", PATH, user="alice")).content == ALICE_DATA  # untouched
    # The same bytes uploaded by bob are his own copy, in his own quota.
    assert (await call(users, "PUT", PATH, user="bob", content=ALICE_DATA)).status_code == 201
    for user in ("alice", "bob"):
        listing = (await call(users, "GET", "/bes/files", user=user)).json()
        assert [f["sha256"] for f in listing["files"]] == [sha(ALICE_DATA)]
        assert listing["used_bytes"] == len(ALICE_DATA)
    assert (await call(users, "DELETE", PATH, user="alice")).status_code == 204
    assert (await call(users, "GET", PATH, user="bob")).content == ALICE_DATA
    anonymous = await call(users, "GET", "/bes/files")
    assert anonymous.status_code == 401


@pytest.mark.anyio
async def test_a_job_naming_another_users_file_is_refused(users: BesApp) -> None:
    assert (await call(users, "PUT", PATH, user="alice", content=ALICE_DATA)).status_code == 201
    answer = await submit(users, "bob", job(staging("in.txt", source=URL)))
    detail = refusal(answer, "InvalidRequestMessageFault")
    message = str(soap.xpath(detail, "string(bes:Message)"))
    assert message == (
        f"input 'in.txt': there is no file with sha256 {sha(ALICE_DATA)} in your file store"
    )
    created = await submit(users, "alice", job(staging("in.txt", source=URL)))
    assert created.status_code == 200, created.text


@pytest.mark.anyio
async def test_a_job_keeps_its_urls_for_clients_and_names_store_files_for_workers(
    users: BesApp,
) -> None:
    other = b"a second version\n"
    assert (await call(users, "PUT", PATH, user="alice", content=ALICE_DATA)).status_code == 201
    named = await call(users, "PUT", "/bes/files/name/data/in.csv", user="alice", content=other)
    assert named.status_code == 201 and named.json()["sha256"] == sha(other)
    by_name = "https://bes.test/bes/files/name/data/in.csv"
    target = "https://bes.test/bes/files/name/results/out.txt"
    document = job(
        staging("in.txt", source=URL),
        staging("in.csv", source=by_name),
        staging("out.txt", target=target),
    )
    answer = await submit(users, "alice", document)
    assert answer.status_code == 200, answer.text
    (activity_id,) = soap.xpath(soap.body_of(answer.content), "//besa:ActivityId/text()")
    (epr,) = soap.xpath(soap.body_of(answer.content), "bes:ActivityIdentifier")
    documents = await call(
        users,
        "POST",
        "/bes",
        user="alice",
        content=soap.envelope(soap.vector("GetActivityDocuments", [etree.tostring(epr)])),
    )
    body = soap.body_of(documents.content)
    assert soap.xpath(body, "//jsdl:Source/jsdl:URI/text()") == [URL, by_name]
    assert soap.xpath(body, "//jsdl:Target/jsdl:URI/text()") == [target]
    assert "bes-store" not in documents.text
    stored = await stored_job(users, str(activity_id))
    assert uris(stored, "source") == [
        f"bes-store:sha256/{sha(ALICE_DATA)}",
        f"bes-store:sha256/{sha(other)}",  # the name, resolved when the job was created
    ]
    assert uris(stored, "target") == ["bes-store:name/results/out.txt"]
    # Both inputs are now in use by the activity, the one named too.
    for digest in (sha(ALICE_DATA), sha(other)):
        busy = await call(users, "DELETE", f"/bes/files/sha256/{digest}", user="alice")
        assert busy.status_code == 409 and activity_id in error_of(busy, "in-use")


@pytest.mark.anyio
async def test_a_target_by_sha256_and_a_missing_name_are_refused(users: BesApp) -> None:
    assert (await call(users, "PUT", PATH, user="alice", content=ALICE_DATA)).status_code == 201
    by_sha = await submit(users, "alice", job(staging("out.txt", target=URL)))
    message = soap.xpath(refusal(by_sha, "InvalidRequestMessageFault"), "string(bes:Message)")
    assert "out.txt" in message and "name/PATH" in message
    unnamed = job(staging("in.txt", source="https://bes.test/bes/files/name/nothing-here"))
    missing = await submit(users, "alice", unnamed)
    message = soap.xpath(refusal(missing, "InvalidRequestMessageFault"), "string(bes:Message)")
    assert "nothing-here" in message


@pytest.mark.slow
def test_two_users_of_a_tls_site_each_have_their_own_store(tmp_path: Path) -> None:
    """Over real TLS with passwords, through the client library: the same bytes are sent in
    full by the second user (nothing tells them the first has it), and each downloads only
    their own."""
    ca, data_dir = tmp_path / "ca", tmp_path / "data"
    for args in (("ca", "init", str(ca)), ("ca", "server", str(ca), "127.0.0.1")):
        assert bes_cli(*args).returncode == 0
    for name in ("alice", "bob"):
        password = tmp_path / f"{name}.pw"
        password.write_text(f"{name}-Secret-1\n")
        added = bes_cli(
            "user", "add", name, "--password-file", str(password), "--data-dir", str(data_dir)
        )
        assert added.returncode == 0, added.stderr
    tls = ["--tls-cert", str(ca / "127.0.0.1.pem"), "--tls-key", str(ca / "127.0.0.1.key")]
    data = os.urandom(MIB + 3)
    path = local_file(tmp_path, "shared.bin", data)
    with live_server(data_dir, extra=["--backend", "none", *tls], ca_file=ca / "ca.pem") as server:

        def client(name: str) -> BESClient:
            token = UsernameToken(name, f"{name}-Secret-1")
            return BESClient(server.endpoint, auth=token, ca_file=ca / "ca.pem")

        with client("alice") as alice, client("bob") as bob:
            theirs = alice.upload_file(path)
            assert theirs.url.startswith("https://127.0.0.1:") and theirs.sent_bytes == len(data)
            assert bob.files() == []
            with pytest.raises(HttpProblem) as refused:
                bob.download(theirs.url, tmp_path / "stolen")
            assert "404" in str(refused.value)
            assert not (tmp_path / "stolen").exists()
            mine = bob.upload_file(path)
            assert (mine.url, mine.sent_bytes) == (theirs.url, len(data))
            assert [f["bytes"] for f in alice.files()] == [f["bytes"] for f in bob.files()]
            assert bob.download(mine.url, tmp_path / "mine") == len(data)
        anonymous = httpx.get(server.endpoint + "/files", verify=server.tls or True)
        assert anonymous.status_code == 401


# ------------------------------------------------------------------------------ expiry


@pytest.mark.anyio
async def test_an_expired_file_says_so(service: BesApp, client: httpx.AsyncClient) -> None:
    data = b"kept a week, unused"
    path = "/bes/files/sha256/" + sha(data)
    assert (await client.put(path, content=data)).status_code == 201
    assert service.files is not None and service.db is not None
    # The housekeeping of any replica, eight days later.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    housekeeping = FileStore(
        service.db,
        service.files.root,
        max_file_bytes=service.files.max_file_bytes,
        quota_bytes=service.files.quota_bytes,
        expire_after_s=service.files.expire_after_s,
        clock=lambda: later,
    )
    assert await housekeeping.expire_once() == 1
    gone = await client.get(path)
    assert gone.status_code == 410
    message = error_of(gone, "expired")
    assert "expired" in message and "upload it again" in message
    listing = (await client.get("/bes/files")).json()
    assert listing["files"] == [] and listing["used_bytes"] == 0
    assert not service.files.blob("anonymous", sha(data)).exists()
    assert list(service.files.root.rglob(sha(data))) == []
    # Uploaded again, it is back.
    assert (await client.put(path, content=data)).status_code == 201
    assert (await client.get(path)).content == data


# ------------------------------------------------------------------------------ workers


def store_staging(url: str, *, target: bool = False) -> str:
    side = "Target" if target else "Source"
    name = "out.txt" if target else "in.txt"
    return (
        f"<jsdl:DataStaging><jsdl:FileName>{name}</jsdl:FileName>"
        "<jsdl:CreationFlag>overwrite</jsdl:CreationFlag>"
        f"<jsdl:{side}><jsdl:URI>{url}</jsdl:URI></jsdl:{side}></jsdl:DataStaging>"
    )


async def fetch(grid: Grid, token: str, lease: str, ref: str) -> httpx.Response:
    return await grid.http.get(
        f"/worker/v1/leases/{lease}/store/{ref}", headers={"Authorization": f"Bearer {token}"}
    )


@pytest.mark.anyio
async def test_a_worker_gets_only_the_store_files_its_leased_job_names(tmp_path: Path) -> None:
    async with open_grid(tmp_path) as grid:
        wanted, other = b"the job's input\n", b"another file of the same user\n"
        for data in (wanted, other):
            put = await grid.http.put(f"/bes/files/sha256/{sha(data)}", content=data)
            assert put.status_code == 201, put.text
        staged = store_staging(f"http://bes.test/bes/files/sha256/{sha(wanted)}")
        staged += store_staging("http://bes.test/bes/files/name/results/out.txt", target=True)
        await grid.submit(vm_job(staging=staged))
        token, stranger = grid.token("w1"), grid.token("w2")
        (lease,) = await grid.claim(token)
        sources = [s.get("source") for s in lease["job"]["job_description"]["data_staging"]]
        assert f"bes-store:sha256/{sha(wanted)}" in sources
        name = lease["lease"]

        got = await fetch(grid, token, name, f"sha256/{sha(wanted)}")
        assert got.status_code == 200 and got.content == wanted
        # A file of the same owner that the job does not name is not served.
        refused = await fetch(grid, token, name, f"sha256/{sha(other)}")
        assert refused.status_code == 400, refused.text
        check("Error", refused.json())
        assert other not in refused.content
        # Nor to a worker that does not hold the lease.
        not_theirs = await fetch(grid, stranger, name, f"sha256/{sha(wanted)}")
        assert not_theirs.status_code == 409 and wanted not in not_theirs.content

        # The job's output goes into its owner's store under the name its Target gives.
        auth = {"Authorization": f"Bearer {token}"}
        delivered = await grid.http.put(
            f"/worker/v1/leases/{name}/store/name/results/out.txt", content=b"42\n", headers=auth
        )
        assert delivered.status_code == 201, delivered.text
        check("StoredResponse", delivered.json())
        elsewhere = await grid.http.put(
            f"/worker/v1/leases/{name}/store/name/elsewhere.txt", content=b"x", headers=auth
        )
        assert elsewhere.status_code == 400
        assert (await grid.http.get("/bes/files/name/results/out.txt")).content == b"42\n"
        assert (await grid.http.get("/bes/files/name/elsewhere.txt")).status_code == 404

        await grid.worker(token, f"leases/{name}/release", {})
        lost = await fetch(grid, token, name, f"sha256/{sha(wanted)}")
        assert lost.status_code == 409, lost.text
        check("Error", lost.json())


def expire_everything(data_dir: Path) -> int:
    """Expire the unused files of the service at ``data_dir`` as its housekeeping will in
    eight days (from this process, on its database and directory)."""
    from bes.db.engine import default_url
    from bes.db.store import Database

    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)

    async def expire() -> int:
        with Database(default_url(data_dir)) as db:
            store = FileStore(
                db,
                data_dir / "files",
                max_file_bytes=MAX_FILE,
                quota_bytes=QUOTA,
                expire_after_s=7 * 86400.0,
                clock=lambda: later,
            )
            return await store.expire_once()

    return asyncio.run(expire())


@pytest.mark.slow
@pytest.mark.vm
def test_a_job_whose_uploaded_input_expired_fails_saying_so(tmp_path: Path) -> None:
    from tests.support.worker import shared_image_cache

    shared_image_cache(tmp_path / "data" / "worker")
    data = b"uploaded, then left unused for too long\n"
    with live_server(tmp_path / "data", local_worker=True) as server:
        with BESClient(server.endpoint) as bes:
            url = bes.upload(local_file(tmp_path, "in.txt", data))
        assert expire_everything(tmp_path / "data") == 1
        document = job(staging("in.txt", source=url))
        activity_id = created_id(
            soap_call(server, "CreateActivity", soap.create_activity(document))
        )
        query = soap.vector("GetActivityStatuses", [soap.epr(activity_id=activity_id)])
        state, deadline = "", time.monotonic() + 120
        while time.monotonic() < deadline:
            answer = soap_call(server, "GetActivityStatuses", query)
            (status,) = soap.xpath(soap.body_of(answer.content), "//bes:ActivityStatus")
            state = status.get("state")
            if state in ("Finished", "Failed", "Cancelled"):
                break
            time.sleep(0.3)
        assert state == "Failed"
        reason = soap.xpath(status, "string(.//besa:Message)")
        assert "in.txt" in reason and "expired" in reason and sha(data) in reason, reason


# ------------------------------------------------------------------------------ replicas


def start_put(port: int, path: str, data: bytes, sent: int) -> socket.socket:
    """A PUT of ``data`` of which the headers and ``sent`` bytes go now."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    raw.sendall(head.encode() + data[:sent])
    return raw


def status_of(raw: socket.socket) -> int:
    """The status of the answer on ``raw`` (read to its end; the socket is closed)."""
    answer = b""
    with raw, contextlib.suppress(OSError):
        while chunk := raw.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


@pytest.mark.slow
@pytest.mark.postgres
def test_replicas_share_one_quota(tmp_path: Path, postgres_admin_url: str) -> None:
    url = fresh_database(postgres_admin_url, "filequota")
    shared = tmp_path / "files"
    options = ["--backend", "none", "--database-url", url, "--files-dir", str(shared), *LIMITS]
    first, second = os.urandom(4 * MIB), os.urandom(4 * MIB)  # each fits, not both
    with (
        live_server(tmp_path / "a", extra=options) as a,
        live_server(tmp_path / "b", extra=options) as b,
    ):
        # Both uploads are under way (each has reserved its room, or been refused) before
        # either has sent its last byte.
        sockets = {
            a: start_put(a.port, f"/bes/files/sha256/{sha(first)}", first, MIB),
            b: start_put(b.port, f"/bes/files/sha256/{sha(second)}", second, MIB),
        }
        readable, _, _ = select.select(list(sockets.values()), [], [], 15)
        assert len(readable) == 1  # one was refused at once; the other waits for its bytes
        loser = next(r for r, raw in sockets.items() if raw in readable)
        server = b if loser is a else a
        assert status_of(sockets[loser]) == 507
        data = first if server is a else second
        sockets[server].sendall(data[MIB:])
        assert status_of(sockets[server]) == 201
        for replica in (a, b):  # both replicas see the one file and its usage
            listing = httpx.get(replica.endpoint + "/files", timeout=10).json()
            assert [f["sha256"] for f in listing["files"]] == [sha(data)]
            assert listing["used_bytes"] == 4 * MIB and listing["quota_bytes"] == QUOTA
        # The file is there on the other replica too.
        got = httpx.get(f"{loser.endpoint}/files/sha256/{sha(data)}", timeout=30)
        assert got.status_code == 200 and got.content == data
