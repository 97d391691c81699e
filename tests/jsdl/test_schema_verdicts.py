"""Our own schemas (schemas/) and the official OGF schemas must agree on every document."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from bes.jsdl import schema
from tests.support.standards import corpus_dir, official_schema

FIXTURES = Path(__file__).parents[1] / "fixtures" / "jsdl"


def _documents() -> list[Path]:
    """Every well-formed corpus file and our own fixtures. (The corpus items that are not
    well-formed XML have no schema verdict; the SOAP edge tests send them to the service.)"""
    corpus = sorted((corpus_dir() / "jsdl").iterdir()) + sorted((corpus_dir() / "soap").iterdir())
    own = sorted(FIXTURES.glob("*/*.jsdl"))
    return [p for p in corpus + own if _parse(p) is not None]


def _parse(path: Path) -> etree._Element | None:
    try:
        return etree.parse(
            str(path), etree.XMLParser(resolve_entities=False, no_network=True)
        ).getroot()
    except etree.XMLSyntaxError:
        return None


@pytest.mark.parametrize("path", _documents(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_same_verdict_as_the_official_schemas(path: Path) -> None:
    root = _parse(path)
    assert root is not None
    official = official_schema().validate(root)
    ours = not schema.validate(root)
    assert ours == official, (
        f"official says {'valid' if official else 'invalid'}, ours says "
        f"{'valid' if ours else 'invalid'}: {[p.message for p in schema.validate(root)]}"
        f" / {official_schema().error_log.last_error}"
    )


def test_the_comparison_covers_both_verdicts() -> None:
    verdicts = {official_schema().validate(_parse(p)) for p in _documents()}
    assert verdicts == {True, False}


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("valid/*.jsdl")), ids=lambda p: p.name)
def test_own_valid_fixtures_are_valid(path: Path) -> None:
    assert schema.validate(etree.parse(str(path)).getroot()) == []


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("invalid/*.jsdl")), ids=lambda p: p.name)
def test_own_invalid_fixtures_are_invalid_with_a_located_reason(path: Path) -> None:
    problems = schema.validate(etree.parse(str(path)).getroot())
    assert problems
    assert all(p.path.startswith("/jsdl:JobDefinition") for p in problems)
    assert all(p.line for p in problems)
