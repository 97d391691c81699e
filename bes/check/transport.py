"""The wire as ``bes check`` sees it: SOAP envelopes built by hand, posted as they are, and
every answer kept byte for byte (and saved, with ``--save``).

Not zeep: a conformance tester must send exactly what a check asks for (with or without
WS-Addressing, with a foreign identifier, a broken document) and judge exactly what came
back. Credentials are those of the client library: WS-Security through the same zeep
``wsse`` objects, HTTP Basic over TLS, TLS client certificates.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import requests
from lxml import etree

from bes.check.model import Exchange
from bes.client.auth import Credential, UsernameToken, tls_client_certificate, wsse_plugins
from bes.errors import MalformedXml
from bes.jsdl.xml import parse_untrusted
from bes.ns import SOAP_ENV, WSA

_FACTORY_ACTIONS: Final = "http://schemas.ggf.org/bes/2006/08/bes-factory/BESFactoryPortType/"
_MANAGEMENT_ACTIONS: Final = (
    "http://schemas.ggf.org/bes/2006/08/bes-management/BESManagementPortType/"
)
MANAGEMENT_OPERATIONS: Final = frozenset(
    {"StopAcceptingNewActivities", "StartAcceptingNewActivities"}
)
_SAFE: Final = re.compile(r"[^A-Za-z0-9_.-]+")


def action_of(operation: str) -> str:
    """The WS-Addressing Action (and SOAPAction) of a BES operation, as GFD.108's WSDL says."""
    base = _MANAGEMENT_ACTIONS if operation in MANAGEMENT_OPERATIONS else _FACTORY_ACTIONS
    return base + operation


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer to a SOAP request, as far as it could be read."""

    exchange: Exchange
    envelope: etree._Element | None
    """None: no answer, or not XML (``problem`` says what it was)."""
    problem: str = ""

    @property
    def body(self) -> etree._Element | None:
        """The first element of the SOAP Body."""
        if self.envelope is None:
            return None
        body = self.envelope.find(f"{{{SOAP_ENV}}}Body")
        if body is None:
            return None
        return next(body.iterchildren(etree.Element), None)

    @property
    def fault(self) -> etree._Element | None:
        body = self.body
        return body if body is not None and body.tag == f"{{{SOAP_ENV}}}Fault" else None

    def fault_detail(self) -> str:
        """The local name of the fault's detail element (``UnsupportedFeatureFault``), or ""."""
        fault = self.fault
        detail = fault.find("detail") if fault is not None else None
        first = next(detail.iterchildren(etree.Element), None) if detail is not None else None
        return etree.QName(first).localname if first is not None else ""

    def fault_string(self) -> str:
        fault = self.fault
        return (fault.findtext("faultstring") or "").strip() if fault is not None else ""

    def header(self, namespace: str, local: str) -> str | None:
        if self.envelope is None:
            return None
        header = self.envelope.find(f"{{{SOAP_ENV}}}Header")
        found = header.find(f"{{{namespace}}}{local}") if header is not None else None
        return (found.text or "").strip() if found is not None else None


