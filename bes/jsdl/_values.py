"""Text-to-value conversions for XML Schema simple types, and the parse context.

The document has already passed schema validation, so conversions only need to be exact, not
forgiving; they still raise :class:`~bes.errors.JsdlError` instead of crashing if called on
unvalidated input.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from lxml import etree

from bes.errors import JsdlError
from bes.jsdl.schema import element_path
from bes.jsdl.xml import tag
from bes.ns import XSI, qname

_NIL = qname(XSI, "nil")
_NORMALIZE = str.maketrans("\t\r\n", "   ")


@dataclass(slots=True)
class Context:
    """What a parse collects besides the model: unsupported extensions and semantic problems."""

    unsupported: list[str] = field(default_factory=list)
    problems: list[tuple[etree._Element, str]] = field(default_factory=list)

    def unsupported_here(self, element: etree._Element) -> None:
        """Record ``element`` as an extension this service does not implement."""
        parent = element.getparent()
        where = element_path(parent) if parent is not None else "/"
        self.unsupported.append(f"{tag(element)} in {where}")

    def problem(self, element: etree._Element, message: str) -> None:
        """Record a semantic error about ``element``."""
        self.problems.append((element, message))


def children(element: etree._Element) -> Iterator[etree._Element]:
    """The element children (comments and processing instructions skipped)."""
    return element.iterchildren(etree.Element)


def text(element: etree._Element) -> str:
    """xs:string content, exactly as written (empty if none)."""
    return element.text or ""


def token(element: etree._Element) -> str:
    """Content with surrounding whitespace removed (paths, names, URIs, enumerations)."""
    return (element.text or "").strip()


def normalized(element: etree._Element) -> str:
    """xs:normalizedString content: tabs and line breaks become spaces, nothing is trimmed."""
    return (element.text or "").translate(_NORMALIZE)


def boolean(element: etree._Element, value: str | None = None) -> bool:
    """xs:boolean from the element's text, or from ``value`` (an attribute) when given."""
    raw = (element.text if value is None else value) or ""
    raw = raw.strip()
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise JsdlError(f"{raw!r} is not a boolean", [element_path(element)], line=element.sourceline)


def double(element: etree._Element, value: str | None = None) -> float:
    """xs:double from the element's text (or ``value``); NaN is refused as meaningless."""
    raw = ((element.text if value is None else value) or "").strip()
    try:
        number = float(raw)
    except ValueError:
        number = math.nan
    if math.isnan(number):
        raise JsdlError(
            f"{raw!r} is not a usable number", [element_path(element)], line=element.sourceline
        )
    return number


def integer(element: etree._Element) -> int:
    """xs:integer and its restrictions (nonNegativeInteger, positiveInteger)."""
    raw = (element.text or "").strip()
    try:
        return int(raw)
    except ValueError:
        raise JsdlError(
            f"{raw!r} is not an integer", [element_path(element)], line=element.sourceline
        ) from None


def is_nil(element: etree._Element) -> bool:
    """True for ``xsi:nil="true"`` (used by SPMD's nillable elements)."""
    return (element.get(_NIL) or "").strip() in ("true", "1")
