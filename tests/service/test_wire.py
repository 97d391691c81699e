"""The BES wire contract, in process: every operation, every fault kind, every message checked
against the official OGF schemas."""

from __future__ import annotations

import httpx
import pytest
from lxml import etree

from tests.support import soap
from tests.support.soap import ACTIONS, BES, MGMT, MGMT_ACTIONS, SOAP, WSA
from tests.support.standards import assert_official, assert_valid, draft_schema

pytestmark = pytest.mark.anyio


async def call(
    client: httpx.AsyncClient,
    body: str,
    *,
    action: str | None = None,
    headers: str = "",
    path: str = "/bes",
) -> httpx.Response:
    http_headers = {"Content-Type": "text/xml; charset=utf-8"}
    if action is not None:
        http_headers["SOAPAction"] = f'"{action}"'
    response = await client.post(
        path, content=soap.envelope(body, headers=headers), headers=http_headers
    )
    assert response.headers["content-type"].startswith("text/xml")
    if path.endswith("draft-2007"):
        return response
    assert_official(response.content, f"response to {body[:60]}")
    return response


async def create(client: httpx.AsyncClient, jsdl: bytes = soap.HELLO_JSDL) -> etree._Element:
    """Create an activity; return its EPR as the service sent it."""
    r = await call(client, soap.create_activity(jsdl), action=ACTIONS + "CreateActivity")
    assert r.status_code == 200, r.text
    (epr,) = soap.xpath(
        soap.body_of(r.content), "self::bes:CreateActivityResponse/bes:ActivityIdentifier"
    )
    return epr


def as_request_epr(epr: etree._Element) -> bytes:
    return etree.tostring(epr)


# --------------------------------------------------------------------------- CreateActivity


async def test_create_activity_returns_a_full_endpoint_reference(client: httpx.AsyncClient) -> None:
    epr = await create(client)
    (address,) = soap.xpath(epr, "wsa:Address/text()")
    (activity_id,) = soap.xpath(epr, "wsa:ReferenceParameters/besa:ActivityId/text()")
    assert address == f"http://bes.test/bes/activities/{activity_id}"
    assert len(activity_id) == 24


async def test_identifiers_are_unguessable(client: httpx.AsyncClient) -> None:
    ids = set()
    for _ in range(20):
        epr = await create(client)
        ids.add(soap.xpath(epr, "string(wsa:ReferenceParameters/besa:ActivityId)"))
    assert len(ids) == 20
    # 24 URL-safe base64 characters: 48 bits of time, then 96 random bits (16 characters).
    assert all(len(i) == 24 for i in ids)
    assert len({i[8:] for i in ids}) == 20


async def test_soapaction_only_quoted_or_not(client: httpx.AsyncClient) -> None:
    body = soap.envelope(soap.create_activity())
    for value in (f'"{ACTIONS}CreateActivity"', f"{ACTIONS}CreateActivity", '""', "CreateActivity"):
        r = await client.post(
            "/bes", content=body, headers={"SOAPAction": value, "Content-Type": "text/xml"}
        )
        assert r.status_code == 200, (value, r.text)
        envelope = etree.fromstring(r.content)
        assert envelope.find(f"{{{SOAP}}}Header") is None, "no addressing headers unless asked"


async def test_ws_addressing_reply(client: httpx.AsyncClient) -> None:
    message_id = "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e"
    r = await call(
        client,
        soap.create_activity(),
        headers=soap.wsa_headers(ACTIONS + "CreateActivity", message_id),
    )
    envelope = etree.fromstring(r.content)
    assert (
        soap.xpath(envelope, "string(soap:Header/wsa:Action)") == ACTIONS + "CreateActivityResponse"
    )
    assert soap.xpath(envelope, "string(soap:Header/wsa:RelatesTo)") == message_id
    assert soap.xpath(envelope, "string(soap:Header/wsa:MessageID)").startswith("urn:uuid:")


