"""Local Sources of a JSDL document, found and rewritten to URLs (bes.client.staging): which
URIs are local, where they point, and that nothing else of the document changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from bes.client import faults, jsdl, staging
from bes.jsdl.parse import load_job_definition
from bes.jsdl.sweep import expand
from bes.jsdl.xml import parse_untrusted
from tests.support.standards import corpus_dir

URL = "http://127.0.0.1:8080/bes/files/sha256/" + "ab" * 32
OTHER = "http://127.0.0.1:8080/bes/files/sha256/" + "cd" * 32
JSDL_NS = "http://schemas.ggf.org/jsdl/2005/11/jsdl"


def uris(document: bytes) -> list[str]:
    return [(u.text or "").strip() for u in parse_untrusted(document).iter(f"{{{JSDL_NS}}}URI")]


def c14n(document: bytes) -> bytes:
    return etree.tostring(etree.fromstring(document), method="c14n")


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("data.csv", True),
        ("  data.csv\n", True),
        ("inputs/run%201.csv", True),
        ("../data.csv", True),
        ("/home/me/data.csv", True),
        ("file:///srv/grid/data.csv", False),  # a path on the worker, under its --file-root
        ("file:data.csv", False),
        ("http://example.org/data.csv", False),
        ("https://example.org/data.csv", False),
        ("ftp://example.org/data.csv", False),
        ("//example.org/data.csv", False),  # a network-path reference: a host, not a file
        ("", False),
        ("   ", False),
    ],
)
def test_which_sources_are_local(uri: str, local: bool) -> None:
    assert staging.is_local(uri) is local


def test_a_local_source_resolves_against_the_document_directory(tmp_path: Path) -> None:
    assert staging.local_path("data.csv", tmp_path) == tmp_path / "data.csv"
    assert staging.local_path("in/run%201.csv", tmp_path) == tmp_path / "in" / "run 1.csv"
    assert staging.local_path("/etc/hostname", tmp_path) == Path("/etc/hostname")
    with pytest.raises(faults.InvalidJsdl, match="'#'"):
        staging.local_path("data.csv#2", tmp_path)


@pytest.mark.parametrize(
    "name", ["data.csv", "run 1.csv", "a:b.csv", "50%.csv", "why?.csv", "#1.csv", "été.csv"]
)
def test_source_uri_is_the_inverse_of_local_path(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs").mkdir()
    for path, document_dir in (
        (name, tmp_path),
        (name, tmp_path / "jobs"),
        (str(tmp_path / "jobs" / name), tmp_path / "jobs"),
    ):
        uri = staging.source_uri(path, document_dir)
        assert staging.is_local(uri), uri
        assert staging.local_path(uri, document_dir).resolve() == (tmp_path / path).resolve()
    assert staging.source_uri(name, tmp_path / "jobs").startswith("../")


def test_a_built_document_is_rewritten_to_exactly_what_building_with_urls_gives() -> None:
    def built(inputs: dict[str, str]) -> bytes:
        return jsdl.build(
            ["/bin/sh", "-c", "wc -l data.csv"],
            name="count",
            inputs=inputs,
            keep=["out.txt"],
            commented=True,
        )

    local = built({"data.csv": "data.csv", "more.csv": "in/more%20data.csv", "w": "file:///w"})
    found = staging.local_sources(local)
    assert [(s.uri, s.file_name) for s in found] == [
        ("data.csv", "data.csv"),
        ("in/more%20data.csv", "more.csv"),
    ]
    assert found[0].where == "/jsdl:JobDefinition/jsdl:JobDescription/jsdl:DataStaging[1]" + (
        "/jsdl:Source/jsdl:URI"
    )
    rewritten = staging.rewrite(local, {"data.csv": URL, "in/more%20data.csv": OTHER})
    assert rewritten == built({"data.csv": URL, "more.csv": OTHER, "w": "file:///w"})
    assert staging.local_sources(rewritten) == []
    job = load_job_definition(rewritten)
    assert [s.source for s in job.job_description.data_staging] == [URL, OTHER, "file:///w", None]


HAND_WRITTEN = b"""<?xml version="1.0" encoding="UTF-8"?>
<!-- written by hand -->
<JobDefinition xmlns="http://schemas.ggf.org/jsdl/2005/11/jsdl">
  <JobDescription>
    <Application>
      <p:POSIXApplication xmlns:p="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix">
        <p:Executable>/bin/cat</p:Executable>
        <p:Argument>data.csv</p:Argument>
        <p:Output>stdout</p:Output>
      </p:POSIXApplication>
    </Application>
    <DataStaging>
      <FileName>data.csv</FileName>
      <CreationFlag>overwrite</CreationFlag>
      <Source><URI>
        data.csv
      </URI></Source>
    </DataStaging>
    <j:DataStaging xmlns:j="http://schemas.ggf.org/jsdl/2005/11/jsdl">
      <j:FileName>copy.csv</j:FileName>
      <j:CreationFlag>overwrite</j:CreationFlag>
      <j:Source><other:URI xmlns:other="http://schemas.ggf.org/jsdl/2005/11/jsdl"
        >data.csv</other:URI></j:Source>
    </j:DataStaging>
    <DataStaging>
      <FileName>result.csv</FileName>
      <CreationFlag>overwrite</CreationFlag>
      <Target><URI>result.csv</URI></Target>
    </DataStaging>
    <DataStaging>
      <FileName>lookalike</FileName>
      <CreationFlag>overwrite</CreationFlag>
      <Source><x:URI xmlns:x="urn:not-jsdl">data.csv</x:URI><URI>https://example.org/a</URI>
      </Source>
    </DataStaging>
  </JobDescription>
