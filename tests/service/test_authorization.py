"""Two real users on one service: each sees and touches only their own activities; the
administrator sees all and alone manages the service. In process, through the site policy
with users in the database (HTTP Basic over an https scope); the same rules over real TLS and
WS-Security are in test_authentication.py."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from lxml import etree

from bes.app import BesApp, create_app
from bes.authn import FAILURES_BEFORE_DELAY
from bes.config import ServiceConfig
from bes.db import user_rows
from bes.ns import WSSE
from tests.support import soap
from tests.support.soap import BES, MGMT
from tests.support.standards import assert_official

pytestmark = pytest.mark.anyio

PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "root": "root-pw-3"}
FAST_HASH = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)


async def add_users(app: BesApp) -> None:
    assert app.accounts is not None and app.db is not None
    app.accounts.hasher = FAST_HASH
    for name, password in PASSWORDS.items():
        row = app.accounts.new_user(name, password=password, admin=name == "root")
        assert await app.db.write(user_rows.add_user, (row, dt.datetime.now(dt.UTC)))
    app.accounts.forget_cached()


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[BesApp]:
    service = create_app(ServiceConfig(data_dir=tmp_path / "data"))
    await service.startup()
    try:
        yield service
    finally:
        await service.shutdown()


@pytest.fixture
async def users(app: BesApp) -> BesApp:
    await add_users(app)
    return app


def basic(user: str, password: str | None = None) -> dict[str, str]:
    secret = f"{user}:{password or PASSWORDS[user]}".encode()
    return {"Authorization": "Basic " + base64.b64encode(secret).decode()}


async def request(
    app: BesApp,
    method: str,
    path: str,
    *,
    user: str | None = None,
    body: str | None = None,
    scheme: str = "https",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = dict(headers or {})
    if user is not None:
        sent.update(basic(user))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url=f"{scheme}://bes.test") as client:
        if body is None:
            return await client.request(method, path, headers=sent)
        return await client.post(path, content=soap.envelope(body), headers=sent)


async def create(app: BesApp, user: str) -> tuple[str, str]:
    """A new activity of ``user``: (its EPR as XML text, its id)."""
    r = await request(app, "POST", "/bes", user=user, body=soap.create_activity())
    assert r.status_code == 200, r.text
    epr = soap.xpath(soap.body_of(r.content), "bes:ActivityIdentifier")[0]
    activity_id = soap.xpath(epr, ".//besa:ActivityId")[0].text
    return etree.tostring(epr).decode(), activity_id


def item_faults(response: httpx.Response) -> list[str]:
    return [
        etree.QName(d).localname
        for d in soap.xpath(soap.body_of(response.content), "bes:Response/bes:Fault/detail/*")
    ]


async def test_without_users_on_loopback_everyone_is_the_anonymous_administrator(
    app: BesApp,
) -> None:
    r = await request(app, "POST", "/bes", body=soap.create_activity(), scheme="http")
    assert r.status_code == 200
    page = await request(app, "GET", "/bes/status", scheme="http")
    assert page.status_code == 200 and "anonymous" in page.text
    metrics = await request(app, "GET", "/metrics", scheme="http")
    assert metrics.status_code == 200


async def test_once_a_user_exists_anonymous_callers_are_refused_everywhere(users: BesApp) -> None:
    r = await request(users, "POST", "/bes", body=soap.create_activity())
    assert r.status_code == 500
    fault = soap.fault_of(r.content)
    assert fault.findtext("faultstring") == "not authorized"
    assert [d.tag for d in fault.xpath("detail/*")] == [f"{{{BES}}}NotAuthorizedFault"]
    assert_official(r.content)
    for path in ("/bes/status", "/metrics", "/bes/images", "/bes/activities/x/outputs"):
        refused = await request(users, "GET", path)
        assert refused.status_code == 401, path
        assert refused.headers["www-authenticate"].startswith("Basic realm=")
    for path in ("/healthz", "/bes?wsdl", "/bes/schemas/bes-factory.xsd"):
        assert (await request(users, "GET", path)).status_code == 200, path


async def test_a_wrong_password_an_unknown_user_and_plain_http_say_only_not_authorized(
    users: BesApp,
) -> None:
    cases = [
        basic("alice", "wrong"),
        {"Authorization": "Basic " + base64.b64encode(b"mallory:x").decode()},
    ]
    for headers in cases:
        r = await request(users, "POST", "/bes", body=soap.create_activity(), headers=headers)
        assert soap.fault_of(r.content).findtext("faultstring") == "not authorized"
    # The right password over plain HTTP is refused too: Basic is for TLS.
    r = await request(
        users, "POST", "/bes", user="alice", body=soap.create_activity(), scheme="http"
    )
    assert soap.fault_of(r.content).findtext("faultstring") == "not authorized"
    metrics = await request(users, "GET", "/metrics", user="root")
    text = metrics.text
    assert 'bes_auth_failures_total{reason="bad_password"} 1.0' in text
    assert 'bes_auth_failures_total{reason="unknown_user"} 1.0' in text
    assert 'bes_auth_failures_total{reason="password_without_tls"} 1.0' in text


async def test_a_user_sees_and_touches_only_their_own_activities(users: BesApp) -> None:
    alice_epr, alice_id = await create(users, "alice")
    bob_epr, _ = await create(users, "bob")

    statuses = await request(
        users,
        "POST",
        "/bes",
        user="bob",
        body=soap.vector("GetActivityStatuses", [alice_epr, bob_epr]),
    )
    assert item_faults(statuses) == ["UnknownActivityIdentifierFault"]
    responses = soap.xpath(soap.body_of(statuses.content), "bes:Response")
    assert len(responses) == 2 and soap.xpath(responses[1], "bes:ActivityStatus")
    assert_official(statuses.content)

    documents = await request(
        users, "POST", "/bes", user="bob", body=soap.vector("GetActivityDocuments", [alice_epr])
    )
    assert item_faults(documents) == ["UnknownActivityIdentifierFault"]
    assert b"JobDefinition" not in documents.content

    terminated = await request(
        users, "POST", "/bes", user="bob", body=soap.vector("TerminateActivities", [alice_epr])
    )
    assert item_faults(terminated) == ["UnknownActivityIdentifierFault"]
    mine = await request(
        users, "POST", "/bes", user="alice", body=soap.vector("GetActivityStatuses", [alice_epr])
    )
    state = soap.xpath(soap.body_of(mine.content), "bes:Response/bes:ActivityStatus/@state")
    assert state == ["Pending"]  # bob's terminate did nothing

    # The activity's own address, its outputs and its status page: as if it did not exist.
    at_address = await request(
        users,
        "POST",
        f"/bes/activities/{alice_id}",
        user="bob",
        body=soap.vector("GetActivityStatuses", [alice_epr]),
    )
    assert item_faults(at_address) == ["UnknownActivityIdentifierFault"]
    outputs = await request(users, "GET", f"/bes/activities/{alice_id}/outputs", user="bob")
    assert outputs.status_code == 404
    page = await request(users, "GET", f"/bes/status/activities/{alice_id}", user="bob")
    assert page.status_code == 404
    listing = await request(users, "GET", "/bes/status", user="bob")
    assert alice_id not in listing.text and "bob" in listing.text

    everyone = await request(users, "GET", "/bes/status", user="root")
    assert alice_id in everyone.text and "administrator" in everyone.text
    root_sees = await request(
        users, "POST", "/bes", user="root", body=soap.vector("GetActivityStatuses", [alice_epr])
    )
    assert item_faults(root_sees) == []


async def test_only_administrators_manage_the_service(users: BesApp) -> None:
    stop = f'<mgmt:StopAcceptingNewActivities xmlns:mgmt="{MGMT}"/>'
    refused = await request(users, "POST", "/bes", user="alice", body=stop)
    detail = soap.fault_of(refused.content).xpath("detail/*")
    assert [etree.QName(d).localname for d in detail] == ["NotAuthorizedFault"]
    accepted = await request(users, "POST", "/bes", user="root", body=stop)
    assert accepted.status_code == 200
    assert (await request(users, "GET", "/metrics", user="alice")).status_code == 403
    assert (await request(users, "GET", "/metrics", user="root")).status_code == 200


async def test_a_source_that_keeps_failing_is_slowed_down(users: BesApp) -> None:
    policy = users.identity
    for _ in range(FAILURES_BEFORE_DELAY + 1):
        await request(users, "GET", "/bes/status", headers=basic("alice", "guess"))
    assert policy.throttle.delay_s("127.0.0.1") > 0  # type: ignore[attr-defined]
    assert policy.throttle.delay_s("127.0.0.2") == 0  # type: ignore[attr-defined]
    metrics = await request(users, "GET", "/metrics", user="root")
    throttled = re.search(r"^bes_auth_throttled_total (\S+)$", metrics.text, re.M)
    assert throttled is not None and float(throttled.group(1)) >= 1


# ------------------------------------------------------------------------------ digest tokens

USERNAME_PROFILE = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
)
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"


def digest_header(
    user: str, password: str, *, nonce: bytes | None = None, must_understand: bool = False
) -> str:
    """A wsse:Security header with a PasswordDigest UsernameToken (OASIS UsernameToken Profile
    1.0 §3.1), written out as a SOAP stack of another language would."""
    nonce = nonce or secrets.token_bytes(16)
    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    digest = base64.b64encode(hashlib.sha1(nonce + created.encode() + password.encode()).digest())
    understand = f' soap:mustUnderstand="1" xmlns:soap="{SOAP_ENV}"' if must_understand else ""
    return (
        f'<wsse:Security xmlns:wsse="{WSSE}" xmlns:wsu="{WSU}"{understand}>'
        f"<wsse:UsernameToken><wsse:Username>{user}</wsse:Username>"
        f'<wsse:Password Type="{USERNAME_PROFILE}#PasswordDigest">{digest.decode()}</wsse:Password>'
        f'<wsse:Nonce EncodingType="{SOAP_MESSAGE_SECURITY}#Base64Binary">'
        f"{base64.b64encode(nonce).decode()}</wsse:Nonce>"
        f"<wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security>"
    )


SOAP_MESSAGE_SECURITY = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0"
)


async def post_raw(app: BesApp, envelope: bytes, *, scheme: str = "http") -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40001))
    async with httpx.AsyncClient(transport=transport, base_url=f"{scheme}://bes.test") as client:
        return await client.post("/bes", content=envelope)


async def test_a_digest_token_signs_in_once_even_across_replicas_and_restarts(
    users: BesApp, tmp_path: Path
) -> None:
    header = digest_header("alice", PASSWORDS["alice"], must_understand=True)
    message = soap.envelope(soap.create_activity(), headers=header)
    first = await post_raw(users, message)  # plain HTTP: a digest does not reveal the password
    assert first.status_code == 200, first.text
    assert b"not authorized" in (await post_raw(users, message)).content
    replica = create_app(ServiceConfig(data_dir=tmp_path / "data"))  # the same database
    await replica.startup()
    try:
        again = await post_raw(replica, message)
        assert soap.fault_of(again.content).findtext("faultstring") == "not authorized"
        fresh = soap.envelope(
            soap.create_activity(), headers=digest_header("alice", PASSWORDS["alice"])
        )
        assert (await post_raw(replica, fresh)).status_code == 200
    finally:
        await replica.shutdown()


async def test_a_user_without_a_kept_password_cannot_use_digest(app: BesApp) -> None:
    assert app.accounts is not None and app.db is not None
    app.accounts.hasher = FAST_HASH
    row = app.accounts.new_user("dave", password="dave-pw", digest=False)
    await app.db.write(user_rows.add_user, (row, dt.datetime.now(dt.UTC)))
    app.accounts.forget_cached()
    message = soap.envelope(soap.create_activity(), headers=digest_header("dave", "dave-pw"))
    refused = await post_raw(app, message)
    assert soap.fault_of(refused.content).findtext("faultstring") == "not authorized"
    assert (
        await request(app, "GET", "/bes/status", headers=basic_of("dave", "dave-pw"))
    ).status_code == 200


def basic_of(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_a_must_understand_security_header_is_processed_only_once_secured(
    app: BesApp,
) -> None:
    header = digest_header("alice", PASSWORDS["alice"], must_understand=True)
    message = soap.envelope(soap.create_activity(), headers=header)
    anonymous = await post_raw(app, message)  # the embedded default processes no header
    assert soap.fault_of(anonymous.content).findtext("faultcode") == "soap:MustUnderstand"
    await add_users(app)
    await post_raw(app, soap.envelope(soap.create_activity()))  # learns that users exist
    assert (await post_raw(app, message)).status_code == 200


async def test_a_trusted_proxy_says_the_scheme_and_nobody_else_does(tmp_path: Path) -> None:
    proxied = create_app(ServiceConfig(data_dir=tmp_path / "data", trusted_proxies=("10.1.1.1",)))
    await proxied.startup()
    try:
        await add_users(proxied)
        headers = {**basic("alice"), "X-Forwarded-Proto": "https"}
        for client, expected in ((("10.1.1.1", 50000), 200), (("10.9.9.9", 50000), 401)):
            transport = httpx.ASGITransport(app=proxied, client=client)
            async with httpx.AsyncClient(transport=transport, base_url="http://bes.test") as c:
                page = await c.get("/bes/status", headers=headers)
            assert page.status_code == expected, client
    finally:
        await proxied.shutdown()
