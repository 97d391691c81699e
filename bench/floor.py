"""The bare floor: the same HTTP stack as ``bes serve`` (uvicorn, httptools, uvloop, one
process) answering every POST with a fixed CreateActivityResponse envelope, without parsing,
validating or storing anything. ``bench/bes_bench.py`` starts it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

_RESPONSE = (
    b"<?xml version='1.0' encoding='utf-8'?>\n"
    b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
    b'<bes-factory:CreateActivityResponse xmlns:bes-factory="http://schemas.ggf.org/bes/2006/08/'
    b'bes-factory" xmlns:wsa="http://www.w3.org/2005/08/addressing" xmlns:besa="urn:bes-grid:'
    b'activity:1.0"><bes-factory:ActivityIdentifier><wsa:Address>http://127.0.0.1:8080/bes/'
    b"activities/AAAAAAAAAAAAAAAAAAAAAA</wsa:Address><wsa:ReferenceParameters><besa:ActivityId>"
    b"AAAAAAAAAAAAAAAAAAAAAA</besa:ActivityId></wsa:ReferenceParameters></bes-factory:"
    b"ActivityIdentifier></bes-factory:CreateActivityResponse></soap:Body></soap:Envelope>"
)
_HEADERS = [
    (b"content-type", b"text/xml; charset=utf-8"),
    (b"content-length", str(len(_RESPONSE)).encode()),
]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the request body, as the real service does
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _RESPONSE})
