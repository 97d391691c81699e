"""Corpus documents as a test sends them: bytes ready for CreateActivity, outside hosts
replaced by loopback servers (the corpus names real hosts, which tests never contact)."""

from __future__ import annotations

import re
from pathlib import Path

from lxml import etree

from tests.support import soap

_URI = re.compile(r"^(\s*)(https?|ftp)://[^/\s]*(/\S*)?(\s*)$")


def document(
    path: Path, *, http: str = "http://127.0.0.1:9", ftp: str = "ftp://127.0.0.1:9"
) -> bytes:
    """The JSDL of ``path`` as one element (no XML declaration: it goes into an envelope),
    the http(s) and ftp URIs of its URI elements pointing at ``http`` or ``ftp``, path kept."""
    root = etree.fromstring(
        path.read_bytes(), etree.XMLParser(resolve_entities=False, no_network=True)
    )
    for node in root.iter(etree.Element):
        if etree.QName(node).localname != "URI" or not node.text:
            continue
        match = _URI.match(node.text)
        if match:
            base = http if match.group(2).startswith("http") else ftp
            node.text = match.group(1) + base + (match.group(3) or "/") + match.group(4)
    return etree.tostring(root)


def create_activity(path: Path, **servers: str) -> bytes:
    """The CreateActivity envelope of a corpus JSDL file."""
    return soap.envelope(soap.create_activity(document(path, **servers)))
