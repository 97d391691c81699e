"""``bes submit``: JSDL documents to a BES, with their local input files.

A Source that is a relative path (``data.csv``, resolved against the document's directory) or
an absolute path with no scheme names a file on this machine (:mod:`bes.client.staging`). Every
document is read, checked and its local files found first, so that a missing file stops the
command before anything is sent; then each file is uploaded to the service's file store once
(a file it holds already costs no transfer), its Sources are rewritten to the store's URL, and
the document is submitted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bes.cli._client import (
    EXIT_FAULT,
    EXIT_USAGE,
    CommandError,
    client_options,
    context,
    note,
    reported,
)
from bes.cli._render import emit_json

if TYPE_CHECKING:
    from bes.client import BESClient
    from bes.client.staging import LocalSource


@dataclass(frozen=True, slots=True, kw_only=True)
class _Document:
    path: Path
    data: bytes
    inputs: tuple[tuple[LocalSource, Path], ...]
    """Each local Source with the file it names."""


@click.command()
@click.argument(
    "documents", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--wait", "wait_", is_flag=True, help="Wait until the activities end.")
@click.option("--wait-timeout", type=float, help="With --wait: give up after this many seconds.")
@click.option("--no-check", is_flag=True, help="Send the documents without validating them.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@client_options
@reported
def submit(
    documents: tuple[Path, ...],
    wait_: bool,
    wait_timeout: float | None,
    no_check: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Submit JSDL DOCUMENTS (CreateActivity); print one activity id per line.

    Each document is checked against JSDL 1.0 first (with the variants the service
    normalizes forgiven); an invalid one is reported with its line and element and not sent.
    A Source that is a local path (data.csv, relative to the document) is uploaded to the
    service's file store first, and the document sent with the file's URL instead.
    """
    from bes.cli.activities import wait_and_report
    from bes.client import staging

    loaded = [_load(path, check=not no_check) for path in documents]
    ctx = context(**flags)
    client = ctx.client()
    uploaded: dict[Path, str] = {}
    refs = []
    for document in loaded:
        urls = {}
        for source, file in document.inputs:
            key = file.resolve()
            if key not in uploaded:
                uploaded[key] = _upload(client, file, label=_shown(file))
            urls[source.uri] = uploaded[key]
        data = staging.rewrite(document.data, urls) if urls else document.data
        ref = client.submit(data, check=False)
        ctx.jobs.add(ref, endpoint=client.url, name=_job_name(data) or document.path.name)
        refs.append(ref)
        if not as_json:
            click.echo(ref.name)
            note(f"submitted {document.path} as {ref.name}")
    if wait_:
        wait_and_report(client, refs, wait_timeout, as_json=as_json)
    elif as_json:
        emit_json([{"id": r.name, "address": r.address} for r in refs])


def _load(path: Path, *, check: bool) -> _Document:
    """Read, check and find the local inputs of one document; nothing is sent.

    Raises:
        CommandError: The document or one of its local inputs cannot be read.
        InvalidJsdl: The document is invalid.
    """
    from bes.client import faults, jsdl, staging

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from exc
    if check:
        try:
            jsdl.check(data)
        except faults.InvalidJsdl as exc:
            raise faults.InvalidJsdl(f"{path}: {exc}", exc.problems) from exc
    try:
        sources = staging.local_sources(data)
        document_dir = path.resolve().parent
        inputs = tuple((s, staging.local_path(s.uri, document_dir)) for s in sources)
    except faults.InvalidJsdl as exc:
        raise faults.InvalidJsdl(f"{path}: {exc}", exc.problems) from exc
    for source, file in inputs:
        problem = _unreadable(file)
        if problem:
            raise CommandError(
                f"{path}: the input {source.file_name!r} is the local file {source.uri!r} "
                f"({_shown(file)}), which {problem}; nothing was sent",
                EXIT_USAGE,
            )
    return _Document(path=path, data=data, inputs=inputs)


def _shown(file: Path) -> str:
    """The file as the user would name it: from the working directory if it is below it."""
    absolute = os.path.normpath(os.path.abspath(file))
    relative = os.path.relpath(absolute)
    return absolute if relative.startswith("..") else relative


def _unreadable(file: Path) -> str | None:
    try:
        with file.open("rb"):
            pass
    except FileNotFoundError:
        return "does not exist"
    except IsADirectoryError:
        return "is a directory"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not file.is_file():
        return "is not a regular file"
    return None


def _upload(client: BESClient, file: Path, *, label: str) -> str:
    """Upload one file (a live line on a terminal), say what it cost, return its URL.

    Raises:
        CommandError: The service refused the file (too large, over quota): exit status 3.
    """
    from bes.cli._transfer import TransferLine, size
    from bes.client.files import UploadRefused

    line = TransferLine(label)
    try:
        done = client.upload_file(file, progress=line)
    except UploadRefused as exc:
        raise CommandError(f"{label}: {exc}", EXIT_FAULT) from exc
    finally:
        line.done()
    if done.size_bytes == 0:
        note(f"{label}: an empty file, stored")
        return done.url
    if done.sent_bytes == 0:
        note(f"{label}: already stored (0 bytes sent)")
        return done.url
    elapsed = line.elapsed_s
    rate = f", {size(done.sent_bytes / elapsed)}/s" if elapsed > 0 else ""
    resumed = (
        f" (resumed: {size(done.size_bytes - done.sent_bytes)} were there)"
        if done.sent_bytes < done.size_bytes
        else ""
    )
    note(f"{label}: uploaded {size(done.sent_bytes)} in {elapsed:.1f} s{rate}{resumed}")
    return done.url


def _job_name(document: bytes) -> str | None:
    from bes.client.jsdl import job_name

    return job_name(document)
