"""JSDL Parameter Sweep (GFD.149): one JobDefinition with a ``sweep:Sweep`` stands for many.

::

    <sweep:Sweep>
      <sweep:Assignment>                              one or more, iterated in step
        <sweep:DocumentNode>                          one or more, all given the same value
          <sweep:NamespaceBinding ns="URI" prefix="p"/>*
          <sweep:Match>//p:Argument[4]</sweep:Match>  an XPath 1.0 expression
        </sweep:DocumentNode>
        <sweepfunc:Values><sweepfunc:Value>cat</sweepfunc:Value>...</sweepfunc:Values>
          | <sweepfunc:LoopInteger start="1" end="10" step="1">
              <sweepfunc:Exception>5</sweepfunc:Exception>*
            </sweepfunc:LoopInteger>
          | <sweepfunc:LoopDouble start="0.5" end="2.0" step="0.5"/>
      </sweep:Assignment>
      <sweep:Sweep>...</sweep:Sweep>*                 nested: every point of it for each of ours
    </sweep:Sweep>

:func:`expand` returns one JobDefinition per point, without its Sweep, each to be validated
and run on its own. Several Sweeps side by side multiply, as nested ones do. When a Match
selects several nodes, the first one (in document order) takes the value, as UNICORE does.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final

from lxml import etree

from bes.errors import InvalidRequest
from bes.jsdl.schema import element_path
from bes.ns import SWEEP, SWEEP_FUNCTIONS, qname

SWEEP_ELEMENT: Final = qname(SWEEP, "Sweep")
_S: Final = "{" + SWEEP + "}"
_F: Final = "{" + SWEEP_FUNCTIONS + "}"
_MAX_MATCH: Final = 1000  # characters of one XPath expression


@dataclass(frozen=True, slots=True)
class _Target:
    xpath: etree.XPath
    shown: str


@dataclass(frozen=True, slots=True)
class _Assignment:
    targets: tuple[_Target, ...]
    values: tuple[str, ...]


def has_sweep(job: etree._Element) -> bool:
    """Whether the JobDefinition ``job`` holds a parameter sweep."""
    return job.find(SWEEP_ELEMENT) is not None


def expand(job: etree._Element, *, limit: int) -> list[etree._Element]:
    """The JobDefinitions of every point of the sweeps in ``job`` (which is not changed).

    Raises:
        InvalidRequest: A sweep is malformed, a Match selects nothing, or there would be more
            than ``limit`` points.
    """
    sweeps = [_sweep(s) for s in job.findall(SWEEP_ELEMENT)]
    count = 1
    for sweep in sweeps:
        count *= _size(sweep)
        if count > limit:
            raise InvalidRequest(
                f"the parameter sweep defines more than {limit} jobs, the most this service "
                "accepts in one CreateActivity",
                [element_path(s) for s in job.findall(SWEEP_ELEMENT)],
            )
    template = copy.deepcopy(job)
    for sweep_element in template.findall(SWEEP_ELEMENT):
        template.remove(sweep_element)
    points = []
    for combination in itertools.product(*(list(_points(s)) for s in sweeps)):
        point = copy.deepcopy(template)
        for assignments in combination:
            for target, value in assignments:
                _assign(point, target, value)
        points.append(point)
    return points


# A sweep: its assignments (iterated in step) and its nested sweeps.
_Sweep = tuple[tuple[_Assignment, ...], tuple["_Sweep", ...]]


def _sweep(element: etree._Element) -> _Sweep:
    assignments = []
    nested = []
    for child in element.iterchildren(etree.Element):
        if child.tag == _S + "Assignment":
            assignments.append(_assignment(child))
        elif child.tag == SWEEP_ELEMENT:
            nested.append(_sweep(child))
        else:
            raise InvalidRequest(
                f"unexpected {etree.QName(child).localname} in sweep:Sweep",
                [element_path(child)],
            )
    if not assignments:
        raise InvalidRequest("a sweep:Sweep needs at least one Assignment", [element_path(element)])
    sizes = {len(a.values) for a in assignments}
    if len(sizes) > 1:
        raise InvalidRequest(
            "the Assignments of one sweep:Sweep are iterated together and must have as many "
            f"values each (they have {sorted(sizes)})",
            [element_path(element)],
        )
    return tuple(assignments), tuple(nested)


def _size(sweep: _Sweep) -> int:
    assignments, nested = sweep
    size = len(assignments[0].values)
    for inner in nested:
        size *= _size(inner)
    return size


def _points(sweep: _Sweep) -> Iterator[list[tuple[_Target, str]]]:
    """Each point of a sweep: the (target, value) pairs to apply."""
    assignments, nested = sweep
    inner_points = [list(_points(inner)) for inner in nested]
    for index in range(len(assignments[0].values)):
        ours = [(t, a.values[index]) for a in assignments for t in a.targets]
        for combination in itertools.product(*inner_points):
            yield ours + [pair for point in combination for pair in point]


def _assignment(element: etree._Element) -> _Assignment:
    targets = []
    values: tuple[str, ...] | None = None
    for child in element.iterchildren(etree.Element):
        if child.tag == _S + "DocumentNode":
            targets.append(_target(child))
        elif child.tag == _F + "Values":
            values = tuple((v.text or "").strip() for v in child.iterchildren(_F + "Value"))
        elif child.tag == _F + "LoopInteger":
            values = _loop(child, integer=True)
        elif child.tag == _F + "LoopDouble":
            values = _loop(child, integer=False)
        else:
            raise InvalidRequest(
                f"unsupported sweep function {etree.QName(child).localname}",
                [element_path(child)],
            )
    if not targets:
        raise InvalidRequest("a sweep Assignment needs a DocumentNode", [element_path(element)])
    if not values:
        raise InvalidRequest("a sweep Assignment needs values", [element_path(element)])
    return _Assignment(targets=tuple(targets), values=values)


def _target(element: etree._Element) -> _Target:
    namespaces = {}
    match = None
    for child in element.iterchildren(etree.Element):
        if child.tag == _S + "NamespaceBinding":
            prefix, uri = child.get("prefix"), child.get("ns")
            if not prefix or not uri:
                raise InvalidRequest(
                    "a NamespaceBinding needs prefix and ns", [element_path(child)]
                )
            namespaces[prefix] = uri
        elif child.tag == _S + "Match":
            match = (child.text or "").strip()
    if not match or len(match) > _MAX_MATCH:
        raise InvalidRequest(
            f"a DocumentNode needs a Match of at most {_MAX_MATCH} characters",
            [element_path(element)],
        )
    try:
        xpath = etree.XPath(match, namespaces=namespaces)
    except etree.XPathError as exc:
        raise InvalidRequest(
            f"sweep Match {match!r} is not a usable XPath expression: {exc}",
            [element_path(element)],
        ) from exc
    return _Target(xpath=xpath, shown=match)


def _loop(element: etree._Element, *, integer: bool) -> tuple[str, ...]:
    try:
        start, end = Decimal(element.get("start", "")), Decimal(element.get("end", ""))
        step = Decimal(element.get("step", "1"))
    except InvalidOperation:
        raise InvalidRequest(
            "a sweep loop needs numeric start, end and step", [element_path(element)]
        ) from None
    if step == 0 or (end - start) * step < 0:
        raise InvalidRequest(
            "a sweep loop's step must lead from start to end", [element_path(element)]
        )
    if integer and any(v != v.to_integral_value() for v in (start, end, step)):
        raise InvalidRequest("LoopInteger takes integers", [element_path(element)])
    excluded = {Decimal((e.text or "").strip()) for e in element.iterchildren(_F + "Exception")}
    values = []
    value = start
    while (step > 0 and value <= end) or (step < 0 and value >= end):
        if value not in excluded:
            values.append(str(int(value)) if integer else format(value.normalize(), "f"))
        value += step
        if len(values) > 1_000_000:
            break
    return tuple(values)


def _assign(point: etree._Element, target: _Target, value: str) -> None:
    found = target.xpath(point.getroottree())
    nodes: Sequence[object] = found if isinstance(found, list) else []
    if not nodes:
        raise InvalidRequest(f"sweep Match {target.shown!r} selects nothing in the document")
    node = nodes[0]
    if isinstance(node, etree._Element):
        for child in list(node):
            node.remove(child)  # comments or elements: the value replaces the content
        node.text = value
    elif isinstance(node, etree._ElementUnicodeResult) and node.is_attribute:
        parent = node.getparent()
        if parent is not None and node.attrname is not None:
            parent.set(node.attrname, value)
    else:
        raise InvalidRequest(f"sweep Match {target.shown!r} must select an element or an attribute")
