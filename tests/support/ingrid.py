"""The service in process with a desktop grid, and the calls a BES client and workers make
to it (SOAP to /bes, JSON to /worker/v1/), every JSON answer checked against the service's
OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from bes.app import BesApp, create_app
from bes.backends.desktopgrid import DesktopGridBackend
from bes.backends.desktopgrid.tokens import create_worker
from bes.config import ServiceConfig
from bes.schemas import schema_file
from tests.support import soap

OPENAPI = json.loads(schema_file("worker-api-v1.json").read_text())
REGISTRY = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(OPENAPI))


def check(schema_name: str, data: Any) -> None:
    """The answer has the shape the OpenAPI document promises."""
    schema = {"$ref": f"urn:openapi#/components/schemas/{schema_name}"}
    jsonschema.Draft202012Validator(schema, registry=REGISTRY).validate(data)


class Grid:
    """The in-process service with a desktop grid, and calls a BES client and workers make."""

    def __init__(self, app: BesApp, http: httpx.AsyncClient) -> None:
        self.app = app
        self.http = http

    def token(self, name: str) -> str:
        assert self.app.db is not None
        return create_worker(self.app.db, name)

    async def worker(
        self, token: str, path: str, body: dict[str, Any] | None = None, *, status: int = 200
    ) -> Any:
        response = await self.http.post(
            "/worker/v1/" + path, json=body or {}, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == status, response.text
        data = response.json()
        if status >= 400:
            check("Error", data)
        return data

    async def claim(self, token: str, **fields: Any) -> list[dict[str, Any]]:
        # Wait a little, as workers do: the service's own loop may be handing the activity
        # to the grid right now.
        body = {
            "memory_mib": 4096,
            "vcpus": 4,
            "disk_mib": 100_000,
            "hypervisors": ["qemu"],
            "wait_s": 1.0,
        }
        body.update(fields)
        answer = await self.worker(token, "claim", body)
        check("ClaimResponse", answer)
        leases: list[dict[str, Any]] = answer["leases"]
        return leases

    async def upload(self, token: str, lease: str, name: str, data: bytes) -> httpx.Response:
        return await self.http.put(
            f"/worker/v1/leases/{lease}/files/{name}",
            content=data,
            headers={"Authorization": f"Bearer {token}"},
        )

    async def soap(self, operation: str, body: str) -> bytes:
        response = await self.http.post(
            "/bes",
            content=soap.envelope(body),
            headers={"SOAPAction": soap.ACTIONS + operation, "Content-Type": "text/xml"},
        )
        return response.content

    async def submit(self, document: bytes) -> str:
        answer = await self.soap("CreateActivity", soap.create_activity(document))
        (activity_id,) = soap.xpath(soap.body_of(answer), "//besa:ActivityId/text()")
        await self.settle()
        return str(activity_id)

    async def settle(self) -> None:
        """Let the registry hand new activities to the grid and copy the grid's states."""
        assert self.app.activities is not None
        await self.app.activities.dispatch_once()
        await asyncio.to_thread(lambda: None)
        await self.app.activities.poll_once()

    async def status(self, activity_id: str) -> Any:
        await self.settle()
        answer = await self.soap(
            "GetActivityStatuses",
            soap.vector("GetActivityStatuses", [soap.epr(activity_id=activity_id)]),
        )
        (status,) = soap.xpath(soap.body_of(answer), "//bes:ActivityStatus")
        return status

    async def state(self, activity_id: str) -> tuple[str, list[str]]:
        status = await self.status(activity_id)
        children = [child.tag.rpartition("}")[2] for child in status]
        return status.get("state"), children

    @property
    def backend(self) -> DesktopGridBackend:
        assert self.app.activities is not None
        backend = self.app.activities.backends["desktopgrid"]
        assert isinstance(backend, DesktopGridBackend)
        return backend


@contextlib.asynccontextmanager
async def open_grid(
    tmp_path: Path, *, clouds_file: Path | None = None, **options: str
) -> AsyncIterator[Grid]:
    config = ServiceConfig(
        data_dir=tmp_path / "data",
        clouds_file=clouds_file,
        backend="desktopgrid",
        backend_options={"lease_s": "30", "heartbeat_s": "5", "claim_wait_s": "2", **options},
    )
    app = create_app(config)
    await app.startup()
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bes.test") as http:
            yield Grid(app, http)
    finally:
        await app.shutdown()
