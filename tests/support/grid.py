"""A BES client and a desktop-grid worker speaking plain HTTP to a live ``bes serve``, as a
user's script and ``bes worker`` would: SOAP envelopes posted to ``/bes``, JSON to
``/worker/v1/``."""

from __future__ import annotations

from typing import Any

import httpx

from bes.backends.desktopgrid.tokens import create_worker
from bes.db.engine import default_url
from bes.db.store import Database
from tests.support import soap
from tests.support.server import LiveServer

CLAIM = {"memory_mib": 4096, "vcpus": 4, "disk_mib": 100_000, "wait_s": 2.0, "slots": 1}
"""What a roomy worker asks for."""


def posix_job(name: str, staging: str = "") -> bytes:
    """A JSDL document of ``/bin/true`` named ``name`` (XML text: escape what needs it)."""
    return f"""<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
    xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix">
  <jsdl:JobDescription>
    <jsdl:JobIdentification><jsdl:JobName>{name}</jsdl:JobName></jsdl:JobIdentification>
    <jsdl:Application><posix:POSIXApplication>
      <posix:Executable>/bin/true</posix:Executable>
    </posix:POSIXApplication></jsdl:Application>{staging}
  </jsdl:JobDescription>
</jsdl:JobDefinition>""".encode()


def call(server: LiveServer, operation: str, body: str) -> bytes:
    """One BES-Factory operation over HTTP; the response envelope."""
    response = server.post(soap.envelope(body), operation, timeout_s=10)
    assert response.status_code == 200, response.text
    return response.content


def submit(server: LiveServer, document: bytes) -> str:
    """CreateActivity; the new activity's id."""
    answer = call(server, "CreateActivity", soap.create_activity(document))
    (activity_id,) = soap.xpath(soap.body_of(answer), "//besa:ActivityId/text()")
    return str(activity_id)


def terminate(server: LiveServer, activity_id: str) -> None:
    call(
        server,
        "TerminateActivities",
        soap.vector("TerminateActivities", [soap.epr(activity_id=activity_id)]),
    )


class Worker:
    """A worker of the live server's desktop grid, its token issued in the database."""

    def __init__(self, server: LiveServer, name: str) -> None:
        self.server = server
        with Database(default_url(server.data_dir)) as db:
            self.token = create_worker(db, name)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = httpx.post(
            f"{self.server.url}/worker/v1/{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def claim(self) -> list[dict[str, Any]]:
        leases: list[dict[str, Any]] = self.post("claim", CLAIM)["leases"]
        return leases

    def heartbeat(self, lease: str, substate: str | None) -> Any:
        return self.post("heartbeat", {"leases": [{"lease": lease, "substate": substate}]})

    def upload(self, lease: str, name: str, data: bytes) -> None:
        response = httpx.put(
            f"{self.server.url}/worker/v1/leases/{lease}/files/{name}",
            content=data,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text

    def finish(self, lease: str, *, stdout: bytes, exit_code: int = 0) -> None:
        """The job of ``lease`` ran to its end and printed ``stdout``."""
        self.upload(lease, "stdout", stdout)
        done = {"exit_code": exit_code, "timing": {"vm": 1.0}, "files": ["stdout"]}
        self.post(f"leases/{lease}/complete", done)
