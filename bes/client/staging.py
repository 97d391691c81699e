"""Local input files named in a JSDL document, and the document with them turned into URLs.

A ``jsdl:DataStaging/jsdl:Source/jsdl:URI`` that is a relative reference, with no scheme and no
host (``data.csv``, ``inputs/run%201.csv``, ``../data.csv``, or an absolute path
``/home/me/data.csv``), names a file on the submitting machine, relative to the document's own
directory, as a relative URI in any document is resolved against the document's location
(RFC 3986 §5). ``bes submit`` uploads each such file to the service's file store and replaces
the Source by the URL the store answered, so what is sent is standard JSDL with ``http(s)``
Sources that validates and runs anywhere. A relative Source is no valid BES submission by
itself: only ``bes submit`` resolves it. A ``file:`` URI keeps its meaning (a path on the
worker under its ``--file-root``), and every other scheme is left alone.

A parameter sweep (GFD.149) may assign a Source URI from its ``sweepfunc:Values``: those values
are local sources as well (and the URI they replace is not one). A loop cannot list files, so a
``LoopInteger`` or ``LoopDouble`` assigning to a Source URI is refused.

Everything here is pure: no file is opened and nothing is sent. :func:`rewrite` changes the
bytes of those URIs' content and no other (declaration, comments, prefixes, layout, character
references stay as written); only a document in an encoding that is not ASCII-compatible
(UTF-16) is written anew by lxml, with the same content.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final
from urllib.parse import quote, unquote, urlsplit
from xml.parsers import expat
from xml.sax.saxutils import escape

from lxml import etree

from bes.client.faults import InvalidJsdl
from bes.errors import MalformedXml
from bes.jsdl.schema import element_path
from bes.jsdl.xml import parse_stored, parse_untrusted
from bes.ns import JSDL, SWEEP, SWEEP_FUNCTIONS

_J: Final = "{" + JSDL + "}"
_S: Final = "{" + SWEEP + "}"
_F: Final = "{" + SWEEP_FUNCTIONS + "}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalSource:
    """A Source of a JSDL document that names a file on this machine.

    Attributes:
        uri: The URI as written (surrounding white space removed): the key of the mapping
            :func:`rewrite` takes.
        file_name: The DataStaging's FileName (the name in the job's directory); for a sweep
            value, the FileName of the DataStaging its Match selects.
        where: The element it was found in, for messages (``/jsdl:JobDefinition/…``).
    """

    uri: str
    file_name: str
    where: str


def is_local(uri: str) -> bool:
    """Whether a Source URI names a local file: a relative reference with no scheme and no
    host (``data.csv``, ``dir/x.csv``, ``/abs/x.csv``), not ``file:``, ``http:``, ``//host/x``."""
    text = uri.strip()
    if not text:
        return False
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return not parts.scheme and not parts.netloc


def local_path(uri: str, document_dir: Path) -> Path:
    """The file a local Source URI names: percent-decoded, relative to ``document_dir``
    (an absolute path stays itself). Nothing is checked on disk.

    Raises:
        InvalidJsdl: The URI has a query or fragment (``data.csv?x``), or is not local.
    """
    text = uri.strip()
    if not is_local(text):
        raise InvalidJsdl(f"{uri!r} is not a local file reference", ())
    parts = urlsplit(text)
    if parts.query or parts.fragment:
        raise InvalidJsdl(
            f"the Source {text!r} looks like a local file but has a '?' or '#' part; "
            "percent-encode those characters (%3F, %23) in a file name",
            (),
        )
    return document_dir / unquote(parts.path)


def source_uri(path: str | os.PathLike[str], document_dir: Path) -> str:
    """The relative Source URI that names ``path`` (relative to the working directory, or
    absolute) from a document written in ``document_dir``: the inverse of :func:`local_path`.
    Percent-encoded where a URI needs it, so that any file name survives."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(document_dir))
    return quote(PurePosixPath(*Path(relative).parts).as_posix(), safe="/")


def local_sources(document: bytes) -> list[LocalSource]:
    """The local Sources of a JSDL document, in document order (one per occurrence).

    Raises:
        InvalidJsdl: The document is not well-formed, or a sweep loop assigns to a Source URI.
    """
    root = _parse(document, keep_comments=False)
    return [
        LocalSource(uri=uri, file_name=name, where=element_path(element))
        for element, uri, name in _sources(root)
        if is_local(uri)
    ]


def rewrite(document: bytes, urls: Mapping[str, str]) -> bytes:
    """``document`` with every local Source URI found in ``urls`` (keyed by the URI as
    :class:`LocalSource` holds it) replaced by its URL; every other byte kept.

    Raises:
        InvalidJsdl: The document is not well-formed, or a sweep loop assigns to a Source URI.
    """
    root = _parse(document, keep_comments=False)
    position = {element: i for i, element in enumerate(root.iter(etree.Element))}
    changes = {
        position[element]: urls[uri]
        for element, uri, _ in _sources(root)
        if uri in urls and is_local(uri)
    }
    if not changes:
        return document
    encoding = root.getroottree().docinfo.encoding or "UTF-8"
    try:
        spans = _content_spans(document, set(changes))
    except (_Unspliceable, ValueError, LookupError, expat.ExpatError):
        return _reserialized(document, urls)
    parts = []
    offset = 0
    for index in sorted(changes):
        start, end = spans[index]
        parts += [
            document[offset:start],
            escape(changes[index]).encode(encoding, "xmlcharrefreplace"),
        ]
        offset = end
    return b"".join(parts) + document[offset:]


class _Unspliceable(Exception):
    """The byte offsets of an element's content could not be told apart."""


