"""The worker protocol over HTTP: JSON beside the SOAP endpoint, at ``/worker/v1/``.

Every call carries the worker's token (``Authorization: Bearer TOKEN``). Workers open every
connection; the service never calls them. The routes, their bodies and answers are described
by ``schemas/worker-api-v1.json`` (OpenAPI 3.1), served at ``/worker/v1/openapi.json``::

    POST /worker/v1/register                       host facts in, protocol timing out
    POST /worker/v1/claim                          what fits the worker now, out: leases
    POST /worker/v1/heartbeat                      renew leases, report sub-states; out:
                                                   continue | cancel | lost per lease
    PUT  /worker/v1/leases/LEASE/files/NAME        upload one output file (raw body)
    POST /worker/v1/leases/LEASE/complete          the job ran: exit code, timing
    POST /worker/v1/leases/LEASE/fail              the job could not run (retry or not)
    POST /worker/v1/leases/LEASE/release           hand the job back unfinished

Errors are JSON ``{"error": KIND, "message": TEXT}`` with 400 (bad request), 401 (no or bad
token), 404, 409 (``lease-lost``: the lease is not the worker's any more; drop the job),
413 (too large) or 503 (store unavailable; try again later).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import unquote

from bes.backends.desktopgrid.gateway import ClaimRequest, WorkerGateway, lease_id
from bes.backends.desktopgrid.outputs import OutputTooLarge, UnsafePath
from bes.db.grid_rows import Lease, WorkerIdentity
from bes.errors import InvalidRequest, LeaseLost, NotAuthorized, StoreError
from bes.http import (
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    headers_of,
    not_allowed,
    read_body,
    respond,
    respond_json,
    stream_body,
)
from bes.identity import bearer_token
from bes.schemas import schema_file

log = logging.getLogger(__name__)

PREFIX: Final = "/worker/v1/"
OPENAPI_FILE: Final = "worker-api-v1.json"
_MAX_JSON_BYTES: Final = 256 * 1024
_HYPERVISORS: Final = frozenset({"qemu", "virtualbox"})

Handler = Callable[[WorkerIdentity, dict[str, Any]], Awaitable[tuple[int, Any]]]


class _BadRequest(InvalidRequest):
    """A worker sent a body this protocol does not allow (HTTP 400)."""


class WorkerApi:
    """ASGI handler of ``/worker/v1/`` (see the module docstring)."""

    def __init__(self, gateway: WorkerGateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"][len(PREFIX) :]
        method: str = scope["method"]
        if path == "openapi.json":
            if method not in ("GET", "HEAD"):
                await not_allowed(send, "GET")
                return
            data = schema_file(OPENAPI_FILE).read_bytes()
            await respond(send, 200, data, b"application/json")
            return
        # An upload refused part-way leaves body bytes on the connection: close it then.
        close = "/files/" in path
        try:
            await self._authorized(scope, receive, send, path, method)
        except NotAuthorized as exc:
            await _error(send, 401, "unauthorized", str(exc), close=close)
        except LeaseLost as exc:
            await _error(send, 409, "lease-lost", str(exc), close=close)
        except (InvalidRequest, UnsafePath) as exc:
            await _error(send, 400, "bad-request", str(exc), close=close)
        except (OutputTooLarge, BodyTooLarge) as exc:
            await _error(send, 413, "too-large", str(exc), close=True)
        except StoreError as exc:
            await _error(send, 503, "unavailable", f"{exc}; try again later", close=close)
        except Exception:
            reference = secrets.token_hex(4)
            log.exception("internal error %s on %s %s", reference, method, scope["path"])
            await _error(
                send, 500, "internal", f"internal error (reference {reference})", close=close
            )

    async def _authorized(
        self, scope: Scope, receive: Receive, send: Send, path: str, method: str
    ) -> None:
        headers = headers_of(scope)
        worker = await self.gateway.authenticate(bearer_token(headers))
        parts = path.split("/")
        if len(parts) >= 4 and parts[0] == "leases" and parts[2] == "files":
            if method != "PUT":
                await not_allowed(send, "PUT")
                return
            name = unquote("/".join(parts[3:]))
            size = await self.gateway.upload(worker, unquote(parts[1]), name, stream_body(receive))
            await respond_json(send, 200, {"name": name, "bytes": size})
            return
        handler = self._handler(parts)
        if handler is None:
            await _error(send, 404, "not-found", f"no worker API route {scope['path']}")
            return
        if method != "POST":
            await not_allowed(send, "POST")
            return
        body = await read_body(receive, headers, _MAX_JSON_BYTES)
        if body is None:
            raise BodyTooLarge(f"JSON bodies are limited to {_MAX_JSON_BYTES} bytes")
        try:
            data = json.loads(body or b"{}")
        except ValueError as exc:
            raise _BadRequest(f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise _BadRequest("the body must be a JSON object")
        status, answer = await handler(worker, data)
        if isinstance(answer, bytes):
            await respond(send, status, answer, b"application/json")
        else:
            await respond_json(send, status, answer)

    def _handler(self, parts: list[str]) -> Handler | None:
        if len(parts) == 1:
            return {
                "register": self._register,
                "claim": self._claim,
                "heartbeat": self._heartbeat,
            }.get(parts[0])
        if len(parts) == 3 and parts[0] == "leases":
            verb = {
                "complete": self._complete,
                "fail": self._fail,
                "release": self._release,
            }.get(parts[2])
            if verb is None:
                return None
            lease = unquote(parts[1])

            async def with_lease(worker: WorkerIdentity, data: dict[str, Any]) -> tuple[int, Any]:
                return await verb(worker, {**data, "_lease": lease})

            return with_lease
        return None

    # ------------------------------------------------------------------ handlers

    async def _register(self, worker: WorkerIdentity, data: dict[str, Any]) -> tuple[int, Any]:
        facts = data.get("facts", {})
        if not isinstance(facts, dict) or len(json.dumps(facts)) > 16384:
            raise _BadRequest("facts must be a JSON object of at most 16 KiB")
        return 200, await self.gateway.register(worker, facts)

    async def _claim(self, worker: WorkerIdentity, data: dict[str, Any]) -> tuple[int, Any]:
        leases = await self.gateway.claim(worker, _claim_request(data))
        return 200, b'{"leases":' + _leases_json(leases) + b"}"

    async def _heartbeat(self, worker: WorkerIdentity, data: dict[str, Any]) -> tuple[int, Any]:
        leases = data.get("leases", [])
        if not isinstance(leases, list) or len(leases) > 256:
            raise _BadRequest("leases must be a list of at most 256 entries")
        reports: list[tuple[str, str | None]] = []
        for entry in leases:
            if not isinstance(entry, dict) or not isinstance(entry.get("lease"), str):
                raise _BadRequest('each lease entry needs "lease" (a string)')
            substate = entry.get("substate")
            if substate is not None and not isinstance(substate, str):
                raise _BadRequest("substate must be a string")
            reports.append((entry["lease"], substate))
        actions = await self.gateway.heartbeat(worker, reports)
        return 200, {
            "leases": {k: v.value for k, v in actions.items()},
            "heartbeat_s": self.gateway.config.heartbeat_s,
        }

    async def _complete(self, worker: WorkerIdentity, data: dict[str, Any]) -> tuple[int, Any]:
        timing = data.get("timing", {})
        if not isinstance(timing, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in timing.values()
        ):
            raise _BadRequest("timing must map names to seconds")
        failure = data.get("failure")
        if failure is not None and not isinstance(failure, str):
            raise _BadRequest("failure must be a string")
        state = await self.gateway.complete(
            worker,
            data["_lease"],
            exit_code=_integer(data, "exit_code", None, low=-(2**31), high=2**31 - 1),
            failure=failure[:4000] if failure else None,
            timing={str(k): float(v) for k, v in timing.items()},
            files=_names(data),
        )
        answer = b'{"state":"' + state.value.encode() + b'"'
        if "claim" in data:  # the next job, in the same round trip
            if not isinstance(data["claim"], dict):
                raise _BadRequest("claim must be an object, as the body of /claim")
            leases = await self.gateway.claim(worker, _claim_request(data["claim"]))
            answer += b',"leases":' + _leases_json(leases)
        return 200, answer + b"}"

    async def _fail(self, worker: WorkerIdentity, data: dict[str, Any]) -> tuple[int, Any]:
        state = await self.gateway.fail(
            worker,
            data["_lease"],
            message=_text(data, "message"),
            retry=_boolean(data, "retry", False),
            files=_names(data),
        )
        return 200, {"state": state.value}

    async def _release(self, worker: WorkerIdentity, data: dict[str, Any]) -> tuple[int, Any]:
        state = await self.gateway.release(worker, data["_lease"], message=_text(data, "message"))
        return 200, {"state": state.value}


def _claim_request(data: dict[str, Any]) -> ClaimRequest:
    hypervisors = data.get("hypervisors", [])
    if not isinstance(hypervisors, list) or not set(hypervisors) <= _HYPERVISORS:
        raise _BadRequest(f"hypervisors must be a list drawn from {sorted(_HYPERVISORS)}")
    return ClaimRequest(
        slots=_integer(data, "slots", 1, low=0, high=16),
        memory_mib=_integer(data, "memory_mib", None, low=0),
        vcpus=_integer(data, "vcpus", None, low=0),
        disk_mib=_integer(data, "disk_mib", None, low=0),
        hypervisors=tuple(str(h) for h in hypervisors),
        network=_boolean(data, "network", False),
        wait_s=_number(data, "wait_s", 0.0, low=0.0),
    )


def _leases_json(leases: list[Lease]) -> bytes:
    """Leases as a JSON array. The job is stored as JSON text: it is embedded as is rather
    than parsed and encoded again."""
    items = [
        b'{"lease":'
        + json.dumps(lease_id(lease.ref)).encode()
        + b',"activity":'
        + json.dumps(lease.activity_id).encode()
        + b',"attempt":%d,"max_attempts":%d,"job":' % (lease.attempt, lease.max_attempts)
        + lease.job.encode()
        + b"}"
        for lease in leases
    ]
    return b"[" + b",".join(items) + b"]"


def _integer(
    data: dict[str, Any], key: str, default: int | None, *, low: int, high: int = 2**40
) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _BadRequest(f"{key} must be an integer from {low} to {high}")
    return value


def _number(data: dict[str, Any], key: str, default: float, *, low: float) -> float:
    value = data.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < low:
        raise _BadRequest(f"{key} must be a number of at least {low}")
    return float(value)


def _boolean(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise _BadRequest(f"{key} must be true or false")
    return value


def _names(data: dict[str, Any]) -> list[str]:
    names = data.get("files", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _BadRequest("files must be a list of the names uploaded")
    if len(names) > 10_000:
        raise _BadRequest("at most 10000 files per job")
    return names


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise _BadRequest(f"{key} must be a string")
    return value[:4000] or "no reason given"


async def _error(send: Send, status: int, kind: str, message: str, *, close: bool = False) -> None:
    await respond_json(send, status, {"error": kind, "message": message}, close=close)
