"""VM leases over HTTP, for their owners (and administrators)::

    GET  /bes/activities/ID/lease             JSON: state, login, host keys, ports, tunnel URL
    POST /bes/activities/ID/suspend           pause the lease's VM (its wall time stops)
    POST /bes/activities/ID/resume            and let it go on
    GET  /bes/activities/ID/tunnel?port=N     WebSocket: one TCP stream to guest port N

The caller is decided by the identity policy, as for SOAP requests; an activity of another
owner looks exactly like one that does not exist. The same facts are in the activity's BES
status (``besa:Access``, the ``besa:Suspended`` sub-state) for any BES client.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import parse_qs

from bes.activities import Activities
from bes.db.activity_rows import ActivityRecord
from bes.errors import InvalidRequest
from bes.http import TEXT, Receive, Scope, Send, respond, respond_json
from bes.ids import ActivityId, parse_activity_id
from bes.principal import Principal
from bes.relay import Relay, refuse
from bes.states import ActivityState, SubState
from bes.wire import ACTIVITY_PATH, tunnel_url

LEASE: Final = "lease"
SUSPEND: Final = "suspend"
RESUME: Final = "resume"
TUNNEL: Final = "tunnel"


def lease_route(path: str) -> tuple[ActivityId | None, str]:
    """The activity id and the resource (lease, suspend, resume, tunnel) of a path under
    ``/bes/activities/``, or ``(None, "")``."""
    if not path.startswith(ACTIVITY_PATH):
        return None, ""
    raw_id, _, tail = path[len(ACTIVITY_PATH) :].partition("/")
    if tail not in (LEASE, SUSPEND, RESUME, TUNNEL):
        return None, ""
    return parse_activity_id(raw_id), tail


def describe(record: ActivityRecord, endpoint: str) -> dict[str, Any]:
    """A lease as ``bes ssh`` and ``bes port-forward`` read it (JSON-ready)."""
    access = record.access
    return {
        "activity": record.id,
        "state": record.state.value,
        "substate": record.substate.value if record.substate else None,
        "message": record.message,
        "ready": access is not None and not record.state.terminal,
        "suspended": record.substate is SubState.SUSPENDED,
        "user": access.user if access else None,
        "host_keys": list(access.host_keys) if access else [],
        "ports": [{"guest": g, "host": h} for g, h in access.ports] if access else [],
        "tunnel": tunnel_url(endpoint, record.id),
    }


async def serve_lease(
    scope: Scope,
    send: Send,
    *,
    caller: Principal,
    activities: Activities,
    endpoint: str,
) -> None:
    """``GET …/ID/lease`` and ``POST …/ID/suspend|resume``."""
    activity_id, resource = lease_route(scope["path"])
    method = scope["method"]
    if activity_id is None:
        await respond(send, 404, b"no such activity\n", TEXT)
        return
    if resource == LEASE and method in ("GET", "HEAD"):
        record = (await activities.statuses(caller, [activity_id])).get(activity_id)
        if record is None:
            await respond(send, 404, b"no such activity\n", TEXT)
            return
        await respond_json(send, 200, describe(record, endpoint))
        return
    if resource in (SUSPEND, RESUME) and method == "POST":
        try:
            found = await activities.suspend(caller, activity_id, resource == SUSPEND)
        except InvalidRequest as exc:
            await respond(send, 409, f"{exc}\n".encode(), TEXT)
            return
        if found is None:
            await respond(send, 404, b"no such activity\n", TEXT)
            return
        await respond_json(
            send,
            202,
            {
                "activity": activity_id,
                "suspended": resource == SUSPEND,
                "message": "its worker applies it at its next heartbeat",
            },
        )
        return
    await respond(send, 405, b"method not allowed\n", TEXT)


async def serve_tunnel(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    caller: Principal,
    activities: Activities,
    relay: Relay,
) -> None:
    """``…/ID/tunnel?port=N`` (WebSocket): one stream to a forwarded port of a running lease
    the caller may see."""
    activity_id, resource = lease_route(scope["path"])
    port = stream_port(scope)
    if activity_id is None or resource != TUNNEL or port is None:
        await refuse(scope, send, 404, "no such tunnel: use /bes/activities/ID/tunnel?port=N")
        return
    record = (await activities.statuses(caller, [activity_id])).get(activity_id)
    if record is None:
        await refuse(scope, send, 404, f"no activity {activity_id}")
        return
    if record.state is not ActivityState.RUNNING or record.access is None:
        await refuse(
            scope,
            send,
            409,
            f"{activity_id} is not a running VM lease whose VM is up "
            f"({record.state.value}{': ' + record.message if record.message else ''})",
        )
        return
    if port not in record.access.guest_ports():
        forwarded = ", ".join(str(p) for p in sorted(record.access.guest_ports()))
        await refuse(
            scope, send, 403, f"guest port {port} is not forwarded by {activity_id} ({forwarded})"
        )
        return
    if record.substate is SubState.SUSPENDED:
        await refuse(scope, send, 409, f"{activity_id} is suspended; bes lease resume it first")
        return
    await relay.serve_stream(activity_id, port, scope, receive, send)


def stream_port(scope: Scope) -> int | None:
    """The ``port`` a stream asks for (``?port=N``, one TCP port), or None."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("port", [])
    if len(values) != 1 or not values[0].isdigit() or not 0 < int(values[0]) < 65536:
        return None
    return int(values[0])