def _content_spans(document: bytes, wanted: set[int]) -> dict[int, tuple[int, int]]:
    """For the elements at these positions (document order, as lxml counts them), the byte
    range of their content, between the end of the start tag and the start of the end tag.

    expat reports byte offsets (lxml does not); it reads the bytes the hardened parser
    accepted already, so there is no DOCTYPE or entity for it to meet.
    """
    if document.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in document[:4]:
        raise _Unspliceable("not an ASCII-compatible encoding")
    parser = expat.ParserCreate()
    starts: dict[int, int] = {}
    open_elements: list[int] = []
    spans: dict[int, tuple[int, int]] = {}
    counter = iter(range(len(document)))

    def start(name: str, attributes: object) -> None:
        index = next(counter)
        open_elements.append(index)
        if index in wanted:
            starts[index] = _end_of_tag(document, parser.CurrentByteIndex)

    def end(name: str) -> None:
        index = open_elements.pop()
        if index in wanted:
            if parser.CurrentByteIndex < starts[index]:
                raise _Unspliceable("an empty element")
            spans[index] = (starts[index], parser.CurrentByteIndex)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.Parse(document, True)
    if set(spans) != wanted:
        raise _Unspliceable("an element was not found again")
    return spans


def _end_of_tag(document: bytes, offset: int) -> int:
    """The offset just after the ``>`` of the start tag at ``offset`` (attribute values may
    hold a ``>``)."""
    quote_char = 0
    for position in range(offset, len(document)):
        char = document[position]
        if quote_char:
            if char == quote_char:
                quote_char = 0
        elif char in b"\"'":
            quote_char = char
        elif char == ord(">"):
            return position + 1
    raise _Unspliceable("a start tag does not end")


def _reserialized(document: bytes, urls: Mapping[str, str]) -> bytes:
    """The rewrite through lxml, where bytes cannot be spliced (UTF-16, an encoding expat
    does not read): the same content, written lxml's way."""
    root = _parse(document, keep_comments=True)
    for element, uri, _ in _sources(root):
        if uri in urls and is_local(uri):
            for child in list(element):
                element.remove(child)
            element.text = urls[uri]
    encoding = root.getroottree().docinfo.encoding or "UTF-8"
    return etree.tostring(root.getroottree(), encoding=encoding, xml_declaration=True)


def _parse(document: bytes, *, keep_comments: bool) -> etree._Element:
    try:
        root = parse_untrusted(document)  # the one hardened door: no DOCTYPE, no entities
    except MalformedXml as exc:
        where = f"line {exc.line}: " if exc.line else ""
        raise InvalidJsdl(f"{where}{exc.message}", ((exc.line, "", exc.message),)) from exc
    # The same bytes again, with the comments the wire parser drops: this is the user's file.
    return parse_stored(document) if keep_comments else root


def _sources(root: etree._Element) -> Iterator[tuple[etree._Element, str, str]]:
    """(element holding the URI, URI text stripped, FileName) for each Source URI of the
    document and each sweep value assigned to one; the URIs sweeps assign are skipped."""
    swept: dict[etree._Element, list[etree._Element]] = {}
    for assignment in root.iter(_S + "Assignment"):
        targets = [t for t in _targets(assignment) if _is_source_uri(t)]
        if not targets:
            continue
        if assignment.find(_F + "Values") is None:
            raise InvalidJsdl(
                "a sweep loop assigns numbers to a Source URI: list the files as "
                "sweepfunc:Values instead",
                ((assignment.sourceline, element_path(assignment), "loop on a Source URI"),),
            )
        for target in targets:
            swept.setdefault(target, []).extend(assignment.iterfind(f"{_F}Values/{_F}Value"))
    for uri in root.iter(_J + "URI"):
        if not _is_source_uri(uri):
            continue
        name = _file_name(uri)
        if uri in swept:
            for value in swept[uri]:
                yield value, (value.text or "").strip(), name
        else:
            yield uri, (uri.text or "").strip(), name


def _targets(assignment: etree._Element) -> Iterator[etree._Element]:
    """The element each DocumentNode's Match selects first (as the sweep assigns it); a
    Match that does not compile or selects nothing is the service's to report."""
    for node in assignment.iterfind(_S + "DocumentNode"):
        namespaces = {
            b.get("prefix", ""): b.get("ns", "")
            for b in node.iterfind(_S + "NamespaceBinding")
            if b.get("prefix") and b.get("ns")
        }
        match = (node.findtext(_S + "Match") or "").strip()
        try:
            found = etree.XPath(match, namespaces=namespaces)(node.getroottree())
        except (etree.XPathError, TypeError):
            continue
        if isinstance(found, list) and found and isinstance(found[0], etree._Element):
            yield found[0]


def _is_source_uri(element: etree._Element) -> bool:
    source = element.getparent()
    staging = source.getparent() if source is not None else None
    return (
        element.tag == _J + "URI"
        and source is not None
        and source.tag == _J + "Source"
        and staging is not None
        and staging.tag == _J + "DataStaging"
    )


def _file_name(uri: etree._Element) -> str:
    source = uri.getparent()
    staging = source.getparent() if source is not None else None
    return (staging.findtext(_J + "FileName") or "").strip() if staging is not None else ""