</JobDefinition>
<!-- after the root -->
"""


def test_prefixes_and_namespace_declarations_do_not_matter_and_nothing_else_changes() -> None:
    found = staging.local_sources(HAND_WRITTEN)
    assert [(s.uri, s.file_name) for s in found] == [
        ("data.csv", "data.csv"),
        ("data.csv", "copy.csv"),
    ]  # not the Target, not the URI of another namespace, not the https one
    rewritten = staging.rewrite(HAND_WRITTEN, {"data.csv": URL})
    expected = HAND_WRITTEN.replace(
        b"<URI>\n        data.csv\n      </URI>", f"<URI>{URL}</URI>".encode()
    )
    expected = expected.replace(
        b"\n        >data.csv</other:URI>", f"\n        >{URL}</other:URI>".encode()
    )
    assert rewritten == expected  # byte for byte: declaration, comments, prefixes, layout
    assert uris(rewritten) == [URL, URL, "result.csv", "https://example.org/a"]


def test_a_document_without_local_sources_comes_back_as_it_was() -> None:
    document = (corpus_dir() / "jsdl" / "unicore-sweep-argument-with-stagein.xml").read_bytes()
    assert staging.local_sources(document) == []
    assert staging.rewrite(document, {"anything": URL}) is document


def test_only_the_mapped_uris_are_replaced() -> None:
    document = jsdl.build(["/bin/true"], inputs={"a": "a.csv", "b": "b.csv"})
    assert uris(staging.rewrite(document, {"b.csv": URL})) == ["a.csv", URL]


def test_unicore_sweep_of_a_source_uri_takes_local_values() -> None:
    # UNICORE's own sweep example: the first Source URI is a placeholder the sweep replaces.
    original = (corpus_dir() / "jsdl" / "unicore-sweep-stagein-uri.xml").read_bytes()
    assert staging.local_sources(original) == []  # "placeholder" is swept, not uploaded
    document = original.replace(b"test://foo1", b"in/one.txt").replace(b"test://foo2", b"two.txt")
    found = staging.local_sources(document)
    assert [(s.uri, s.file_name) for s in found] == [
        ("in/one.txt", "input.txt"),
        ("two.txt", "input.txt"),
    ]
    assert found[0].where.endswith("sweepfunc:Values/sweepfunc:Value[1]")
    rewritten = staging.rewrite(document, {"in/one.txt": URL, "two.txt": OTHER})
    assert rewritten == document.replace(b"in/one.txt", URL.encode()).replace(
        b"two.txt", OTHER.encode()
    )
    points = expand(parse_untrusted(rewritten), limit=10)
    assert [[u.text for u in p.iter(f"{{{JSDL_NS}}}URI")] for p in points] == [
        [URL, "test://foo3"],
        [OTHER, "test://foo3"],
    ]


SWEPT = """<j:JobDefinition xmlns:j="http://schemas.ggf.org/jsdl/2005/11/jsdl"
  xmlns:s="http://schemas.ogf.org/jsdl/2009/03/sweep"
  xmlns:f="http://schemas.ogf.org/jsdl/2009/03/sweep/functions">
  <j:JobDescription>
    <j:Application><p:POSIXApplication xmlns:p="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix">
      <p:Executable>/bin/cat</p:Executable><p:Argument>input</p:Argument>
    </p:POSIXApplication></j:Application>
    <j:DataStaging><j:FileName>input</j:FileName><j:CreationFlag>overwrite</j:CreationFlag>
      <j:Source><j:URI>default.csv</j:URI></j:Source></j:DataStaging>
  </j:JobDescription>
  <s:Sweep><s:Assignment>
    <s:DocumentNode><s:NamespaceBinding ns="http://schemas.ggf.org/jsdl/2005/11/jsdl"
      prefix="x"/><s:Match>/x:JobDefinition/x:JobDescription/x:DataStaging/x:Source/x:URI</s:Match>
    </s:DocumentNode>
    {values}
  </s:Assignment></s:Sweep>
