"""Activity identifiers as foreign SOAP stacks send them back: another service's id of the
wrong shape, our reference parameter re-emitted in another namespace (or none), and EPRs whose
Address and reference parameter name different activities. Each is one item of a vector,
answered beside the others, in order, with every answer checked against the official schemas
and ours."""

from __future__ import annotations

import httpx
import pytest
from lxml import etree

from bes.jsdl import schema
from tests.support import soap
from tests.support.soap import ACTIONS, BESA, SOAP, WSA
from tests.support.standards import assert_official

pytestmark = pytest.mark.anyio

OPERATIONS = ("GetActivityStatuses", "TerminateActivities", "GetActivityDocuments")
UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


async def call(client: httpx.AsyncClient, operation: str, eprs: list[str]) -> etree._Element:
    """One vector operation; its answer, checked against both schema sets."""
    response = await client.post(
        "/bes",
        content=soap.envelope(soap.vector(operation, eprs)),
        headers={"Content-Type": "text/xml", "SOAPAction": f'"{ACTIONS}{operation}"'},
    )
    assert response.status_code == 200, response.text
    assert_official(response.content, f"{operation} response")
    assert_ours(response.content)
    return soap.body_of(response.content)


def assert_ours(envelope: bytes) -> None:
    """The answer is valid against our own schemas too, where it is ours: the echoed
    identifiers are the client's, sent back unchanged, so their opaque parts (reference
    parameters, metadata, extensions: they may hold another service's ids) are left out of
    this check."""
    ours = etree.fromstring(envelope)
    for echoed in soap.xpath(ours, "soap:Body/*/bes:Response/bes:ActivityIdentifier"):
        for part in list(echoed):
            if part.tag in (f"{{{WSA}}}ReferenceParameters", f"{{{WSA}}}Metadata"):
                part[:] = []
            elif etree.QName(part).namespace != WSA:
                echoed.remove(part)
    assert schema.validate(ours) == [], envelope


async def create(client: httpx.AsyncClient) -> tuple[str, str]:
    """A new activity: its EPR as the service sent it, and its id."""
    response = await client.post(
        "/bes",
        content=soap.envelope(soap.create_activity()),
        headers={"SOAPAction": f'"{ACTIONS}CreateActivity"', "Content-Type": "text/xml"},
    )
    assert response.status_code == 200, response.text
    (epr,) = soap.xpath(soap.body_of(response.content), "bes:ActivityIdentifier")
    activity_id = soap.xpath(epr, "string(wsa:ReferenceParameters/besa:ActivityId)")
    return etree.tostring(epr).decode(), activity_id


def identifier(address: str, params: str = "") -> str:
    """An ActivityIdentifier with any reference parameters, as a foreign stack writes it."""
    inner = f"<wsa:Address>{address}</wsa:Address>"
    if params:
        inner += f"<wsa:ReferenceParameters>{params}</wsa:ReferenceParameters>"
    namespaces = f'xmlns:bes="{soap.BES}" xmlns:wsa="{WSA}"'
    return f"<bes:ActivityIdentifier {namespaces}>{inner}</bes:ActivityIdentifier>"


def besa_id(value: str) -> str:
    return f'<besa:ActivityId xmlns:besa="{BESA}">{value}</besa:ActivityId>'


def activity_url(activity_id: str) -> str:
    return f"http://bes.test/bes/activities/{activity_id}"


async def state_of(client: httpx.AsyncClient, activity_id: str) -> str:
    payload = await call(client, "GetActivityStatuses", [soap.epr(activity_id=activity_id)])
    return str(soap.xpath(payload, "string(bes:Response/bes:ActivityStatus/@state)"))


def shape(element: etree._Element) -> tuple[object, ...]:
    """An element's names, text and children, whatever prefixes it was written with."""
    text = (element.text or "").strip()
    return (element.tag, text, tuple(shape(c) for c in element.iterchildren(etree.Element)))


def fault_kind(item: etree._Element) -> str | None:
    faults = soap.xpath(item, "bes:Fault")
    if not faults:
        return None
    (fault,) = faults
    assert fault.findtext("faultcode") == "soap:Client"
    (detail,) = fault.find("detail")
    return etree.QName(detail).localname


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_a_mixed_vector_gets_one_answer_per_identifier_in_order(
    client: httpx.AsyncClient, operation: str
) -> None:
    good, a = await create(client)
    _, b = await create(client)
    eprs = [
        good,
        identifier("http://other-bes.example.org/bes/Activity", besa_id("job-42")),
        identifier(activity_url(a), besa_id(b)),  # Address: a; parameter: b
        identifier("https://unicore.example.org/services/BESActivity", besa_id(UUID)),
        identifier(activity_url("job-42")),
        identifier("http://bes.test/bes", besa_id(a)),
    ]
    payload = await call(client, operation, eprs)
    items = soap.xpath(payload, "bes:Response")
    assert len(items) == len(eprs)
    for item, sent in zip(items, eprs, strict=True):  # each echoes its identifier, unchanged
        (echoed,) = soap.xpath(item, "bes:ActivityIdentifier")
        assert shape(echoed) == shape(etree.fromstring(sent))
    kinds = [fault_kind(item) for item in items]
    unknown = "UnknownActivityIdentifierFault"
    assert kinds == [None, unknown, unknown, unknown, unknown, None]
    if operation == "GetActivityStatuses":
        states = [soap.xpath(i, "string(bes:ActivityStatus/@state)") for i in items]
        assert states == ["Pending", "", "", "", "", "Pending"]
    elif operation == "GetActivityDocuments":
        found = [bool(soap.xpath(i, "bes:JobDefinition")) for i in items]
        assert found == [True, False, False, False, False, True]
    else:
        terminated = [soap.xpath(i, "string(bes:Terminated)") for i in items]
        assert terminated == ["true", "false", "false", "false", "false", "true"]
        # The good one and the last (the factory's Address, a's parameter) name a; b was named
        # only by the mismatched EPR and was left alone.
        assert await state_of(client, a) == "Cancelled"
        assert await state_of(client, b) == "Pending"


