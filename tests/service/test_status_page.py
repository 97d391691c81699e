"""The status page, in process: what a caller sees of its activities, what an administrator
sees besides (workers, the queue), that nobody sees another owner's activities, and that
nothing a user wrote is ever taken as markup. The page in a real browser is
``test_status_browser.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import html

from bes.app import BesApp, create_app
from bes.backends.desktopgrid.tokens import create_worker
from bes.config import ServiceConfig
from bes.errors import NotAuthorized
from bes.identity import Transport
from bes.principal import Principal
from bes.soap import SoapRequest
from tests.support import soap
from tests.support.grid import posix_job

pytestmark = pytest.mark.anyio

ROOT = "root"  # the administrator of HeaderPolicy
NONE = "\u2013"  # what the page shows for "nothing"


class HeaderPolicy:
    """The tests' identity policy: the caller named in ``X-Test-User`` (``root`` is an
    administrator); no header, no entry."""

    async def understood_headers(self) -> frozenset[str]:
        return frozenset()

    async def identify(self, transport: Transport, request: SoapRequest | None) -> Principal:
        name = transport.headers.get("x-test-user")
        if not name:
            raise NotAuthorized("say who you are (X-Test-User)")
        return Principal(name=name, admin=name == ROOT)


job = posix_job


class Site:
    """The service in process with a desktop grid, and what its users do."""

    def __init__(self, app: BesApp, http: httpx.AsyncClient) -> None:
        self.app = app
        self.http = http

    async def submit(self, user: str, document: bytes) -> str:
        answer = await self.http.post(
            "/bes",
            content=soap.envelope(soap.create_activity(document)),
            headers={"SOAPAction": soap.ACTIONS + "CreateActivity", "X-Test-User": user},
        )
        assert answer.status_code == 200, answer.text
        (activity_id,) = soap.xpath(soap.body_of(answer.content), "//besa:ActivityId/text()")
        return str(activity_id)

    async def terminate(self, user: str, activity_id: str) -> None:
        body = soap.vector("TerminateActivities", [soap.epr(activity_id=activity_id)])
        answer = await self.http.post(
            "/bes",
            content=soap.envelope(body),
            headers={"SOAPAction": soap.ACTIONS + "TerminateActivities", "X-Test-User": user},
        )
        assert answer.status_code == 200, answer.text

    async def page(self, user: str, path: str = "/bes/status", **params: Any) -> html.HtmlElement:
        response = await self.get(user, path, **params)
        assert response.status_code == 200, response.text
        return html.fromstring(response.text)

    async def get(self, user: str | None, path: str, **params: Any) -> httpx.Response:
        headers = {"X-Test-User": user} if user else {}
        # (httpx drops the query of the URL when params are given, even none)
        return await self.http.get(path, params=params or None, headers=headers)

    async def worker(self, token: str, path: str, body: dict[str, Any]) -> Any:
        response = await self.http.post(
            "/worker/v1/" + path, json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    config = ServiceConfig(
        data_dir=tmp_path / "data",
        backend="desktopgrid",
        backend_options={"claim_wait_s": "1"},
    )
    app = create_app(config, identity=HeaderPolicy())
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bes.test") as http:
            yield Site(app, http)
    finally:
        await app.shutdown()


def rows(page: html.HtmlElement) -> list[dict[str, str]]:
    """The activity table as a person reads it: one dict per row, keyed by column title."""
    titles = [th.text_content() for th in page.cssselect("#activity-table thead th")]
    return [
        dict(zip(titles, (td.text_content() for td in tr.cssselect("td")), strict=True))
        for tr in page.cssselect("#activity-table tbody tr")
    ]


def text(page: html.HtmlElement, selector: str) -> str:
    (found,) = page.cssselect(selector)
    return str(found.text_content())


async def test_the_page_lists_the_callers_activities_newest_first_with_the_factory_state(
    site: Site,
) -> None:
    first = await site.submit("alice", job("first"))
    second = await site.submit("alice", job("second"))
    await site.terminate("alice", first)
    page = await site.page("alice")
    shown = rows(page)
    assert [r["Activity"] for r in shown] == [second, first]
    assert [r["Name"] for r in shown] == ["second", "first"]
    assert shown[0]["State"].startswith("Pending") and shown[1]["State"] == "Cancelled"
    assert shown[0]["Backend"] == "desktopgrid"
    assert shown[1]["Ended"].endswith("Z") and shown[0]["Ended"] == NONE
    assert text(page, "#caller") == "alice"
    assert text(page, "#accepting") == "yes"
    assert text(page, "#total") == "2"
    assert text(page, "#backends") == "desktopgrid"
    assert text(page, "#version").startswith("bes ")
    assert text(page, '[data-count="Cancelled"]') == "1"


async def test_a_job_name_is_shown_as_text_and_the_page_allows_no_script(site: Site) -> None:
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    escaped = hostile.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    activity = await site.submit("alice", job(escaped))
    response = await site.get("alice", "/bes/status")
    assert "<script" not in response.text and "<img" not in response.text
    page = html.fromstring(response.text)
    assert rows(page)[0]["Name"] == hostile
    assert not page.cssselect("script, img")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    detail = await site.get("alice", f"/bes/status/activities/{activity}")
    assert "<script" not in detail.text
    assert html.fromstring(detail.text).cssselect("h1")[0].text_content() == hostile


async def test_a_caller_sees_only_its_activities_and_no_workers_or_queue(site: Site) -> None:
    mine = await site.submit("alice", job("mine"))
    theirs = await site.submit("bob", job("theirs"))
    page = await site.page("alice")
    assert [r["Activity"] for r in rows(page)] == [mine]
    assert text(page, "#total") == "1"
    assert not page.cssselect("#workers") and not page.cssselect("#queue")
    assert "(administrator)" not in text(page, "header")
    # Another owner's activity looks like one that does not exist.
    hidden = await site.get("alice", f"/bes/status/activities/{theirs}")
    assert hidden.status_code == 404
    assert "No such activity" in hidden.text
    assert (await site.get("alice", f"/bes/status/activities/{mine}")).status_code == 200

    admin = await site.page(ROOT)
    assert {r["Activity"] for r in rows(admin)} == {mine, theirs}
    assert admin.cssselect("#workers") and admin.cssselect("#queue")
    assert (await site.get(ROOT, f"/bes/status/activities/{theirs}")).status_code == 200
    # No identity, no page.
    assert (await site.get(None, "/bes/status")).status_code == 401


async def test_the_administrator_sees_workers_and_the_queue(site: Site) -> None:
    assert site.app.db is not None
    token = create_worker(site.app.db, "lab-pc-17")
    create_worker(site.app.db, "idle-pc")
    await site.worker(token, "register", {"facts": {"max_vms": 2, "max_memory_mib": 4096}})
    for name in ("a", "b"):
        await site.submit("alice", job(name))
    assert site.app.activities is not None
    await site.app.activities.dispatch_once()
    claim = {"memory_mib": 4096, "vcpus": 4, "disk_mib": 100_000, "wait_s": 1.0, "slots": 1}
    (lease,) = (await site.worker(token, "claim", claim))["leases"]
    page = await site.page(ROOT)
    cells = [td.text_content() for td in page.cssselect('[data-worker="lab-pc-17"] td')]
    assert cells[0] == "lab-pc-17"
    assert cells[2] == "1" and cells[3] == "2 VMs, 4096 MiB" and cells[4] == "live"
    assert "ago" in cells[1]
    idle = [td.text_content() for td in page.cssselect('[data-worker="idle-pc"] td')]
    assert idle[2] == "0" and idle[1] == NONE
    assert text(page, '[data-queue="queued"]') == "1"
    assert text(page, '[data-queue="leased"]') == "1"
    assert text(page, "#oldest").startswith("since ")
    leased = [r for r in rows(page) if r["Activity"] == lease["activity"]]
    assert leased[0]["Worker"] == "lab-pc-17"


async def test_the_state_filter_and_pages_of_activities(site: Site) -> None:
    made = [await site.submit("alice", job(f"job{i}")) for i in range(7)]
    await site.terminate("alice", made[2])
    newest_first = made[::-1]

    page = await site.page("alice", limit=3)
    assert [r["Activity"] for r in rows(page)] == newest_first[:3]
    (older,) = page.cssselect("a#older")
    page = await site.page("alice", older.get("href").removeprefix("http://bes.test"))
    assert [r["Activity"] for r in rows(page)] == newest_first[3:6]
    page = await site.page(
        "alice", page.cssselect("a#older")[0].get("href")[len("http://bes.test") :]
    )
    assert [r["Activity"] for r in rows(page)] == newest_first[6:]
    assert not page.cssselect("a#older")

    cancelled = await site.page("alice", state="Cancelled")
    assert [r["Activity"] for r in rows(cancelled)] == [made[2]]
    assert cancelled.cssselect("#state option[selected]")[0].get("value") == "Cancelled"
    assert not rows(await site.page("alice", state="Finished"))
    assert (await site.page("alice", state="Finished")).cssselect("#no-activities")
    # Nonsense in the query is ignored, not an error.
    assert len(rows(await site.page("alice", state="Nope", limit="x", after="!"))) == 7
    refreshing = await site.get("alice", "/bes/status", refresh="30")
    assert '<meta http-equiv="refresh" content="30">' in refreshing.text
    assert "http-equiv" not in (await site.get("alice", "/bes/status", refresh="7")).text


async def test_an_activity_shows_its_history_and_warnings(site: Site) -> None:
    # DataStaging without its CreationFlag is normalized, with a warning in the status.
    staging = (
        "<jsdl:DataStaging><jsdl:FileName>out.txt</jsdl:FileName>"
        "<jsdl:DeleteOnTermination>false</jsdl:DeleteOnTermination></jsdl:DataStaging>"
    )
    activity = await site.submit("alice", job("staged", staging))
    assert site.app.activities is not None
    await site.app.activities.dispatch_once()
    await site.terminate("alice", activity)
    page = await site.page("alice", f"/bes/status/activities/{activity}")
    assert text(page, "h1") == "staged"
    history = [
        [td.text_content() for td in tr.cssselect("td")]
        for tr in page.cssselect("#history tbody tr")
    ]
    assert [h[1] for h in history] == ["Pending", "Cancelled"]
    assert history[0][2] == "Submitted"  # queued for the desktop grid by the create itself
    assert history[0][3].startswith("accepted; submitted as ")
    assert history[-1][3] == "terminated by alice"
    assert "CreationFlag" in text(page, "#warnings")
    assert page.cssselect("a#back")[0].get("href") == "http://bes.test/bes/status"
    assert (await site.get("alice", "/bes/status/activities/nonsense")).status_code == 404
    assert (await site.get("alice", "/bes/status/elsewhere")).status_code == 404
    refused = await site.http.post("/bes/status", headers={"X-Test-User": "alice"})
    assert refused.status_code == 405


async def test_a_finished_activity_links_its_outputs(site: Site) -> None:
    assert site.app.db is not None and site.app.activities is not None
    token = create_worker(site.app.db, "w1")
    activity = await site.submit("alice", job("hello"))
    await site.app.activities.dispatch_once()
    claim = {"memory_mib": 4096, "vcpus": 4, "disk_mib": 100_000, "wait_s": 1.0, "slots": 1}
    (lease,) = (await site.worker(token, "claim", claim))["leases"]
    beat = {"leases": [{"lease": lease["lease"], "substate": "Executing"}]}
    await site.worker(token, "heartbeat", beat)
    uploaded = await site.http.put(
        f"/worker/v1/leases/{lease['lease']}/files/stdout",
        content=b"hello\n",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert uploaded.status_code == 200, uploaded.text
    done = {"exit_code": 0, "timing": {"run_s": 1.0}, "files": ["stdout"]}
    await site.worker(token, f"leases/{lease['lease']}/complete", done)
    await site.app.activities.poll_once()

    page = await site.page("alice")
    (row,) = rows(page)
    assert row["State"] == "Finished" and row["Exit code"] == "0" and row["Worker"] == "w1"
    assert row["Started"].endswith("Z") and row["Run time"].endswith(" s")
    (link,) = page.cssselect("a.outputs")
    listing = await site.get("alice", link.get("href").removeprefix("http://bes.test"))
    assert [f["name"] for f in listing.json()["files"]] == ["stdout"]
    detail = await site.page("alice", f"/bes/status/activities/{activity}")
    stdout = [a for a in detail.cssselect("#activity a") if a.text_content() == "stdout"]
    assert (await site.get("alice", stdout[0].get("href")[len("http://bes.test") :])).text == (
        "hello\n"
    )
