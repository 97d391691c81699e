"""``BESClient``: submit, watch, cancel and fetch results from any OGSA-BES 1.0 endpoint.

::

    from bes.client import BESClient, jsdl
    with BESClient("http://127.0.0.1:8080/bes") as bes:
        ref = bes.submit(jsdl.build(["/bin/echo", "hello"], name="hello"))
        [status] = bes.wait([ref], timeout_s=300)
        bes.outputs(ref, "hello-results")

Requests are made by zeep from the project's own copy of the GFD.108 WSDL (``schemas/``), so
operation names, SOAPAction and WS-Addressing headers follow the standard for any BES, ours or
another middleware's. Two parts are put in verbatim instead of through zeep's object model:
the JSDL document (zeep would re-serialize it through the schema and lose what it does not
model) and the endpoint references, which go back exactly as the service sent them. Answers
are read by :mod:`bes.client._envelope`, which tolerates what real services do.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote, urljoin

import requests
import zeep
import zeep.transports
from lxml import etree
from zeep import xsd
from zeep.wsse.compose import Compose

from bes.client import _envelope, jsdl
from bes.client import files as _files
from bes.client import images as _images
from bes.client._http import describe_failure, raise_for_http
from bes.client.auth import (
    Credential,
    UsernameToken,
    X509Signature,
    tls_client_certificate,
    wsse_plugins,
)
from bes.client.faults import (
    ClientError,
    ConnectionProblem,
    HttpProblem,
    InvalidJsdl,
    NoOutputs,
    ProtocolProblem,
    SoapFault,
    TlsProblem,
    WaitTimeout,
)
from bes.client.model import (
    ActivityRef,
    ActivityStatus,
    FactoryAttributes,
    OutputFile,
    TerminateResult,
)
from bes.client.tunnel import TunnelOptions
from bes.errors import MalformedXml
from bes.ids import parse_activity_id
from bes.jsdl.xml import parse_untrusted
from bes.ns import BES_ACTIVITY, BES_FACTORY, SOAP_ENV, WSA, qname
from bes.schemas import schema_file

log = logging.getLogger(__name__)

_BINDING: Final = qname(BES_FACTORY, "BESFactoryBinding")
_SLOT: Final = "urn:bes-client:slot:"
_CREATE_ATTEMPTS: Final = 3
_RETRY_STATUSES: Final = frozenset({502, 503, 504})
"""What a load balancer answers when the replica behind it is gone or overloaded."""
_DOWNLOAD_CHUNK: Final = 4 * 1024 * 1024  # measured: 1 MiB reads are half as fast over loopback
_ACTIVITY_PATH: Final = "/activities/"

Progress = Callable[[Sequence[ActivityStatus], float], None]
"""Called by :meth:`BESClient.wait` after each poll with the statuses and the seconds elapsed."""


class BESClient:
    """A client of one BES endpoint.

    Args:
        url: The endpoint, e.g. ``http://127.0.0.1:8080/bes`` or ``https://host/services/BES``.
        auth: Credentials (:mod:`bes.client.auth`), one or several.
        ca_file: Certificates to trust for ``https`` (default: the system's).
        verify_tls: Check the server's certificate (only ever switch off for tests).
        timeout_s: Seconds to wait for each answer.
        batch_size: Identifiers per request in the vector operations.
        plugins: Further zeep plugins, after the client's own (``zeep.plugins.HistoryPlugin``
            shows the envelopes as sent, before WS-Security is applied).
    """

    def __init__(
        self,
        url: str,
        *,
        auth: Credential | Sequence[Credential] = (),
        ca_file: str | os.PathLike[str] | None = None,
        verify_tls: bool = True,
        timeout_s: float = 30.0,
        batch_size: int = 500,
        plugins: Sequence[Any] = (),
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.batch_size = max(1, batch_size)
        credentials = [auth] if not isinstance(auth, Sequence) else list(auth)
        self._session = requests.Session()
        self._session.verify = str(ca_file) if ca_file else verify_tls
        self._session.cert = tls_client_certificate(credentials)
        self._session.headers["User-Agent"] = "bes-client"
        # The plain HTTP routes (kept outputs, the image catalog) take HTTP Basic; it is sent
        # only over https, where a service accepts it (a password never goes out in clear).
        self._basic = next(
            (
                (c.username, c.password)
                for c in credentials
                if isinstance(c, UsernameToken) and c.password is not None
            ),
            None,
        )
        self._wsse = wsse_plugins(credentials)
        self._verifies = any(
            isinstance(c, X509Signature) and c.verify_file is not None for c in credentials
        )
        self._slots = _Slots()
        self._plugins = [self._slots, *plugins]
        self._service: Any = None
        self._client: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ BES-Factory

    def submit(
        self, document: bytes | str | os.PathLike[str], *, check: bool = True
    ) -> ActivityRef:
        """CreateActivity: submit one JSDL document.

        Args:
            document: The JobDefinition as bytes or text, or the path of a file holding it.
            check: Validate it first (:func:`bes.client.jsdl.check`).

        Raises:
            InvalidJsdl: It is not valid JSDL (nothing was sent).
            BesFault: The service refused it (UnsupportedFeatureFault, …).
        """
        data = _document_bytes(document)
        if check:
            jsdl.check(data)
        # One MessageID for every attempt: a service that created the activity before the
        # answer was lost (a replica killed, a proxy timing out) answers a retry with it.
        message_id = f"urn:uuid:{uuid.uuid4()}"
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                payload = self._call(
                    "CreateActivity",
                    {"ActivityDocument": {"JobDefinition": xsd.SkipValue}},
                    _root(data),
                    message_id=message_id,
                )
                return _envelope.created(payload)
            except (ConnectionProblem, HttpProblem) as exc:
                if isinstance(exc, HttpProblem):
                    retry = exc.status in _RETRY_STATUSES
                else:  # no answer (a TLS failure would fail again)
                    retry = not isinstance(exc, TlsProblem)
                pause = 0.5 * 2**attempt
                if (
                    not retry
                    or attempt + 1 == _CREATE_ATTEMPTS
                    or (time.monotonic() + pause > deadline)
                ):
                    raise
                log.info("CreateActivity to %s: %s; trying again in %.1f s", self.url, exc, pause)
                time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    def status(self, refs: ActivityRef | Iterable[ActivityRef]) -> list[ActivityStatus]:
        """GetActivityStatuses, in batches; one status per reference, in order. Unknown ones
        carry their fault in :attr:`ActivityStatus.fault`."""
        asked = _as_list(refs)
        found: list[ActivityStatus] = []
        for batch in self._batches(asked):
            payload = self._call("GetActivityStatuses", self._identifiers(batch), None, batch)
            found += _envelope.statuses(payload, batch)
        return found

    def wait(
        self,
        refs: ActivityRef | Iterable[ActivityRef],
        timeout_s: float | None = None,
        *,
        progress: Progress | None = None,
        poll_s: float = 0.5,
        max_poll_s: float = 5.0,
    ) -> list[ActivityStatus]:
        """Poll until every activity is terminal (or unknown to the service).

        The interval starts at ``poll_s`` and grows by half each round up to ``max_poll_s``.

        Raises:
            WaitTimeout: ``timeout_s`` passed first.
        """
        asked = _as_list(refs)
        started = time.monotonic()
        interval = poll_s
        while True:
            current = self.status(asked)
            elapsed = time.monotonic() - started
            if progress is not None:
                progress(current, elapsed)
            waiting = sum(1 for s in current if not s.terminal)
            if not waiting:
                return current
            if timeout_s is not None and elapsed + interval > timeout_s:
                raise WaitTimeout(
                    f"{waiting} of {len(current)} activities had not ended after {elapsed:.0f} s",
                    pending=waiting,
                )
            time.sleep(interval)
            interval = min(max_poll_s, interval * 1.5)

    def cancel(self, refs: ActivityRef | Iterable[ActivityRef]) -> list[TerminateResult]:
        """TerminateActivities. A running activity of ours answers
        OperationWillBeAppliedEventuallyFault in :attr:`TerminateResult.fault`: it ends
        Cancelled shortly after."""
        asked = _as_list(refs)
        found: list[TerminateResult] = []
        for batch in self._batches(asked):
            payload = self._call("TerminateActivities", self._identifiers(batch), None, batch)
            found += _envelope.terminated(payload, batch)
        return found

    def document(self, ref: ActivityRef) -> bytes:
        """GetActivityDocuments for one activity: its JobDefinition as the service keeps it.

        Raises:
            UnknownActivityIdentifierFault: No such activity.
        """
        payload = self._call("GetActivityDocuments", self._identifiers([ref]), None, [ref])
        [found] = _envelope.documents(payload, [ref])
        if isinstance(found, SoapFault):
            raise found
        return found

    def attributes(self) -> FactoryAttributes:
        """GetFactoryAttributesDocument."""
        return _envelope.attributes(self._call("GetFactoryAttributesDocument", {}, None))

    # ------------------------------------------------------------------ our extensions

    def why(self, ref: ActivityRef) -> dict[str, Any]:
        """Why an activity is where it is (a bes service's ``…/activities/ID/why``, JSON):
        its state and message, its pool, its requirements, its place in the queue and what
        each worker of its pool lacks to run it.

        Raises:
            ProtocolProblem: The endpoint is not a bes service (it has no such resource).
        """
        base = self._activity_url(ref)
        found = self._get_json(base + "/why")
        if not isinstance(found, dict):
            raise ProtocolProblem(f"{base}/why did not answer a JSON object")
        return found

    def lease(self, ref: ActivityRef) -> dict[str, Any]:
        """A VM lease as a bes service describes it (``…/activities/ID/lease``, JSON): its
        state, whether its VM is ready, the login, the guest's SSH host keys, its forwarded
        ports and the tunnel's WebSocket URL.

        Raises:
            ProtocolProblem: The endpoint is not a bes service (it has no such resource).
        """
        found = self._get_json(self._activity_url(ref) + "/lease")
        if not isinstance(found, dict):
            raise ProtocolProblem(f"{self._activity_url(ref)}/lease did not answer a JSON object")
        return found

    def suspend(self, ref: ActivityRef, *, suspended: bool = True) -> None:
        """Suspend a VM lease's VM (``suspended=False``: resume it); its worker applies it at
        its next heartbeat, and its wall time stops meanwhile."""
        self._http("POST", self._activity_url(ref) + ("/suspend" if suspended else "/resume"))

    def tunnel_options(self) -> TunnelOptions:
        """How to open a lease's WebSocket streams with this client's credentials and TLS
        settings (see :mod:`bes.client.tunnel`)."""
        headers = {"User-Agent": "bes-client"}
        if self._basic is not None and self.url.lower().startswith("https://"):
            token = base64.b64encode(f"{self._basic[0]}:{self._basic[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        context = None
        if self.url.lower().startswith("https://"):
            verify = self._session.verify
            context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
            if verify is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            cert = self._session.cert
            if cert is not None:
                chain, key = (cert, None) if isinstance(cert, str) else cert
                context.load_cert_chain(chain, key)
        return TunnelOptions(headers=headers, ssl=context, timeout_s=self.timeout_s)

    def _activity_url(self, ref: ActivityRef) -> str:
        base = ref.address.rstrip("/")
        if ref.activity_id and not base.endswith("/" + ref.activity_id):
            base = self.url.rstrip("/") + "/activities/" + ref.activity_id
        return base

    def outputs(self, ref: ActivityRef, dest: str | os.PathLike[str]) -> list[OutputFile]:
        """Download the files the service kept for an ended activity (stdout, stderr and
        those its document keeps) into ``dest``, keeping their relative names.

        Raises:
            NoOutputs: The service keeps none for it (not ended yet, or not our service).
        """
        [status] = self.status([ref])
        if status.fault is not None:
            raise status.fault
        if status.outputs_url is None:
            raise NoOutputs(
                f"the service publishes no kept files for {ref.name} "
                f"(state {status.state.value}; only bes services keep them, once a job ran)"
            )
        listing = self._get_json(status.outputs_url)
        target = Path(dest)
        fetched = []
        for entry in listing.get("files", []):
            name = str(entry["name"])
            path = _inside(target, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            size = self._download(str(entry["url"]), path)
            fetched.append(OutputFile(name=name, path=str(path), size_bytes=size))
        return fetched

    def images(self) -> list[dict[str, Any]]:
        """The images jobs may name (``GET …/images``, an extension of ours): the site's
        templates, then the caller's own images and the published ones, each with its
        ``kind``: ``site``, ``own``, ``published`` (or, for an administrator, ``private``:
        another user's unpublished image)."""
        found = self._get_json(self.images_url)
        templates = found.get("templates", found) if isinstance(found, dict) else found
        if not isinstance(templates, list):
            raise ProtocolProblem("the image catalog is not a list of templates")
        listed = [{"kind": "site", **t} for t in templates if isinstance(t, dict)]
        users = found.get("images") if isinstance(found, dict) else None
        if isinstance(users, list):
            listed.extend(i for i in users if isinstance(i, dict))
        return listed

    @property
    def images_url(self) -> str:
        """The service's images (``…/bes/images``, an extension of ours)."""
        return self.url.rstrip("/") + "/images"

    def push_image(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        os_type: str | None = None,
        min_memory_mib: int | None = None,
        progress: _files.Progress | None = None,
    ) -> dict[str, Any]:
        """Make a local disk image an image of the caller's that jobs name like a template:
        uploaded to the file store (sent only if the service lacks it; resumed if cut
        short; ``progress(sent, total)``), then registered as ``name``. The service detects
        the format from the content, refuses a disk that names other files (a backing
        file) and converts a raw disk to qcow2.

        Returns:
            The image as listed (name, kind, owner, sha256, format, ...).

        Raises:
            UploadRefused: The store refused the file (too large, over quota).
            ImageRefused: The service refused the image (the reason: a name taken, a
                backing file, a format it does not take, ...).
            ConnectionProblem: The service could not be reached.
        """
        uploaded = self.upload_file(path, progress=progress)
        body: dict[str, Any] = {"name": name, "sha256": uploaded.sha256}
        if os_type is not None:
            body["os_type"] = os_type
        if min_memory_mib is not None:
            body["min_memory_mib"] = min_memory_mib
        return _images.register(self.images_url, self._connection(self.images_url), body)

    def remove_image(self, name: str) -> None:
        """Remove the caller's image ``name`` (its disk stays in the file store a while).

        Raises:
            ImageRefused: There is no such image.
        """
        _images.remove(self.images_url, self._connection(self.images_url), name)

    def publish_image(
        self, name: str, *, published: bool = True, owner: str | None = None
    ) -> dict[str, Any]:
        """Publish a user's image for everyone (``published=False`` withdraws it); for
        administrators. ``owner`` says whose when several users have an image ``name``.

        Raises:
            ImageRefused: Not an administrator, no such image, or the name is published.
        """
        connection = self._connection(self.images_url)
        return _images.publish(self.images_url, connection, name, published=published, owner=owner)

    @property
    def files_url(self) -> str:
        """The service's file store (``…/bes/files``, an extension of ours)."""
        return self.url.rstrip("/") + "/files"

    def upload(
        self, path: str | os.PathLike[str], *, progress: _files.Progress | None = None
    ) -> str:
        """Put a local file into the service's file store (unless it holds it already) and
        return the URL a JSDL Source names it by. See :meth:`upload_file`."""
        return self.upload_file(path, progress=progress).url

    def upload_file(
        self, path: str | os.PathLike[str], *, progress: _files.Progress | None = None
    ) -> _files.Uploaded:
        """Put a local file into the service's file store: hashed first, not sent at all if
        the service holds it, resumed if the connection breaks; ``progress(sent, total)``.

        Raises:
            UploadRefused: The service refused it (too large, over quota, …).
            ConnectionProblem: It could not be sent.
        """
        url = self.files_url
        return _files.upload(url, Path(path), self._connection(url), progress=progress)

    def _connection(self, url: str) -> _files.Connection:
        """How the plain HTTP calls of the store and the images reach ``url``."""
        return _files.Connection(
            session=self._session,
            verify=self._session.verify if self._session.verify is not None else True,
            auth=self._auth_for(url),
            timeout_s=max(self.timeout_s, 300.0),
        )

    def download(
        self,
        url: str,
        dest: str | os.PathLike[str],
        *,
        progress: _files.Progress | None = None,
    ) -> int:
        """Download a file of the service (a stored file, a kept output) to ``dest``;
        returns its size. Nothing is left at ``dest`` if it fails."""
        return self._download(url, Path(dest), progress=progress)

    def files(self) -> list[dict[str, Any]]:
        """The caller's stored files (sha256, bytes, url, names), newest first."""
        found = self._get_json(self.files_url)
        listed = found.get("files") if isinstance(found, dict) else None
        if not isinstance(listed, list):
            raise ProtocolProblem("the file store's listing is not a list of files")
        return [f for f in listed if isinstance(f, dict)]

    def ref(self, text: str) -> ActivityRef:
        """A reference to an activity of *this* service from its id or its address, for
        services that, like ours, find an activity from either (others need the EPR they
        returned).

        Raises:
            ClientError: ``text`` is neither.
        """
        text = text.strip()
        activity_id = parse_activity_id(text.rstrip("/").rsplit("/", 1)[-1])
        if "://" in text:
            address = text
        elif activity_id is not None:
            address = self.url.rstrip("/") + _ACTIVITY_PATH + quote(activity_id)
        else:
            raise ClientError(f"{text!r} is neither an activity id nor an activity address")
        epr = etree.Element(qname(WSA, "EndpointReference"), nsmap={"wsa": WSA})
        etree.SubElement(epr, qname(WSA, "Address")).text = address
        if activity_id is not None:
            parameters = etree.SubElement(epr, qname(WSA, "ReferenceParameters"))
            etree.SubElement(
                parameters, qname(BES_ACTIVITY, "ActivityId"), nsmap={"besa": BES_ACTIVITY}
            ).text = activity_id
        return ActivityRef(address=address, epr=etree.tostring(epr), activity_id=activity_id)

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Close the HTTP connections."""
        self._session.close()

    def __enter__(self) -> BESClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _zeep(self) -> Any:
        with self._lock:
            if self._service is None:
                settings = zeep.Settings(
                    strict=False, forbid_dtd=True, forbid_entities=True, forbid_external=True
                )
                transport = _Transport(session=self._session, operation_timeout=self.timeout_s)
                client = zeep.Client(
                    str(schema_file("bes-factory.wsdl")),
                    settings=settings,
                    transport=transport,
                    plugins=self._plugins,
                    wsse=Compose(self._wsse) if self._wsse else None,
                )
                self._client = client
                self._service = client.create_service(_BINDING, self.url)
            return self._service

    def _call(
        self,
        operation: str,
        arguments: dict[str, Any],
        job: bytes | None,
        refs: Sequence[ActivityRef] = (),
        *,
        message_id: str | None = None,
    ) -> etree._Element:
        service = self._zeep()
        self._slots.fill(job, refs, message_id)
        try:
            with self._client.settings(raw_response=True):
                response = getattr(service, operation)(**arguments)
        except requests.RequestException as exc:
            raise describe_failure(exc, self.url, self.timeout_s) from exc
        finally:
            self._slots.fill(None, (), None)
        raise_for_http(response, self.url)
        try:
            envelope = parse_untrusted(response.content)
        except MalformedXml as exc:
            raise ProtocolProblem(
                f"{self.url} answered HTTP {response.status_code} with malformed XML: {exc.message}"
            ) from exc
        if self._verifies:
            self._verify(envelope)
        return _envelope.body_payload(envelope)

    def _verify(self, envelope: etree._Element) -> None:
        for plugin in self._wsse:
            try:
                plugin.verify(envelope)
            except Exception as exc:  # zeep raises its own SignatureVerificationFailed
                raise ProtocolProblem(f"the answer's WS-Security signature: {exc}") from exc

    def _identifiers(self, refs: Sequence[ActivityRef]) -> dict[str, Any]:
        return {"ActivityIdentifier": [{"Address": f"{_SLOT}{i}"} for i in range(len(refs))]}

    def _batches(self, refs: list[ActivityRef]) -> Iterable[list[ActivityRef]]:
        for start in range(0, len(refs), self.batch_size):
            yield refs[start : start + self.batch_size]

    def _http(self, method: str, url: str) -> requests.Response:
        """A plain HTTP request to one of the service's own resources; a 2xx answer.

        Raises:
            ConnectionProblem: No answer.
            HttpProblem: Any other status.
        """
        try:
            response = self._session.request(
                method,
                url,
                timeout=self.timeout_s,
                verify=self._session.verify,
                auth=self._auth_for(url),
            )
        except requests.RequestException as exc:
            raise describe_failure(exc, url, self.timeout_s) from exc
        raise_for_http(response, url, soap=False)
        return response

    def _get_json(self, url: str) -> Any:
        response = self._http("GET", url)
        try:
            return response.json()
        except ValueError as exc:
            raise ProtocolProblem(f"{url} did not answer JSON") from exc

    def _auth_for(self, url: str) -> tuple[str, str] | None:
        """HTTP Basic credentials for a GET of ``url``: only over https."""
        if self._basic is None or not url.lower().startswith("https://"):
            return None
        return self._basic

    def _download(self, url: str, path: Path, *, progress: _files.Progress | None = None) -> int:
        url = urljoin(self.url, url)
        partial = path.with_name(path.name + ".partial")
        try:
            with self._session.get(
                url,
                timeout=self.timeout_s,
                stream=True,
                verify=self._session.verify,
                auth=self._auth_for(url),
            ) as response:
                raise_for_http(response, url, soap=False)
                total = int(response.headers.get("content-length", "0") or 0)
                size = 0
                with partial.open("wb") as out:
                    for chunk in response.iter_content(_DOWNLOAD_CHUNK):
                        out.write(chunk)
                        size += len(chunk)
                        if progress is not None:
                            progress(size, max(total, size))
        except requests.RequestException as exc:
            partial.unlink(missing_ok=True)
            raise describe_failure(exc, url, self.timeout_s) from exc
        partial.replace(path)
        return size


class _Transport(zeep.transports.Transport):
    """zeep's transport, passing the session's TLS trust on every request: requests lets
    ``REQUESTS_CA_BUNDLE`` (set on many systems) override a session's ``verify`` otherwise,
    and ``--ca-file`` would be ignored."""

    def post(self, address: str, message: bytes, headers: dict[str, str]) -> requests.Response:
        return self.session.post(
            address,
            data=message,
            headers=headers,
            timeout=self.operation_timeout,
            verify=self.session.verify,
        )


class _Slots:
    """A zeep plugin that puts the verbatim parts into the envelope zeep built: the JSDL
    document into the empty ActivityDocument, and each endpoint reference in place of the
    placeholder reference whose Address names its slot. Runs before WS-Security signs.

    The parts go in as text and the envelope is parsed again. Moving elements between lxml
    trees would drop namespace declarations it finds redundant (a second prefix for a URI
    already declared above), which breaks prefixed values such as ``xsi:type`` that still
    use the dropped prefix.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def fill(self, job: bytes | None, refs: Sequence[ActivityRef], message_id: str | None) -> None:
        self._local.job = job
        self._local.refs = list(refs)
        self._local.message_id = message_id

    def ingress(self, envelope: Any, http_headers: Any, operation: Any) -> Any:
        return envelope, http_headers

    def egress(self, envelope: Any, http_headers: Any, operation: Any, options: Any) -> Any:
        job: bytes | None = getattr(self._local, "job", None)
        refs: list[ActivityRef] = getattr(self._local, "refs", [])
        message_id: str | None = getattr(self._local, "message_id", None)
        if message_id is not None:
            _address(envelope, operation, options, message_id)
        parts: dict[bytes, bytes] = {}
        if job is not None:
            for holder in envelope.iter(qname(BES_FACTORY, "ActivityDocument")):
                holder.append(etree.ProcessingInstruction("bes-slot", "job"))
                parts[b"job"] = job
        for address in list(envelope.iter(qname(WSA, "Address"))):
            value = (address.text or "").strip()
            if not value.startswith(_SLOT):
                continue
            slot = value[len(_SLOT) :]
            placeholder = address.getparent()
            reference = etree.fromstring(refs[int(slot)].epr)
            reference.tag = placeholder.tag  # its name becomes the operation's element name
            placeholder.getparent().replace(
                placeholder, etree.ProcessingInstruction("bes-slot", slot)
            )
            parts[slot.encode()] = etree.tostring(reference)
        if not parts:
            return envelope, http_headers
        text = _MARKER.sub(lambda m: parts[m[1]], etree.tostring(envelope))
        return etree.fromstring(text, _PARSER), http_headers


def _address(envelope: Any, operation: Any, options: Any, message_id: str) -> None:
    """WS-Addressing headers (GFD.108 asks for them): the operation's Action, the request's
    MessageID and the endpoint it goes To."""
    header = envelope.find(qname(SOAP_ENV, "Header"))
    if header is None:
        header = etree.Element(qname(SOAP_ENV, "Header"))
        envelope.insert(0, header)
    action = operation.abstract.wsa_action or operation.soapaction
    for name, value in (("Action", action), ("MessageID", message_id), ("To", options["address"])):
        etree.SubElement(header, qname(WSA, name), nsmap={"wsa": WSA}).text = value


_MARKER: Final = re.compile(rb"<\?bes-slot ([0-9a-z]+)\?>")
_PARSER: Final = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def _as_list(refs: ActivityRef | Iterable[ActivityRef]) -> list[ActivityRef]:
    return [refs] if isinstance(refs, ActivityRef) else list(refs)


def _root(document: bytes) -> bytes:
    """The JobDefinition element of a document as text, without the XML declaration (it goes
    inside the envelope). Comments and processing instructions are dropped; the rest goes as
    written.

    Raises:
        InvalidJsdl: The document is not well-formed XML.
    """
    try:
        return etree.tostring(parse_untrusted(document))
    except MalformedXml as exc:
        raise InvalidJsdl(f"the document is not well-formed XML: {exc.message}", ()) from exc


def _document_bytes(document: bytes | str | os.PathLike[str]) -> bytes:
    if isinstance(document, bytes):
        return document
    if isinstance(document, str):
        return document.encode("utf-8")
    return Path(document).read_bytes()


def _inside(root: Path, name: str) -> Path:
    """``root/name``, refusing names that would leave ``root`` (a hostile listing)."""
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ProtocolProblem(f"the service listed a file outside the download folder: {name!r}")
    return path


def to_json(status: ActivityStatus) -> dict[str, Any]:
    """A status as plain JSON values (for ``--json`` and workflow engines)."""
    return {
        "id": status.ref.name,
        "address": status.ref.address,
        "state": status.state.value,
        "substates": list(status.substates),
        "exit_code": status.exit_code,
        "message": status.message,
        "outputs": status.outputs_url,
        "changed": status.changed,
        "pool": status.pool,
        "warnings": list(status.warnings),
        "counts": {c.state.value: c.count for c in status.counts} or None,
        "children": [c.name for c in status.children] or None,
        "access": (
            {
                "user": status.access.user,
                "host_keys": list(status.access.host_keys),
                "ports": [{"guest": g, "host": h} for g, h in status.access.ports],
                "tunnel": status.access.tunnel,
            }
            if status.access is not None
            else None
        ),
        "fault": (
            {
                "name": getattr(status.fault, "fault_name", "") or "Fault",
                "message": str(status.fault),
            }
            if status.fault is not None
            else None
        ),
    }
