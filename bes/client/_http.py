"""HTTP failures in words a person understands, as the client's own exceptions."""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Final

import requests

from bes.client.faults import ConnectionProblem, HttpProblem, TlsProblem

_XML_TYPES: Final = ("text/xml", "application/soap+xml", "application/xml")


def describe_failure(exc: requests.RequestException, url: str, timeout_s: float) -> Exception:
    """The client error for a requests exception (no answer at all)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return TlsProblem(f"TLS with {url} failed: {_tls_reason(exc)}", url=url)
    if isinstance(exc, requests.exceptions.Timeout):
        return ConnectionProblem(f"{url} did not answer within {timeout_s:g} s", url=url)
    if isinstance(exc, requests.exceptions.ConnectionError):
        return ConnectionProblem(f"cannot connect to {url}: {_connection_reason(exc)}", url=url)
    return ConnectionProblem(f"the request to {url} failed: {exc}", url=url)


def raise_for_http(response: requests.Response, url: str, *, soap: bool = True) -> None:
    """Raise :class:`HttpProblem` unless ``response`` is what the caller can read: a SOAP
    answer (any status: SOAP 1.1 faults come with 500) or, with ``soap`` false, a 2xx."""
    kind = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if soap and kind in _XML_TYPES and response.content.strip():
        return
    if not soap and 200 <= response.status_code < 300:
        return
    status = response.status_code
    reason = response.reason or ""
    hint = {
        401: "the service wants credentials (--username, or a client certificate)",
        403: "the service refused these credentials",
        404: "nothing there: is this the BES endpoint URL (ours ends in /bes)?",
    }.get(status)
    text = _first_line(response)
    message = f"{url} answered HTTP {status} {reason}".rstrip()
    if hint:
        message += f": {hint}"
    if text:
        message += f" (the service said: {text})"
    raise HttpProblem(message, status=status, url=url)


def service_message(response: requests.Response) -> str:
    """What an error answer of this service's JSON routes says (``{"message": …}``), else
    the start of its text."""
    try:
        data = response.json()
    except ValueError:
        data = None
    message = data.get("message") if isinstance(data, dict) else None
    if isinstance(message, str):
        return message
    return response.text.strip()[:300] or response.reason or ""


def _first_line(response: requests.Response) -> str:
    kind = response.headers.get("content-type", "")
    if "html" in kind.lower():
        return ""  # an HTML error page says nothing useful in one line
    body = response.text.strip().splitlines()
    return body[0][:200] if body else ""


def _connection_reason(exc: BaseException) -> str:
    for cause in _chain(exc):
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        ):
            return "connection refused (is the service running, on this host and port?)"
        if isinstance(cause, socket.gaierror):
            return "the host name is unknown"
        if isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "the network or host is unreachable"
    return str(exc)


def _tls_reason(exc: BaseException) -> str:
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"the server's certificate is not trusted ({cause.verify_message}); "
                "give its CA with --ca-file"
            )
        if isinstance(cause, ssl.SSLError):
            return f"{cause.reason or cause}".replace("_", " ").lower()
    return str(exc)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes and contexts, and the arguments urllib3 wraps them in."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 20:
        current = todo.pop(0)
        if current in seen:
            continue
        seen.append(current)
        todo += [a for a in current.args if isinstance(a, BaseException)]
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)
    return seen
