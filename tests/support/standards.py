"""The official OGF schemas and the shared corpus: the judges our messages are checked against.

They live outside the project (``../shared`` next to the checkout, or where ``BES_SHARED_DIR``
points). Tests that need them fail with a clear message if they are missing: they are never
skipped silently.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pytest
from lxml import etree

_HERE = Path(__file__).resolve()


@cache
def shared_dir() -> Path:
    candidates = []
    if os.environ.get("BES_SHARED_DIR"):
        candidates.append(Path(os.environ["BES_SHARED_DIR"]))
    candidates += [_HERE.parents[3] / "shared", Path("/work/shared")]
    for c in candidates:
        if (c / "standards" / "validation-driver.xsd").is_file():
            return c
    pytest.fail(
        "the official OGF schemas were not found; set BES_SHARED_DIR to the folder holding "
        f"standards/ and corpus/ (looked in {', '.join(map(str, candidates))})",
        pytrace=False,
    )


def standards_dir() -> Path:
    return shared_dir() / "standards"


def corpus_dir() -> Path:
    return shared_dir() / "corpus"


def _parser() -> etree.XMLParser:
    return etree.XMLParser(no_network=True, resolve_entities=False)


@cache
def official_schema() -> etree.XMLSchema:
    """GFD.108 (final) + JSDL + profiles + SOAP 1.1 + WS-Addressing + WS-Security, compiled
    from the OGF files through the shared validation driver."""
    return etree.XMLSchema(etree.parse(str(standards_dir() / "validation-driver.xsd"), _parser()))


@cache
def draft_schema(tmp_root: str) -> etree.XMLSchema:
    """The May 2007 BES draft (the JSAGA copy): its types plus the message and fault elements
    declared in its WSDL, with every import resolved to the local copies.

    The WSDL's embedded schema is extracted into a temporary file, its include pointed at the
    draft XSD, and the missing import of WS-Addressing added (libxml2 insists on it). libxml2
    keeps the first schema it loads for a namespace, so the driver imports soapenv, ws-addr and
    JSDL first and the draft's own remote schemaLocations are never used.
    """
    s = standards_dir()
    draft = s / "bes-draft-2007"
    wsdl = etree.parse(str(draft / "bes-factory.wsdl"), _parser())
    xsd = "http://www.w3.org/2001/XMLSchema"
    embedded = wsdl.find(f"{{http://schemas.xmlsoap.org/wsdl/}}types/{{{xsd}}}schema")
    include = embedded.find(f"{{{xsd}}}include")
    include.set("schemaLocation", (draft / "bes-factory.xsd").as_uri())
    wsa_import = etree.Element(f"{{{xsd}}}import", namespace="http://www.w3.org/2005/08/addressing")
    embedded.insert(0, wsa_import)
    messages = Path(tmp_root) / "draft-messages.xsd"
    messages.write_bytes(etree.tostring(embedded))
    imports = [
        ("http://schemas.xmlsoap.org/soap/envelope/", s / "ws/soapenv.xsd"),
        ("http://www.w3.org/2005/08/addressing", s / "ws/ws-addr.xsd"),
        ("http://schemas.ggf.org/jsdl/2005/11/jsdl", s / "jsdl/jsdl.xsd"),
        ("http://schemas.ggf.org/jsdl/2005/11/jsdl-posix", s / "jsdl/jsdl-posix.xsd"),
        ("http://schemas.ggf.org/bes/2006/08/bes-factory", messages),
    ]
    driver = Path(tmp_root) / "draft-driver.xsd"
    lines = [f'<xsd:schema xmlns:xsd="{xsd}">']
    lines += [f'<xsd:import namespace="{ns}" schemaLocation="{p.as_uri()}"/>' for ns, p in imports]
    lines.append("</xsd:schema>")
    driver.write_text("\n".join(lines))
    return etree.XMLSchema(etree.parse(str(driver), _parser()))


def assert_valid(schema: etree.XMLSchema, document: etree._Element | bytes, what: str = "") -> None:
    """Fail with every schema error if ``document`` is not valid."""
    root = etree.fromstring(document) if isinstance(document, bytes) else document
    if not schema.validate(root):
        errors = "\n".join(f"  line {e.line}: {e.message}" for e in schema.error_log)
        text = etree.tostring(root, pretty_print=True).decode()[:4000]
        pytest.fail(f"{what or 'document'} is not schema-valid:\n{errors}\n{text}")


def assert_official(envelope: bytes, what: str = "") -> None:
    """The whole SOAP envelope, headers and body, validates against the official schemas."""
    assert_valid(official_schema(), envelope, what)
