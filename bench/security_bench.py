"""Benchmark of authenticated CreateActivity: HTTPS with a WS-Security UsernameToken
PasswordDigest, and with X.509 signatures, next to plain anonymous HTTP in the same run.

Usage::

    .venv/bin/python bench/security_bench.py [--seconds 8] [--clients 8,32] [--rounds 1]
        [--modes plain,digest,signed,cert] [--quick] [--json FILE]

It sets a deployment up as an operator would, with the real commands: ``bes ca init``,
``bes ca server DIR 127.0.0.1`` and ``bes ca user DIR alice`` make a test CA, the server's and
alice's certificates; ``bes user add alice --password-file F --certificate-subject DN`` makes
the user; ``bes serve --tls-cert/--tls-key/--tls-client-ca`` serves HTTPS. A second
``bes serve`` on plain HTTP with no users gives the anonymous figure. Both are ``--backend
none`` (the durable factory alone, as in bench/bes_bench.py), pinned to one CPU with
``taskset``; this process drives them from the other CPU over keep-alive HTTP/1.1 connections.

The modes, each at every client level:

* ``plain``: anonymous HTTP (the service with no users);
* ``digest``: HTTPS, UsernameToken PasswordDigest with a fresh nonce and Created, and a
  ``wsu:Timestamp`` (``bes.client.auth``, that is zeep's ``UsernameToken``);
* ``signed``: HTTPS, a ``BinarySecurityToken`` and a ``ds:Signature`` (RSA-SHA256, SHA-256
  digests, exc-c14n) over the Body and a fresh ``wsu:Timestamp`` (``bes.client.auth``'s
  ``X509Signature``, as ``bes submit --sign`` sends it: zeep's ``BinarySignature``);
* ``cert`` (not by default): HTTPS with alice's TLS client certificate and no WS-Security, to
  tell the cost of TLS from that of the message security.

The service refuses a replayed nonce or signature, so every request is a distinct message
(a different JobName, a new nonce, Timestamp and signature). They are made before each timed
phase, so the client's signing never limits the figure: a short warm-up measures the rate,
then enough messages for the phase are made (their Created is "now", well inside the
service's five minute window). Printed per mode and level: CreateActivity/s, the ratio to
plain, p50 and p99 latency, the server's CPU time per request (utime+stime of the server
process over the phase, from /proc), the ratio of plain's CPU time per request to the mode's
(the rate ratio one otherwise idle core would give: on a shared machine it varies less than
the rates do) and this client's CPU use (near 100% means the figure is the client's limit,
not the server's). With ``--rounds N`` every phase runs N times, interleaved, and the round
with the median rate is shown. Nothing is asserted; ``--json FILE`` writes the figures for a
script (tests/test_bench_smoke.py runs ``--quick --clients 8``).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import copy
import dataclasses
import itertools
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from lxml import etree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The benchmark reuses the tests' message builders and the client's credentials.
from bench.bes_bench import _pct, _pin, serve_argv
from bes.client.auth import UsernameToken, X509Signature, wsse_plugins
from tests.support import soap
from tests.support.server import free_port

ACTION = soap.ACTIONS + "CreateActivity"
TEMPLATE = soap.envelope(soap.create_activity())
MODES = ("plain", "digest", "signed", "cert")
USER = "alice"
PASSWORD = "correct horse battery staple"  # a throwaway user of a scratch service
_FAULT_TEXT = re.compile(rb"<(?:\w+:)?faultstring[^>]*>(.*?)</(?:\w+:)?faultstring>", re.S)


@dataclasses.dataclass(slots=True)
class Phase:
    """What one mode at one client level gave."""

    rate: float = 0.0
    latencies: list[float] = dataclasses.field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    server_cpu_us: float | None = None
    client_cpu: float = 0.0
    messages: int = 0
    make_s: float = 0.0
    exhausted: bool = False
    skipped: str | None = None


@dataclasses.dataclass(slots=True)
class Target:
    """A running service and how to reach it."""

    port: int
    pid: int
    tls: ssl.SSLContext | None


# --- Messages ----------------------------------------------------------------------------


def _bodies() -> Iterator[etree._Element]:
    """Distinct CreateActivity envelopes: the same job, a different JobName each."""
    template = etree.fromstring(TEMPLATE)
    name = template.find(f".//{{{soap.JSDL}}}JobName")
    assert name is not None
    serial = 0
    while True:
        serial += 1
        name.text = f"bench-{os.getpid()}-{time.monotonic_ns()}-{serial}"
        yield copy.deepcopy(template)


def _signers(ca_dir: Path) -> list[Any]:
    """The client's own signer (bes.client.auth): RSA-SHA256 over the Body and a fresh
    Timestamp, as ``bes submit --sign`` sends."""
    key, cert = _user_files(ca_dir)
    return wsse_plugins([X509Signature(key_file=key, cert_file=cert)])


def messages(mode: str, count: int, ca_dir: Path) -> deque[bytes]:
    """``count`` distinct HTTP requests of ``mode``, each a CreateActivity; made on every
    CPU when there are many (a signature costs about 4 ms: the xmlsec wheel's own OpenSSL)."""
    workers = os.cpu_count() or 1
    if count < 1000 or workers == 1:
        return deque(_make(mode, count, ca_dir))
    shares = [count // workers + (i < count % workers) for i in range(workers)]
    with concurrent.futures.ProcessPoolExecutor(workers, initializer=_unpin) as pool:
        made = pool.map(_make, [mode] * workers, shares, [ca_dir] * workers)
        return deque(itertools.chain.from_iterable(made))


def _unpin() -> None:
    # The workers inherit this process's CPU; the server is idle while they work.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))


def _make(mode: str, count: int, ca_dir: Path) -> list[bytes]:
    plugins: list[Any] = []
    if mode == "digest":
        plugins = wsse_plugins([UsernameToken(USER, PASSWORD, digest=True)])
    elif mode == "signed":
        plugins = _signers(ca_dir)
    pool: list[bytes] = []
    for fresh, _ in zip(_bodies(), range(count), strict=False):
        envelope = fresh
        for plugin in plugins:
            envelope, _headers = plugin.apply(envelope, {})
        body = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
        pool.append(
            b"POST /bes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml; charset=utf-8\r\n"
            b'SOAPAction: "%s"\r\nContent-Length: %d\r\n\r\n' % (ACTION.encode(), len(body)) + body
        )
    return pool


# --- Load ------------------------------------------------------------------------------------


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = -1
    chunked = False
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(max(length, 0))
    parts = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
    await reader.readuntil(b"\r\n")
    return status, b"".join(parts)


async def _connect(target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1",
        target.port,
        ssl=target.tls,
        server_hostname="127.0.0.1" if target.tls else None,
    )


async def _client(target: Target, pool: deque[bytes], until: float, phase: Phase) -> None:
    reader, writer = await _connect(target)
    try:
        while pool and time.perf_counter() < until:
            request = pool.popleft()
            started = time.perf_counter()
            try:
                status, body = await _exchange(reader, writer, request)
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
                # The service closed the connection (after a refusal, say): count it, go on.
                status, body = 0, f"connection lost: {exc!r}".encode()
                writer.close()
                reader, writer = await _connect(target)
            phase.latencies.append(time.perf_counter() - started)
            if status != 200 or b"CreateActivityResponse" not in body:
                phase.errors += 1
                if phase.first_error is None:
                    phase.first_error = _describe(status, body)
    finally:
        writer.close()


def _describe(status: int, body: bytes) -> str:
    found = _FAULT_TEXT.search(body)
    text = found.group(1) if found else body[:300]
    return f"HTTP {status}: {text.decode(errors='replace').strip()}"


def _server_cpu_s(pid: int) -> float | None:
    """utime + stime of the process (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command: state is field 3, utime 14 and stime 15 (1-based, proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(target: Target, pool: deque[bytes], clients: int, seconds: float) -> Phase:
    """Run ``clients`` connections until ``seconds`` pass or the messages run out."""
    phase = Phase(messages=len(pool))
    cpu_before = _server_cpu_s(target.pid)
    client_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(_client(target, pool, started + seconds, phase) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    cpu_after = _server_cpu_s(target.pid)
    done = len(phase.latencies)
    phase.rate = done / elapsed
    phase.client_cpu = (time.process_time() - client_before) / elapsed
    if cpu_before is not None and cpu_after is not None and done:
        phase.server_cpu_us = (cpu_after - cpu_before) / done * 1e6
    phase.exhausted = not pool and elapsed < seconds * 0.98
    phase.latencies.sort()
    return phase


def run_phase(
    target: Target, mode: str, clients: int, *, seconds: float, ca_dir: Path, max_messages: int
) -> Phase:
    """Warm up with a few messages to learn the rate, make enough for ``seconds``, run."""
    try:
        warm = asyncio.run(
            drive(target, messages(mode, max(200, 8 * clients), ca_dir), clients, 1.0)
        )
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
        return Phase(skipped=f"cannot connect: {exc!r}")
    if warm.errors == len(warm.latencies):
        return Phase(skipped=warm.first_error or "no answer", first_error=warm.first_error)
    # The warm-up runs below the steady rate (new connections, cold caches): make more.
    margin = {"signed": 1.6, "digest": 2.5}.get(mode, 4.0)
    wanted = min(max_messages, int(warm.rate * seconds * margin) + 4 * clients)
    made = time.perf_counter()
    pool = messages(mode, wanted, ca_dir)
    make_s = time.perf_counter() - made
    try:
        phase = asyncio.run(drive(target, pool, clients, seconds))
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
        return Phase(skipped=f"connection failed mid-phase: {exc!r}")
    phase.make_s = make_s
    phase.first_error = phase.first_error or warm.first_error
    return phase


# --- Setup -----------------------------------------------------------------------------------


def bes(*args: str) -> str:
    """Run ``python -m bes ARGS`` as an operator would; its output, or exit saying why not."""
    done = subprocess.run(
        [sys.executable, "-m", "bes", *args], capture_output=True, text=True, check=False
    )
    if done.returncode:
        sys.exit(f"bes {' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    return done.stdout


def _user_files(ca_dir: Path) -> tuple[Path, Path]:
    """alice's key and certificate, as ``bes ca user`` wrote them."""
    key, cert = ca_dir / f"{USER}.key", ca_dir / f"{USER}.pem"
    if not (key.is_file() and cert.is_file()):
        found = sorted(p.name for p in ca_dir.iterdir())
        sys.exit(f"bes ca user did not write {key.name} and {cert.name} in {ca_dir}: {found}")
    return key, cert


def deploy(root: Path) -> tuple[Path, Path]:
    """A test CA, certificates and the user alice; the CA directory and the data directory."""
    ca_dir, data = root / "ca", root / "data"
    bes("ca", "init", str(ca_dir))
    bes("ca", "server", str(ca_dir), "127.0.0.1")
    said = bes("ca", "user", str(ca_dir), USER)
    _user_files(ca_dir)
    subject = re.search(r"^subject: (.+)$", said, re.M)
    if subject is None:
        sys.exit(f"bes ca user printed no subject: {said}")
    password_file = root / "password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    bes(
        "user",
        "add",
        USER,
        "--password-file",
        str(password_file),
        "--certificate-subject",
        subject.group(1).strip(),
        "--data-dir",
        str(data),
    )
    return ca_dir, data


@contextlib.contextmanager
def serving(
    data: Path, log: Path, tls: ssl.SSLContext | None, extra: list[str]
) -> Iterator[Target]:
    """``bes serve`` on one CPU until the block ends."""
    port = free_port()
    argv = serve_argv(port, data, "--backend", "none", "--no-local-worker", *extra)
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/healthz"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1, verify=tls or True).status_code < 500:
                    break
            time.sleep(0.1)
        else:
            sys.exit(f"bes serve {' '.join(extra)} did not start:\n{log.read_text()[-3000:]}")
        yield Target(port=port, pid=proc.pid, tls=tls)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tls_context(ca_dir: Path, *, certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_dir / "ca.pem"))
    if certificate:
        key, cert = _user_files(ca_dir)
        context.load_cert_chain(cert, key)
    return context


