"""Normalization of known real-world JSDL variants: each rewrite, and that what it gives is
valid JSDL 1.0."""

from __future__ import annotations

from lxml import etree

from bes.jsdl import schema
from bes.jsdl.normalize import normalize
from bes.jsdl.parse import parse_job_definition
from bes.jsdl.xml import parse_untrusted
from tests.support.standards import corpus_dir

J = "{http://schemas.ggf.org/jsdl/2005/11/jsdl}"


def corpus(name: str) -> etree._Element:
    return parse_untrusted((corpus_dir() / "jsdl" / name).read_bytes())


def test_a_missing_creation_flag_becomes_overwrite_in_its_place() -> None:
    job = corpus("unicore-ems-ls-with-stagein.jsdl")
    assert schema.validate(job)
    warnings = normalize(job)
    assert schema.validate(job) == []
    staging = job.find(f"{J}JobDescription/{J}DataStaging")
    assert staging is not None
    assert [etree.QName(c).localname for c in staging][:2] == ["FileName", "CreationFlag"]
    assert staging.findtext(f"{J}CreationFlag") == "overwrite"
    assert any("DataStaging" in w and "CreationFlag" in w for w in warnings)
    assert any("JobDescription" in w and "order" in w for w in warnings)


def test_namespace_variants_move_to_the_standard_ones() -> None:
    job = corpus("unicore-hpcp-sc07-demo-ftp-credentials.jsdl")
    warnings = normalize(job)
    assert schema.validate(job) == []
    parsed = parse_job_definition(job)
    application = parsed.job_description.application
    assert application is not None and application.hpc_profile is not None
    credentials = [s.credential for s in parsed.job_description.data_staging]
    assert all(c is not None and c.username_token is not None for c in credentials)
    assert any("HPC Profile Application" in w for w in warnings)
    assert any("StagingSchedule" in w for w in warnings)


def test_a_valid_document_is_left_alone() -> None:
    job = corpus("gridsam-helloworld.jsdl")
    before = etree.tostring(job)
    assert normalize(job) == []
    assert etree.tostring(job) == before


def test_every_normalized_corpus_document_is_valid_or_fails_for_another_reason() -> None:
    """Normalizing never makes a document worse: what was valid stays valid."""
    for path in sorted((corpus_dir() / "jsdl").iterdir()):
        job = parse_untrusted(path.read_bytes())
        valid_before = not schema.validate(job)
        normalize(job)
        if valid_before:
            assert schema.validate(job) == [], path.name


def test_undeclared_unqualified_attributes_go_and_declared_ones_stay() -> None:
    job = corpus("gridsam-posix-id-attributes.jsdl")
    warnings = normalize(job)
    assert schema.validate(job) == []
    assert len([w for w in warnings if "dropped the attribute id=" in w]) == 3