async def test_fault_carries_the_fault_action_and_relates_to(client: httpx.AsyncClient) -> None:
    r = await call(
        client,
        soap.create_activity(b"<jsdl:JobDefinition xmlns:jsdl='%s'/>" % soap.JSDL.encode()),
        headers=soap.wsa_headers(ACTIONS + "CreateActivity", "urn:uuid:abc"),
    )
    assert r.status_code == 500
    envelope = etree.fromstring(r.content)
    assert soap.xpath(envelope, "string(soap:Header/wsa:Action)") == ACTIONS + "Fault"
    assert soap.xpath(envelope, "string(soap:Header/wsa:RelatesTo)") == "urn:uuid:abc"


async def test_ws_addressing_2004_is_answered_in_kind(client: httpx.AsyncClient) -> None:
    old = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
    headers = (
        f'<a:Action xmlns:a="{old}">{ACTIONS}CreateActivity</a:Action>'
        f'<a:MessageID xmlns:a="{old}">uuid:42</a:MessageID>'
    )
    r = await client.post("/bes", content=soap.envelope(soap.create_activity(), headers=headers))
    assert r.status_code == 200
    envelope = etree.fromstring(r.content)
    assert envelope.xpath("string(//a:RelatesTo)", namespaces={"a": old}) == "uuid:42"


async def test_must_understand_header_we_do_not_know(client: httpx.AsyncClient) -> None:
    headers = '<x:Transaction xmlns:x="urn:example:tx" soap:mustUnderstand="1">5</x:Transaction>'
    r = await call(client, soap.create_activity(), headers=headers)
    assert r.status_code == 500
    fault = soap.fault_of(r.content)
    assert fault.findtext("faultcode") == "soap:MustUnderstand"
    assert "urn:example:tx" in fault.findtext("faultstring")


async def test_must_understand_for_another_actor_is_not_ours(client: httpx.AsyncClient) -> None:
    headers = (
        '<x:Transaction xmlns:x="urn:example:tx" soap:mustUnderstand="1" '
        'soap:actor="urn:example:someone-else">5</x:Transaction>'
    )
    r = await call(client, soap.create_activity(), headers=headers)
    assert r.status_code == 200


async def test_understood_headers_may_be_must_understand(client: httpx.AsyncClient) -> None:
    headers = (
        f'<wsa:Action xmlns:wsa="{WSA}" soap:mustUnderstand="1">{ACTIONS}CreateActivity'
        "</wsa:Action>"
    )
    r = await call(client, soap.create_activity(), headers=headers)
    assert r.status_code == 200


async def test_action_mismatch(client: httpx.AsyncClient) -> None:
    r = await call(
        client, soap.create_activity(), headers=soap.wsa_headers(ACTIONS + "TerminateActivities")
    )
    assert r.status_code == 500
    fault = soap.fault_of(r.content)
    assert fault.findtext("faultcode") == "wsa:ActionMismatch"
    envelope = etree.fromstring(r.content)
    assert (
        soap.xpath(envelope, "string(soap:Header/wsa:Action)")
        == "http://www.w3.org/2005/08/addressing/fault"
    )


async def test_soapaction_naming_another_operation_is_refused(client: httpx.AsyncClient) -> None:
    r = await call(client, soap.create_activity(), action=ACTIONS + "GetActivityStatuses")
    assert r.status_code == 500
    assert "does not match" in soap.fault_of(r.content).findtext("faultstring")


async def test_non_anonymous_reply_to_is_refused(client: httpx.AsyncClient) -> None:
    headers = (
        f'<wsa:ReplyTo xmlns:wsa="{WSA}"><wsa:Address>http://client.example.org/cb'
        "</wsa:Address></wsa:ReplyTo>"
    )
    r = await call(client, soap.create_activity(), headers=headers)
    assert r.status_code == 500
    assert soap.fault_of(r.content).findtext("faultcode") == "wsa:OnlyAnonymousAddressSupported"


