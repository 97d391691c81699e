"""An activity's kept files over HTTP, for its owner::

    GET /bes/activities/ID/outputs          JSON: the files (name, bytes, url)
    GET /bes/activities/ID/outputs/NAME     one file: stdout, stderr, outputs/FILE, ...
    GET /bes/activities/ID/why              JSON: why it is where it is (bes why)

The caller is decided by the identity policy, as for SOAP requests; an activity of another
owner looks exactly like one that does not exist. The activity's status carries the listing's
URL (``besa:Outputs``) once there are files.
"""

from __future__ import annotations

import asyncio
from typing import Final
from urllib.parse import quote, unquote

from bes.activities import Activities
from bes.backends.base import kept_files
from bes.http import TEXT, Scope, Send, respond, respond_file, respond_json
from bes.ids import parse_activity_id
from bes.principal import Principal
from bes.vm.media import UnsafePath, safe_relative
from bes.wire import ACTIVITY_PATH

OUTPUTS: Final = "outputs"
WHY: Final = "why"
_OCTETS: Final = b"application/octet-stream"


def outputs_url(endpoint: str, activity_id: str) -> str:
    """Where an activity's kept files are listed."""
    return f"{endpoint}{ACTIVITY_PATH}{activity_id}/{OUTPUTS}"


async def serve_why(scope: Scope, send: Send, *, caller: Principal, activities: Activities) -> None:
    """Answer ``GET /bes/activities/ID/why``: JSON, why the activity waits (``bes why``)."""
    rest = scope["path"][len(ACTIVITY_PATH) :]
    raw_id, _, tail = rest.partition("/")
    activity_id = parse_activity_id(raw_id) if tail == WHY else None
    found = await activities.why(caller, activity_id) if activity_id else None
    if found is None:
        await respond(send, 404, b"no such activity\n", TEXT)
        return
    await respond_json(send, 200, found)


async def serve_outputs(
    scope: Scope,
    send: Send,
    *,
    caller: Principal,
    activities: Activities,
    endpoint: str,
) -> None:
    """Answer a GET under ``/bes/activities/ID/outputs`` for ``caller`` (as the identity
    policy decided it)."""
    rest = scope["path"][len(ACTIVITY_PATH) :]
    raw_id, _, tail = rest.partition("/")
    name = unquote(tail[len(OUTPUTS) :].lstrip("/")) if tail.startswith(OUTPUTS) else None
    activity_id = parse_activity_id(raw_id)
    directory = await activities.outputs(caller, activity_id) if activity_id else None
    if activity_id is None or name is None or directory is None:
        await respond(send, 404, b"no such activity, or it has no kept files\n", TEXT)
        return
    if not name:
        files = await asyncio.to_thread(kept_files, directory)
        base = outputs_url(endpoint, activity_id)
        await respond_json(
            send,
            200,
            {
                "activity": activity_id,
                "files": [
                    {"name": n, "bytes": size, "url": f"{base}/{quote(n)}"} for n, size in files
                ],
            },
        )
        return
    try:
        path = directory / safe_relative(name)
    except UnsafePath:
        path = None
    if path is None or not path.is_file() or path.name.endswith(".partial"):
        await respond(send, 404, b"no such file\n", TEXT)
        return
    await respond_file(send, path, _OCTETS, head=scope["method"] == "HEAD")
