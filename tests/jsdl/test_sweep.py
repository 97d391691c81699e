"""JSDL Parameter Sweep (GFD.149): how one document expands into many."""

from __future__ import annotations

import pytest
from lxml import etree

from bes.errors import InvalidRequest
from bes.jsdl.sweep import expand
from bes.jsdl.xml import parse_untrusted
from tests.support.standards import corpus_dir

POSIX = "{http://schemas.ggf.org/jsdl/2005/11/jsdl-posix}"
JSDL = "{http://schemas.ggf.org/jsdl/2005/11/jsdl}"


def corpus(name: str) -> etree._Element:
    return parse_untrusted((corpus_dir() / "jsdl" / name).read_bytes())


def arguments(point: etree._Element) -> list[str | None]:
    return [a.text for a in point.iter(POSIX + "Argument")]


@pytest.mark.parametrize(
    ("name", "points"),
    [
        ("unicore-sweep-argument.xml", 3),
        ("unicore-sweep-argument-with-stagein.xml", 3),
        ("unicore-sweep-stagein-uri.xml", 2),
    ],
)
def test_the_unicore_sweeps_expand_to_their_points(name: str, points: int) -> None:
    document = corpus(name)
    expanded = expand(document, limit=100)
    assert len(expanded) == points
    assert all(p.find("{http://schemas.ogf.org/jsdl/2009/03/sweep}Sweep") is None for p in expanded)
    assert document.find("{http://schemas.ogf.org/jsdl/2009/03/sweep}Sweep") is not None


def test_an_argument_sweep_changes_that_argument_only() -> None:
    expanded = expand(corpus("unicore-sweep-argument.xml"), limit=100)
    assert [arguments(p)[3] for p in expanded] == ["cat", "dog", "bird"]
    assert {tuple(arguments(p)[:3]) for p in expanded} == {("The", "quick", "brown")}


def test_a_match_of_several_nodes_sweeps_the_first_as_unicore_does() -> None:
    expanded = expand(corpus("unicore-sweep-stagein-uri.xml"), limit=100)
    uris = [[u.text for u in p.iter(JSDL + "URI")] for p in expanded]
    assert uris == [["test://foo1", "test://foo3"], ["test://foo2", "test://foo3"]]


SWEPT = """<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
  xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
  xmlns:sweep="http://schemas.ogf.org/jsdl/2009/03/sweep"
  xmlns:f="http://schemas.ogf.org/jsdl/2009/03/sweep/functions">
  <jsdl:JobDescription><jsdl:Application><posix:POSIXApplication>
    <posix:Executable>/bin/fit</posix:Executable>
    <posix:Argument>A</posix:Argument><posix:Argument>B</posix:Argument>
    <posix:Environment name="SEED">0</posix:Environment>
  </posix:POSIXApplication></jsdl:Application></jsdl:JobDescription>
  {sweeps}
</jsdl:JobDefinition>"""


def node(match: str) -> str:
    return (
        '<sweep:DocumentNode><sweep:NamespaceBinding prefix="p"'
        ' ns="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"/>'
        f"<sweep:Match>{match}</sweep:Match></sweep:DocumentNode>"
    )


def swept(sweeps: str) -> etree._Element:
    return parse_untrusted(SWEPT.format(sweeps=sweeps).encode())


SEED = node("//p:Environment[@name='SEED']")


def test_assignments_of_one_sweep_go_in_step_and_nested_sweeps_multiply() -> None:
    document = swept(
        "<sweep:Sweep>"
        f"<sweep:Assignment>{node('//p:Argument[1]')}"
        "<f:Values><f:Value>a1</f:Value><f:Value>a2</f:Value></f:Values></sweep:Assignment>"
        f"<sweep:Assignment>{SEED}"
        '<f:LoopInteger start="10" end="11"/></sweep:Assignment>'
        "<sweep:Sweep>"
        f"<sweep:Assignment>{node('//p:Argument[2]')}"
        '<f:LoopDouble start="0.5" end="1.5" step="0.5"/></sweep:Assignment>'
        "</sweep:Sweep></sweep:Sweep>"
    )
    points = expand(document, limit=100)
    seen = [
        (arguments(p)[0], next(p.iter(POSIX + "Environment")).text, arguments(p)[1]) for p in points
    ]
    assert seen == [
        (a, seed, b) for a, seed in (("a1", "10"), ("a2", "11")) for b in ("0.5", "1", "1.5")
    ]


def test_loop_exceptions_are_left_out() -> None:
    document = swept(
        f"<sweep:Sweep><sweep:Assignment>{node('//p:Argument[1]')}"
        '<f:LoopInteger start="1" end="5" step="2"><f:Exception>3</f:Exception></f:LoopInteger>'
        "</sweep:Assignment></sweep:Sweep>"
    )
    assert [arguments(p)[0] for p in expand(document, limit=100)] == ["1", "5"]


def test_attributes_can_be_swept() -> None:
    document = swept(
        f"<sweep:Sweep><sweep:Assignment>{node('//p:Environment/@name')}"
        "<f:Values><f:Value>X</f:Value><f:Value>Y</f:Value></f:Values>"
        "</sweep:Assignment></sweep:Sweep>"
    )
    names = [next(p.iter(POSIX + "Environment")).get("name") for p in expand(document, limit=9)]
    assert names == ["X", "Y"]


@pytest.mark.parametrize(
    ("sweeps", "message"),
    [
        (
            f"<sweep:Sweep><sweep:Assignment>{node('//p:Argument[9]')}"
            "<f:Values><f:Value>x</f:Value></f:Values></sweep:Assignment></sweep:Sweep>",
            "selects nothing",
        ),
        (
            f"<sweep:Sweep><sweep:Assignment>{node('//p:Argument[')}"
            "<f:Values><f:Value>x</f:Value></f:Values></sweep:Assignment></sweep:Sweep>",
            "not a usable XPath",
        ),
        (
            f"<sweep:Sweep><sweep:Assignment>{node('//p:Argument[1]')}"
            '<f:LoopInteger start="1" end="2000"/></sweep:Assignment></sweep:Sweep>',
            "more than 1000 jobs",
        ),
        (
            f"<sweep:Sweep><sweep:Assignment>{node('//p:Argument[1]')}"
            '<f:LoopInteger start="5" end="1" step="1"/></sweep:Assignment></sweep:Sweep>',
            "step must lead from start to end",
        ),
        (
            f"<sweep:Sweep><sweep:Assignment>{node('//p:Argument[1]')}"
            "<f:Values><f:Value>x</f:Value></f:Values></sweep:Assignment>"
            f"<sweep:Assignment>{node('//p:Argument[2]')}"
            "<f:Values><f:Value>y</f:Value><f:Value>z</f:Value></f:Values></sweep:Assignment>"
            "</sweep:Sweep>",
            "as many values",
        ),
    ],
)
def test_bad_sweeps_are_invalid_requests_that_say_why(sweeps: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        expand(swept(sweeps), limit=1000)
