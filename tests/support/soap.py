"""Building SOAP requests and reading responses the way a plain SOAP client would."""

from __future__ import annotations

from collections.abc import Iterable

from lxml import etree

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
WSA = "http://www.w3.org/2005/08/addressing"
BES = "http://schemas.ggf.org/bes/2006/08/bes-factory"
MGMT = "http://schemas.ggf.org/bes/2006/08/bes-management"
JSDL = "http://schemas.ggf.org/jsdl/2005/11/jsdl"
BESA = "urn:bes-grid:activity:1.0"
ACTIONS = BES + "/BESFactoryPortType/"
MGMT_ACTIONS = MGMT + "/BESManagementPortType/"
NS = {
    "soap": SOAP,
    "wsa": WSA,
    "bes": BES,
    "mgmt": MGMT,
    "jsdl": JSDL,
    "besa": BESA,
    "fs": "http://schemas.ogf.org/hpcp/2007/01/fs",
}

HELLO_JSDL = b"""<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
    xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix">
  <jsdl:JobDescription>
    <jsdl:JobIdentification><jsdl:JobName>hello</jsdl:JobName></jsdl:JobIdentification>
    <jsdl:Application>
      <posix:POSIXApplication>
        <posix:Executable>/bin/echo</posix:Executable>
        <posix:Argument>hello</posix:Argument>
      </posix:POSIXApplication>
    </jsdl:Application>
  </jsdl:JobDescription>
</jsdl:JobDefinition>"""


def envelope(body: str | bytes, *, headers: str = "") -> bytes:
    """A SOAP 1.1 envelope around ``body`` (XML text), with optional header blocks."""
    if isinstance(body, bytes):
        body = body.decode()
    header = f"<soap:Header>{headers}</soap:Header>" if headers else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>'
        f'<soap:Envelope xmlns:soap="{SOAP}">{header}<soap:Body>{body}</soap:Body></soap:Envelope>'
    ).encode()


def wsa_headers(
    action: str,
    message_id: str = "urn:uuid:11111111-2222-3333-4444-555555555555",
    to: str = "http://127.0.0.1/bes",
) -> str:
    return (
        f'<wsa:Action xmlns:wsa="{WSA}">{action}</wsa:Action>'
        f'<wsa:MessageID xmlns:wsa="{WSA}">{message_id}</wsa:MessageID>'
        f'<wsa:To xmlns:wsa="{WSA}">{to}</wsa:To>'
    )


def create_activity(jsdl: bytes = HELLO_JSDL) -> str:
    return (
        f'<bes:CreateActivity xmlns:bes="{BES}"><bes:ActivityDocument>'
        f"{jsdl.decode()}</bes:ActivityDocument></bes:CreateActivity>"
    )


def vector(operation: str, eprs: Iterable[bytes | str]) -> str:
    """A GetActivityStatuses / TerminateActivities / GetActivityDocuments request body."""
    parts = [e.decode() if isinstance(e, bytes) else e for e in eprs]
    return f'<bes:{operation} xmlns:bes="{BES}">{"".join(parts)}</bes:{operation}>'


def epr(address: str | None = None, activity_id: str | None = None) -> str:
    """A bes-factory:ActivityIdentifier with an Address and/or our reference parameter."""
    inner = f"<wsa:Address>{address or 'http://elsewhere.example.org/bes'}</wsa:Address>"
    if activity_id is not None:
        inner += (
            f'<wsa:ReferenceParameters><besa:ActivityId xmlns:besa="{BESA}">{activity_id}'
            "</besa:ActivityId></wsa:ReferenceParameters>"
        )
    namespaces = f'xmlns:bes="{BES}" xmlns:wsa="{WSA}"'
    return f"<bes:ActivityIdentifier {namespaces}>{inner}</bes:ActivityIdentifier>"


def body_of(response: bytes) -> etree._Element:
    root = etree.fromstring(response)
    return root.find(f"{{{SOAP}}}Body")[0]


def fault_of(response: bytes) -> etree._Element:
    payload = body_of(response)
    assert payload.tag == f"{{{SOAP}}}Fault", etree.tostring(payload)
    return payload


def xpath(element: etree._Element, path: str) -> list:
    return element.xpath(path, namespaces=NS)
