"""The one door for untrusted XML: a hardened parser that raises our own errors.

Everything that reads XML from the network goes through :func:`parse_untrusted`. The parser
never resolves entities, never loads a DTD and never touches the network (libxml2 in the lxml
wheels has no HTTP or FTP at all); any DOCTYPE is refused outright, as WS-I Basic Profile
R1008 requires of SOAP messages. libxml2's own limits stay on: 256 levels of nesting, 10 MB per
text node, entity amplification. Byte size is capped by the caller before parsing.
"""

from __future__ import annotations

from typing import Final

from lxml import etree

from bes.errors import MalformedXml

_PARSER: Final = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
    collect_ids=False,
)

# Parsing our own stored documents: same safety, comments kept (documents come back as sent).
_TRUSTED_PARSER: Final = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    huge_tree=False,
    collect_ids=False,
)


def parse_untrusted(data: bytes) -> etree._Element:
    """Parse bytes from the network into an element tree.

    Args:
        data: The raw document. Its encoding comes from the BOM or XML declaration; UTF-8
            otherwise.

    Returns:
        The root element.

    Raises:
        MalformedXml: The bytes are not well-formed XML, hold a DOCTYPE (and with it any
            entity declaration), or exceed a parser limit.
    """
    if not data.strip():
        raise MalformedXml("the request body is empty")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise MalformedXml(f"not well-formed XML: {exc.msg}", line=exc.lineno) from exc
    except ValueError as exc:  # e.g. an encoding declaration lxml cannot use
        raise MalformedXml(f"unreadable XML: {exc}") from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise MalformedXml("a DOCTYPE is not allowed in a SOAP message (WS-I BP R1008)")
    return root


def parse_stored(text: str | bytes) -> etree._Element:
    """Parse a document this service stored itself (already checked on the way in)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return etree.fromstring(data, _TRUSTED_PARSER)


def tag(element: etree._Element) -> str:
    """The element's name in Clark notation; always text for elements the parsers produce (the
    stubs also allow the bytes and QName forms that lxml accepts when *setting* a tag)."""
    return element.tag  # type: ignore[return-value]
