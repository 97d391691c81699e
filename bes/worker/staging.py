"""Data staging on the worker: JSDL DataStaging Sources in before the VM, Targets out after.

Sources are fetched with http(s) GET (HTTP Basic with the element's UsernameToken, or
``Authorization: Bearer`` with UNICORE's BearerToken), with ftp RETR (the UsernameToken, else
the URI's user, else anonymous), taken from the document itself (UNICORE's inline data),
read from ``file:`` URIs under the directories the worker's owner allowed, or fetched from
the service's file store (``bes-store:`` URIs, through the lease, with the worker's own
token). CreationFlag applies when several elements name the same file, in document order:
``overwrite`` replaces it, ``append`` appends to it, ``dontOverwrite`` fails the job. Targets
are written with http(s) PUT (``dontOverwrite`` sends ``If-None-Match: *``, so an existing
file is never replaced), ftp STOR (APPE for ``append``; ``dontOverwrite`` checks SIZE
first), to ``file:`` URIs under the allowed directories, or into the service's file store. A
failure is a :class:`StagingError`, whose message says which file and why.
"""

from __future__ import annotations

import logging
import shutil
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Protocol

import requests

from bes.errors import BesError
from bes.filerefs import SCHEME as STORE
from bes.jsdl.model import CreationFlag, DataStaging, JobDefinition
from bes.vm.media import GuestResults, UnsafePath, safe_relative
from bes.worker import ftp
from bes.worker.ftp import StagingError, shown

log = logging.getLogger(__name__)

_CHUNK: Final = 1024 * 1024
_TIMEOUT_S: Final = 60.0


class ServiceStore(Protocol):
    """The service's file store, as a worker reaches it for one lease (``bes-store:`` URIs
    in the leased job). Both raise a :class:`bes.errors.BesError` whose message says what
    the service answered."""

    def fetch(self, uri: str, dest: Path) -> None: ...

    def deliver(self, uri: str, path: Path) -> None: ...


def fetch_inputs(
    job: JobDefinition,
    dest: Path,
    *,
    file_roots: Sequence[Path],
    store: ServiceStore | None = None,
) -> dict[str, Path]:
    """Fetch every DataStaging Source into ``dest``; returns file name -> local file."""
    inputs: dict[str, Path] = {}
    stagings = [s for s in job.job_description.data_staging if s.source is not None]
    dest.mkdir(parents=True, exist_ok=True)
    for index, staging in enumerate(stagings):
        name = _name(staging)
        fetched = _fetch(staging, dest / f"in-{index}", file_roots, store)
        if name not in inputs:
            inputs[name] = fetched
        elif staging.creation_flag is CreationFlag.DONT_OVERWRITE:
            raise StagingError(
                f"input {name!r}: an earlier DataStaging already created it and this one's "
                "CreationFlag is dontOverwrite"
            )
        elif staging.creation_flag is CreationFlag.APPEND:
            inputs[name] = _appended(inputs[name], fetched, dest / f"joined-{index}")
        else:
            inputs[name] = fetched
    return inputs


def deliver_outputs(
    job: JobDefinition,
    results: GuestResults,
    *,
    file_roots: Sequence[Path],
    store: ServiceStore | None = None,
) -> list[str]:
    """Deliver each output that has a Target; returns what failed, one line per file."""
    failures = []
    for staging in job.job_description.data_staging:
        if staging.target is None:
            continue
        try:
            name = _name(staging)
            produced = results.outputs.get(name)
            if produced is None:
                nested = any(n.startswith(name + "/") for n in results.outputs)
                why = "it is a directory" if nested else "the job did not produce it"
                raise StagingError(f"output {name!r} cannot be delivered: {why}")
            _deliver(staging, produced, file_roots, store)
        except StagingError as exc:
            log.warning("%s", exc)
            failures.append(str(exc))
    return failures


def kept_paths(results: GuestResults, names: Sequence[str]) -> dict[str, Path]:
    """The produced files among ``names`` (a directory stands for the files under it), keyed
    by the name they are kept under (``outputs/NAME``)."""
    kept = {}
    for wanted in names:
        try:
            name = safe_relative(wanted)
        except UnsafePath:
            continue
        for produced, path in results.outputs.items():
            if produced == name or produced.startswith(name + "/"):
                kept[f"outputs/{produced}"] = path
    return kept


# ------------------------------------------------------------------------------ helpers


def _through_store(
    staging: DataStaging,
    transfer: Callable[[ServiceStore], None],
    store: ServiceStore | None,
    role: str,
) -> None:
    if store is None:
        raise StagingError(f"{role} {staging.file_name!r}: no file store to reach here")
    try:
        transfer(store)
    except BesError as exc:
        raise StagingError(f"{role} {staging.file_name!r}: {exc}") from exc


def _name(staging: DataStaging) -> str:
    try:
        return safe_relative(staging.file_name)
    except UnsafePath as exc:
        raise StagingError(str(exc)) from exc


