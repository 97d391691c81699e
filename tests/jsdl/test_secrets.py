"""Redacting documents and sealing jobs: the secrets go, everything else stays."""

from __future__ import annotations

from pathlib import Path

from lxml import etree

from bes.jsdl import schema
from bes.jsdl.model import Credential, JobDefinition
from bes.jsdl.normalize import normalize
from bes.jsdl.parse import parse_job_definition
from bes.jsdl.secrets import (
    REDACTED,
    has_credentials,
    open_credentials,
    redact_document,
    seal_credentials,
)
from bes.sealing import Sealer, is_sealed
from tests.support.standards import corpus_dir

FIXTURES = Path(__file__).parents[1] / "fixtures" / "jsdl"


def parse(text: str) -> JobDefinition:
    root = etree.fromstring(text.encode())
    normalize(root)
    return parse_job_definition(root)


def credentials(job: JobDefinition) -> list[Credential | None]:
    return [s.credential for s in job.job_description.data_staging]


def test_the_hpc_file_staging_password_is_redacted_and_the_document_stays_valid() -> None:
    original = (FIXTURES / "valid" / "hpcpa-staging-credential.jsdl").read_text()
    original = original[original.index("<jsdl:JobDefinition") :]  # the element, as stored
    redacted = redact_document(original)
    assert "secret-word" not in redacted
    root = etree.fromstring(redacted.encode())
    assert schema.validate(etree.fromstring(original.encode())) == []
    assert schema.validate(root) == []
    ns = {
        "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
    }
    assert root.xpath("//wsse:Password/text()", namespaces=ns) == [REDACTED]
    assert root.xpath("//wsse:Username/text()", namespaces=ns) == ["ftpuser"]
    # Everything else is as it was (canonically: attribute whitespace may differ).
    restored = etree.fromstring(redacted.replace(REDACTED, "secret-word").encode())
    assert etree.tostring(restored, method="c14n") == etree.tostring(
        etree.fromstring(original.encode()), method="c14n"
    )


def test_unicore_documents_are_redacted_as_sent_old_namespace_and_all() -> None:
    original = (corpus_dir() / "jsdl" / "unicore-staging-credentials-bearer.jsdl").read_text()
    original = original.split("?>", 1)[1]
    redacted = redact_document(original)
    job = parse(redacted)
    tokens = [
        c.username_token.password if c and c.username_token else None for c in credentials(job)
    ]
    assert tokens == [REDACTED, None, None]
    # The empty token stays empty (it means "none"), so it still means none.
    assert [c.bearer_token if c else None for c in credentials(job)] == [None, REDACTED, None]
    assert ">pass<" not in redacted and ">123<" not in redacted


def test_a_value_split_by_comments_is_redacted_whole() -> None:
    original = (
        '<j xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity'
        '-secext-1.0.xsd"><wsse:Password>qqq<!-- c -->zzz<!-- d -->xxx</wsse:Password></j>'
    )
    redacted = redact_document(original)
    assert not any(part in redacted for part in ("qqq", "zzz", "xxx"))
    assert "<wsse:Password>***</wsse:Password>" in redacted


def test_documents_without_secrets_are_left_alone_character_for_character() -> None:
    for text in (
        "<a>  <b/>\n<c></c></a>",
        '<j xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity'
        '-secext-1.0.xsd"><wsse:Password></wsse:Password><Password>not wsse</Password></j>',
        "not even XML, and no secret's element",
    ):
        assert redact_document(text) == text


def test_sealing_a_job_seals_only_its_secrets_and_opening_restores_them(tmp_path: Path) -> None:
    sealer = Sealer.from_file(tmp_path / "key", create=True)
    job = parse((corpus_dir() / "jsdl" / "unicore-staging-credentials-bearer.jsdl").read_text())
    assert has_credentials(job)
    sealed = seal_credentials(job, sealer)
    first, second, third = credentials(sealed)
    assert first and first.username_token and is_sealed(first.username_token.password)
    assert first.username_token.username == "user"
    assert second and second.bearer_token and is_sealed(second.bearer_token)
    assert third == credentials(job)[2]  # an empty token: nothing to seal
    assert sealed.job_description.data_staging[0].source == "http://some.where/foo.txt"
    assert open_credentials(sealed, sealer) == job
    # Values that are not sealed (rows stored before sealing) pass through.
    assert open_credentials(job, sealer) == job
    assert open_credentials(job, None) == job


def test_a_job_without_credentials_is_returned_as_is(tmp_path: Path) -> None:
    sealer = Sealer.from_file(tmp_path / "key", create=True)
    job = parse((FIXTURES / "valid" / "posix-full.jsdl").read_text())
    assert not has_credentials(job)
    assert seal_credentials(job, sealer) is job
    assert open_credentials(job, sealer) is job
