"""Uploads to a bes service's file store (an extension of ours, ``…/bes/files``).

A file is named by its sha256 in the caller's own store: the client hashes it first and asks
(``HEAD``) whether the service already holds it, so a file sent once is never sent again.
Otherwise it is sent with a ``PUT`` that says its length; an upload cut short is resumed
where the service says it stopped (``Upload-Offset``) with a ``Content-Range``, a few times
before giving up; while another upload of the same file is under way (HTTP 409), it waits
for that one. The service checks the sha256 when the last byte is in.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import requests

from bes.client._http import describe_failure, service_message
from bes.client.faults import ConnectionProblem, HttpProblem

Progress = Callable[[int, int], None]
"""Called with the bytes sent so far (of this file) and its size."""

_CHUNK: Final = 1024 * 1024
_ATTEMPTS: Final = 4
_BUSY_WAIT_S: Final = 0.5


class UploadRefused(HttpProblem):
    """The service refused the upload (too large, over quota, checksum mismatch, …); the
    message is the service's."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Uploaded:
    """A file in the service's store."""

    url: str
    """Name it by this URL in a JSDL Source."""
    sha256: str
    size_bytes: int
    sent_bytes: int
    """Bytes this upload sent (0 when the service already had the file)."""


def file_digest(path: Path) -> tuple[str, int]:
    """The sha256 (hex) and size of a local file."""
    with path.open("rb") as source:
        digest = hashlib.file_digest(source, "sha256")
        return digest.hexdigest(), source.tell()


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """How to reach the service: its session and what each request needs."""

    session: requests.Session
    verify: bool | str
    auth: tuple[str, str] | None
    timeout_s: float


def upload(
    files_url: str, path: Path, connection: Connection, *, progress: Progress | None = None
) -> Uploaded:
    """Put ``path`` into the store at ``files_url`` (``…/bes/files``) unless it is there.

    Raises:
        UploadRefused: The service refused it (the message says why).
        ConnectionProblem: The service could not be reached, or the upload kept failing.
    """
    sha256, size = file_digest(path)
    url = f"{files_url.rstrip('/')}/sha256/{sha256}"
    sent = failures = 0
    deadline = time.monotonic() + connection.timeout_s
    while True:
        offset = _stored_offset(url, connection, size)
        if offset is None:
            if progress is not None:
                progress(size, size)
            return Uploaded(url=url, sha256=sha256, size_bytes=size, sent_bytes=sent)
        try:
            sent += _put(url, path, connection, offset=offset, size=size, progress=progress)
        except ConnectionProblem:
            failures += 1
            if failures >= _ATTEMPTS:
                raise
            continue  # resumed from where the service says it stopped
        except UploadRefused as exc:
            # 409: another upload of the same file (another thread, process or machine of
            # this user) is under way: wait for it, then find the file stored or resume.
            if exc.status != 409 or time.monotonic() > deadline:
                raise
            time.sleep(_BUSY_WAIT_S)
            continue
        return Uploaded(url=url, sha256=sha256, size_bytes=size, sent_bytes=sent)


def _stored_offset(url: str, connection: Connection, size: int) -> int | None:
    """None if the service holds the file; else the bytes of it it holds."""
    try:
        answer = connection.session.head(
            url, timeout=connection.timeout_s, verify=connection.verify, auth=connection.auth
        )
    except requests.RequestException as exc:
        raise describe_failure(exc, url, connection.timeout_s) from exc
    if answer.status_code == 200:
        return None
    if answer.status_code != 404:
        _refused(answer, url)
    offset = answer.headers.get("upload-offset", "0")
    return int(offset) if offset.isdigit() and int(offset) <= size else 0


def _put(
    url: str,
    path: Path,
    connection: Connection,
    *,
    offset: int,
    size: int,
    progress: Progress | None,
) -> int:
    headers = {"Content-Type": "application/octet-stream"}
    if offset:
        headers["Content-Range"] = f"bytes {offset}-{size - 1}/{size}"
    with path.open("rb") as source:
        source.seek(offset)
        body = _Body(source, offset=offset, size=size, progress=progress)
        try:
            answer = connection.session.put(
                url,
                data=body if size - offset else b"",
                headers=headers,
                timeout=connection.timeout_s,
                verify=connection.verify,
                auth=connection.auth,
            )
        except requests.RequestException as exc:
            raise describe_failure(exc, url, connection.timeout_s) from exc
    if answer.status_code not in (200, 201):
        _refused(answer, url)
    return body.sent


class _Body:
    """The rest of a file as a request body of known length, reporting progress."""

    def __init__(self, source: IO[bytes], *, offset: int, size: int, progress: Progress | None):
        self._source = source
        self._offset = offset
        self._size = size
        self._progress = progress
        self.sent = 0

    def __len__(self) -> int:
        return self._size - self._offset

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self._source.read(_CHUNK):
            self.sent += len(chunk)
            if self._progress is not None:
                self._progress(self._offset + self.sent, self._size)
            yield chunk


def _refused(answer: requests.Response, url: str) -> None:
    raise UploadRefused(
        f"{url} refused the upload (HTTP {answer.status_code}): {service_message(answer)}",
        status=answer.status_code,
        url=url,
    )
