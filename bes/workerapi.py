"""The worker protocol over HTTP: JSON beside the SOAP endpoint, at ``/worker/v1/``.

Every call carries the worker's token (``Authorization: Bearer TOKEN``). Workers open every
connection; the service never calls them. The routes, their bodies and answers are described
by ``schemas/worker-api-v1.json`` (OpenAPI 3.1), served at ``/worker/v1/openapi.json``::

    POST /worker/v1/register                       host facts in, protocol timing out
    POST /worker/v1/claim                          what fits the worker now, out: leases
    POST /worker/v1/heartbeat                      renew leases, report sub-states; out:
                                                   continue | cancel | lost per lease
    PUT  /worker/v1/leases/LEASE/files/NAME        upload one output file (raw body)
    GET  /worker/v1/leases/LEASE/store/sha256/HEX  an input of the job from the file store
    PUT  /worker/v1/leases/LEASE/store/name/PATH   deliver an output into the file store
    POST /worker/v1/leases/LEASE/complete          the job ran: exit code, timing
    POST /worker/v1/leases/LEASE/fail              the job could not run (retry or not)
    POST /worker/v1/leases/LEASE/release           hand the job back unfinished
    POST /worker/v1/leases/LEASE/access            a VM lease is ready: login, host keys, ports
    GET  /worker/v1/leases/LEASE/tunnel            a VM lease's tunnel (WebSocket, bes.relay)

Workers are other people's machines, so every request is checked against that document
before a handler runs (:mod:`bes.workerschema`: routes, path and query parameters, JSON bodies
parsed with a bounded depth); handlers take the checked values as they are.

Errors are JSON ``{"error": KIND, "message": TEXT}`` with 400 (bad request, naming what is
wrong), 401 (no or bad token), 404, 409 (``lease-lost``: the lease is not the worker's any
more; drop the job), 413 (too large) or 503 (store unavailable; try again later).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from bes.access import Access
from bes.backends.desktopgrid.gateway import ClaimRequest, WorkerGateway, lease_id
from bes.backends.desktopgrid.outputs import OutputTooLarge, UnsafePath
from bes.db.grid_rows import Lease, WorkerIdentity
from bes.errors import ConfigError, InvalidRequest, LeaseLost, NotAuthorized, StoreError
from bes.fileapi import file_error_status
from bes.filerefs import FileStoreError, parse_ref
from bes.filestore import FileStore
from bes.http import (
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    headers_of,
    not_allowed,
    read_body,
    respond,
    respond_file,
    respond_json,
    stream_body,
)
from bes.identity import bearer_token
from bes.jsdl import codec
from bes.schemas import schema_file
from bes.userimages import UserImages
from bes.workerschema import OPENAPI_FILE, worker_protocol

log = logging.getLogger(__name__)

PREFIX: Final = "/worker/v1/"
_MAX_JSON_BYTES: Final = 256 * 1024
_MAX_TEXT: Final = 4000  # characters of a worker's message kept
_OCTETS: Final = b"application/octet-stream"

Handler = Callable[[WorkerIdentity, Mapping[str, str], dict[str, Any]], Awaitable[tuple[int, Any]]]


class WorkerApi:
    """ASGI handler of ``/worker/v1/`` (see the module docstring).

    Raises:
        ConfigError: The OpenAPI document is malformed, or names an operation no handler serves.
    """

    def __init__(
        self,
        gateway: WorkerGateway,
        store: FileStore | None = None,
        *,
        images: UserImages | None = None,
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.images = images
        self.protocol = worker_protocol()
        self._handlers: dict[str, Handler] = {
            "register": self._register,
            "claim": self._claim,
            "heartbeat": self._heartbeat,
            "complete": self._complete,
            "fail": self._fail,
            "release": self._release,
            "access": self._access,
        }
        served = {*self._handlers, "openapi", "upload", "fetchStored", "deliverStored", "tunnel"}
        missing = set(self.protocol.operations) - served
        if missing:
            raise ConfigError(f"no handler serves the worker API's operations {sorted(missing)}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == PREFIX + "openapi.json":
            if method not in ("GET", "HEAD"):
                await not_allowed(send, "GET")
                return
            data = schema_file(OPENAPI_FILE).read_bytes()
            await respond(send, 200, data, b"application/json")
            return
        # An upload refused part-way leaves body bytes on the connection: close it then.
        close = "/files/" in path or "/store/" in path
        try:
            await self._authorized(scope, receive, send)
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
        except FileStoreError as exc:
            status, kind = file_error_status(exc)
            await _error(send, status, kind, str(exc), close=close)
        except Exception:
            reference = secrets.token_hex(4)
            log.exception("internal error %s on %s %s", reference, method, path)
            await _error(
                send, 500, "internal", f"internal error (reference {reference})", close=close
            )

    async def _authorized(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = headers_of(scope)
        worker = await self.gateway.authenticate(bearer_token(headers))
        routed = self.protocol.route(scope["path"])
        if routed is None:
            await _error(send, 404, "not-found", f"no worker API route {scope['path']}")
            return
        operations, parameters = routed
        operation = operations.get(scope["method"])
        if operation is None:
            await not_allowed(send, ", ".join(operations))
            return
        # Checked before any handler runs: the parameters, then the body (JSON ones).
        operation.check_parameters(parameters, scope.get("query_string", b""))
        if operation.operation_id == "upload":
            await self._upload(worker, parameters, receive, send)
            return
        if operation.operation_id in ("fetchStored", "deliverStored"):
            await self._stored(worker, parameters, scope, receive, send)
            return
        if operation.operation_id == "tunnel":  # a WebSocket (bes.app routes those)
            await _error(send, 426, "upgrade-required", "the tunnel is a WebSocket")
            return
        body = await read_body(receive, headers, _MAX_JSON_BYTES)
        if body is None:
            raise BodyTooLarge(f"JSON bodies are limited to {_MAX_JSON_BYTES} bytes")
        data = operation.parse_body(body)
        status, answer = await self._handlers[operation.operation_id](worker, parameters, data)
        if isinstance(answer, bytes):
            await respond(send, status, answer, b"application/json")
        else:
            await respond_json(send, status, answer)

    # ------------------------------------------------------------------ handlers
    # Each takes a body that its operation's schema accepted (defaults are the document's).

    async def _upload(
        self, worker: WorkerIdentity, parameters: Mapping[str, str], receive: Receive, send: Send
    ) -> None:
        name = parameters["name"]
        size = await self.gateway.upload(worker, parameters["lease"], name, stream_body(receive))
        await respond_json(send, 200, {"name": name, "bytes": size})

    async def _stored(
        self,
        worker: WorkerIdentity,
        parameters: Mapping[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """A file of the job owner's store that the leased job names: a Source (GET) or a
        Target (PUT); or the user image its VM boots (GET), which is another owner's file
        when it is a published image."""
        if self.store is None:
            raise InvalidRequest("this service has no file store")
        ref = parse_ref(parameters["ref"])
        activity_id, owner, job = await self.gateway.leased_job(worker, parameters["lease"])
        uris, image = _named(job, get=scope["method"] == "GET")
        if ref.uri not in uris and (image is None or ref.uri != image):
            raise InvalidRequest(f"the leased job names no {ref.uri} there")
        if scope["method"] == "GET":
            if ref.uri == image and ref.sha256 is not None and self.images is not None:
                # The activity was recorded as using the image's file, whoever's it is.
                owner = await self.images.file_owner(activity_id, ref.sha256) or owner
            found = await self.store.live(owner, ref)
            await respond_file(send, self.store.blob(owner, found.sha256), _OCTETS, head=False)
            return
        length = headers_of(scope).get("content-length", "")
        if not length.isdigit():
            raise InvalidRequest("send the file with a Content-Length")
        sha256 = await self.store.store_stream(
            owner, stream_body(receive), total=int(length), name=ref.name
        )
        await respond_json(send, 201, {"sha256": sha256, "bytes": int(length)})

    async def _register(
        self, worker: WorkerIdentity, parameters: Mapping[str, str], data: dict[str, Any]
    ) -> tuple[int, Any]:
        return 200, await self.gateway.register(worker, data.get("facts", {}))

    async def _claim(
        self, worker: WorkerIdentity, parameters: Mapping[str, str], data: dict[str, Any]
    ) -> tuple[int, Any]:
        leases = await self.gateway.claim(worker, _claim_request(data))
        return 200, b'{"leases":' + _leases_json(leases) + b"}"

    async def _heartbeat(
        self, worker: WorkerIdentity, parameters: Mapping[str, str], data: dict[str, Any]
    ) -> tuple[int, Any]:
        reports = [(entry["lease"], entry.get("substate")) for entry in data["leases"]]
        actions = await self.gateway.heartbeat(worker, reports)
        return 200, {
            "leases": {k: v.value for k, v in actions.items()},
            "heartbeat_s": self.gateway.config.heartbeat_s,
        }

    async def _complete(
        self, worker: WorkerIdentity, parameters: Mapping[str, str], data: dict[str, Any]
    ) -> tuple[int, Any]:
        failure = data.get("failure")
        state = await self.gateway.complete(
            worker,
            parameters["lease"],
            exit_code=int(data["exit_code"]),
            failure=failure[:_MAX_TEXT] if failure else None,
            timing={k: float(v) for k, v in data.get("timing", {}).items()},
            files=data.get("files", []),
        )
        answer = b'{"state":"' + state.value.encode() + b'"'
        if "claim" in data:  # the next job, in the same round trip
            leases = await self.gateway.claim(worker, _claim_request(data["claim"]))
            answer += b',"leases":' + _leases_json(leases)
        return 200, answer + b"}"

    async def _fail(
        self, worker: WorkerIdentity, parameters: Mapping[str, str], data: dict[str, Any]
    ) -> tuple[int, Any]:
        state = await self.gateway.fail(
            worker,
            parameters["lease"],
            message=_text(data.get("message", "")),
            retry=data.get("retry", False),
            files=data.get("files", []),
        )
        return 200, {"state": state.value}

    async def _access(
        self, worker: WorkerIdentity, parameters: Mapping[str, str], data: dict[str, Any]
    ) -> tuple[int, Any]:
        await self.gateway.access(worker, parameters["lease"], Access.from_mapping(data))
        return 200, {"state": "leased"}

    async def _release(
        self, worker: WorkerIdentity, parameters: Mapping[str, str], data: dict[str, Any]
    ) -> tuple[int, Any]:
        state = await self.gateway.release(
            worker, parameters["lease"], message=_text(data.get("message", ""))
        )
        return 200, {"state": state.value}


def _claim_request(data: Mapping[str, Any]) -> ClaimRequest:
    """A claim from a body that the ClaimRequest schema accepted (JSON Schema counts 2.0 as an
    integer: hence int())."""
    return ClaimRequest(
        slots=int(data.get("slots", 1)),
        memory_mib=int(data["memory_mib"]),
        vcpus=int(data["vcpus"]),
        disk_mib=int(data["disk_mib"]),
        hypervisors=tuple(data.get("hypervisors", ())),
        network=data.get("network", False),
        wait_s=float(data.get("wait_s", 0.0)),
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


def _text(value: str) -> str:
    return value[:_MAX_TEXT] or "no reason given"


async def _error(send: Send, status: int, kind: str, message: str, *, close: bool = False) -> None:
    await respond_json(send, status, {"error": kind, "message": message}, close=close)


__all__ = ["PREFIX", "WorkerApi"]


def _named(job: str, *, get: bool) -> tuple[set[str | None], str | None]:
    """The store URIs a stored job names: its Sources (``get``) or Targets; and the URI of
    its VM's image (``get`` only: an image is read, never written)."""
    description = codec.from_json(job).job_description
    uris = {s.source if get else s.target for s in description.data_staging}
    machine = description.virtual_machine
    return uris, machine.image.uri if machine is not None and get else None
