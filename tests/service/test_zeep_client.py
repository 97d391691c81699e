"""zeep, built from the official OGF WSDL (and from ours), drives a real server end to end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zeep
from lxml import etree
from zeep.plugins import HistoryPlugin
from zeep.wsa import WsAddressingPlugin

from tests.support.server import LiveServer
from tests.support.soap import BES, NS
from tests.support.standards import assert_official, standards_dir

FACTORY = f"{{{BES}}}BESFactoryBinding"
MANAGEMENT = "{http://schemas.ggf.org/bes/2006/08/bes-management}BESManagementBinding"


class Recorder(HistoryPlugin):
    """Keeps every received envelope so that each can be checked against the schemas."""

    def __init__(self) -> None:
        super().__init__(maxlen=1000)
        self.received: list[bytes] = []

    def ingress(self, envelope, http_headers, operation):  # type: ignore[no-untyped-def]
        self.received.append(etree.tostring(envelope))
        return super().ingress(envelope, http_headers, operation)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    assert r.received, "the test made no call"
    for envelope in r.received:
        assert_official(envelope, "response received by zeep")


def official_clients(server: LiveServer, recorder: Recorder, *, addressing: bool):
    """Clients generated from the GridSAM copy of the final GFD.108 WSDLs (SOAP binding, no
    service element, so the address is given here)."""
    settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_external=True)
    plugins = [recorder] + ([WsAddressingPlugin()] if addressing else [])
    wsdl = standards_dir() / "gridsam-bes" / "wsdl"
    factory = zeep.Client(str(wsdl / "bes-factory.wsdl"), settings=settings, plugins=plugins)
    management = zeep.Client(str(wsdl / "bes-management.wsdl"), settings=settings, plugins=plugins)
    return (
        factory.create_service(FACTORY, server.endpoint),
        management.create_service(MANAGEMENT, server.endpoint),
        factory,
    )


def job(name: str) -> dict:
    """A JSDL document for zeep. The POSIXApplication is an extension element the BES WSDL does
    not describe, so it goes in as XML, as a client program would add it."""
    posix_ns = "http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
    application = etree.Element(f"{{{posix_ns}}}POSIXApplication", nsmap={"posix": posix_ns})
    etree.SubElement(application, f"{{{posix_ns}}}Executable").text = "/bin/echo"
    etree.SubElement(application, f"{{{posix_ns}}}Argument").text = "hello"
    return {
        "JobDefinition": {
            "JobDescription": {
                "JobIdentification": {"JobName": name},
                "Application": {"ApplicationName": "echo", "_value_1": [application]},
            }
        }
    }


@pytest.mark.parametrize("addressing", [False, True], ids=["soapaction-only", "ws-addressing"])
def test_official_wsdl_client_full_cycle(
    server: LiveServer, recorder: Recorder, addressing: bool
) -> None:
    factory, management, _ = official_clients(server, recorder, addressing=addressing)

    created = factory.CreateActivity(ActivityDocument=job("zeep"))
    epr = created.ActivityIdentifier
    assert epr.Address._value_1.startswith(server.endpoint + "/activities/")

    statuses = factory.GetActivityStatuses(ActivityIdentifier=[epr, epr])
    assert [r.ActivityStatus.state for r in statuses.Response] == ["Pending", "Pending"]

    documents = factory.GetActivityDocuments(ActivityIdentifier=[epr])
    (response,) = documents.Response
    assert response.JobDefinition.JobDescription.JobIdentification.JobName == "zeep"

    attributes = factory.GetFactoryAttributesDocument().FactoryResourceAttributesDocument
    assert attributes.IsAcceptingNewActivities is True
    assert attributes.TotalNumberOfActivities >= 1
    assert attributes.LocalResourceManagerType.startswith("urn:bes-grid:resource-manager:")

    terminated = factory.TerminateActivities(ActivityIdentifier=[epr])
    assert [r.Terminated for r in terminated.Response] == [True]
    statuses = factory.GetActivityStatuses(ActivityIdentifier=[epr])
    assert statuses.Response[0].ActivityStatus.state == "Cancelled"

    management.StopAcceptingNewActivities()
    with pytest.raises(zeep.exceptions.Fault) as info:
        factory.CreateActivity(ActivityDocument=job("refused"))
    detail = info.value.detail
    assert detail.xpath("bes:NotAcceptingNewActivitiesFault", namespaces=NS)
    management.StartAcceptingNewActivities()
    factory.CreateActivity(ActivityDocument=job("accepted again"))

    with pytest.raises(zeep.exceptions.Fault) as info:
        factory.CreateActivity(
            ActivityDocument={
                "JobDefinition": {
                    "JobDescription": {
                        "DataStaging": [
                            {
                                "FileName": "a",
                                "CreationFlag": "overwrite",
                                "FilesystemName": "undeclared",
                            }
                        ]
                    }
                }
            }
        )
    assert info.value.detail.xpath(
        "bes:InvalidRequestMessageFault/bes:InvalidElement", namespaces=NS
    )


def test_client_from_our_own_wsdl(server: LiveServer, recorder: Recorder) -> None:
    client = zeep.Client(
        server.endpoint + "?wsdl",
        plugins=[recorder],
        settings=zeep.Settings(strict=True, forbid_dtd=True),
    )
    factory = client.bind("BESService", "BESFactoryPort")
    management = client.bind("BESService", "BESManagementPort")
    created = factory.CreateActivity(ActivityDocument=job("own wsdl"))
    statuses = factory.GetActivityStatuses(ActivityIdentifier=[created.ActivityIdentifier])
    assert statuses.Response[0].ActivityStatus.state == "Pending"
    management.StopAcceptingNewActivities()
    management.StartAcceptingNewActivities()
    # The Actions of our WSDL reach the wire as SOAPAction.
    sent = recorder.last_sent["http_headers"]
    assert (
        sent["SOAPAction"].strip('"')
        == "http://schemas.ggf.org/bes/2006/08/bes-management/BESManagementPortType/StartAcceptingNewActivities"
    )


def test_unknown_identifier_is_a_per_item_fault_for_zeep(
    server: LiveServer, recorder: Recorder
) -> None:
    factory, _, _ = official_clients(server, recorder, addressing=False)
    bogus = {"Address": {"_value_1": server.endpoint + "/activities/DDDDDDDDDDDDDDDDDDDDDDDD"}}
    (response,) = factory.GetActivityStatuses(ActivityIdentifier=[bogus]).Response
    assert response.ActivityStatus is None
    assert response.Fault.faultcode.endswith(":Client")
    assert "no activity" in response.Fault.faultstring
