"""The file store over HTTP, for its users (bes.filestore)::

    GET    /bes/files                  JSON: the caller's files, usage and quota
    HEAD   /bes/files/sha256/HEX       200 if stored; else 404 with ``Upload-Offset``
    PUT    /bes/files/sha256/HEX       the file, or a part (``Content-Range: bytes S-E/TOTAL``):
                                       201 stored, 200 it was already, 202 a part is in
    GET    /bes/files/sha256/HEX       the file          DELETE: remove it
    PUT    /bes/files/name/PATH        store a whole file and name it PATH
    GET    /bes/files/name/PATH        the file it names DELETE: remove the name

The caller is decided by the identity policy, as for SOAP requests, and only ever sees their
own files. Errors are JSON ``{"error": KIND, "message": TEXT}``: 400 (bad request, checksum
mismatch), 404 (no such file), 409 (a resumed upload starts elsewhere: ``Upload-Offset``
says where; another upload of the file is under way; the file is in use), 410 (expired),
411 (no length), 413 (larger than the site takes) or 507 (over quota).
"""

from __future__ import annotations

import json
import re
from typing import Final

from bes.filerefs import (
    FILES,
    ChecksumMismatch,
    FileExpired,
    FileInUse,
    FileRef,
    FileStoreError,
    FileTooLarge,
    InvalidFileRequest,
    NoSuchFile,
    OffsetMismatch,
    OverQuota,
    UploadBusy,
    file_url,
    parse_ref,
)
from bes.filestore import FileStore
from bes.http import (
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    headers_of,
    not_allowed,
    respond,
    respond_file,
    respond_json,
    stream_body,
)
from bes.principal import Principal

_OCTETS: Final = b"application/octet-stream"
_RANGE: Final = re.compile(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19})\Z")
_STATUS: Final[tuple[tuple[type[FileStoreError], int, str], ...]] = (
    (FileExpired, 410, "expired"),
    (NoSuchFile, 404, "not-found"),
    (OffsetMismatch, 409, "offset-mismatch"),
    (UploadBusy, 409, "upload-busy"),
    (FileInUse, 409, "in-use"),
    (FileTooLarge, 413, "too-large"),
    (OverQuota, 507, "over-quota"),
    (ChecksumMismatch, 400, "checksum-mismatch"),
    (InvalidFileRequest, 400, "bad-request"),
)


async def serve_files(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    caller: Principal,
    store: FileStore,
    endpoint: str,
) -> None:
    """Answer a request under ``/bes/files`` for ``caller``."""
    method: str = scope["method"]
    tail = scope["path"][len(FILES) :].strip("/")
    try:
        if not tail:
            if method not in ("GET", "HEAD"):
                await not_allowed(send, "GET")
            else:
                await _listing(send, caller, store, endpoint)
            return
        ref = parse_ref(tail)
        if method in ("GET", "HEAD"):
            await _read(scope, send, caller, store, ref)
        elif method == "PUT":
            await _write(scope, receive, send, caller, store, ref, endpoint)
        elif method == "DELETE":
            if ref.sha256 is not None:
                await store.remove(caller.name, ref.sha256)
            else:
                await store.unbind(caller.name, ref.name or "")
            await respond(send, 204, b"", _OCTETS)
        else:
            await not_allowed(send, "GET, HEAD, PUT, DELETE")
    except BodyTooLarge:
        return  # the client went away during an upload: what arrived is kept for a resume
    except FileStoreError as exc:
        await _refuse(send, exc)


async def _listing(send: Send, caller: Principal, store: FileStore, endpoint: str) -> None:
    used, quota = await store.usage(caller.name)
    files = await store.listing(caller.name)
    await respond_json(
        send,
        200,
        {
            "files": [
                {
                    "sha256": f.sha256,
                    "bytes": f.bytes,
                    "url": file_url(endpoint, FileRef(sha256=f.sha256)),
                    "names": list(f.names),
                    "created": f.created_at.isoformat(),
                    "last_used": f.last_used_at.isoformat(),
                }
                for f in files
            ],
            "used_bytes": used,
            "quota_bytes": quota,
            "max_file_bytes": store.max_file_bytes,
            "expire_after_s": store.expire_after_s,
        },
    )


async def _read(
    scope: Scope, send: Send, caller: Principal, store: FileStore, ref: FileRef
) -> None:
    head = scope["method"] == "HEAD"
    if ref.sha256 is not None and head:
        state = await store.upload_state(caller.name, ref.sha256)
        if not state.complete:
            offset = str(state.offset).encode()
            await respond(send, 404, b"", _OCTETS, extra=[(b"upload-offset", offset)])
        else:  # upload_state found it live: no second lookup
            await respond_file(send, store.blob(caller.name, ref.sha256), _OCTETS, head=True)
        return
    found = await store.live(caller.name, ref)
    await respond_file(send, store.blob(caller.name, found.sha256), _OCTETS, head=head)


async def _write(  # noqa: PLR0917 - the request's parts, then what serves it
    scope: Scope,
    receive: Receive,
    send: Send,
    caller: Principal,
    store: FileStore,
    ref: FileRef,
    endpoint: str,
) -> None:
    headers = headers_of(scope)
    length = headers.get("content-length")
    given_range = headers.get("content-range")
    if length is None or not length.isdigit():
        await respond_json(
            send,
            411,
            {"error": "length-required", "message": "send the file with a Content-Length"},
            close=True,
        )
        return
    size = int(length)
    start, total = 0, size
    if given_range is not None:
        match = _RANGE.match(given_range.strip())
        if ref.sha256 is None or match is None:
            raise InvalidFileRequest(
                "Content-Range must be 'bytes START-END/TOTAL', on …/files/sha256/HEX only"
            )
        start, end, total = (int(g) for g in match.groups())
        if end < start or end >= total or end - start + 1 != size:
            raise InvalidFileRequest(f"Content-Range {given_range!r} does not match the body")
    body = stream_body(receive)
    if ref.sha256 is None:
        sha256 = await store.store_stream(caller.name, body, total=size, name=ref.name)
        await respond_json(
            send,
            201,
            {"url": file_url(endpoint, ref), "sha256": sha256, "bytes": size},
        )
        return
    state = await store.receive(caller.name, ref.sha256, body, start=start, total=total)
    if not state.complete:
        await respond_json(send, 202, {"offset": state.offset, "bytes": total})
        return
    url = file_url(endpoint, ref)
    stored = {"url": url, "sha256": ref.sha256, "bytes": state.total}
    await respond_json(send, 200 if state.existed else 201, stored)


def file_error_status(exc: FileStoreError) -> tuple[int, str]:
    """The HTTP status and error kind of a file store refusal."""
    return next(((s, k) for cls, s, k in _STATUS if isinstance(exc, cls)), (400, "error"))


async def _refuse(send: Send, exc: FileStoreError) -> None:
    status, kind = file_error_status(exc)
    extra = []
    if isinstance(exc, OffsetMismatch):
        extra.append((b"upload-offset", str(exc.offset).encode()))
    body = {"error": kind, "message": str(exc)}
    await respond(
        send,
        status,
        json.dumps(body).encode() + b"\n",
        b"application/json",
        close=status in (411, 413, 507),
        extra=extra,
    )