async def test_invalid_jsdl_gets_invalid_request_message_fault(client: httpx.AsyncClient) -> None:
    jsdl = soap.HELLO_JSDL.replace(
        b"<jsdl:JobIdentification>", b"<jsdl:Bogus/><jsdl:JobIdentification>"
    )
    r = await call(client, soap.create_activity(jsdl), action=ACTIONS + "CreateActivity")
    assert r.status_code == 500
    fault = soap.fault_of(r.content)
    assert fault.findtext("faultcode") == "soap:Client"
    (detail,) = soap.xpath(fault, "detail/bes:InvalidRequestMessageFault")
    elements = soap.xpath(detail, "bes:InvalidElement/text()")
    assert elements == [
        "/soap:Envelope/soap:Body/bes-factory:CreateActivity/bes-factory:ActivityDocument"
        "/jsdl:JobDefinition/jsdl:JobDescription/jsdl:Bogus"
    ]
    assert "jsdl:Bogus" in soap.xpath(detail, "string(bes:Message)")


async def test_missing_job_definition(client: httpx.AsyncClient) -> None:
    body = f'<bes:CreateActivity xmlns:bes="{BES}"><bes:ActivityDocument/></bes:CreateActivity>'
    r = await call(client, body)
    assert r.status_code == 500
    detail = soap.xpath(soap.fault_of(r.content), "detail/bes:InvalidRequestMessageFault")
    assert detail and "JobDefinition" in soap.xpath(detail[0], "string(bes:Message)")


async def test_unsupported_extension_gets_unsupported_feature_fault(
    client: httpx.AsyncClient,
) -> None:
    jsdl = soap.HELLO_JSDL.replace(
        b"</jsdl:JobDescription>",
        b'</jsdl:JobDescription><mp:MyProxy xmlns:mp="urn:gridsam:myproxy">x</mp:MyProxy>',
    )
    r = await call(client, soap.create_activity(jsdl))
    assert r.status_code == 500
    fault = soap.fault_of(r.content)
    assert soap.xpath(fault, "detail/bes:UnsupportedFeatureFault/bes:Feature/text()") == [
        "{urn:gridsam:myproxy}MyProxy in /soap:Envelope/soap:Body/bes-factory:CreateActivity/"
        "bes-factory:ActivityDocument/jsdl:JobDefinition"
    ]


async def test_extension_beside_the_job_definition_is_not_ignored(
    client: httpx.AsyncClient,
) -> None:
    body = (
        f'<bes:CreateActivity xmlns:bes="{BES}"><bes:ActivityDocument>'
        f'{soap.HELLO_JSDL.decode()}<x:Hint xmlns:x="urn:example:x"/></bes:ActivityDocument>'
        '<y:Priority xmlns:y="urn:example:y">3</y:Priority></bes:CreateActivity>'
    )
    r = await call(client, body)
    features = soap.xpath(
        soap.fault_of(r.content), "detail/bes:UnsupportedFeatureFault/bes:Feature/text()"
    )
    assert [f.split(" in ")[0] for f in features] == [
        "{urn:example:y}Priority",
        "{urn:example:x}Hint",
    ]


# --------------------------------------------------------------------------- vector operations


async def test_statuses_one_response_per_identifier_in_order(client: httpx.AsyncClient) -> None:
    a, b = await create(client), await create(client)
    unknown = soap.epr("http://bes.test/bes/activities/AAAAAAAAAAAAAAAAAAAAAAAA")
    foreign = soap.epr("https://unicore.example.org:8080/DEMO-SITE/services/BESActivity?res=1")
    eprs = [as_request_epr(b), unknown, as_request_epr(a), foreign, as_request_epr(b)]
    r = await call(
        client, soap.vector("GetActivityStatuses", eprs), action=ACTIONS + "GetActivityStatuses"
    )
    assert r.status_code == 200
    responses = soap.xpath(soap.body_of(r.content), "bes:Response")
    assert len(responses) == 5
    sent = [etree.fromstring(e) for e in eprs]
    for response, epr in zip(responses, sent, strict=True):
        assert soap.xpath(response, "string(bes:ActivityIdentifier/wsa:Address)") == soap.xpath(
            epr, "string(wsa:Address)"
        )
    states = [soap.xpath(x, "string(bes:ActivityStatus/@state)") for x in responses]
    assert states == ["Pending", "", "Pending", "", "Pending"]
    assert soap.xpath(responses[0], "bes:ActivityStatus/besa:Queued")
    for i in (1, 3):
        fault = soap.xpath(responses[i], "bes:Fault")[0]
        assert fault.findtext("faultcode") == "soap:Client"
        assert soap.xpath(fault, "detail/bes:UnknownActivityIdentifierFault/bes:Message")


