"""The HTTP entry point: a small ASGI application around the SOAP factory.

Routes::

    POST /bes                       BES-Factory and BES-Management (GFD.108), SOAP 1.1
    POST /bes/activities/<id>       the same, at an activity's own address (its EPR)
    POST /bes/draft-2007            the same for clients of the May 2007 BES draft
    GET  /bes?wsdl                  the service WSDL
    GET  /bes/schemas/<file>        the XSD and WSDL files it imports
    /bes/images[/<name>[/publish]]  templates and users' images (JSON; bes.imageapi)
    GET  /bes/activities/<id>/outputs[/<name>]   an activity's kept files (bes.results)
    GET  /bes/activities/<id>/why                why it waits: JSON for bes why (bes.results)
    GET  /bes/activities/<id>/lease              a VM lease's way in, JSON (bes.leaseapi)
    POST /bes/activities/<id>/suspend|resume     pause a VM lease's VM, or let it go on
    WS   /bes/activities/<id>/tunnel?port=N      one TCP stream to a lease's guest (bes.relay)
    WS   /bes/relay/<id>?port=N                  the same, forwarded by another replica
    /bes/files[/sha256/<hex>|/name/<path>]       the caller's file store (bes.fileapi)
    GET  /bes/status[/activities/<id>]           the status page, HTML (bes.statuspage)
    GET  /metrics                   Prometheus text format, for administrators (bes.metrics)
    GET  /healthz                   liveness and database check
    /worker/v1/...                  the desktop grid's worker protocol (bes.workerapi)
    WS   /worker/v1/leases/<lease>/tunnel        a worker's tunnel for a VM lease (bes.relay)

Who calls is decided once per request by the identity policy: on a site, bes.authn (users,
WS-Security, TLS client certificates, HTTP Basic); the WSDL, its schemas and ``/healthz``
are public, the worker protocol takes worker tokens, everything else goes through it.
Request bodies over the configured limit are drained and refused before parsing, with a SOAP
fault.
Every request is timed into the ``bes_request_duration_seconds`` histogram, by route and
operation. Nothing here answers with a traceback; the only HTML is the status page's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import secrets
import socket
import time
from typing import Any, Final
from urllib.parse import unquote

from bes import __version__
from bes.accounts import Accounts
from bes.activities import Activities
from bes.authn import SitePolicy, is_loopback
from bes.backends.base import Backend, BackendContext
from bes.backends.desktopgrid import DesktopGridBackend
from bes.backends.desktopgrid.gateway import WorkerGateway
from bes.backends.registry import backend_class
from bes.certs import CertificateTrust
from bes.clouds.pools import CloudPools
from bes.config import ServiceConfig
from bes.db import tunnel_rows
from bes.db.store import Database
from bes.errors import (
    BesError,
    ConfigError,
    InvalidRequest,
    LeaseLost,
    NotAuthorized,
    StoreError,
)
from bes.factory import Factory
from bes.fileapi import serve_files
from bes.filerefs import FILES
from bes.filestore import FileStore
from bes.http import (
    TEXT,
    XML,
    Receive,
    Scope,
    Send,
    headers_of,
    not_allowed,
    read_body,
    respond,
)
from bes.identity import AnonymousPolicy, IdentityPolicy, bearer_token, request_scheme, transport_of
from bes.imageapi import IMAGES, serve_images
from bes.leaseapi import TUNNEL, lease_route, serve_lease, serve_tunnel, stream_port
from bes.metrics import CONTENT_TYPE as METRICS_TYPE
from bes.metrics import Metrics
from bes.overview import Overview
from bes.principal import Principal
from bes.relay import RELAY_PATH, SECRET_HEADER, Relay, RelayLimits, peer_context, refuse
from bes.results import serve_outputs, serve_why
from bes.retention import Retention
from bes.schemas import schema_file
from bes.sealing import Sealer
from bes.soap import CLIENT, SoapFault, render_fault
from bes.statuspage import STATUS_PATH, serve_status
from bes.storage import DirectoryStorage, Storage
from bes.userimages import UserImages
from bes.vm.images import ImageError
from bes.vm.repository import CATALOG_FILE
from bes.wire import ACTIVITY_PATH, DRAFT_2007, FINAL, Dialect, ResourceDescription
from bes.workerapi import PREFIX as WORKER_PREFIX
from bes.workerapi import WorkerApi
from bes.wsdl import SCHEMA_PATH, service_wsdl

log = logging.getLogger(__name__)


class BesApp:
    """The ASGI application. Build it with :func:`create_app`.

    The database, registry and backends are created at ASGI lifespan start-up (or by
    :meth:`startup` directly) and closed at shutdown.
    """

    def __init__(
        self,
        config: ServiceConfig,
        *,
        identity: IdentityPolicy | None = None,
        backends: dict[str, Backend] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self._trusted_proxies = frozenset(config.trusted_proxies)
        self._given_identity = identity
        self.identity: IdentityPolicy = identity or AnonymousPolicy()
        self.accounts: Accounts | None = None
        self._gateway: WorkerGateway | None = None
        self.metrics = metrics or Metrics(version=__version__)
        self._backends = backends
        self.db: Database | None = None
        self.activities: Activities | None = None
        self.factory: Factory | None = None
        self.workers: WorkerApi | None = None
        self.overview: Overview | None = None
        self.sealer: Sealer | None = None
        self._replica = "bes-" + secrets.token_hex(4)
        self._stop = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self.files: FileStore | None = None
        self.storage: Storage | None = None
        """What every replica must reach (--storage-dir): files/ and the kept outputs/."""
        self.clouds: CloudPools | None = None
        """The cloud pools (bes serve --clouds), if any."""
        self._clouds_task: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self.images: UserImages | None = None
        self.relay: Relay | None = None

    # ------------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        """Open (and migrate) the database, configure backends, start the backend loop."""
        config = self.config
        if config.database_url is None:
            config.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(config.effective_database_url)
        await asyncio.to_thread(db.migrate)
        # One key for every secret at rest (staging credentials of jobs, PasswordDigest).
        sealer = await asyncio.to_thread(
            Sealer.from_file, config.effective_secret_key_file, create=True
        )
        self.sealer = sealer
        storage = DirectoryStorage(config.effective_storage_dir)
        self.storage = storage
        backends = self._backends
        if backends is None:
            backends = {}
            if config.backend:
                context = BackendContext(
                    db=db,
                    data_dir=config.data_dir,
                    loop=asyncio.get_running_loop(),
                    options=config.backend_options,
                    metrics=self.metrics,
                    sealer=sealer,
                    storage=storage,
                )
                backends[config.backend] = backend_class(config.backend).build(context)
        self.db = db
        if self._given_identity is None:
            self.identity = await asyncio.to_thread(self._site_policy, db)
        self.files = FileStore(
            db,
            config.files_dir or storage,
            prefix="" if config.files_dir else "files",
            max_file_bytes=config.file_max_bytes,
            quota_bytes=config.file_quota_bytes,
            expire_after_s=config.file_expiry_s,
        )
        self.images = UserImages(db, self.files, catalog_file=config.data_dir / CATALOG_FILE)
        self.activities = Activities(
            db,
            backends=backends,
            default_backend=config.backend,
            metrics=self.metrics,
            sealer=sealer,
            file_roots=config.file_roots,
            store=self.files,
            images=self.images,
            replica=self._replica,
        )
        self.overview = Overview(self.activities, db)
        self.factory = Factory(
            self.activities,
            identity=self.identity,
            resource=_describe(config),
            strict=config.strict_jsdl,
            sweep_limit=config.sweep_limit,
        )
        grid = next((b for b in backends.values() if isinstance(b, DesktopGridBackend)), None)
        self._gateway = grid.gateway if grid is not None else None
        self.workers = (
            WorkerApi(grid.gateway, self.files, images=self.images) if grid is not None else None
        )
        self.relay = Relay(
            db,
            replica=self._replica,
            relay_url=config.relay_url or _own_url(config),
            limits=RelayLimits(
                streams=config.tunnel_streams, bytes_per_second=config.tunnel_bytes_per_second
            ),
            peer_ssl=peer_context(str(config.tls_cert)) if config.tls_cert else None,
        )
        self.clouds = None
        if config.clouds_file is not None:
            if grid is None:
                raise ConfigError("cloud pools (--clouds) need the desktopgrid backend")
            self.clouds = await asyncio.to_thread(CloudPools.from_file, grid, config.clouds_file)
            await asyncio.to_thread(self.clouds.offer)  # jobs may name its pools from now on
        self._stop.clear()
        self._loop_task = asyncio.create_task(self.activities.run(self._stop), name="bes-backends")
        self._housekeeping = asyncio.create_task(self.files.run(self._stop), name="bes-files")
        if config.keep_ended_s is not None:  # bes serve --keep-ended
            retention = Retention(db, backends.get, holder=self._replica)
            keep = dt.timedelta(seconds=config.keep_ended_s)
            self._retention_task = asyncio.create_task(
                retention.run(self._stop, keep_ended=keep), name="bes-retention"
            )
        self._clouds_task = (
            asyncio.create_task(self.clouds.run(self._stop), name="bes-clouds")
            if self.clouds is not None
            else None
        )
        log.info("bes started: database %s, backend %s", _redact(db.url), config.backend or "none")

    def _site_policy(self, db: Database) -> IdentityPolicy:
        """The identity policy of a site: users in the database, the client CA (blocking:
        reads key and certificate files)."""
        config = self.config
        if config.insecure:
            log.warning(
                "INSECURE: --insecure lets passwords cross the network in clear (no TLS); "
                "for a lab only"
            )
        assert self.sealer is not None
        self.accounts = Accounts(db, self.sealer)
        trust = None
        if config.tls_client_ca is not None:
            trust = CertificateTrust.from_files(config.tls_client_ca, crl_file=config.tls_crl)
        return SitePolicy(
            self.accounts,
            trust=trust,
            always=not is_loopback(config.host),
            insecure=config.insecure,
            window_s=config.auth_window_s,
            algorithms=config.signature_algorithms,
            metrics=self.metrics,
        )

    def begin_shutdown(self) -> None:
        """The server is about to stop (call in the loop, before it waits for the open
        requests): workers' claim long-polls are answered at once, so that HTTP stops within
        a second or two."""
        if self._gateway is not None:
            self._gateway.stop_waiting()

    async def shutdown(self) -> None:
        """Stop the backend loop, finish pending writes, close everything."""
        self._stop.set()
        if self.relay is not None:
            await self.relay.close_all()
            if self.db is not None:  # the other replicas stop forwarding streams here
                with contextlib.suppress(BesError):
                    await self.db.write(tunnel_rows.release_replica, self._replica)
        for task in (
            self._loop_task,
            self._housekeeping,
            self._clouds_task,
            self._retention_task,
        ):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.activities is not None:
            for backend in self.activities.backends.values():
                backend.close()
        if self.db is not None:
            self.db.close()  # in the loop: the loop's committer resolves its last futures here
            log.info("bes stopped after %d write transactions", self.db.transactions)
        self.db = self.activities = self.factory = self.workers = self.overview = None

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        route: tuple[str, str] = (_OTHER, "")
        try:
            route = await self._route(scope, receive, send)
        except Exception:
            reference = secrets.token_hex(4)
            log.exception("internal error %s on %s %s", reference, scope["method"], scope["path"])
            await respond(send, 500, f"internal error (reference {reference})\n".encode(), TEXT)
        finally:
            self.metrics.observe_request(*route, time.perf_counter() - started)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> tuple[str, str]:
        """Answer one request; return its route family and operation (for the timings)."""
        path: str = scope["path"]
        method: str = scope["method"]
        if path in ("/bes", "/bes/"):
            if method == "POST":
                return "soap", await self._soap(scope, receive, send, FINAL)
            elif method in ("GET", "HEAD") and scope["query_string"].lower() == b"wsdl":
                await respond(send, 200, service_wsdl(self._endpoint(scope)), XML)
            elif method in ("GET", "HEAD"):
                await respond(send, 200, _usage(self._endpoint(scope)), TEXT)
            else:
                await not_allowed(send, "GET, POST")
        elif path.startswith(WORKER_PREFIX):
            if self.workers is None:
                await respond(send, 404, b"this service has no desktop grid\n", TEXT)
            else:
                await self.workers(scope, receive, send)
            return "worker", _worker_operation(path)
        elif resource := lease_route(path)[1]:
            caller = await self._http_caller(scope, send)
            if caller is not None and self.activities is not None:
                await serve_lease(
                    scope,
                    send,
                    caller=caller,
                    activities=self.activities,
                    endpoint=self._endpoint(scope),
                )
            return "lease", resource
        elif (
            path.startswith(ACTIVITY_PATH)
            and method in ("GET", "HEAD")
            and "/" in path[len(ACTIVITY_PATH) :]
        ):
            return await self._activity_resource(scope, send)
        elif path == FILES or path.startswith(FILES + "/"):
            caller = await self._http_caller(scope, send)
            if caller is not None and self.files is not None:
                await serve_files(
                    scope,
                    receive,
                    send,
                    caller=caller,
                    store=self.files,
                    endpoint=self._endpoint(scope),
                )
            return "files", method if method in _FILE_METHODS else _OTHER
        elif path.startswith(ACTIVITY_PATH) or path == "/bes/draft-2007":
            if method != "POST":
                await not_allowed(send, "POST")
            else:
                dialect = DRAFT_2007 if path.endswith("draft-2007") else FINAL
                return "soap", await self._soap(scope, receive, send, dialect)
        elif path == STATUS_PATH or path.startswith(STATUS_PATH + "/"):
            if method not in ("GET", "HEAD"):
                await not_allowed(send, "GET")
            else:
                await self._status(scope, send)
            return "status", ""
        elif path == "/metrics":
            if method not in ("GET", "HEAD"):
                await not_allowed(send, "GET")
            else:
                await self._metrics(scope, send)
            return "metrics", ""
        elif path.startswith(SCHEMA_PATH) and method in ("GET", "HEAD"):
            await self._schema(path[len(SCHEMA_PATH) :], send)
        elif path == IMAGES or path.startswith(IMAGES + "/"):
            await self._images(scope, receive, send)
            return "images", method if method in _FILE_METHODS | {"POST"} else _OTHER
        elif path == "/healthz" and method in ("GET", "HEAD"):
            await self._health(send)
        else:
            await respond(send, 404, b"not found; the BES endpoint is /bes\n", TEXT)
        return _OTHER, ""

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """WebSockets: workers' tunnels, users' streams, and streams other replicas forward."""
        path: str = scope["path"]
        relay, activities, gateway = self.relay, self.activities, self._gateway
        try:
            if relay is None or activities is None:
                await refuse(scope, send, 503, "starting up")
            elif path.startswith(WORKER_PREFIX + "leases/") and path.endswith("/tunnel"):
                if gateway is None:
                    await refuse(scope, send, 404, "this service has no desktop grid")
                    return
                lease = unquote(path[len(WORKER_PREFIX + "leases/") : -len("/tunnel")])
                worker = await gateway.authenticate(bearer_token(headers_of(scope)))
                activity_id = await gateway.tunnel_lease(worker, lease)
                await relay.serve_tunnel(activity_id, receive, send)
            elif path.startswith(RELAY_PATH):
                secret = headers_of(scope).get(SECRET_HEADER, "")
                port = stream_port(scope)
                if port is None:
                    await refuse(scope, send, 400, "no port")
                    return
                await relay.serve_forwarded(
                    path[len(RELAY_PATH) :], port, scope, receive, send, secret=secret
                )
            elif lease_route(path)[1] == TUNNEL:
                transport = transport_of(
                    scope, headers_of(scope), trusted_proxies=self._trusted_proxies
                )
                caller = await self.identity.identify(transport, None)
                await serve_tunnel(
                    scope, receive, send, caller=caller, activities=activities, relay=relay
                )
            else:
                await refuse(scope, send, 404, "no WebSocket here")
        except NotAuthorized as exc:
            await refuse(scope, send, 401, str(exc))
        except LeaseLost as exc:
            await refuse(scope, send, 409, str(exc))
        except InvalidRequest as exc:
            await refuse(scope, send, 400, str(exc))
        except Exception:
            reference = secrets.token_hex(4)
            log.exception("internal error %s on WebSocket %s", reference, path)
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1011})

    async def _soap(self, scope: Scope, receive: Receive, send: Send, dialect: Dialect) -> str:
        """Serve a SOAP request; return the operation's name (for the timings)."""
        factory = self.factory
        if factory is None:
            await respond(send, 503, b"starting up\n", TEXT)
            return ""
        headers = headers_of(scope)
        body = await read_body(receive, headers, self.config.max_request_bytes)
        if body is None:
            fault = SoapFault(
                CLIENT,
                f"the request body exceeds {self.config.max_request_bytes} bytes and was not read",
            )
            envelope = render_fault(fault, default_action=_FACTORY_FAULT, request=None)
            await respond(send, 500, envelope, XML, close=True)
            return ""
        answer = await factory.handle(
            body,
            soap_action=headers.get("soapaction"),
            endpoint=self._endpoint(scope, headers),
            transport=transport_of(scope, headers, trusted_proxies=self._trusted_proxies),
            dialect=dialect,
        )
        await respond(send, answer.status, answer.envelope, XML)
        return answer.operation

    async def _activity_resource(self, scope: Scope, send: Send) -> tuple[str, str]:
        """GET under an activity: its kept files (``/outputs``) or why it waits (``/why``)."""
        caller = await self._http_caller(scope, send)
        if caller is None or self.activities is None:
            return "outputs", ""
        if scope["path"].endswith("/why"):
            await serve_why(scope, send, caller=caller, activities=self.activities)
            return "why", ""
        await serve_outputs(
            scope, send, caller=caller, activities=self.activities, endpoint=self._endpoint(scope)
        )
        return "outputs", ""

    async def _http_caller(self, scope: Scope, send: Send) -> Principal | None:
        """The caller of a plain HTTP request, decided by the identity policy as for SOAP
        ones; None once it was answered (401 refused, 503 starting up)."""
        if self.activities is None:
            await respond(send, 503, b"starting up\n", TEXT)
            return None
        try:
            transport = transport_of(
                scope, headers_of(scope), trusted_proxies=self._trusted_proxies
            )
            return await self.identity.identify(transport, None)
        except NotAuthorized as exc:
            await respond(send, 401, f"{exc}\n".encode(), TEXT, extra=[_CHALLENGE])
            return None

    async def _worker_reads(self, scope: Scope) -> bool:
        """Whether a worker with its token asks (workers read the template catalog)."""
        token = bearer_token(headers_of(scope))
        if token is not None and self._gateway is not None:
            with contextlib.suppress(NotAuthorized):
                await self._gateway.authenticate(token)
                return True
        return False

    async def _status(self, scope: Scope, send: Send) -> None:
        caller = await self._http_caller(scope, send)
        if caller is None or self.overview is None or self.activities is None:
            return
        await serve_status(
            scope,
            send,
            caller=caller,
            overview=self.overview,
            endpoint=self._endpoint(scope),
            backends=list(self.activities.backends),
            version=__version__,
            notices=self.config.notices,
        )

    async def _metrics(self, scope: Scope, send: Send) -> None:
        """``GET /metrics``: administrators only (the figures are everyone's)."""
        caller = await self._http_caller(scope, send)
        if caller is None or self.overview is None:
            return
        try:
            census = await self.overview.census(caller)
        except NotAuthorized as exc:
            await respond(send, 403, f"{exc}\n".encode(), TEXT)
            return
        extra = self.relay.collect() if self.relay is not None else ()
        await respond(send, 200, self.metrics.render(census, extra), METRICS_TYPE)

    async def _schema(self, name: str, send: Send) -> None:
        try:
            data = await asyncio.to_thread(schema_file(name).read_bytes)
        except FileNotFoundError:
            await respond(send, 404, b"no such schema\n", TEXT)
            return
        await respond(send, 200, data, XML)

    async def _images(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The site's templates (``<data-dir>/templates.json``) and the built-in ones, for
        workers; for users also their images and the published ones, which they register,
        remove and (administrators) publish there (bes.imageapi)."""
        images = self.images
        worker = scope["method"] in ("GET", "HEAD") and await self._worker_reads(scope)
        caller = None if worker else await self._http_caller(scope, send)
        if images is None or (caller is None and not worker):
            return
        try:
            catalog = await asyncio.to_thread(images.site_catalog)
        except ImageError as exc:
            log.error("%s", exc)
            await respond(send, 503, b"the image catalog is unreadable; see the log\n", TEXT)
            return
        if caller is None:
            body = json.dumps(catalog.to_json(), indent=1).encode() + b"\n"
            await respond(send, 200, body, b"application/json")
            return
        await serve_images(
            scope,
            receive,
            send,
            caller=caller,
            images=images,
            catalog=catalog,
            endpoint=self._endpoint(scope),
        )

    async def _health(self, send: Send) -> None:
        activities = self.activities
        if activities is None:
            await respond(send, 503, b"starting up\n", TEXT)
            return
        try:
            accepting = await activities.is_accepting()
        except StoreError as exc:  # a load balancer takes this replica out until it is back
            await respond(send, 503, f"the database is unavailable: {exc}\n".encode(), TEXT)
            return
        await respond(send, 200, f"ok; accepting new activities: {accepting}\n".encode(), TEXT)

    def _endpoint(self, scope: Scope, headers: dict[str, str] | None = None) -> str:
        """The base URL the request came to (``headers``: its own, if already decoded)."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        headers = headers if headers is not None else headers_of(scope)
        host = headers.get("host")
        if not host:
            server = scope.get("server") or (self.config.host, self.config.port)
            host = f"{server[0]}:{server[1]}"
        scheme = request_scheme(scope, headers, trusted_proxies=self._trusted_proxies)
        return f"{scheme}://{host}"

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


_CHALLENGE: Final = (b"www-authenticate", b'Basic realm="bes", charset="UTF-8"')
_FACTORY_FAULT: Final = "http://schemas.ggf.org/bes/2006/08/bes-factory/BESFactoryPortType/Fault"
_OTHER: Final = "other"
_FILE_METHODS: Final = frozenset({"GET", "HEAD", "PUT", "DELETE"})
_WORKER_CALLS: Final = frozenset(
    {"register", "claim", "heartbeat", "complete", "fail", "release", "access", "openapi.json"}
)


def _worker_operation(path: str) -> str:
    """The worker protocol's call a path names (a label from a fixed set)."""
    if "/files/" in path:
        return "upload"
    last = path.rpartition("/")[2]
    return last if last in _WORKER_CALLS else _OTHER


def _own_url(config: ServiceConfig) -> str:
    """How other replicas reach this one when ``--relay-url`` does not say."""
    wildcard = config.host in ("0.0.0.0", "::", "")  # noqa: S104 (compared, not bound)
    host = socket.getfqdn() if wildcard else config.host
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.tls_cert is not None else "http"
    return f"{scheme}://{host}:{config.port}"


def create_app(config: ServiceConfig, **kwargs: Any) -> BesApp:
    """Build the application for ``config`` (see :class:`BesApp` for the keyword arguments)."""
    return BesApp(config, **kwargs)


def _describe(config: ServiceConfig) -> ResourceDescription:
    arch = platform.machine().lower()
    arch = {"amd64": "x86_64", "aarch64": "arm", "arm64": "arm", "i686": "x86_32"}.get(arch, arch)
    memory: float | None = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        memory = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return ResourceDescription(
        resource_name=config.resource_name or socket.gethostname(),
        cpu_architecture=arch if arch in _JSDL_ARCHITECTURES else "other",
        cpu_count=float(os.cpu_count() or 1),
        physical_memory_bytes=memory,
        long_description="OGSA-BES 1.0 service running JSDL jobs in virtual machines",
        local_resource_manager_type="urn:bes-grid:resource-manager:" + (config.backend or "queue"),
    )


_JSDL_ARCHITECTURES: Final = frozenset(
    {"sparc", "powerpc", "x86", "x86_32", "x86_64", "parisc", "mips", "ia64", "arm"}
)


def _usage(endpoint: str) -> bytes:
    return (
        f"This is an OGSA-BES 1.0 endpoint (SOAP 1.1). POST requests to {endpoint}/bes.\n"
        f"WSDL: {endpoint}/bes?wsdl\n"
    ).encode()


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