# --- Report ----------------------------------------------------------------------------------


def _median(phases: list[Phase]) -> Phase:
    """The round with the median rate (the lower one of an even count)."""
    ranked = sorted(phases, key=lambda p: p.rate)
    return ranked[(len(ranked) - 1) // 2]


def report(results: dict[str, dict[int, Phase]], levels: list[int], modes: list[str]) -> None:
    print()
    print(
        f"{'mode':<6} {'clients':>7} | {'CreateActivity/s':>16} | {'/plain':>6} | "
        f"{'p50 ms':>7} | {'p99 ms':>7} | {'server µs/req':>13} | {'/plain':>6} | "
        f"{'client CPU':>10} | errors"
    )
    for level in levels:
        plain = results.get("plain", {}).get(level)
        for mode in modes:
            phase = results[mode][level]
            if phase.skipped is not None:
                print(f"{mode:<6} {level:>7} | every request refused: {phase.skipped}")
                continue
            ratio = f"{phase.rate / plain.rate:>6.2f}" if plain and plain.rate else f"{'-':>6}"
            cpu = f"{phase.server_cpu_us:>13,.0f}" if phase.server_cpu_us else f"{'-':>13}"
            # Plain's CPU time per request over this mode's: the ratio of the rates one
            # otherwise idle core would reach (less sensitive to a neighbour's load).
            by_cpu = (
                f"{plain.server_cpu_us / phase.server_cpu_us:>6.2f}"
                if plain and plain.server_cpu_us and phase.server_cpu_us
                else f"{'-':>6}"
            )
            print(
                f"{mode:<6} {level:>7} | {phase.rate:>16,.0f} | {ratio} | "
                f"{_pct(phase.latencies, 0.5):>7.2f} | {_pct(phase.latencies, 0.99):>7.2f} | "
                f"{cpu} | {by_cpu} | {phase.client_cpu:>9.0%} | {phase.errors}"
                + (" (ran out of messages)" if phase.exhausted else "")
            )
    print()
    targets = {"digest": 0.8, "signed": 0.4}
    for mode, target in targets.items():
        for level in levels:
            phase, plain = results.get(mode, {}).get(level), results.get("plain", {}).get(level)
            if phase and plain and plain.rate and phase.skipped is None:
                ratio = phase.rate / plain.rate
                verdict = "meets" if ratio >= target else "misses"
                by_cpu = (
                    f" ({plain.server_cpu_us / phase.server_cpu_us:.2f} by server CPU)"
                    if plain.server_cpu_us and phase.server_cpu_us
                    else ""
                )
                print(
                    f"{mode} at {level} clients: {ratio:.2f} of plain{by_cpu}, "
                    f"{verdict} the target {target}"
                )
    for mode in modes:
        for level in levels:
            phase = results[mode][level]
            if phase.first_error:
                print(f"first refusal, {mode} at {level} clients: {phase.first_error}")
    made = [
        f"{mode} {sum(p.messages for p in results[mode].values()):,} in "
        f"{sum(p.make_s for p in results[mode].values()):.1f} s"
        for mode in modes
    ]
    print("messages made before the timed phases: " + ", ".join(made))


def _as_json(results: dict[str, dict[int, Phase]]) -> dict[str, Any]:
    return {
        mode: {
            str(level): {
                "rate": p.rate,
                "p50_ms": _pct(p.latencies, 0.5) if p.latencies else None,
                "p99_ms": _pct(p.latencies, 0.99) if p.latencies else None,
                "requests": len(p.latencies),
                "errors": p.errors,
                "first_error": p.first_error,
                "server_cpu_us": p.server_cpu_us,
                "client_cpu": p.client_cpu,
                "skipped": p.skipped,
            }
            for level, p in phases.items()
        }
        for mode, phases in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per mode and level")
    parser.add_argument("--clients", default="8,32", help="client levels, comma-separated")
    parser.add_argument(
        "--modes", default="plain,digest,signed", help=f"comma-separated, of {', '.join(MODES)}"
    )
    parser.add_argument("--quick", action="store_true", help="2 s per level (a smoke run)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every phase this often; the median is shown"
    )
    parser.add_argument("--max-messages", type=int, default=60_000, help="per phase")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else args.seconds
    levels = [int(c) for c in args.clients.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; known: {', '.join(MODES)}")
    print(
        f"bes security benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"{seconds:g} s per mode and level, server pinned: {bool(_pin(0))}, "
        f"load average {os.getloadavg()[0]:.2f} at the start"
    )
    with contextlib.suppress(ImportError):  # the client's event loop costs less CPU with it
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if _pin(1):
        os.sched_setaffinity(0, {1})

    with tempfile.TemporaryDirectory(prefix="bes-security-bench-") as scratch:
        root = Path(scratch)
        ca_dir, data = deploy(root)
        tls_serve = [
            "--tls-cert",
            str(ca_dir / "127.0.0.1.pem"),
            "--tls-key",
            str(ca_dir / "127.0.0.1.key"),
            "--tls-client-ca",
            str(ca_dir / "ca.pem"),
        ]
        with contextlib.ExitStack() as running:
            targets: dict[str, Target] = {}
            if "plain" in modes:
                targets["plain"] = running.enter_context(
                    serving(root / "plain", root / "plain.log", None, [])
                )
            if set(modes) - {"plain"}:
                secure = running.enter_context(
                    serving(
                        data,
                        root / "secure.log",
                        _tls_context(ca_dir, certificate=False),
                        tls_serve,
                    )
                )
                with_cert = dataclasses.replace(secure, tls=_tls_context(ca_dir, certificate=True))
                targets.update(digest=secure, signed=secure, cert=with_cert)
            # Modes alternate within each level (and levels within each round), so a
            # neighbour's load on this machine weighs on all of them alike.
            runs: dict[str, dict[int, list[Phase]]] = {m: {c: [] for c in levels} for m in modes}
            for round_ in range(args.rounds):
                for level in levels:
                    for mode in modes:
                        phase = run_phase(
                            targets[mode],
                            mode,
                            level,
                            seconds=seconds,
                            ca_dir=ca_dir,
                            max_messages=args.max_messages,
                        )
                        runs[mode][level].append(phase)
                        print(
                            f"  round {round_ + 1}, {mode} at {level} clients: "
                            f"{phase.rate:,.0f}/s"
                            + (
                                f" ({phase.server_cpu_us:,.0f} µs/req)"
                                if phase.server_cpu_us
                                else ""
                            )
                            + (f", {phase.errors} refused" if phase.errors else "")
                            + (f" (refused: {phase.skipped})" if phase.skipped else ""),
                            flush=True,
                        )
    results = {
        mode: {level: _median(phases) for level, phases in by_level.items()}
        for mode, by_level in runs.items()
    }
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    report(results, levels, modes)
    if args.json:
        args.json.write_text(json.dumps(_as_json(results), indent=2))


if __name__ == "__main__":
    main()
