"""Every XML namespace URI the service speaks, in one place.

Only this module spells namespace URIs; everything else imports the constants. ``PREFIXES``
gives the prefixes we emit and use in human-readable messages.
"""

from typing import Final

SOAP_ENV: Final = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV: Final = "http://www.w3.org/2003/05/soap-envelope"
SOAP_ACTOR_NEXT: Final = "http://schemas.xmlsoap.org/soap/actor/next"
WSA: Final = "http://www.w3.org/2005/08/addressing"
WSA_ANONYMOUS: Final = "http://www.w3.org/2005/08/addressing/anonymous"
WSA_NONE: Final = "http://www.w3.org/2005/08/addressing/none"
WSA_FAULT_ACTION: Final = "http://www.w3.org/2005/08/addressing/fault"
# WS-Addressing 2004/08 (member submission) is still sent by some Axis clients.
WSA_2004: Final = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
WSAM: Final = "http://www.w3.org/2007/05/addressing/metadata"
WSSE: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
# WS-Security 1.1 (Salt, Iteration, SignatureConfirmation): recognised only to be refused.
WSSE11: Final = "http://docs.oasis-open.org/wss/oasis-wss-wssecurity-secext-1.1.xsd"
# Token profile and message security URIs; the value and encoding types append "#Name".
WSS_USERNAME_PROFILE: Final = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
)
WSS_X509_PROFILE: Final = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0"
)
WSS_SOAP_MESSAGE_SECURITY: Final = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0"
)
# XML Signature; its algorithm identifiers are these URIs plus "#name" (or DS + "name").
DS: Final = "http://www.w3.org/2000/09/xmldsig#"
XMLDSIG_MORE: Final = "http://www.w3.org/2001/04/xmldsig-more"
XMLENC: Final = "http://www.w3.org/2001/04/xmlenc"
EXC_C14N: Final = "http://www.w3.org/2001/10/xml-exc-c14n#"
XSI: Final = "http://www.w3.org/2001/XMLSchema-instance"
XSD: Final = "http://www.w3.org/2001/XMLSchema"
XML: Final = "http://www.w3.org/XML/1998/namespace"
WSDL: Final = "http://schemas.xmlsoap.org/wsdl/"
WSDL_SOAP: Final = "http://schemas.xmlsoap.org/wsdl/soap/"

BES_FACTORY: Final = "http://schemas.ggf.org/bes/2006/08/bes-factory"
BES_MANAGEMENT: Final = "http://schemas.ggf.org/bes/2006/08/bes-management"
BES_NAMING_BASIC_WSA: Final = "http://schemas.ggf.org/bes/2006/08/bes/naming/BasicWSAddressing"
# WS-Naming (GFD.109) EndpointIdentifiers; Genesis II sends the namespace of the 2006/03 draft.
WS_NAMING: Final = "http://schemas.ogf.org/naming/2006/08/naming"
WS_NAMING_2006_03: Final = "http://schemas.ggf.org/naming/2006/03/naming"

JSDL: Final = "http://schemas.ggf.org/jsdl/2005/11/jsdl"
JSDL_POSIX: Final = "http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
JSDL_HPCPA: Final = "http://schemas.ggf.org/jsdl/2006/07/jsdl-hpcpa"
JSDL_SPMD: Final = "http://schemas.ogf.org/jsdl/2007/02/jsdl-spmd"
HPCP_AC: Final = "http://schemas.ogf.org/hpcp/2007/11/ac"
HPCP_FS: Final = "http://schemas.ogf.org/hpcp/2007/01/fs"

# UNICORE's JSDL extensions (inline data, pre/post commands, bearer tokens), honoured.
UNICORE_JSDL: Final = "http://www.unicore.eu/unicore/jsdl-extensions"
# JSDL Parameter Sweep (GFD.149).
SWEEP: Final = "http://schemas.ogf.org/jsdl/2009/03/sweep"
SWEEP_FUNCTIONS: Final = "http://schemas.ogf.org/jsdl/2009/03/sweep/functions"

# Our own vocabulary: activity references, sub-states and status details.
BES_ACTIVITY: Final = "urn:bes-grid:activity:1.0"
BES_VM: Final = "urn:bes-grid:vm:1.0"
# Metadata the libvirt cloud provider keeps in its domains (tags, volumes made for them).
BES_CLOUD: Final = "urn:bes-grid:cloud:1.0"

PREFIXES: Final[dict[str, str]] = {
    "soap": SOAP_ENV,
    "wsa": WSA,
    "bes-factory": BES_FACTORY,
    "bes-mgmt": BES_MANAGEMENT,
    "jsdl": JSDL,
    "jsdl-posix": JSDL_POSIX,
    "jsdl-hpcpa": JSDL_HPCPA,
    "jsdl-spmd": JSDL_SPMD,
    "ac": HPCP_AC,
    "fs": HPCP_FS,
    "wsse": WSSE,
    "wsu": WSU,
    "ds": DS,
    "besa": BES_ACTIVITY,
    "vm": BES_VM,
    "jsdl-u": UNICORE_JSDL,
    "sweep": SWEEP,
    "sweepfunc": SWEEP_FUNCTIONS,
}

_BY_URI: Final = {uri: prefix for prefix, uri in PREFIXES.items()}


def qname(namespace: str, local: str) -> str:
    """Return the Clark notation ``{namespace}local`` that lxml uses for element names."""
    return f"{{{namespace}}}{local}"


def readable(clark: str) -> str:
    """Turn ``{uri}local`` into ``prefix:local`` for well-known namespaces, else leave it."""
    if not clark.startswith("{"):
        return clark
    uri, _, local = clark[1:].partition("}")
    prefix = _BY_URI.get(uri)
    return f"{prefix}:{local}" if prefix else clark
