"""Users' own images, in process: real disks made with the real qemu-img, uploaded to the file
store, registered, listed for their owner, another user and the administrator, published, named
by jobs at CreateActivity and fetched by a worker through its lease. Three real users (HTTP
Basic over an https scope), a desktop grid, a worker token."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bes.app import BesApp, create_app
from bes.backends.desktopgrid.tokens import create_worker
from bes.config import ServiceConfig
from bes.db import file_rows, image_rows
from bes.vm.repository import Catalog, Template
from bes.vm.spec import ImageFormat
from tests.service.test_authorization import add_users, basic
from tests.support import soap
from tests.support.vm import require

pytestmark = pytest.mark.anyio

JOB = """<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
  xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix" xmlns:vm="urn:bes-grid:vm:1.0">
  <jsdl:JobDescription><jsdl:Application>
    <posix:POSIXApplication><posix:Executable>/bin/true</posix:Executable></posix:POSIXApplication>
    <vm:VirtualMachine><vm:Image><vm:Template>{template}</vm:Template></vm:Image>{memory}
    </vm:VirtualMachine>
  </jsdl:Application></jsdl:JobDescription></jsdl:JobDefinition>"""


def qemu_img(*args: str | Path) -> str:
    binary = require("qemu-img", "qemu-utils")
    done = subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def qcow2(tmp: Path, name: str = "disk.qcow2", size: str = "64M") -> Path:
    qemu_img("create", "-q", "-f", "qcow2", tmp / name, size)
    return tmp / name


class Site:
    """The service with users alice, bob and root (an administrator) and a desktop grid."""

    def __init__(self, app: BesApp) -> None:
        self.app = app

    async def call(
        self,
        method: str,
        path: str,
        *,
        user: str | None = None,
        content: bytes | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if user is not None:
            sent.update(basic(user))
        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="https://bes.test") as http:
            return await http.request(
                method,
                path,
                headers=sent,
                content=json.dumps(body).encode() if body is not None else content,
                timeout=120,
            )

    async def upload(self, user: str, disk: Path) -> str:
        data = disk.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        r = await self.call("PUT", f"/bes/files/sha256/{digest}", user=user, content=data)
        assert r.status_code in (200, 201), r.text  # 200: it was stored already
        return digest

    async def push(self, user: str, disk: Path, name: str, **extra: Any) -> httpx.Response:
        digest = await self.upload(user, disk)
        return await self.call(
            "POST", "/bes/images", user=user, body={"name": name, "sha256": digest, **extra}
        )

    async def images(self, user: str) -> dict[str, dict[str, Any]]:
        r = await self.call("GET", "/bes/images", user=user)
        assert r.status_code == 200, r.text
        return {f"{i['owner']}/{i['name']}": i for i in r.json()["images"]}

    async def submit(self, user: str, template: str, memory: str = "") -> httpx.Response:
        document = JOB.format(template=template, memory=memory).encode()
        return await self.call(
            "POST",
            "/bes",
            user=user,
            content=soap.envelope(soap.create_activity(document)),
            headers={"SOAPAction": soap.ACTIONS + "CreateActivity", "Content-Type": "text/xml"},
        )

    async def claim(self, token: str) -> list[dict[str, Any]]:
        assert self.app.activities is not None
        await self.app.activities.dispatch_once()
        r = await self.call(
            "POST",
            "/worker/v1/claim",
            body={"memory_mib": 4096, "vcpus": 2, "disk_mib": 100_000, "wait_s": 1.0},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        leases: list[dict[str, Any]] = r.json()["leases"]
        return leases


def activity_id_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    (found,) = soap.xpath(soap.body_of(response.content), "//besa:ActivityId/text()")
    return str(found)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    config = ServiceConfig(
        data_dir=tmp_path / "data",
        backend="desktopgrid",
        backend_options={"lease_s": "30", "heartbeat_s": "5", "claim_wait_s": "1"},
    )
    app = create_app(config)
    await app.startup()
    await add_users(app)
    try:
        yield Site(app)
    finally:
        await app.shutdown()


async def test_a_qcow2_disk_becomes_its_owners_image_seen_by_them_and_the_administrator(
    site: Site, tmp_path: Path
) -> None:
    disk = qcow2(tmp_path)
    r = await site.push("alice", disk, "analysis", os_type="debian-12", min_memory_mib=512)
    assert r.status_code == 201, r.text
    image = r.json()
    digest = hashlib.sha256(disk.read_bytes()).hexdigest()
    assert (image["name"], image["kind"], image["owner"]) == ("analysis", "own", "alice")
    assert (image["sha256"], image["format"], image["published"]) == (digest, "qcow2", False)
    assert (image["os_type"], image["min_memory_mib"]) == ("debian-12", 512)

    listing = await site.call("GET", "/bes/images", user="alice")
    templates = {t["name"] for t in listing.json()["templates"]}
    assert {"tiny", "debian-12"} <= templates  # the site's, as before
    assert (await site.images("alice"))["alice/analysis"]["kind"] == "own"
    assert await site.images("bob") == {}  # private
    assert (await site.images("root"))["alice/analysis"]["kind"] == "private"

    # Its file cannot be removed while the image uses it, and never expires meanwhile.
    gone = await site.call("DELETE", f"/bes/files/sha256/{digest}", user="alice")
    assert gone.status_code == 409 and "image 'analysis'" in gone.json()["message"]
    assert site.app.db is not None
    far = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    assert await site.app.db.write(file_rows.expire_files, (far, far, 100)) == []

    # The path names the image once decoded, not twice: "a%41" never means "aA".
    encoded = await site.call("DELETE", "/bes/images/analysi%2573", user="alice")
    assert encoded.status_code == 404
    assert (await site.call("DELETE", "/bes/images/analysis", user="bob")).status_code == 404
    assert (await site.call("DELETE", "/bes/images/analysis", user="alice")).status_code == 200
    assert await site.images("alice") == {}
    assert (
        await site.call("DELETE", f"/bes/files/sha256/{digest}", user="alice")
    ).status_code == 204


async def test_a_raw_disk_is_converted_to_qcow2_in_its_owners_store(
    site: Site, tmp_path: Path
) -> None:
    raw = tmp_path / "disk.img"
    raw.write_bytes(b"\xeb\x63\x90" + b"bootsector" + bytes(4 * 1024 * 1024 - 13))
    r = await site.push("alice", raw, "rawdisk")
    assert r.status_code == 201, r.text
    image = r.json()
    assert image["format"] == "qcow2"
    assert image["sha256"] != hashlib.sha256(raw.read_bytes()).hexdigest()

    # The converted disk is a file of alice's, and it holds the raw disk's bytes.
    listed = await site.call("GET", "/bes/files", user="alice")
    assert image["sha256"] in {f["sha256"] for f in listed.json()["files"]}
    converted = await site.call("GET", f"/bes/files/sha256/{image['sha256']}", user="alice")
    (tmp_path / "back.qcow2").write_bytes(converted.content)
    info = json.loads(qemu_img("info", "--output=json", "-f", "qcow2", tmp_path / "back.qcow2"))
    assert info["virtual-size"] == raw.stat().st_size
    qemu_img("convert", "-f", "qcow2", "-O", "raw", tmp_path / "back.qcow2", tmp_path / "back.raw")
    assert (tmp_path / "back.raw").read_bytes() == raw.read_bytes()


async def test_a_disk_with_a_backing_file_is_refused_saying_so(site: Site, tmp_path: Path) -> None:
    base = qcow2(tmp_path, "base.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", tmp_path / "child.qcow2")
    r = await site.push("alice", tmp_path / "child.qcow2", "child")
    assert r.status_code == 400
    assert r.json()["error"] == "invalid-image"
    assert "backing file" in r.json()["message"]
    assert await site.images("alice") == {}


async def test_a_file_named_disk_qcow2_is_what_its_content_says(site: Site, tmp_path: Path) -> None:
    vdi = tmp_path / "disk.qcow2"  # the name lies
    qemu_img("create", "-q", "-f", "vdi", vdi, "16M")
    r = await site.push("alice", vdi, "vdi-disk")
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "vdi"

    vhdx = tmp_path / "disk.vhdx"
    qemu_img("create", "-q", "-f", "vhdx", vhdx, "16M")
    r = await site.push("alice", vhdx, "vhdx-disk")
    assert r.status_code == 400
    assert "qemu-img convert -f vhdx -O qcow2" in r.json()["message"]


async def test_names_of_the_sites_templates_and_of_ones_own_images_are_taken(
    site: Site, tmp_path: Path
) -> None:
    Catalog([Template("alma9", format=ImageFormat.QCOW2, sha256="ab" * 32)]).save(
        site.app.config.data_dir / "templates.json"
    )
    disk = qcow2(tmp_path)
    for taken in ("tiny", "debian-12", "alma9"):
        r = await site.push("alice", disk, taken)
        assert r.status_code == 409, taken
        assert "site's templates" in r.json()["message"]
    assert (await site.push("alice", disk, "mine")).status_code == 201
    again = await site.push("alice", disk, "mine")
    assert again.status_code == 409 and "already" in again.json()["message"]
    # Another user may have an image of the same name; a bad name is refused.
    assert (await site.push("bob", disk, "mine")).status_code == 201
    assert (await site.push("bob", disk, "../etc")).status_code == 400


async def test_only_the_owner_registers_a_file_of_their_own_store(
    site: Site, tmp_path: Path
) -> None:
    digest = await site.upload("alice", qcow2(tmp_path))
    r = await site.call(
        "POST", "/bes/images", user="bob", body={"name": "stolen", "sha256": digest}
    )
    assert r.status_code == 404
    assert "no file" in r.json()["message"]


async def test_an_administrator_publishes_an_image_for_everyone(site: Site, tmp_path: Path) -> None:
    assert (await site.push("alice", qcow2(tmp_path), "shared")).status_code == 201
    refused = await site.call("POST", "/bes/images/shared/publish", user="alice", body={})
    assert refused.status_code == 403

    r = await site.call("POST", "/bes/images/shared/publish", user="root", body={"published": True})
    assert r.status_code == 200, r.text
    assert r.json()["published"] is True
    seen = await site.images("bob")
    assert seen["alice/shared"]["kind"] == "published"
    assert "url" not in seen["alice/shared"]  # the file is alice's

    # One published image per name.
    assert (await site.push("bob", qcow2(tmp_path, "b.qcow2"), "shared")).status_code == 201
    clash = await site.call(
        "POST", "/bes/images/shared/publish", user="root", body={"owner": "bob"}
    )
    assert clash.status_code == 409
    withdrawn = await site.call(
        "POST",
        "/bes/images/shared/publish",
        user="root",
        body={"published": False, "owner": "alice"},
    )
    assert withdrawn.status_code == 200
    assert "alice/shared" not in await site.images("bob")


async def test_a_job_naming_an_image_gets_its_disk_and_a_worker_fetches_it_for_its_lease(
    site: Site, tmp_path: Path
) -> None:
    disk = qcow2(tmp_path)
    pushed = await site.push("alice", disk, "analysis", min_memory_mib=1024)
    sha256 = pushed.json()["sha256"]
    activity = activity_id_of(await site.submit("alice", "analysis"))

    token = create_worker(site.app.db, "w1") if site.app.db is not None else ""
    (lease,) = await site.claim(token)
    assert lease["activity"] == activity
    machine = lease["job"]["job_description"]["application"]["virtual_machine"]
    assert machine["image"]["uri"] == f"bes-store:sha256/{sha256}"
    assert (machine["image"]["sha256"], machine["image"]["format"]) == (sha256, "qcow2")
    assert machine["image"].get("template") is None
    assert machine["memory_mib"] == 1024  # the image's minimum
    assert site.app.db is not None
    assert await site.app.db.read(image_rows.file_owner, activity, sha256) == "alice"

    # The document as submitted is unchanged.
    documents = await site.call(
        "POST",
        "/bes",
        user="alice",
        content=soap.envelope(
            soap.vector("GetActivityDocuments", [soap.epr(activity_id=activity)])
        ),
        headers={"SOAPAction": soap.ACTIONS + "GetActivityDocuments", "Content-Type": "text/xml"},
    )
    assert b"<vm:Template>analysis</vm:Template>" in documents.content
    assert b"bes-store" not in documents.content

    bearer = {"Authorization": f"Bearer {token}"}
    fetched = await site.call(
        "GET", f"/worker/v1/leases/{lease['lease']}/store/sha256/{sha256}", headers=bearer
    )
    assert fetched.status_code == 200
    assert fetched.content == disk.read_bytes()
    # Nothing else of alice's store comes through that lease.
    other = await site.upload("alice", qcow2(tmp_path, "other.qcow2", "8M"))
    refused = await site.call(
        "GET", f"/worker/v1/leases/{lease['lease']}/store/sha256/{other}", headers=bearer
    )
    assert refused.status_code == 400


async def test_anothers_private_image_is_unknown_and_a_published_one_is_served_from_its_owner(
    site: Site, tmp_path: Path
) -> None:
    disk = qcow2(tmp_path)
    sha256 = (await site.push("alice", disk, "shared")).json()["sha256"]
    refused = await site.submit("bob", "shared")
    assert b"UnsupportedFeatureFault" in refused.content
    assert b"shared" in refused.content

    await site.call("POST", "/bes/images/shared/publish", user="root", body={})
    activity = activity_id_of(await site.submit("bob", "shared"))
    token = create_worker(site.app.db, "w2") if site.app.db is not None else ""
    (lease,) = await site.claim(token)
    assert lease["activity"] == activity
    fetched = await site.call(
        "GET",
        f"/worker/v1/leases/{lease['lease']}/store/sha256/{sha256}",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert fetched.status_code == 200 and fetched.content == disk.read_bytes()

    # While bob's activity runs, alice may remove the image but its disk stays for the job.
    assert (await site.call("DELETE", "/bes/images/shared", user="alice")).status_code == 200
    busy = await site.call("DELETE", f"/bes/files/sha256/{sha256}", user="alice")
    assert busy.status_code == 409 and activity in busy.json()["message"]


async def test_workers_read_the_catalog_without_user_images(site: Site, tmp_path: Path) -> None:
    assert (await site.push("alice", qcow2(tmp_path), "mine")).status_code == 201
    await site.call("POST", "/bes/images/mine/publish", user="root", body={})
    token = create_worker(site.app.db, "w3") if site.app.db is not None else ""
    r = await site.call("GET", "/bes/images", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert "images" not in r.json()
    Catalog.from_json(r.json())  # what a worker parses