async def test_lookup_by_address_alone_or_reference_parameters_alone(
    client: httpx.AsyncClient,
) -> None:
    epr = await create(client)
    address = soap.xpath(epr, "string(wsa:Address)")
    activity_id = soap.xpath(epr, "string(wsa:ReferenceParameters/besa:ActivityId)")
    by_address = soap.epr(address.replace("http://bes.test", "https://proxy.example.org:443"))
    by_reference = soap.epr("http://some.other.name/bes", activity_id)
    r = await call(client, soap.vector("GetActivityStatuses", [by_address, by_reference]))
    states = soap.xpath(soap.body_of(r.content), "bes:Response/bes:ActivityStatus/@state")
    assert states == ["Pending", "Pending"]


async def test_empty_vectors_get_empty_responses(client: httpx.AsyncClient) -> None:
    for op in ("GetActivityStatuses", "TerminateActivities", "GetActivityDocuments"):
        r = await call(client, soap.vector(op, []))
        assert r.status_code == 200
        payload = soap.body_of(r.content)
        assert payload.tag == f"{{{BES}}}{op}Response" and len(payload) == 0


async def test_terminate_then_status_is_cancelled(client: httpx.AsyncClient) -> None:
    epr = await create(client)
    r = await call(
        client,
        soap.vector("TerminateActivities", [as_request_epr(epr)]),
        action=ACTIONS + "TerminateActivities",
    )
    (response,) = soap.xpath(soap.body_of(r.content), "bes:Response")
    assert soap.xpath(response, "string(bes:Terminated)") == "true"
    assert not soap.xpath(response, "bes:Fault")
    r = await call(client, soap.vector("GetActivityStatuses", [as_request_epr(epr)]))
    assert (
        soap.xpath(soap.body_of(r.content), "string(bes:Response/bes:ActivityStatus/@state)")
        == "Cancelled"
    )
    # Terminating again is harmless: it is still Cancelled.
    r = await call(client, soap.vector("TerminateActivities", [as_request_epr(epr)]))
    assert soap.xpath(soap.body_of(r.content), "string(bes:Response/bes:Terminated)") == "true"


async def test_terminate_always_carries_terminated(client: httpx.AsyncClient) -> None:
    unknown = soap.epr("http://bes.test/bes/activities/BBBBBBBBBBBBBBBBBBBBBBBB")
    r = await call(client, soap.vector("TerminateActivities", [unknown]))
    (response,) = soap.xpath(soap.body_of(r.content), "bes:Response")
    assert [etree.QName(c).localname for c in response] == [
        "ActivityIdentifier",
        "Terminated",
        "Fault",
    ]
    assert soap.xpath(response, "string(bes:Terminated)") == "false"