class Endpoint:
    """One BES endpoint and the credentials to call it.

    Args:
        url: The BES endpoint (``https://host/bes``).
        credentials: As for :class:`bes.client.BESClient`.
        ca_file: CA certificates for https (None: the system's).
        timeout_s: Seconds to wait for each answer.
        save: A directory where every exchange is written (``--save``).
    """

    def __init__(
        self,
        url: str,
        *,
        credentials: Sequence[Credential] = (),
        ca_file: Path | None = None,
        timeout_s: float = 30.0,
        save: Path | None = None,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._session.verify = str(ca_file) if ca_file else True
        self._session.cert = tls_client_certificate(credentials)
        self._session.headers["User-Agent"] = "bes-check"
        self._wsse = wsse_plugins(credentials)
        self._basic = next(
            (
                (c.username, c.password)
                for c in credentials
                if isinstance(c, UsernameToken) and c.password is not None
            ),
            None,
        )
        self._save = save
        self._numbers = itertools.count(1)
        if save is not None:
            save.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self._session.close()

    # ------------------------------------------------------------------ SOAP

    def envelope(
        self,
        payload: etree._Element,
        *,
        action: str | None,
        message_id: str | None = None,
        to: str | None = None,
    ) -> etree._Element:
        """A SOAP 1.1 envelope around ``payload``, with WS-Addressing headers when ``action``
        is given, and the caller's WS-Security."""
        envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soap": SOAP_ENV})
        header = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Header")
        if action is not None:
            etree.SubElement(header, f"{{{WSA}}}Action", nsmap={"wsa": WSA}).text = action
            etree.SubElement(header, f"{{{WSA}}}MessageID", nsmap={"wsa": WSA}).text = (
                message_id or f"urn:uuid:{uuid.uuid4()}"
            )
            etree.SubElement(header, f"{{{WSA}}}To", nsmap={"wsa": WSA}).text = to or self.url
        etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body").append(payload)
        headers: dict[str, Any] = {}
        for plugin in self._wsse:
            envelope, headers = plugin.apply(envelope, headers)
        if len(header) == 0:
            envelope.remove(header)
        return envelope

    def soap(
        self,
        label: str,
        operation: str,
        payload: etree._Element,
        *,
        addressing: bool = True,
        soap_action: str | None = None,
        address: str | None = None,
        message_id: str | None = None,
    ) -> Reply:
        """Post one request for ``operation``; ``addressing`` false sends the SOAPAction header
        alone (as JSAGA and .NET clients do)."""
        action = action_of(operation)
        envelope = self.envelope(
            payload, action=action if addressing else None, message_id=message_id, to=address
        )
        data = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
        headers = {
            "Content-Type": "text/xml; charset=utf-8",
            "SOAPAction": f'"{soap_action if soap_action is not None else action}"',
        }
        exchange = self._post(label, address or self.url, data, headers)
        return read_reply(exchange)

    def post_raw(self, label: str, data: bytes, headers: Mapping[str, str]) -> Reply:
        """Post bytes as they are (a broken request, on purpose)."""
        return read_reply(self._post(label, self.url, data, dict(headers)))

    def get(self, label: str, url: str) -> Exchange:
        return self._send(label, "GET", url, b"", {})

    def _post(self, label: str, url: str, data: bytes, headers: dict[str, str]) -> Exchange:
        return self._send(label, "POST", url, data, headers)

    def _send(
        self, label: str, method: str, url: str, data: bytes, headers: dict[str, str]
    ) -> Exchange:
        """One HTTP request, kept (and saved) whatever came of it."""
        started = time.perf_counter()
        sent = Exchange(label=label, method=method, url=url, request_headers=headers, request=data)
        try:
            response = self._session.request(
                method,
                url,
                data=data or None,
                headers=headers,
                timeout=self.timeout_s,
                verify=self._session.verify,
                auth=self._auth(url),
            )
        except requests.RequestException as exc:
            return self._kept(
                replace(sent, seconds=time.perf_counter() - started, error=_reason(exc))
            )
        return self._kept(
            replace(
                sent,
                status=response.status_code,
                response_headers=dict(response.headers),
                response=response.content,
                seconds=time.perf_counter() - started,
            )
        )

    def _auth(self, url: str) -> tuple[str, str] | None:
        """HTTP Basic only over https: a password never goes out in clear."""
        if self._basic is None or not url.lower().startswith("https://"):
            return None
        return self._basic

    def _kept(self, exchange: Exchange) -> Exchange:
        if self._save is not None:
            stem = f"{next(self._numbers):03d}-{_SAFE.sub('-', exchange.label)}"
            (self._save / f"{stem}.request").write_bytes(
                _head(exchange.method, exchange.url, exchange.request_headers) + exchange.request
            )
            status = exchange.status if exchange.status is not None else exchange.error
            (self._save / f"{stem}.response").write_bytes(
                _head(f"HTTP {status}", "", exchange.response_headers) + exchange.response
            )
        return exchange


def read_reply(exchange: Exchange) -> Reply:
    """What an answer is: a SOAP envelope, or (``problem``) what it was instead."""
    if exchange.status is None:
        return Reply(exchange, None, f"no answer: {exchange.error}")
    headers = {k.lower(): v for k, v in exchange.response_headers.items()}
    kind = headers.get("content-type", "")
    try:
        root = parse_untrusted(exchange.response)
    except MalformedXml as exc:
        shown = kind.split(";")[0] or "no content type"
        return Reply(exchange, None, f"HTTP {exchange.status}, {shown}, not XML: {exc.message}")
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        found = f"HTTP {exchange.status}: not a SOAP 1.1 envelope ({etree.QName(root).text})"
        return Reply(exchange, None, found)
    return Reply(exchange, root)


def _head(first: str, url: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"{first} {url}".rstrip()]
    for name, value in headers.items():
        hidden = name.lower() in ("authorization", "cookie")
        lines.append(f"{name}: {'(hidden)' if hidden else value}")
    return ("\n".join(lines) + "\n\n").encode()


def _reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS failed: {exc}"
    if isinstance(exc, requests.exceptions.Timeout):
        return "no answer in time"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"connection failed or dropped: {exc}"
    return str(exc)