async def test_a_mismatched_identifier_terminates_nothing(client: httpx.AsyncClient) -> None:
    _, a = await create(client)
    _, b = await create(client)
    for eprs in (
        [identifier(activity_url(a), besa_id(b))],
        [identifier(activity_url(b), besa_id(a))],
        # two parameters that disagree, whatever the Address
        [
            identifier(
                "http://bes.test/bes",
                besa_id(a) + f"<x:ActivityId xmlns:x='urn:x'>{b}</x:ActivityId>",
            )
        ],
    ):
        payload = await call(client, "TerminateActivities", eprs)
        (item,) = soap.xpath(payload, "bes:Response")
        assert soap.xpath(item, "string(bes:Terminated)") == "false"
        assert fault_kind(item) == "UnknownActivityIdentifierFault"
        said = soap.xpath(item, "string(bes:Fault/faultstring)")
        assert "name different activities" in said, said
    assert await state_of(client, a) == "Pending"
    assert await state_of(client, b) == "Pending"


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(
            "<ns9:ActivityId xmlns:ns9='urn:some:other:namespace'>{id}</ns9:ActivityId>",
            id="other-namespace",
        ),
        pytest.param("<ActivityId>{id}</ActivityId>", id="no-namespace"),
        pytest.param(
            "<w:Wrapper xmlns:w='urn:w'><w:ActivityId> {id} </w:ActivityId></w:Wrapper>",
            id="nested",
        ),
        pytest.param(
            "<x:Session xmlns:x='urn:x'>s1</x:Session><besa:ActivityId xmlns:besa='"
            + BESA
            + "'>{id}</besa:ActivityId>",
            id="after-another-parameter",
        ),
    ],
)
async def test_our_parameter_is_found_by_its_local_name(
    client: httpx.AsyncClient, params: str
) -> None:
    _, activity_id = await create(client)
    for address in ("http://proxy.example.org/bes", activity_url(activity_id)):
        eprs = [identifier(address, params.format(id=activity_id))]
        for operation in ("GetActivityStatuses", "GetActivityDocuments"):
            payload = await call(client, operation, eprs)
            (item,) = soap.xpath(payload, "bes:Response")
            assert fault_kind(item) is None, etree.tostring(item)
    payload = await call(client, "TerminateActivities", eprs)
    assert soap.xpath(payload, "string(bes:Response/bes:Terminated)") == "true"


async def test_address_alone_still_works(client: httpx.AsyncClient) -> None:
    _, activity_id = await create(client)
    payload = await call(
        client, "GetActivityStatuses", [identifier(activity_url(activity_id) + "/")]
    )
    assert soap.xpath(payload, "string(bes:Response/bes:ActivityStatus/@state)") == "Pending"


async def test_foreign_metadata_and_extensions_are_opaque(client: httpx.AsyncClient) -> None:
    """Metadata and the EPR's trailing extensions are the sender's business too."""
    good, activity_id = await create(client)
    odd = (
        f'<bes:ActivityIdentifier xmlns:bes="{soap.BES}" xmlns:wsa="{WSA}">'
        f"<wsa:Address>{activity_url(activity_id)}</wsa:Address>"
        f"<wsa:Metadata>{besa_id('not-ours')}</wsa:Metadata>"
        f"{besa_id('also-not-ours')}"
        "</bes:ActivityIdentifier>"
    )
    payload = await call(client, "GetActivityStatuses", [good, odd])
    states = soap.xpath(payload, "bes:Response/bes:ActivityStatus/@state")
    assert states == ["Pending", "Pending"]


async def test_what_we_send_is_still_checked_strictly(client: httpx.AsyncClient) -> None:
    """The leniency is for identifiers in requests only: our schemas still refuse a
    besa:ActivityId of the wrong shape, and a CreateActivity answer carries a valid one."""
    bad = etree.fromstring(
        f'<bes:GetActivityStatusesResponse xmlns:bes="{soap.BES}"><bes:Response>'
        + identifier("http://bes.test/bes", besa_id("job-42"))
        + "<bes:ActivityStatus state='Pending'/></bes:Response></bes:GetActivityStatusesResponse>"
    )
    assert schema.validate(bad), "a wrong-shaped ActivityId must stay invalid in our schemas"
    response = await client.post(
        "/bes",
        content=soap.envelope(soap.create_activity()),
        headers={"SOAPAction": f'"{ACTIONS}CreateActivity"', "Content-Type": "text/xml"},
    )
    assert schema.validate(etree.fromstring(response.content)) == []


async def test_a_malformed_vector_is_still_a_whole_call_fault(client: httpx.AsyncClient) -> None:
    """Leniency stops at the identifier's opaque parts: an identifier without an Address is
    not an EPR at all."""
    broken = f'<bes:ActivityIdentifier xmlns:bes="{soap.BES}"/>'
    response = await client.post(
        "/bes", content=soap.envelope(soap.vector("GetActivityStatuses", [broken]))
    )
    assert response.status_code == 500
    fault = soap.fault_of(response.content)
    assert soap.xpath(fault, "detail/bes:InvalidRequestMessageFault")
    assert etree.fromstring(response.content).tag == f"{{{SOAP}}}Envelope"
