"""Template and user images over HTTP (bes.userimages)::

    GET    /bes/images                  JSON: the site's templates, the caller's images and
                                        the published ones
    POST   /bes/images                  register a stored file as an image: JSON {"name",
                                        "sha256", "os_type"?, "min_memory_mib"?}; 201 the image
    DELETE /bes/images/NAME             remove the caller's image NAME
    POST   /bes/images/NAME/publish     administrators: JSON {"published": true|false,
                                        "owner"?}; 200 the image

The listing keeps the shape workers read as a template catalog (``templates``, each entry a
template of bes.vm.repository, and ``default_template``) and adds ``images``: the user images
the caller may use, each with its ``kind`` (``own`` or ``published``; an administrator also
sees other users' private ones, ``private``). Errors are JSON ``{"error": KIND, "message":
TEXT}``: 400 (a bad request, a refused disk), 403 (not an administrator), 404 (no such image
or stored file), 409 (the name is taken), 507 (a converted disk is over the quota).
"""

from __future__ import annotations

from typing import Any, Final

from bes.db.image_rows import UserImageRow
from bes.errors import InvalidRequest, NotAuthorized
from bes.fileapi import file_error_status
from bes.filerefs import FileRef, FileStoreError, file_url
from bes.http import Receive, Scope, Send, headers_of, not_allowed, read_body, respond_json
from bes.jsonchecks import parse_json
from bes.principal import Principal
from bes.userimages import (
    ImageNameTaken,
    ImageRequestError,
    InvalidImage,
    NoSuchImage,
    UserImages,
)
from bes.vm.repository import Catalog

IMAGES: Final = "/bes/images"
"""Path of the image routes below the service's base URL."""
_MAX_BODY: Final = 16 * 1024
_STATUS: Final[tuple[tuple[type[ImageRequestError], int, str], ...]] = (
    (NoSuchImage, 404, "not-found"),
    (ImageNameTaken, 409, "name-taken"),
    (InvalidImage, 400, "invalid-image"),
)


async def serve_images(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    caller: Principal,
    images: UserImages,
    catalog: Catalog,
    endpoint: str,
) -> None:
    """Answer a request under ``/bes/images`` for ``caller`` (``catalog``: the site's
    templates, built-in ones included)."""
    method: str = scope["method"]
    tail = scope["path"][len(IMAGES) :].strip("/")  # (the ASGI path is decoded already)
    try:
        if not tail:
            if method in ("GET", "HEAD"):
                await respond_json(send, 200, await listing(caller, images, catalog, endpoint))
            elif method == "POST":
                data = await _json(scope, receive)
                image = await images.register(
                    caller.name,
                    name=_text(data, "name", required=True) or "",
                    sha256=_text(data, "sha256", required=True) or "",
                    os_type=_text(data, "os_type"),
                    min_memory_mib=_integer(data, "min_memory_mib"),
                )
                await respond_json(send, 201, describe(image, caller, endpoint))
            else:
                await not_allowed(send, "GET, POST")
            return
        name, _, action = tail.partition("/")
        if action == "" and method == "DELETE":
            await images.remove(caller.name, name)
            await respond_json(send, 200, {"removed": name})
        elif action == "publish" and method == "POST":
            data = await _json(scope, receive)
            published = data.get("published", True)
            if not isinstance(published, bool):
                raise InvalidRequest("'published' is true or false")
            image = await images.publish(
                caller, name, owner=_text(data, "owner"), published=published
            )
            await respond_json(send, 200, describe(image, caller, endpoint))
        elif action in ("", "publish"):
            await not_allowed(send, "DELETE" if action == "" else "POST")
        else:
            await _refuse(send, 404, "not-found", "image routes are …/images/NAME[/publish]")
    except ImageRequestError as exc:
        status, kind = next(((s, k) for c, s, k in _STATUS if isinstance(exc, c)), (400, "error"))
        await _refuse(send, status, kind, str(exc))
    except FileStoreError as exc:
        await _refuse(send, *file_error_status(exc), str(exc))
    except NotAuthorized as exc:
        await _refuse(send, 403, "forbidden", str(exc))
    except InvalidRequest as exc:
        await _refuse(send, 400, "bad-request", str(exc))


async def listing(
    caller: Principal, images: UserImages, catalog: Catalog, endpoint: str
) -> dict[str, Any]:
    """The catalog as workers read it, plus the user images the caller may use."""
    data = catalog.to_json()
    data["images"] = [describe(i, caller, endpoint) for i in await images.listing(caller)]
    return data


def describe(image: UserImageRow, caller: Principal, endpoint: str) -> dict[str, Any]:
    """A user image as listed."""
    kind = "published" if image.published else "private"
    if image.owner == caller.name:
        kind = "own"
    data: dict[str, Any] = {
        "name": image.name,
        "kind": kind,
        "owner": image.owner,
        "sha256": image.sha256,
        "format": image.format,
        "published": image.published,
        "created": image.created_at.isoformat(),
    }
    if image.owner == caller.name:
        data["url"] = file_url(endpoint, FileRef(sha256=image.sha256))
    if image.os_type is not None:
        data["os_type"] = image.os_type
    if image.min_memory_mib is not None:
        data["min_memory_mib"] = image.min_memory_mib
    return data


async def _json(scope: Scope, receive: Receive) -> dict[str, Any]:
    body = await read_body(receive, headers_of(scope), _MAX_BODY)
    if body is None:
        raise InvalidRequest(f"the body is over {_MAX_BODY} bytes")
    data = parse_json(body) if body.strip() else {}
    if not isinstance(data, dict):
        raise InvalidRequest("the body is a JSON object")
    return data


def _text(data: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{key!r} is a string" + (" (required)" if required else ""))
    return value


def _integer(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"{key!r} is an integer")
    return value


async def _refuse(send: Send, status: int, kind: str, message: str) -> None:
    await respond_json(send, status, {"error": kind, "message": message})


__all__ = ["IMAGES", "serve_images"]
