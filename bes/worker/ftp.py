"""FTP staging (RFC 959 / RFC 1738 URLs), as HPC Basic Profile interop jobs use it.

The path of ``ftp://host/dir/file`` is relative to the login directory and
``ftp://host//home/x`` is absolute, as RFC 1738 has it. The login is the DataStaging's
UsernameToken, else the URL's user and password, else anonymous. Transfers are binary,
passive, and bounded by a timeout.
"""

from __future__ import annotations

import ftplib
import urllib.parse
from pathlib import Path
from typing import Final

from bes.errors import BesError

_TIMEOUT_S: Final = 60.0


class StagingError(BesError):
    """An input cannot be fetched or an output cannot be delivered."""


def fetch(uri: str, dest: Path, *, credentials: tuple[str, str] | None, name: str) -> Path:
    """RETR ``uri`` into ``dest``."""
    path = _path(uri)
    try:
        with _session(uri, credentials) as session, dest.open("wb") as out:
            session.retrbinary(f"RETR {path}", out.write)
    except (ftplib.Error, OSError, EOFError) as exc:
        raise StagingError(f"input {name!r}: RETR {shown(uri)} failed: {_why(exc)}") from exc
    return dest


def deliver(
    uri: str,
    source: Path,
    *,
    credentials: tuple[str, str] | None,
    name: str,
    append: bool,
    replace: bool,
) -> None:
    """STOR (or APPE) ``source`` to ``uri``; with ``replace`` false, an existing file there
    is an error (CreationFlag dontOverwrite)."""
    path = _path(uri)
    try:
        with _session(uri, credentials) as session:
            if not replace and _exists(session, path):
                raise StagingError(
                    f"output {name!r}: {shown(uri)} exists and CreationFlag is dontOverwrite"
                )
            with source.open("rb") as data:
                session.storbinary(f"{'APPE' if append else 'STOR'} {path}", data)
    except (ftplib.Error, OSError, EOFError) as exc:
        raise StagingError(f"output {name!r}: STOR {shown(uri)} failed: {_why(exc)}") from exc


def shown(uri: str) -> str:
    """A URI without the password it may carry."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.password is None:
        return uri
    netloc = f"{parsed.username}:***@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


def _session(uri: str, credentials: tuple[str, str] | None) -> ftplib.FTP:
    parsed = urllib.parse.urlsplit(uri)
    if not parsed.hostname:
        raise StagingError(f"{shown(uri)} names no host")
    user, password = credentials or (
        urllib.parse.unquote(parsed.username or "anonymous"),
        urllib.parse.unquote(parsed.password or "anonymous@"),
    )
    session = ftplib.FTP(timeout=_TIMEOUT_S)  # noqa: S321 - jobs name ftp: URIs; it is their choice
    session.connect(parsed.hostname, parsed.port or 21)
    try:
        session.login(user, password)
    except BaseException:
        session.close()
        raise
    return session


def _path(uri: str) -> str:
    path = urllib.parse.urlsplit(uri).path
    return urllib.parse.unquote(path[1:] if path.startswith("/") else path)


def _exists(session: ftplib.FTP, path: str) -> bool:
    try:
        session.voidcmd("TYPE I")
        return session.size(path) is not None
    except ftplib.error_perm:
        return False


def _why(exc: BaseException) -> str:
    return str(exc).strip() or exc.__class__.__name__
