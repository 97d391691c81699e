"""The model survives storage as JSON exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from bes.errors import BesError, JsdlError
from bes.jsdl import load_job_definition
from bes.jsdl.codec import from_json, to_json
from tests.support.standards import corpus_dir

FIXTURES = Path(__file__).parents[1] / "fixtures" / "jsdl"


def _parsable() -> list[Path]:
    out = []
    for path in sorted((corpus_dir() / "jsdl").iterdir()) + sorted(FIXTURES.glob("valid/*")):
        try:
            load_job_definition(path.read_bytes())
        except BesError:
            continue
        out.append(path)
    return out


@pytest.mark.parametrize("path", _parsable(), ids=lambda p: p.name)
def test_round_trip(path: Path) -> None:
    job = load_job_definition(path.read_bytes())
    text = to_json(job)
    assert from_json(text) == job
    assert to_json(from_json(text)) == text


def test_enough_documents_are_round_tripped() -> None:
    assert len(_parsable()) >= 25


def test_garbage_is_refused() -> None:
    with pytest.raises(JsdlError):
        from_json('{"job_description": {"application": {"posix": {"limits": 3}}}}')
