"""The worker's side of the worker protocol: one method per call, errors by kind.

Connection failures and 5xx answers are :class:`ServiceUnavailable` (try again later, with
backoff); 401 is :class:`WorkerRefused` (the token is wrong or revoked: stop); 409 is
:class:`~bes.errors.LeaseLost` (drop the job). Requests and their bodies are described in
``schemas/worker-api-v1.json``.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import requests
import requests.adapters
import requests.auth

from bes.access import Access
from bes.errors import BesError, LeaseLost
from bes.filerefs import SCHEME
from bes.jsdl import codec
from bes.jsdl.model import JobDefinition
from bes.tunnel.websocket import websocket_url
from bes.vm.images import ImageError
from bes.vm.repository import Catalog

log = logging.getLogger(__name__)

_TIMEOUT_S: Final = 30.0
_UPLOAD_TIMEOUT_S: Final = 600.0
_DOWNLOAD_CHUNK: Final = 1024 * 1024
_STORE_SCHEME: Final = SCHEME + ":"


class ServiceUnavailable(BesError):
    """The service cannot be reached or cannot answer now; try again later."""


class WorkerRefused(BesError):
    """The service refuses this worker (unknown or revoked token)."""


class ProtocolError(BesError):
    """The service rejected a request as malformed (a bug on one side)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Work:
    """A job leased to this worker."""

    lease: str
    activity: str
    attempt: int
    max_attempts: int
    job: JobDefinition


class ServiceClient:
    """Calls the worker protocol of one service (safe to share between threads).

    Args:
        base_url: The service's base URL, e.g. ``http://127.0.0.1:8080``.
        token: This worker's token.
        ca_file: PEM certificates the service's HTTPS certificate must chain to; each is a
            trust anchor (a self-signed or pinned server certificate works too). None: the
            system's CAs.
        server_name: The name the service's certificate must carry when the URL reaches the
            service by another (sent as SNI too); None: the URL's host.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        ca_file: Path | None = None,
        server_name: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token.strip()
        self._local = threading.local()
        self._ca_file = ca_file
        self._server_name = server_name

    # ------------------------------------------------------------------ calls

    def register(self, facts: Mapping[str, Any]) -> dict[str, Any]:
        """Report the host; returns the protocol's timing (heartbeat_s, lease_s, ...)."""
        answer: dict[str, Any] = self._post("register", {"facts": dict(facts)})
        return answer

    def claim(
        self,
        *,
        slots: int,
        memory_mib: int,
        vcpus: int,
        disk_mib: int,
        hypervisors: Sequence[str],
        network: bool,
        wait_s: float,
    ) -> list[Work]:
        """Lease jobs that fit; waits up to ``wait_s`` for some."""
        answer = self._post(
            "claim",
            {
                "slots": slots,
                "memory_mib": memory_mib,
                "vcpus": vcpus,
                "disk_mib": disk_mib,
                "hypervisors": list(hypervisors),
                "network": network,
                "wait_s": wait_s,
            },
            timeout_s=wait_s + _TIMEOUT_S,
        )
        return _works(answer.get("leases", []))

    def heartbeat(self, reports: Sequence[tuple[str, str | None]]) -> dict[str, str]:
        """Renew leases ``(lease, sub-state)``; returns continue, cancel or lost for each."""
        answer = self._post(
            "heartbeat", {"leases": [{"lease": k, "substate": s} for k, s in reports]}
        )
        leases: dict[str, str] = answer.get("leases", {})
        return leases

    def upload(self, lease: str, name: str, path: Path) -> None:
        """Upload one file of a lease."""
        url = f"leases/{_quote(lease)}/files/{urllib.parse.quote(name)}"
        with path.open("rb") as body:
            self._request("PUT", url, data=body, timeout_s=_UPLOAD_TIMEOUT_S)

    def fetch_stored(self, lease: str, uri: str, dest: Path) -> None:
        """Download a ``bes-store:`` Source of a lease's job into ``dest``."""
        url = f"leases/{_quote(lease)}/store/{_store_ref(uri)}"
        with (
            self._request("GET", url, data=None, timeout_s=_UPLOAD_TIMEOUT_S, stream=True) as got,
            dest.open("wb") as out,
        ):
            for chunk in got.iter_content(_DOWNLOAD_CHUNK):
                out.write(chunk)

    def deliver_stored(self, lease: str, uri: str, path: Path) -> None:
        """Upload an output of a lease's job to its ``bes-store:`` Target."""
        url = f"leases/{_quote(lease)}/store/{_store_ref(uri)}"
        with path.open("rb") as body:
            self._request("PUT", url, data=body, timeout_s=_UPLOAD_TIMEOUT_S)

    def complete(
        self,
        lease: str,
        *,
        exit_code: int,
        failure: str | None,
        timing: Mapping[str, float],
        files: Sequence[str] = (),
        claim: Mapping[str, Any] | None = None,
    ) -> tuple[str, list[Work]]:
        """The job ran to its end (``files``: what was uploaded for it). With ``claim`` (the
        body of a claim), the next jobs are leased in the same call. Returns the job's state
        afterwards and the new leases."""
        body: dict[str, Any] = {
            "exit_code": exit_code,
            "failure": failure,
            "timing": dict(timing),
            "files": list(files),
        }
        if claim is not None:
            body["claim"] = dict(claim, wait_s=0.0)
        answer = self._post(f"leases/{_quote(lease)}/complete", body)
        return str(answer["state"]), _works(answer.get("leases", []))

    def fail(self, lease: str, *, message: str, retry: bool, files: Sequence[str] = ()) -> str:
        """The job could not run; returns the job's state afterwards."""
        body = {"message": message, "retry": retry, "files": list(files)}
        return str(self._post(f"leases/{_quote(lease)}/fail", body)["state"])

    def release(self, lease: str, *, message: str) -> str:
        """Hand the job back; returns the job's state afterwards."""
        return str(self._post(f"leases/{_quote(lease)}/release", {"message": message})["state"])

    def report_access(self, lease: str, access: Access) -> None:
        """A VM lease's guest is ready: tell the service how its owner gets in."""
        self._post(f"leases/{_quote(lease)}/access", json.loads(access.to_json()))

    def tunnel(self, lease: str) -> TunnelEndpoint:
        """Where and how to open the WebSocket that carries a lease's streams."""
        url = websocket_url(f"{self.base_url}/worker/v1/leases/{_quote(lease)}/tunnel")
        context = _tls_context(self._ca_file) if url.startswith("wss:") else None
        return TunnelEndpoint(
            url=url,
            headers={"Authorization": f"Bearer {self._token}"},
            ssl=context,
            server_name=self._server_name,
        )

    def catalog(self) -> Catalog:
        """The service's template catalog."""
        # With the worker's token: a secured service shows its catalog to users and workers.
        response = self._raw(
            "GET", self.base_url + "/bes/images", auth=_Bearer(self._token), timeout_s=_TIMEOUT_S
        )
        try:
            return Catalog.from_json(response.json())
        except (ValueError, TypeError, AttributeError, ImageError) as exc:
            raise ProtocolError(f"the service's image catalog is unreadable: {exc}") from exc

    # ------------------------------------------------------------------ plumbing

    def _post(self, path: str, body: Mapping[str, Any], *, timeout_s: float = _TIMEOUT_S) -> Any:
        response = self._request(
            "POST",
            path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            timeout_s=timeout_s,
        )
        try:
            return response.json()
        except ValueError as exc:
            raise ServiceUnavailable(f"{path}: the answer is not JSON") from exc

    def _request(
        self,
        method: str,
        path: str,
        *,
        data: Any,
        headers: Mapping[str, str] | None = None,
        timeout_s: float,
        stream: bool = False,
    ) -> requests.Response:
        url = f"{self.base_url}/worker/v1/{path}"
        return self._raw(
            method,
            url,
            data=data,
            headers=headers,
            auth=_Bearer(self._token),
            timeout_s=timeout_s,
            stream=stream,
        )

    def _raw(
        self,
        method: str,
        url: str,
        *,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        auth: requests.auth.AuthBase | None = None,
        timeout_s: float,
        stream: bool = False,
    ) -> requests.Response:
        session = self._session()
        try:
            response = session.request(
                method,
                url,
                data=data,
                headers=dict(headers or {}),
                auth=auth,
                timeout=(10.0, timeout_s),
                stream=stream,
                # Given here, not on the session: REQUESTS_CA_BUNDLE would replace the latter.
                verify=str(self._ca_file) if self._ca_file is not None else True,
            )
        except requests.RequestException as exc:
            raise ServiceUnavailable(f"cannot reach {self.base_url}: {_reason(exc)}") from exc
        if response.status_code < 400:
            return response
        message = _message(response)
        if response.status_code == 401:
            raise WorkerRefused(f"the service refuses this worker: {message}")
        if response.status_code == 409:
            raise LeaseLost(message)
        if response.status_code >= 500 or response.status_code == 429:
            raise ServiceUnavailable(f"the service answered {response.status_code}: {message}")
        raise ProtocolError(f"the service answered {response.status_code}: {message}")

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()  # proxies from the environment apply, as users expect
            if self._ca_file is not None or self._server_name is not None:
                session.mount("https://", _TlsAdapter(self._ca_file, self._server_name))
            self._local.session = session
        return session


