"""Benchmark of the HTTP router: the hand-made ASGI router of ``bes.app`` against Starlette in
front of the same application, on the SOAP path and on a trivial route, in one run.

Usage::

    .venv/bin/python bench/router_bench.py [--seconds 1.5] [--clients 32] [--rounds 8]

It serves four variants of the same service, each in its own process pinned to CPU 0 when
``taskset`` is available (ServiceConfig defaults, ``--backend none``: activities stay queued;
SQLite in a temporary directory; served by :func:`bes.tls.run`, i.e. uvicorn with exactly the
settings of ``bes serve``)::

    hand   the BesApp, as bes serve runs it
    mount  Starlette(routes=[Mount("/", app=BesApp)]): Starlette's middleware stack (errors,
           exceptions) and router in front of the unchanged application
    route  Starlette with Route("/bes", POST) and Route("/healthz") endpoints (Request in,
           Response out) that call the factory's SOAP handler and the activity registry
           directly, and Mount("/", app=BesApp) for every other path
    beside the BesApp in front, as today, with WebSocket requests under /bes/tunnels handed
           to a Starlette application (a WebSocketRoute that echoes, standing in for the
           tunnel relay; checked once): Starlette routes beside the SOAP path

and the floor (bench/floor.py: the same HTTP stack answering a fixed body). From this process,
on the other CPU, it sends CreateActivity and GET /healthz with keep-alive clients, and
GetActivityStatuses of 1,000 ids one call after the other, in short rounds: the variants
interleaved, their order rotated. Other work on the machine moves throughput a lot from one
second to the next, so each variant's throughput is also given as its ratio to hand's in the
same round (median over rounds), and the cost as the server process's CPU time per request
(/proc/PID/task/*/schedstat), which that other work moves much less. Then, without HTTP,
the microseconds one request costs each variant when its ASGI application is called
directly, one request after the other.
Results are printed as tables; nothing is asserted. Needs ``starlette`` (not a dependency of
bes): ``.venv/bin/pip install starlette``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
import bes_bench  # noqa: E402
from bes_bench import (  # noqa: E402
    ACTION,
    CREATE,
    Load,
    _pct,
    _pin,
    create_request,
    etree_tostring,
    server_cpu_s,
)

from bes import tls  # noqa: E402
from bes.app import BesApp, create_app  # noqa: E402
from bes.config import ServiceConfig  # noqa: E402
from bes.http import XML, Message, Scope, headers_of, read_body  # noqa: E402
from bes.identity import request_scheme, transport_of  # noqa: E402
from bes.soap import CLIENT, SoapFault, render_fault  # noqa: E402
from bes.wire import FINAL  # noqa: E402
from tests.support import soap  # noqa: E402
from tests.support.server import free_port  # noqa: E402

VARIANTS: Final = ("hand", "mount", "route", "beside")
TUNNEL_PATH: Final = "/bes/tunnels"
T = TypeVar("T")
_FAULT_ACTION: Final = "http://schemas.ggf.org/bes/2006/08/bes-factory/BESFactoryPortType/Fault"

# ---------------------------------------------------------------------- the served variants


def build(variant: str, app: BesApp) -> Any:
    """The ASGI application of ``variant`` around ``app`` (Starlette imported only here)."""
    if variant == "hand":
        return app
    from starlette.applications import Starlette
    from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

    if variant == "beside":
        tunnels = Starlette(routes=[WebSocketRoute(TUNNEL_PATH + "/{activity}", _echo)])

        async def beside(scope: Scope, receive: Any, send: Any) -> None:
            # What BesApp.__call__ would do with a Starlette sub-application for its
            # WebSocket routes (as /worker/v1 has WorkerApi): HTTP goes on as today.
            if scope["type"] == "websocket" and scope["path"].startswith(TUNNEL_PATH):
                await tunnels(scope, receive, send)
            else:
                await app(scope, receive, send)

        return beside
    routes: list[BaseRoute] = []
    if variant == "route":
        routes += [
            Route("/bes", _soap_endpoint(app), methods=["POST"]),
            Route("/healthz", _health_endpoint(app), methods=["GET", "HEAD"]),
        ]
    routes.append(Mount("/", app=app))
    return Starlette(routes=routes, lifespan=_lifespan(app))


async def _echo(websocket: Any) -> None:
    """A WebSocket endpoint standing in for a tunnel: one message back, then close."""
    await websocket.accept()
    await websocket.send_bytes(await websocket.receive_bytes())
    await websocket.close()


async def websocket_echo(port: int, payload: bytes) -> bytes:
    """``payload`` sent to the ``beside`` variant's WebSocket route over loopback, and what
    came back."""
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}{TUNNEL_PATH}/x", open_timeout=5) as ws:
        await ws.send(payload)
        answer = await asyncio.wait_for(ws.recv(), 5)
    return answer if isinstance(answer, bytes) else answer.encode()


def _echo_check(port: int) -> str:
    from websockets.exceptions import WebSocketException

    payload = os.urandom(4096)
    try:
        echoed = asyncio.run(websocket_echo(port, payload))
    except (OSError, TimeoutError, WebSocketException) as exc:
        return f"FAILED ({exc!r})"
    return "ok" if echoed == payload else "FAILED (another answer)"


def _lifespan(app: BesApp) -> Callable[[object], contextlib.AbstractAsyncContextManager[None]]:
    """Starlette runs no lifespan of a mounted application: start and stop it here."""

    @contextlib.asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        await app.startup()
        try:
            yield
        finally:
            await app.shutdown()

    return lifespan


def _soap_endpoint(app: BesApp) -> Callable[..., Awaitable[Any]]:
    """``POST /bes`` as a Starlette endpoint doing what ``BesApp._soap`` does: bounded body,
    ``Factory.handle``, the response, the request timing."""
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response

    limit = app.config.max_request_bytes
    proxies = frozenset(app.config.trusted_proxies)

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        operation = ""
        try:
            factory = app.factory
            if factory is None:
                return PlainTextResponse("starting up\n", 503)
            headers = headers_of(request.scope)
            body = await read_body(request.receive, headers, limit)
            if body is None:
                fault = SoapFault(CLIENT, f"the request body exceeds {limit} bytes")
                envelope = render_fault(fault, default_action=_FAULT_ACTION, request=None)
                return Response(
                    envelope, 500, {"content-type": XML.decode(), "connection": "close"}
                )
            answer = await factory.handle(
                body,
                soap_action=headers.get("soapaction"),
                endpoint=_endpoint(app, request.scope, headers, proxies),
                transport=transport_of(request.scope, headers, trusted_proxies=proxies),
                dialect=FINAL,
            )
            operation = answer.operation
            return Response(answer.envelope, answer.status, {"content-type": XML.decode()})
        finally:
            app.metrics.observe_request("soap", operation, time.perf_counter() - started)

    return endpoint


def _health_endpoint(app: BesApp) -> Callable[..., Awaitable[Any]]:
    """``GET /healthz`` as a Starlette endpoint doing what ``BesApp._health`` does."""
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    async def endpoint(request: Request) -> PlainTextResponse:
        started = time.perf_counter()
        try:
            activities = app.activities
            if activities is None:
                return PlainTextResponse("starting up\n", 503)
            accepting = await activities.is_accepting()
            return PlainTextResponse(f"ok; accepting new activities: {accepting}\n")
        finally:
            app.metrics.observe_request("other", "", time.perf_counter() - started)

    return endpoint


def _endpoint(app: BesApp, scope: Scope, headers: dict[str, str], proxies: frozenset[str]) -> str:
    """The service's base URL as the client reached it (as ``BesApp._endpoint``)."""
    if app.config.public_url:
        return app.config.public_url.rstrip("/")
    host = headers.get("host")
    if not host:
        server = scope.get("server") or (app.config.host, app.config.port)
        host = f"{server[0]}:{server[1]}"
    return f"{request_scheme(scope, headers, trusted_proxies=proxies)}://{host}"