async def test_get_activity_documents_returns_the_document_as_submitted(
    client: httpx.AsyncClient,
) -> None:
    jsdl = (
        b'<JobDefinition xmlns="http://schemas.ggf.org/jsdl/2005/11/jsdl" id="doc1">'
        b"<JobDescription><JobIdentification><JobName>kept &amp; returned</JobName>"
        b"<JobAnnotation>  spaces  kept  </JobAnnotation></JobIdentification>"
        b"</JobDescription></JobDefinition>"
    )
    epr = await create(client, jsdl)
    r = await call(
        client,
        soap.vector("GetActivityDocuments", [as_request_epr(epr)]),
        action=ACTIONS + "GetActivityDocuments",
    )
    (returned,) = soap.xpath(soap.body_of(r.content), "bes:Response/bes:JobDefinition")
    original = etree.fromstring(jsdl)
    assert returned.attrib == original.attrib
    assert [etree.tostring(c, method="c14n", exclusive=True) for c in returned] == [
        etree.tostring(c, method="c14n", exclusive=True) for c in original
    ]


# --------------------------------------------------------------------------- factory attributes


FACTORY_ORDER = [
    "BasicResourceAttributesDocument",
    "IsAcceptingNewActivities",
    "CommonName",
    "LongDescription",
    "TotalNumberOfActivities",
    "ActivityReference",
    "TotalNumberOfContainedResources",
    "ContainedResource",
    "NamingProfile",
    "BESExtension",
    "LocalResourceManagerType",
]


async def attributes(client: httpx.AsyncClient) -> etree._Element:
    r = await call(
        client,
        f'<bes:GetFactoryAttributesDocument xmlns:bes="{BES}"/>',
        action=ACTIONS + "GetFactoryAttributesDocument",
    )
    assert r.status_code == 200
    (doc,) = soap.xpath(soap.body_of(r.content), "bes:FactoryResourceAttributesDocument")
    return doc


async def test_factory_attributes_in_schema_order_with_live_counts(
    client: httpx.AsyncClient,
) -> None:
    doc = await attributes(client)
    names = [etree.QName(c).localname for c in doc if etree.QName(c).namespace == BES]
    assert names == sorted(names, key=FACTORY_ORDER.index)
    for required in (
        "IsAcceptingNewActivities",
        "TotalNumberOfActivities",
        "TotalNumberOfContainedResources",
        "NamingProfile",
        "LocalResourceManagerType",
    ):
        assert required in names
    assert soap.xpath(doc, "string(bes:TotalNumberOfActivities)") == "0"
    assert (
        soap.xpath(doc, "string(bes:NamingProfile)")
        == "http://schemas.ggf.org/bes/2006/08/bes/naming/BasicWSAddressing"
    )
    first, second = await create(client), await create(client)
    await call(client, soap.vector("TerminateActivities", [as_request_epr(first)]))
    doc = await attributes(client)
    assert soap.xpath(doc, "string(bes:TotalNumberOfActivities)") == "1"
    assert soap.xpath(doc, "bes:ActivityReference/wsa:Address/text()") == soap.xpath(
        second, "wsa:Address/text()"
    )
    counts = {c.get("state"): int(c.text) for c in soap.xpath(doc, "besa:ActivityCount")}
    assert counts == {"Pending": 1, "Running": 0, "Finished": 0, "Cancelled": 1, "Failed": 0}


SWEEP_JSDL = b"""<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
    xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
    xmlns:sweep="http://schemas.ogf.org/jsdl/2009/03/sweep"
    xmlns:sf="http://schemas.ogf.org/jsdl/2009/03/sweep/functions">
  <jsdl:JobDescription><jsdl:Application><posix:POSIXApplication>
    <posix:Executable>/bin/echo</posix:Executable><posix:Argument>x</posix:Argument>
  </posix:POSIXApplication></jsdl:Application></jsdl:JobDescription>
  <sweep:Sweep><sweep:Assignment><sweep:DocumentNode>
    <sweep:NamespaceBinding prefix="p" ns="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"/>
    <sweep:Match>//p:Argument[1]</sweep:Match></sweep:DocumentNode>
    <sf:Values><sf:Value>a</sf:Value><sf:Value>b</sf:Value><sf:Value>c</sf:Value></sf:Values>
  </sweep:Assignment></sweep:Sweep>
</jsdl:JobDefinition>"""