def _works(leases: list[dict[str, Any]]) -> list[Work]:
    work = []
    for lease in leases:
        try:
            job = codec.from_json(json.dumps(lease["job"]))
        except BesError as exc:
            raise ProtocolError(f"lease {lease.get('lease')}: unreadable job: {exc}") from exc
        work.append(
            Work(
                lease=lease["lease"],
                activity=lease["activity"],
                attempt=lease["attempt"],
                max_attempts=lease["max_attempts"],
                job=job,
            )
        )
    return work


@dataclass(frozen=True, slots=True)
class TunnelEndpoint:
    """The WebSocket of a lease's tunnel: URL, the worker's credentials and TLS settings."""

    url: str
    headers: Mapping[str, str]
    ssl: ssl.SSLContext | None
    server_name: str | None

    def __repr__(self) -> str:
        return f"TunnelEndpoint({self.url!r})"  # never the token


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    # Every certificate in the file is an anchor (Python 3.13's default), so a pinned
    # server certificate or an intermediate works without its root.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


class _TlsAdapter(requests.adapters.HTTPAdapter):
    """HTTPS to the service with its own trust anchors and, if asked, its certificate checked
    against ``server_name`` instead of the URL's host."""

    def __init__(self, ca_file: Path | None, server_name: str | None) -> None:
        self._context = _tls_context(ca_file)
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        if self._server_name is not None:
            kwargs["server_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)


class _Bearer(requests.auth.AuthBase):
    """The worker token as a bearer credential (passed as auth, so ~/.netrc cannot replace
    it)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request


def _quote(lease: str) -> str:
    return urllib.parse.quote(lease, safe="")


def _store_ref(uri: str) -> str:
    """The path of a ``bes-store:`` URI below a lease's ``store/`` (already URL-encoded)."""
    if not uri.startswith(_STORE_SCHEME):
        raise ProtocolError(f"{uri!r} is not a file of the service's store")
    return uri[len(_STORE_SCHEME) :]


def _message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:
        return response.text.strip()[:500] or response.reason


def _reason(exc: requests.RequestException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused (is the service running?)"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return text[:300]