</j:JobDefinition>"""


def test_a_sweep_with_other_prefixes_and_mixed_values() -> None:
    document = SWEPT.format(
        values="<f:Values><f:Value>a.csv</f:Value><f:Value>https://example.org/b.csv</f:Value>"
        "<f:Value> a.csv </f:Value></f:Values>"
    ).encode()
    assert [s.uri for s in staging.local_sources(document)] == ["a.csv", "a.csv"]
    rewritten = staging.rewrite(document, {"a.csv": URL})
    points = expand(parse_untrusted(rewritten), limit=10)
    assert [[u.text for u in p.iter(f"{{{JSDL_NS}}}URI")] for p in points] == [
        [URL],
        ["https://example.org/b.csv"],
        [URL],
    ]
    assert b"default.csv" in rewritten  # the swept template URI is not a source of its own


def test_a_sweep_loop_cannot_name_files() -> None:
    document = SWEPT.format(values='<f:LoopInteger start="1" end="3"/>').encode()
    with pytest.raises(faults.InvalidJsdl, match="sweepfunc:Values"):
        staging.local_sources(document)


def test_a_sweep_of_arguments_leaves_sources_alone() -> None:
    document = (corpus_dir() / "jsdl" / "unicore-sweep-argument-with-stagein.xml").read_bytes()
    local = document.replace(b"test://foo", b"foo/input.txt")
    assert [s.uri for s in staging.local_sources(local)] == ["foo/input.txt"]  # not cat, dog
    rewritten = staging.rewrite(local, {"foo/input.txt": URL, "cat": OTHER})
    assert rewritten == document.replace(b"test://foo", URL.encode())


def test_not_xml_is_invalid_jsdl() -> None:
    with pytest.raises(faults.InvalidJsdl, match="line 1"):
        staging.local_sources(b"<jsdl:JobDefinition")
    with pytest.raises(faults.InvalidJsdl, match="DOCTYPE"):
        staging.rewrite(b'<!DOCTYPE x [<!ENTITY e "data.csv">]><x>&e;</x>', {"data.csv": URL})


def test_awkward_bytes_around_the_uri_stay_as_they_are() -> None:
    document = (
        b"<?xml version='1.0' encoding='ISO-8859-1'?>\n"
        b"<j:JobDefinition xmlns:j=\"http://schemas.ggf.org/jsdl/2005/11/jsdl\" a='x>y'>"
        b"<j:JobDescription><j:JobIdentification><j:Description><![CDATA[<j:URI>x</j:URI>]]>"
        b" caf\xe9 &#233;</j:Description></j:JobIdentification>"
        b"<j:DataStaging><j:FileName>d</j:FileName><j:CreationFlag>overwrite</j:CreationFlag>"
        b'<j:Source x=">&gt;"><j:URI\n>caf\xe9 &amp; co.csv<!-- c --></j:URI></j:Source>'
        b"</j:DataStaging></j:JobDescription></j:JobDefinition>"
    )
    [found] = staging.local_sources(document)
    assert found.uri == "café & co.csv"
    rewritten = staging.rewrite(document, {"café & co.csv": URL + "?a=1&b=é"})
    assert rewritten == document.replace(
        b"caf\xe9 &amp; co.csv<!-- c -->", (URL + "?a=1&amp;b=\xe9").encode("latin-1")
    )
    assert uris(rewritten) == [URL + "?a=1&b=é"]


def test_a_utf16_document_is_rewritten_with_the_same_content() -> None:
    text = jsdl.build(["/bin/true"], inputs={"a": "a.csv", "b": "b.csv"}).decode()
    document = text.replace("encoding='UTF-8'", "encoding='UTF-16'").encode("utf-16")
    assert [s.uri for s in staging.local_sources(document)] == ["a.csv", "b.csv"]
    rewritten = staging.rewrite(document, {"a.csv": URL})
    assert uris(rewritten) == [URL, "b.csv"]
    assert c14n(rewritten) == c14n(
        document.decode("utf-16").replace(">a.csv<", f">{URL}<").encode("utf-16")
    )
