"""Every BES fault kind the service can send, produced for real and checked against the
official schemas (final GFD.108 on /bes, the 2007 draft on /bes/draft-2007)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from lxml import etree

from bes.app import BesApp, create_app
from bes.backends.base import JobState, JobStatus
from bes.backends.fake import FakeBackend, FakeConfig
from bes.config import ServiceConfig
from bes.errors import NotAuthorized, StoreError
from bes.identity import Transport
from bes.principal import Principal
from bes.soap import SoapRequest
from bes.states import SubState
from tests.support import soap
from tests.support.soap import BES, MGMT
from tests.support.standards import assert_official, assert_valid, draft_schema

pytestmark = pytest.mark.anyio

RUNNING = ((0.0, JobStatus(state=JobState.RUNNING, substate=SubState.EXECUTING)),)


class HeaderPolicy:
    """Test identity: the caller named by an X-Test-User header; 'root' is the administrator;
    'nobody' is refused."""

    async def understood_headers(self) -> frozenset[str]:
        return frozenset()

    async def identify(self, transport: Transport, request: SoapRequest | None) -> Principal:
        name = transport.headers.get("x-test-user", "alice")
        if name == "nobody":
            raise NotAuthorized("nobody may use this service")
        return Principal(name=name, admin=name == "root")


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[BesApp, FakeBackend]]:
    fake = FakeBackend(FakeConfig(script=RUNNING, cancel_delay_s=60))
    service = create_app(
        ServiceConfig(data_dir=tmp_path / "data", backend="fake"),
        identity=HeaderPolicy(),
        backends={"fake": fake},
    )
    await service.startup()
    try:
        yield service, fake
    finally:
        await service.shutdown()


async def post(app: BesApp, body: str, *, user: str = "alice", path: str = "/bes") -> bytes:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bes.test") as client:
        r = await client.post(path, content=soap.envelope(body), headers={"X-Test-User": user})
    return r.content


def detail_names(response: bytes) -> list[str]:
    payload = soap.body_of(response)
    faults = (
        [payload]
        if etree.QName(payload).localname == "Fault"
        else soap.xpath(payload, "bes:Response/bes:Fault")
    )
    return [etree.QName(d).localname for f in faults for d in f.xpath("detail/*")]


async def running_activity(app: BesApp) -> str:
    response = await post(app, soap.create_activity())
    epr = etree.tostring(soap.xpath(soap.body_of(response), "bes:ActivityIdentifier")[0]).decode()
    activities = app.activities
    assert activities is not None
    for _ in range(200):
        await activities.dispatch_once()
        await activities.poll_once()
        status = await post(app, soap.vector("GetActivityStatuses", [epr]))
        if (
            soap.xpath(soap.body_of(status), "string(bes:Response/bes:ActivityStatus/@state)")
            == "Running"
        ):
            return epr
        await asyncio.sleep(0.01)
    pytest.fail("the activity did not start")


async def test_operation_will_be_applied_eventually(app: tuple[BesApp, FakeBackend]) -> None:
    service, _ = app
    epr = await running_activity(service)
    response = await post(service, soap.vector("TerminateActivities", [epr]))
    assert_official(response, "terminate of a running activity")
    (item,) = soap.xpath(soap.body_of(response), "bes:Response")
    assert soap.xpath(item, "string(bes:Terminated)") == "false"
    (detail,) = soap.xpath(item, "bes:Fault/detail/bes:OperationWillBeAppliedEventuallyFault")
    assert soap.xpath(detail, "string(bes:ActivityStatus/@state)") == "Running"
    assert soap.xpath(detail, "bes:ActivityStatus/besa:Terminating")


async def test_cant_apply_operation_to_current_state(app: tuple[BesApp, FakeBackend]) -> None:
    service, fake = app
    fake.config = FakeConfig(script=((0.0, JobStatus(state=JobState.FINISHED, exit_code=0)),))
    response = await post(service, soap.create_activity())
    epr = etree.tostring(soap.xpath(soap.body_of(response), "bes:ActivityIdentifier")[0]).decode()
    activities = service.activities
    assert activities is not None
    await activities.dispatch_once()
    await activities.poll_once()
    response = await post(service, soap.vector("TerminateActivities", [epr]))
    assert_official(response, "terminate of a finished activity")
    assert detail_names(response) == ["CantApplyOperationToCurrentStateFault"]


async def test_not_authorized_for_management(app: tuple[BesApp, FakeBackend]) -> None:
    service, _ = app
    response = await post(service, f'<m:StopAcceptingNewActivities xmlns:m="{MGMT}"/>')
    assert_official(response, "management by a non-administrator")
    assert detail_names(response) == ["NotAuthorizedFault"]
    assert soap.fault_of(response).findtext("faultcode") == "soap:Client"
    response = await post(service, f'<m:StopAcceptingNewActivities xmlns:m="{MGMT}"/>', user="root")
    assert soap.body_of(response).tag == f"{{{MGMT}}}StopAcceptingNewActivitiesResponse"


async def test_not_authorized_as_a_whole_call(app: tuple[BesApp, FakeBackend]) -> None:
    service, _ = app
    response = await post(service, soap.create_activity(), user="nobody")
    assert_official(response, "request of a refused caller")
    assert detail_names(response) == ["NotAuthorizedFault"]


async def test_other_owners_activities_are_unknown(app: tuple[BesApp, FakeBackend]) -> None:
    service, _ = app
    response = await post(service, soap.create_activity(), user="alice")
    epr = etree.tostring(soap.xpath(soap.body_of(response), "bes:ActivityIdentifier")[0]).decode()
    for op in ("GetActivityStatuses", "GetActivityDocuments", "TerminateActivities"):
        response = await post(service, soap.vector(op, [epr]), user="bob")
        assert_official(response, f"{op} by another user")
        assert detail_names(response) == ["UnknownActivityIdentifierFault"]


async def test_store_failure_is_a_server_fault_without_internals(
    app: tuple[BesApp, FakeBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _ = app

    async def broken(*args: object, **kwargs: object) -> None:
        raise StoreError("disk I/O error at /secret/path")

    assert service.db is not None
    monkeypatch.setattr(service.db, "write", broken)
    response = await post(service, soap.create_activity())
    assert_official(response, "fault for a store failure")
    fault = soap.fault_of(response)
    assert fault.findtext("faultcode") == "soap:Server"
    assert "/secret/path" not in etree.tostring(fault).decode()
    assert "try again" in fault.findtext("faultstring")


async def test_unexpected_error_is_a_server_fault_with_a_reference(
    app: tuple[BesApp, FakeBackend],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, _ = app

    async def bug(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    assert service.activities is not None
    monkeypatch.setattr(service.activities, "summary", bug)
    response = await post(service, f'<bes:GetFactoryAttributesDocument xmlns:bes="{BES}"/>')
    assert_official(response, "fault for an internal error")
    text = soap.fault_of(response).findtext("faultstring")
    assert "ZeroDivisionError" not in text and "a bug" not in text
    reference = text.split("reference ")[1].split(")")[0]
    assert any(reference in r.getMessage() and r.exc_info for r in caplog.records)


async def test_draft_dialect_faults_validate_against_the_draft(
    app: tuple[BesApp, FakeBackend], tmp_path_factory: pytest.TempPathFactory
) -> None:
    service, _ = app
    schema = draft_schema(str(tmp_path_factory.mktemp("draft")))
    epr = await running_activity(service)
    unknown = soap.epr("http://bes.test/bes/activities/" + "Z" * 24)
    response = await post(
        service, soap.vector("TerminateActivities", [epr, unknown]), path="/bes/draft-2007"
    )
    assert_valid(schema, soap.body_of(response), "draft terminate response")
    assert detail_names(response) == [
        "OperationWillBeAppliedEventuallyFault",
        "InvalidActivityIdentifierFault",
    ]