def _fetch(
    staging: DataStaging, dest: Path, file_roots: Sequence[Path], store: ServiceStore | None
) -> Path:
    uri = staging.source or ""
    parsed = urllib.parse.urlsplit(uri)
    scheme = parsed.scheme.lower()
    if scheme == STORE:
        _through_store(staging, lambda s: s.fetch(uri, dest), store, "input")
        return dest
    if scheme == "file":
        return _allowed_file(uri, file_roots, must_exist=True)
    if scheme == "inline":
        dest.write_text(staging.inline_data or "")
        return dest
    if scheme == "ftp":
        return ftp.fetch(uri, dest, credentials=_basic(staging), name=staging.file_name)
    if scheme not in ("http", "https"):
        raise StagingError(
            f"input {staging.file_name!r}: {scheme or 'relative'} URIs are not staged"
        )
    try:
        with requests.get(
            uri,
            stream=True,
            timeout=(10.0, _TIMEOUT_S),
            auth=_basic(staging),
            headers=_bearer(staging),
        ) as response:
            if response.status_code >= 400:
                raise StagingError(
                    f"input {staging.file_name!r}: GET {_shown(uri)} answered "
                    f"{response.status_code} {response.reason}"
                )
            with dest.open("wb") as out:
                for chunk in response.iter_content(_CHUNK):
                    out.write(chunk)
    except requests.RequestException as exc:
        raise StagingError(f"input {staging.file_name!r}: GET {_shown(uri)} failed: {exc}") from exc
    return dest


def _deliver(
    staging: DataStaging, produced: Path, file_roots: Sequence[Path], store: ServiceStore | None
) -> None:
    uri = staging.target or ""
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    flag = staging.creation_flag
    if scheme == STORE:
        _through_store(staging, lambda s: s.deliver(uri, produced), store, "output")
        return
    if scheme == "file":
        target = _allowed_file(uri, file_roots, must_exist=False)
        if flag is CreationFlag.DONT_OVERWRITE and target.exists():
            raise StagingError(
                f"output {staging.file_name!r}: {target} exists and CreationFlag is dontOverwrite"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        with (
            produced.open("rb") as source,
            target.open("ab" if flag is CreationFlag.APPEND else "wb") as out,
        ):
            shutil.copyfileobj(source, out)
        return
    if scheme == "ftp":
        ftp.deliver(
            uri,
            produced,
            credentials=_basic(staging),
            name=staging.file_name,
            append=flag is CreationFlag.APPEND,
            replace=flag is not CreationFlag.DONT_OVERWRITE,
        )
        return
    if scheme not in ("http", "https"):
        raise StagingError(
            f"output {staging.file_name!r}: {scheme or 'relative'} URIs are not staged"
        )
    if flag is CreationFlag.APPEND:
        raise StagingError(
            f"output {staging.file_name!r}: CreationFlag append cannot be honoured with HTTP PUT "
            f"to {_shown(uri)}"
        )
    headers = {"If-None-Match": "*"} if flag is CreationFlag.DONT_OVERWRITE else {}
    headers.update(_bearer(staging))
    try:
        with produced.open("rb") as body:
            response = requests.put(
                uri, data=body, headers=headers, timeout=(10.0, _TIMEOUT_S), auth=_basic(staging)
            )
    except requests.RequestException as exc:
        raise StagingError(
            f"output {staging.file_name!r}: PUT {_shown(uri)} failed: {exc}"
        ) from exc
    if response.status_code == 412:
        raise StagingError(
            f"output {staging.file_name!r}: {_shown(uri)} exists and CreationFlag is dontOverwrite"
        )
    if response.status_code >= 400:
        raise StagingError(
            f"output {staging.file_name!r}: PUT {_shown(uri)} answered "
            f"{response.status_code} {response.reason}"
        )


def _allowed_file(uri: str, file_roots: Sequence[Path], *, must_exist: bool) -> Path:
    parsed = urllib.parse.urlsplit(uri)
    if parsed.netloc not in ("", "localhost"):
        raise StagingError(f"{uri}: file URIs of other hosts cannot be reached")
    path = Path(urllib.parse.unquote(parsed.path)).resolve()
    for root in file_roots:
        if path.is_relative_to(root.resolve()):
            break
    else:
        allowed = ", ".join(str(r) for r in file_roots) or "none"
        raise StagingError(
            f"{uri}: this worker stages file URIs only under its allowed directories ({allowed})"
        )
    if must_exist and not path.is_file():
        raise StagingError(f"{uri}: no such file")
    return path


def _appended(first: Path, second: Path, dest: Path) -> Path:
    with dest.open("wb") as out:
        for part in (first, second):
            with part.open("rb") as source:
                shutil.copyfileobj(source, out)
    return dest


def _basic(staging: DataStaging) -> tuple[str, str] | None:
    token = staging.credential.username_token if staging.credential else None
    return (token.username, token.password) if token is not None else None


def _bearer(staging: DataStaging) -> dict[str, str]:
    token = staging.credential.bearer_token if staging.credential else None
    return {"Authorization": f"Bearer {token}"} if token else {}


_shown = shown
