"""Validation against the project's own schemas (``schemas/service.xsd``).

The schemas are compiled once per process, offline. Errors come back with readable element
paths (``/jsdl:JobDefinition/jsdl:JobDescription/jsdl:DataStaging[2]``) and messages in which
namespace URIs are replaced by their usual prefixes, so that a person can act on them.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Final

from lxml import etree

from bes.ns import readable
from bes.schemas import schemas_dir

_lock: Final = threading.Lock()
_compiled: etree.XMLSchema | None = None

_CLARK: Final = re.compile(r"\{([^}]*)\}([A-Za-z_][\w.\-]*)")


@dataclass(frozen=True, slots=True)
class SchemaProblem:
    """One validation error.

    Attributes:
        path: Readable path of the offending element.
        line: Source line, when known.
        message: libxml2's message with namespaces shortened to prefixes.
    """

    path: str
    line: int | None
    message: str


def service_schema() -> etree.XMLSchema:
    """The compiled schema set (JSDL and profiles, BES, WS-Addressing, SOAP, ours)."""
    global _compiled  # noqa: PLW0603 - compiled once, lazily, under the lock
    with _lock:
        if _compiled is None:
            parser = etree.XMLParser(no_network=True, resolve_entities=False)
            _compiled = etree.XMLSchema(etree.parse(str(schemas_dir() / "service.xsd"), parser))
        return _compiled


def validate(element: etree._Element) -> list[SchemaProblem]:
    """Validate ``element`` as the root of a document; return the problems, empty if valid.

    The schema object is not safe for concurrent use, so calls are serialized.
    """
    schema = service_schema()
    with _lock:
        if schema.validate(element):
            return []
        errors = list(schema.error_log)
    return [
        SchemaProblem(
            path=_readable_path(element, e.path),
            line=e.line or None,
            message=_CLARK.sub(lambda m: readable(f"{{{m[1]}}}{m[2]}"), e.message),
        )
        for e in errors
    ]


def element_path(element: etree._Element) -> str:
    """A readable absolute path: ``/prefix:Name[n]/...`` with positions among same-name
    siblings where there is more than one."""
    steps = []
    node: etree._Element | None = element
    while node is not None:
        tag = node.tag
        if not isinstance(tag, str):  # comments and PIs are never addressed
            break
        step = readable(tag)
        parent = node.getparent()
        if parent is not None:
            same = [c for c in parent if c.tag == tag]
            if len(same) > 1:
                step += f"[{same.index(node) + 1}]"
        steps.append(step)
        node = parent
    return "/" + "/".join(reversed(steps))


def _readable_path(root: etree._Element, libxml_path: str | None) -> str:
    if not libxml_path:
        return element_path(root)
    # libxml2 reports an XPath relative to the validated root, with the document's own prefixes
    # or with '*' steps; evaluate it on the root's tree to find the element itself.
    namespaces = {k: v for k, v in root.nsmap.items() if k}
    for node in root.iter():
        for k, v in node.nsmap.items():
            if k:
                namespaces.setdefault(k, v)
    try:
        found = etree.ElementTree(root).xpath(libxml_path, namespaces=namespaces)
    except etree.XPathError:
        return libxml_path
    if isinstance(found, list) and found and isinstance(found[0], etree._Element):
        return element_path(found[0])
    return libxml_path
