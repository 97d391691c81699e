"""The service WSDL served at ``GET /bes?wsdl``.

It imports the two port-type WSDLs of ``schemas/`` (served beside it under ``/bes/schemas/``)
and adds a ``wsdl:service`` whose ports point at the address the client used, so that a
toolkit can generate a client from this one URL (``zeep.Client("http://host:8080/bes?wsdl")``).
"""

from __future__ import annotations

from typing import Final

from lxml import etree

from bes.ns import BES_FACTORY, BES_MANAGEMENT, WSDL, WSDL_SOAP, qname

SCHEMA_PATH: Final = "/bes/schemas/"
_TNS: Final = "urn:bes-grid:service"


def service_wsdl(endpoint: str, *, path: str = "/bes") -> bytes:
    """The WSDL text for a service reached at ``endpoint`` (``scheme://host:port``)."""
    nsmap = {
        "wsdl": WSDL,
        "soap": WSDL_SOAP,
        "bes": BES_FACTORY,
        "bes-mgmt": BES_MANAGEMENT,
        "tns": _TNS,
    }
    root = etree.Element(qname(WSDL, "definitions"), nsmap=nsmap, name="BES", targetNamespace=_TNS)
    root.append(
        etree.Comment(
            " OGSA-BES 1.0 service of bes: BES-Factory and BES-Management at one address. "
        )
    )
    for namespace, name in (
        (BES_FACTORY, "bes-factory.wsdl"),
        (BES_MANAGEMENT, "bes-management.wsdl"),
    ):
        etree.SubElement(
            root, qname(WSDL, "import"), namespace=namespace, location=endpoint + SCHEMA_PATH + name
        )
    service = etree.SubElement(root, qname(WSDL, "service"), name="BESService")
    for port, binding in (
        ("BESFactoryPort", "bes:BESFactoryBinding"),
        ("BESManagementPort", "bes-mgmt:BESManagementBinding"),
    ):
        element = etree.SubElement(service, qname(WSDL, "port"), name=port, binding=binding)
        etree.SubElement(element, qname(WSDL_SOAP, "address"), location=endpoint + path)
    return etree.tostring(root, xml_declaration=True, encoding="utf-8", pretty_print=True)