def serve(variant: str, port: int, data_dir: Path) -> None:
    """Serve ``variant`` on loopback ``port`` until a signal, logging as ``bes serve`` does."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    app = create_app(ServiceConfig(port=port, data_dir=data_dir))
    if not tls.run(build(variant, app), host="127.0.0.1", port=port, context=None):
        sys.exit(3)


# ---------------------------------------------------------------------- the load


@dataclass(frozen=True, slots=True, kw_only=True)
class Server:
    """A server process the load is sent to."""

    port: int
    pid: int


@contextlib.contextmanager
def started(argv: list[str], port: int, health: str, log: Path) -> Iterator[Server]:
    """``argv`` running until the block ends, once ``health`` answers (as bes_bench.running,
    which keeps the process to itself; ``taskset`` execs, so its pid is the server's), its
    output in ``log``."""
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}{health}", timeout=1).status_code < 500:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{argv} did not start:\n{log.read_text()[-2000:]}")
        yield Server(port=port, pid=proc.pid)
    finally:
        proc.terminate()
        proc.wait(15)


def _server_argv(variant: str, port: int, data: Path) -> list[str]:
    script = str(Path(__file__).resolve())
    return [
        *_pin(0),
        *(sys.executable, script, "--serve", variant),
        *("--port", str(port), "--data-dir", str(data)),
    ]


def _floor_argv(port: int) -> list[str]:
    """bench/floor.py as bes_bench starts it."""
    return [
        *_pin(0),
        *(sys.executable, "-m", "uvicorn", "floor:app", "--app-dir", str(BENCH)),
        *("--port", str(port), "--http", "httptools", "--loop", "uvloop"),
        *("--no-access-log", "--log-level", "warning"),
    ]


def get_request(port: int, path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path.encode(), port)


async def drive(server: Server, request: bytes, clients: int, seconds: float) -> Load:
    """``request`` over and over from ``clients`` keep-alive connections for ``seconds``, and
    the server's CPU time meanwhile."""
    return await bes_bench.drive(server.port, request, clients, seconds, pid=server.pid)


async def status_request(port: int, count: int) -> bytes:
    """A GetActivityStatuses envelope naming ``count`` activities created for it."""
    url = f"http://127.0.0.1:{port}/bes"
    headers = {"SOAPAction": ACTION, "Content-Type": "text/xml"}
    async with httpx.AsyncClient(timeout=60) as client:

        async def one() -> bytes:
            r = await client.post(url, content=CREATE, headers=headers)
            return etree_tostring(soap.xpath(soap.body_of(r.content), "bes:ActivityIdentifier")[0])

        eprs: list[bytes] = []
        while len(eprs) < count:
            eprs += await asyncio.gather(*(one() for _ in range(min(16, count - len(eprs)))))
    return soap.envelope(soap.vector("GetActivityStatuses", eprs))


async def status_calls(server: Server, body: bytes, count: int, calls: int) -> Load:
    """``calls`` GetActivityStatuses of ``count`` ids, one after the other."""
    url = f"http://127.0.0.1:{server.port}/bes"
    headers = {"SOAPAction": soap.ACTIONS + "GetActivityStatuses", "Content-Type": "text/xml"}
    times = []
    async with httpx.AsyncClient(timeout=60) as client:
        cpu = server_cpu_s(server.pid)
        for _ in range(calls):
            begun = time.perf_counter()
            r = await client.post(url, content=body, headers=headers)
            times.append(time.perf_counter() - begun)
            if r.status_code != 200 or r.content.count(b"<bes-factory:Response>") != count:
                raise RuntimeError(f"GetActivityStatuses answered {r.status_code}")
        cpu = server_cpu_s(server.pid) - cpu
    return Load(sorted(times), 0, sum(times), cpu)


# ---------------------------------------------------------------------- without HTTP


def _scope(method: str, path: str, body: bytes = b"", action: str = "") -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8080")]
    if method == "POST":
        headers += [
            (b"content-type", b"text/xml; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"soapaction", f'"{soap.ACTIONS}{action}"'.encode()),
        ]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }


async def call(asgi: Any, scope: dict[str, Any], body: bytes) -> tuple[int, bytes]:
    """One request to an ASGI application, without HTTP: its status and body."""
    answer: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        answer.append(message)

    await asgi(dict(scope), receive, send)
    return answer[0]["status"], b"".join(m.get("body", b"") for m in answer[1:])


async def dispatch_costs(data_dir: Path, calls: int, status_ids: int) -> dict[str, list[float]]:
    """Microseconds per request of each variant's ASGI application called directly, one
    request after the other (best of 5 runs; the variants alternate), by request."""
    app = create_app(ServiceConfig(data_dir=data_dir))
    await app.startup()
    apps = [build(variant, app) for variant in VARIANTS]
    create = _scope("POST", "/bes", CREATE, "CreateActivity")

    async def one_epr() -> bytes:
        _, body = await call(app, create, CREATE)
        return etree_tostring(soap.xpath(soap.body_of(body), "bes:ActivityIdentifier")[0])

    statuses = soap.envelope(
        soap.vector(
            "GetActivityStatuses", await asyncio.gather(*(one_epr() for _ in range(status_ids)))
        )
    )
    requests = {
        "GET /healthz": (_scope("GET", "/healthz"), b"", calls),
        "GET (404)": (_scope("GET", "/nowhere"), b"", calls),
        "CreateActivity": (create, CREATE, max(1, calls // 20)),
        f"GetActivityStatuses ({status_ids})": (
            _scope("POST", "/bes", statuses, "GetActivityStatuses"),
            statuses,
            3,
        ),
    }
    best: dict[str, list[float]] = {}
    try:
        for name, (scope, body, count) in requests.items():
            best[name] = [float("inf")] * len(apps)
            expected, _ = await call(app, scope, body)
            for run in range(5):
                for i in _rotated(tuple(range(len(apps))), run):
                    asgi = apps[i]
                    begun = time.perf_counter()
                    for _ in range(count):
                        status, _ = await call(asgi, scope, body)
                        if status != expected:
                            raise RuntimeError(f"{VARIANTS[i]} {name}: {status}")
                    cost = (time.perf_counter() - begun) / count * 1e6
                    best[name][i] = min(best[name][i], cost)
    finally:
        await app.shutdown()
    return best


# ---------------------------------------------------------------------- the run

Samples = dict[str, list[Load]]
"""Per server, one sample a round."""


def _rotated(names: tuple[T, ...], by: int) -> list[T]:
    return [names[(i + by) % len(names)] for i in range(len(names))]


@contextlib.contextmanager
def _servers(data: Path) -> Iterator[dict[str, Server]]:
    """The three variants and the floor, each on its own port."""
    with contextlib.ExitStack() as stack:
        servers = {}
        for variant in VARIANTS:
            port = free_port()
            argv = _server_argv(variant, port, data / variant)
            log = data / f"{variant}.log"
            servers[variant] = stack.enter_context(started(argv, port, "/healthz", log))
        port = free_port()
        log = data / "floor.log"
        servers["floor"] = stack.enter_context(started(_floor_argv(port), port, "/", log))
        yield servers


def measure(args: argparse.Namespace, data: Path) -> tuple[Samples, Samples, Samples]:
    """CreateActivity, GET /healthz and GetActivityStatuses samples, in interleaved rounds."""
    creates: Samples = {v: [] for v in VARIANTS}
    health: Samples = {v: [] for v in (*VARIANTS, "floor")}
    statuses: Samples = {v: [] for v in VARIANTS}
    with _servers(data) as servers:
        bodies = {}
        for variant in VARIANTS:  # warm-up: the database, lxml, the routes' first calls
            server = servers[variant]
            bodies[variant] = asyncio.run(status_request(server.port, args.status_ids))
            asyncio.run(drive(server, get_request(server.port, "/healthz"), args.clients, 0.5))
        print(f"WebSocket echo beside the SOAP path: {_echo_check(servers['beside'].port)}")
        for r in range(args.rounds):
            for variant in _rotated(VARIANTS, r):
                server = servers[variant]
                load = create_request(server.port)
                creates[variant].append(
                    asyncio.run(drive(server, load, args.clients, args.seconds))
                )
                load = get_request(server.port, "/healthz")
                health[variant].append(asyncio.run(drive(server, load, args.clients, args.seconds)))
                statuses[variant].append(
                    asyncio.run(
                        status_calls(server, bodies[variant], args.status_ids, args.status_calls)
                    )
                )
            floor = servers["floor"]
            load = get_request(floor.port, "/healthz")
            health["floor"].append(asyncio.run(drive(floor, load, args.clients, args.seconds)))
    return creates, health, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per load, per round")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--status-ids", type=int, default=1000)
    parser.add_argument("--status-calls", type=int, default=4, help="per round")
    parser.add_argument("--dispatch-calls", type=int, default=2000)
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.data_dir)
        return
    try:
        import starlette
    except ImportError:
        sys.exit("router_bench needs starlette: .venv/bin/pip install starlette")
    print(
        f"router benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"Starlette {starlette.__version__}, {args.clients} clients, {args.rounds} rounds of "
        f"{args.seconds:g} s per load, servers pinned: {bool(_pin(0))}, backend none"
    )
    if _pin(1):
        os.sched_setaffinity(0, {1})
    begun = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bes-router-bench-") as data:
        creates, health, statuses = measure(args, Path(data))
        costs = asyncio.run(
            dispatch_costs(Path(data) / "in-process", args.dispatch_calls, args.status_ids)
        )
    print(f"\nCreateActivity, {args.clients} keep-alive clients")
    _table("CreateActivity/s", creates)
    print(f"\nGET /healthz, {args.clients} keep-alive clients (floor: bench/floor.py)")
    _table("requests/s", health)
    calls = args.rounds * args.status_calls
    print(f"\nGetActivityStatuses, {args.status_ids} ids, {calls} calls one after the other")
    _table("calls/s", statuses)
    print("\nIn process, no HTTP: µs per request of the ASGI application (best of 5 runs)")
    print(f"{'request':>26} | {'hand':>9} | " + " | ".join(f"{v:>18}" for v in VARIANTS[1:]))
    for name, (hand, *others) in costs.items():
        cells = (f"{other:>8,.1f} ({other - hand:>+6.1f})" for other in others)
        print(f"{name:>26} | {hand:>9,.1f} | " + " | ".join(f"{c:>18}" for c in cells))
    print(f"\n(run took {time.monotonic() - begun:.0f} s)")


def _table(label: str, samples: Samples) -> None:
    """Rate and latency of every round together; then, each the median over rounds, the
    ratio of the rate to hand's in the same round (and its lowest and highest), the server's
    CPU time per request and its ratio to hand's in the same round."""
    print(
        f"{'variant':>7} | {label:>16} | {'p50 ms':>7} | {'p99 ms':>7} | "
        f"{'rate ratio':>18} | {'CPU µs/req':>10} | {'CPU ratio':>9} | errors"
    )
    hand = samples["hand"]
    for variant, rounds in samples.items():
        rate = statistics.mean(s.rate for s in rounds)
        latencies = sorted(t for s in rounds for t in s.latencies)
        ratios = sorted(s.rate / h.rate for s, h in zip(rounds, hand, strict=True))
        cpu = statistics.median(s.cpu_s / s.requests for s in rounds)
        cpu_ratio = statistics.median(
            (s.cpu_s / s.requests) / (h.cpu_s / h.requests)
            for s, h in zip(rounds, hand, strict=True)
        )
        print(
            f"{variant:>7} | {rate:>16,.1f} | {_pct(latencies, 0.5):>7.2f} | "
            f"{_pct(latencies, 0.99):>7.2f} | {statistics.median(ratios):>5.3f} "
            f"[{ratios[0]:.2f}-{ratios[-1]:.2f}] | {cpu * 1e6:>10,.0f} | "
            f"{cpu_ratio:>9.3f} | {sum(s.errors for s in rounds)}"
        )


if __name__ == "__main__":
    main()
