"""Files of the file store as URIs and requests name them, and the store's refusals.

Users name a stored file by URL: ``…/bes/files/sha256/HEX`` (their own file with that
content) or ``…/bes/files/name/PATH`` (the file they bound that name to). Stored jobs name
them ``bes-store:sha256/HEX`` and ``bes-store:name/PATH``, which workers resolve through their
lease (see bes.filestore).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote, urlsplit

from bes.errors import BesError

SCHEME: Final = "bes-store"
"""URI scheme of store files in stored jobs (workers resolve it through their lease)."""
FILES: Final = "/bes/files"
"""Path of the store below the service's base URL."""
_SHA256: Final = re.compile(r"[0-9a-f]{64}\Z")
_NAME_MAX: Final = 1024


class FileStoreError(BesError):
    """A request to the file store that cannot be served; the message says why."""


class InvalidFileRequest(FileStoreError):
    """Malformed: a bad sha256, name or range."""


class NoSuchFile(FileStoreError):
    """The caller has no such file."""


class FileExpired(NoSuchFile):
    """The file was stored once and has expired (or was removed)."""


class FileTooLarge(FileStoreError):
    """Larger than the site's limit for one file."""


class OverQuota(FileStoreError):
    """The owner's files would exceed their quota."""


class ChecksumMismatch(FileStoreError):
    """The bytes received do not have the sha256 they were sent under."""


class OffsetMismatch(FileStoreError):
    """A resumed upload does not start where the stored part ends."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class UploadBusy(FileStoreError):
    """Another upload of the same file is under way."""


class FileInUse(FileStoreError):
    """An activity that has not ended uses the file."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FileRef:
    """A file of the store as a URI names it: by sha256 or by name."""

    sha256: str | None = None
    name: str | None = None

    @property
    def uri(self) -> str:
        """The ``bes-store:`` URI of stored jobs."""
        if self.sha256 is not None:
            return f"{SCHEME}:sha256/{self.sha256}"
        return f"{SCHEME}:name/{quote(self.name or '')}"

    def describe(self) -> str:
        return f"sha256 {self.sha256}" if self.sha256 else f"name {self.name!r}"


def check_sha256(text: str) -> str:
    """``text`` if it is a sha256 in lower-case hex.

    Raises:
        InvalidFileRequest: It is not.
    """
    if not _SHA256.match(text):
        raise InvalidFileRequest(f"{text[:80]!r} is not a sha256 (64 lower-case hex digits)")
    return text


def check_name(text: str) -> str:
    """``text`` if it is a usable file name: a relative path without ``.``/``..`` parts,
    control characters or a trailing slash.

    Raises:
        InvalidFileRequest: It is not.
    """
    parts = text.split("/")
    if (
        not text
        or len(text) > _NAME_MAX
        or any(ord(c) < 0x20 or c == "\x7f" for c in text)
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise InvalidFileRequest(
            f"{text[:80]!r} is not a file name (a relative path without '.', '..' or empty parts)"
        )
    return text


def parse_ref(tail: str) -> FileRef:
    """The file a (decoded) path below ``…/files/`` names: ``sha256/HEX`` or ``name/PATH``.

    Raises:
        InvalidFileRequest: Neither.
    """
    kind, _, rest = tail.partition("/")
    if kind == "sha256":
        return FileRef(sha256=check_sha256(rest))
    if kind == "name":
        return FileRef(name=check_name(rest))
    raise InvalidFileRequest("store files are …/files/sha256/HEX or …/files/name/PATH")


def store_uri(uri: str, endpoint: str) -> FileRef | None:
    """The store file a staging URI names, if it is this service's store as reached at
    ``endpoint`` (the base URL the request came to: same scheme, host and port), or a
    ``bes-store:`` URI; None for any other URI.

    Raises:
        InvalidFileRequest: It is in the store's space but names no valid file.
    """
    if uri[: len(SCHEME) + 1].lower() == SCHEME + ":":
        return parse_ref(unquote(uri[len(SCHEME) + 1 :]))
    try:
        given, ours = urlsplit(uri), urlsplit(endpoint)
    except ValueError:
        return None
    if given.scheme.lower() not in ("http", "https") or given.query or given.fragment:
        return None
    prefix = ours.path.rstrip("/") + FILES + "/"
    same_place = (given.scheme.lower(), given.netloc.lower()) == (
        ours.scheme.lower(),
        ours.netloc.lower(),
    )
    if not same_place or not given.path.startswith(prefix):
        return None
    return parse_ref(unquote(given.path[len(prefix) :]))


def file_url(endpoint: str, ref: FileRef) -> str:
    """The URL users and jobs name a store file by."""
    tail = f"sha256/{ref.sha256}" if ref.sha256 else "name/" + quote(ref.name or "")
    return f"{endpoint.rstrip('/')}{FILES}/{tail}"
