"""Users' own VM images on a bes service (an extension of ours, ``…/bes/images``).

An image is a disk uploaded to the caller's file store (bes.client.files: hashed, sent once,
resumed) and then registered under a name with ``POST …/images``; the service detects its
format with qemu-img, refuses a disk that names other files, converts a raw disk to qcow2 and
answers with the image as listed. Jobs then name it like a site template.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from bes.client._http import describe_failure, service_message
from bes.client.faults import HttpProblem, ProtocolProblem
from bes.client.files import Connection


class ImageRefused(HttpProblem):
    """The service refused the request about an image (a disk it will not take, a name that
    is taken, no such image, not an administrator); the message is the service's."""


def register(images_url: str, connection: Connection, body: dict[str, Any]) -> dict[str, Any]:
    """Register a stored file as an image (``body``: name, sha256, os_type?, min_memory_mib?).

    Raises:
        ImageRefused: The service refused it.
        ConnectionProblem: The service could not be reached.
    """
    # Inspecting and converting a large disk takes a while on the service.
    return _call("POST", images_url, connection, body, timeout_s=max(connection.timeout_s, 3600))


def remove(images_url: str, connection: Connection, name: str) -> None:
    """Remove the caller's image ``name``."""
    _call("DELETE", f"{images_url}/{quote(name, safe='')}", connection, None)


def publish(
    images_url: str,
    connection: Connection,
    name: str,
    *,
    published: bool,
    owner: str | None,
) -> dict[str, Any]:
    """Publish (or withdraw) an image for everyone: administrators only."""
    body: dict[str, Any] = {"published": published}
    if owner is not None:
        body["owner"] = owner
    return _call("POST", f"{images_url}/{quote(name, safe='')}/publish", connection, body)


def _call(
    method: str,
    url: str,
    connection: Connection,
    body: dict[str, Any] | None,
    *,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    try:
        answer = connection.session.request(
            method,
            url,
            json=body,
            timeout=timeout_s or connection.timeout_s,
            verify=connection.verify,
            auth=connection.auth,
        )
    except requests.RequestException as exc:
        raise describe_failure(exc, url, timeout_s or connection.timeout_s) from exc
    if not 200 <= answer.status_code < 300:
        raise ImageRefused(
            f"the service refused (HTTP {answer.status_code}): {service_message(answer)}",
            status=answer.status_code,
            url=url,
        )
    try:
        data = answer.json()
    except ValueError as exc:
        raise ProtocolProblem(f"{url} did not answer JSON") from exc
    if not isinstance(data, dict):
        raise ProtocolProblem(f"{url} did not answer a JSON object")
    return data
