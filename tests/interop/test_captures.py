"""The SOAP items of the shared corpus against a live service: real EPRs other servers
returned, a clean ARC request, and a .NET client's body without namespaces."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lxml import etree

from tests.support import soap
from tests.support.server import LiveServer, live_server
from tests.support.standards import assert_official, corpus_dir

SOAP_DIR = corpus_dir() / "soap"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("captures") / "data") as server:
        yield server


def as_identifier(name: str) -> bytes:
    """A captured EPR as the ActivityIdentifier of a request (its children, unchanged)."""
    root = etree.fromstring((SOAP_DIR / name).read_bytes())
    identifier = etree.Element(f"{{{soap.BES}}}ActivityIdentifier", nsmap={"bes": soap.BES})
    for child in root:
        identifier.append(child)
    return etree.tostring(identifier)


@pytest.mark.parametrize(
    "name",
    [
        "saga-bes-genesis2-besfactory-epr.xml",
        "saga-bes-genesis2-short-epr.xml",
        "saga-bes-unicore-besfactory-epr.xml",
    ],
)
@pytest.mark.parametrize("operation", ["GetActivityStatuses", "TerminateActivities"])
def test_other_servers_eprs_are_identifiers_we_do_not_know(
    service: LiveServer, name: str, operation: str
) -> None:
    body = soap.envelope(soap.vector(operation, [as_identifier(name)]))
    response = service.post(body, operation)
    assert response.status_code == 200, response.text
    assert_official(response.content, f"{operation} of {name}")
    (item,) = soap.xpath(soap.body_of(response.content), "bes:Response")
    assert soap.xpath(item, "bes:Fault/detail/bes:UnknownActivityIdentifierFault")
    assert soap.xpath(item, "bes:ActivityIdentifier/wsa:Address"), "the EPR comes back as sent"


def test_arcs_clean_hpcp_interop_request_is_taken(service: LiveServer) -> None:
    response = service.post(
        (SOAP_DIR / "arc-hpcp-interop-createactivity-request.xml").read_bytes(),
        "CreateActivity",
    )
    assert response.status_code == 200, response.text
    assert_official(response.content, "CreateActivity response")
    assert soap.xpath(soap.body_of(response.content), "//besa:ActivityId")


def test_a_body_without_namespaces_is_refused_clearly(service: LiveServer) -> None:
    """VENUS-C's .NET client serialized CreateActivity and ActivityDocument in no namespace;
    that is not BES: the answer says where the namespace is missing."""
    body = (SOAP_DIR / "venusc-genericworker-createactivity-body.xml").read_bytes()
    body = body.split(b"?>", 1)[1]
    response = service.post(soap.envelope(body), "CreateActivity")
    assert response.status_code == 500
    assert_official(response.content, "fault")
    message = soap.xpath(soap.fault_of(response.content), "faultstring/text()")[0]
    assert "CreateActivity" in message and "namespace" in message