async def test_a_sweep_counts_by_its_points_and_not_once_they_ended(
    client: httpx.AsyncClient,
) -> None:
    """Its own row stands for its points: counted, it would never end (bes check found it)."""
    sweep = await create(client, SWEEP_JSDL)
    doc = await attributes(client)
    assert soap.xpath(doc, "string(bes:TotalNumberOfActivities)") == "3"
    assert len(soap.xpath(doc, "bes:ActivityReference")) == 3
    await call(client, soap.vector("TerminateActivities", [as_request_epr(sweep)]))
    doc = await attributes(client)
    assert soap.xpath(doc, "string(bes:TotalNumberOfActivities)") == "0"
    assert soap.xpath(doc, "bes:ActivityReference") == []


async def test_stop_and_start_accepting(client: httpx.AsyncClient) -> None:
    r = await call(
        client,
        f'<m:StopAcceptingNewActivities xmlns:m="{MGMT}"/>',
        action=MGMT_ACTIONS + "StopAcceptingNewActivities",
        headers=soap.wsa_headers(MGMT_ACTIONS + "StopAcceptingNewActivities"),
    )
    assert r.status_code == 200
    assert (
        soap.xpath(etree.fromstring(r.content), "string(soap:Header/wsa:Action)")
        == MGMT_ACTIONS + "StopAcceptingNewActivitiesResponse"
    )
    assert soap.xpath(await attributes(client), "string(bes:IsAcceptingNewActivities)") == "false"
    r = await call(client, soap.create_activity())
    assert r.status_code == 500
    fault = soap.fault_of(r.content)
    assert soap.xpath(fault, "detail/bes:NotAcceptingNewActivitiesFault")
    r = await call(client, f'<m:StartAcceptingNewActivities xmlns:m="{MGMT}"/>')
    assert r.status_code == 200
    assert soap.xpath(await attributes(client), "string(bes:IsAcceptingNewActivities)") == "true"
    await create(client)


# --------------------------------------------------------------------------- dialects and paths


async def test_activity_address_accepts_soap_too(client: httpx.AsyncClient) -> None:
    epr = await create(client)
    address = soap.xpath(epr, "string(wsa:Address)")
    path = address.removeprefix("http://bes.test")
    r = await call(client, soap.vector("GetActivityStatuses", [as_request_epr(epr)]), path=path)
    assert (
        soap.xpath(soap.body_of(r.content), "string(bes:Response/bes:ActivityStatus/@state)")
        == "Pending"
    )


async def test_draft_2007_dialect(
    client: httpx.AsyncClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    schema = draft_schema(str(tmp_path_factory.mktemp("draft")))
    epr = await create(client)
    unknown = soap.epr("http://bes.test/bes/activities/CCCCCCCCCCCCCCCCCCCCCCCC")
    r = await call(
        client,
        soap.vector("TerminateActivities", [as_request_epr(epr), unknown]),
        path="/bes/draft-2007",
    )
    payload = soap.body_of(r.content)
    assert_valid(schema, payload, "draft TerminateActivitiesResponse")
    assert soap.xpath(payload, "bes:Response/bes:Cancelled/text()") == ["true", "false"]
    assert soap.xpath(payload, "bes:Response/bes:Fault/detail/bes:InvalidActivityIdentifierFault")
    r = await call(client, soap.vector("GetActivityStatuses", [unknown]), path="/bes/draft-2007")
    assert_valid(schema, soap.body_of(r.content), "draft GetActivityStatusesResponse")


async def test_wsdl_and_schemas_are_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/bes?wsdl")
    assert r.status_code == 200
    wsdl = etree.fromstring(r.content)
    locations = wsdl.xpath("//@location")
    assert "http://bes.test/bes" in locations
    for location in locations:
        if "/schemas/" in location:
            assert (await client.get(location.removeprefix("http://bes.test"))).status_code == 200
    assert (await client.get("/bes/schemas/../pyproject.toml")).status_code == 404
    assert (await client.get("/bes/schemas/nothing.xsd")).status_code == 404
