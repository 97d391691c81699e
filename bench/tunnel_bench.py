"""Benchmark of the VM lease relay: a TCP stream through ``bes serve`` and a worker's tunnel,
next to a direct loopback TCP connection to the same server, in the same run.

Usage::

    .venv/bin/python bench/tunnel_bench.py [--mib 128] [--pings 500] [--lease] [--json FILE]

The path measured is the one ``bes port-forward`` and ``bes ssh`` take: the user's WebSocket
(``bes.client.tunnel``) to a real ``bes serve`` (plain HTTP on loopback, desktop grid, no local
worker), the relay (``bes.relay``), the worker's tunnel (the real ``bes.worker`` protocol client
and ``LeaseTunnel``, a WebSocket carrying ``bes.tunnel.mux``) and the worker's TCP connection to
the guest's port, here a loopback server that discards what it gets (upload), sends a given
amount (download) or echoes (round trips). The direct figure connects this process to that
same server. Printed: MB/s up and down, the round-trip p50 and p99 of a one-byte echo, and the
ratio relay/direct.

``--lease`` also measures a real lease on this machine: ``bes serve`` with its local worker
(QEMU, the template debian-12 from the node's image cache, built on first use), the time from
``bes lease start`` to the first ``bes ssh ID -- true`` that succeeds. Nothing is asserted;
``--json FILE`` writes the figures (tests/test_bench_smoke.py runs ``--mib 8 --pings 50``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bes.access import Access
from bes.backends.desktopgrid.tokens import create_worker
from bes.client import BESClient, jsdl
from bes.client.tunnel import open_stream
from bes.db.engine import default_url
from bes.db.store import Database
from bes.worker.client import ServiceClient
from bes.worker.tunnel import LeaseTunnel

MIB = 1024 * 1024
CHUNK = 64 * 1024
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bench"


class Guest:
    """A loopback server: the first byte of a connection says what to do (d: discard and
    count, s: send ``size`` bytes, e: echo)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            mode = conn.recv(1)
            if mode == b"d":
                total = 0
                while data := conn.recv(CHUNK):
                    total += len(data)
                self.received = total
                conn.sendall(b"k")
            elif mode == b"s":
                block = b"\x5a" * CHUNK
                left = self.size
                while left > 0:
                    conn.sendall(block[: min(left, CHUNK)])
                    left -= CHUNK
            elif mode == b"e":
                while data := conn.recv(CHUNK):
                    conn.sendall(data)


class Stream:
    """The same three operations over a direct socket or a relayed WebSocket."""

    def __init__(
        self,
        send: Callable[[bytes], None],
        recv: Callable[[], bytes],
        eof: Callable[[], None],
        close: Callable[[], None],
    ) -> None:
        self.send, self.recv, self.eof, self.close = send, recv, eof, close


def direct(port: int) -> Stream:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Stream(
        sock.sendall, lambda: sock.recv(CHUNK), lambda: sock.shutdown(socket.SHUT_WR), sock.close
    )


def relayed(url: str, client: BESClient) -> Stream:
    websocket = open_stream(url, 22, client.tunnel_options())

    def recv() -> bytes:
        data = websocket.recv(timeout=60)
        return data if isinstance(data, bytes) else b""

    return Stream(websocket.send, recv, lambda: websocket.send(b""), websocket.close)


def upload(open_: Callable[[], Stream], size: int) -> float:
    stream = open_()
    block = os.urandom(CHUNK)
    started = time.perf_counter()
    stream.send(b"d")
    for _ in range(size // CHUNK):
        stream.send(block)
    stream.eof()
    while stream.recv() != b"k":
        pass
    elapsed = time.perf_counter() - started
    stream.close()
    return size / elapsed / 1e6


def download(open_: Callable[[], Stream], size: int) -> float:
    stream = open_()
    started = time.perf_counter()
    stream.send(b"s")
    got = 0
    while got < size:
        data = stream.recv()
        if not data:
            break
        got += len(data)
    elapsed = time.perf_counter() - started
    stream.close()
    return got / elapsed / 1e6


def pings(open_: Callable[[], Stream], count: int) -> list[float]:
    stream = open_()
    stream.send(b"e")
    times = []
    for _ in range(count):
        started = time.perf_counter()
        stream.send(b"x")
        while not stream.recv():
            pass
        times.append((time.perf_counter() - started) * 1000)
    stream.close()
    return times


@contextmanager
def service(data_dir: Path, *, local_worker: bool) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [sys.executable, "-m", "bes", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    if not local_worker:
        argv.append("--no-local-worker")
    log = (data_dir.parent / "serve.log").open("ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), 0.5):
                    break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def relay_figures(mib: int, count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bes-tunnel-bench-") as scratch:
        data_dir = Path(scratch) / "data"
        with service(data_dir, local_worker=False) as url:
            with Database(default_url(data_dir)) as db:
                token = create_worker(db, "bench")
            worker = ServiceClient(url, token)
            guest = Guest(mib * MIB)
            with BESClient(url + "/bes") as client:
                client.submit(jsdl.lease(ssh_keys=[KEY], name="bench"))
                work = None
                while work is None:
                    claimed = worker.claim(
                        slots=1,
                        memory_mib=4096,
                        vcpus=2,
                        disk_mib=100_000,
                        hypervisors=["qemu"],
                        network=False,
                        wait_s=2,
                    )
                    work = claimed[0] if claimed else None
                worker.heartbeat([(work.lease, "Executing")])
                access = Access(
                    user="debian", host_keys=(KEY.rsplit(" ", 1)[0],), ports=((22, guest.port),)
                )
                worker.report_access(work.lease, access)
                tunnel = LeaseTunnel(
                    worker.tunnel(work.lease), {22: guest.port}, name=work.activity
                )
                tunnel.start()
                ref = client.ref(work.activity)
                deadline = time.monotonic() + 30
                while not client.lease(ref)["ready"] or tunnel.connections == 0:
                    if time.monotonic() > deadline:
                        raise SystemExit("the lease never became ready")
                    time.sleep(0.1)
                tunnel_url = client.lease(ref)["tunnel"]
                time.sleep(0.5)
                size = mib * MIB
                out: dict[str, Any] = {"mib": mib, "pings": count}
                for name, open_ in (
                    ("direct", lambda: direct(guest.port)),
                    ("relay", lambda: relayed(tunnel_url, client)),
                ):
                    upload(open_, 4 * MIB)  # warm-up
                    out[name] = {
                        "up_mb_s": round(upload(open_, size), 1),
                        "down_mb_s": round(download(open_, size), 1),
                    }
                    times = pings(open_, count)
                    out[name]["rtt_p50_ms"] = round(statistics.median(times), 3)
                    out[name]["rtt_p99_ms"] = round(sorted(times)[int(len(times) * 0.99) - 1], 3)
                tunnel.close()
                client.cancel([ref])
            return out


def lease_figure(timeout_s: float) -> dict[str, Any]:
    """From bes lease start to the first bes ssh that works, with a real VM."""
    with tempfile.TemporaryDirectory(prefix="bes-lease-bench-") as scratch:
        root = Path(scratch)
        key = root / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        with service(root / "data", local_worker=True) as url:
            env = {**os.environ, "BES_ENDPOINT": url + "/bes", "XDG_DATA_HOME": str(root / "xdg")}
            started = time.monotonic()
            begun = subprocess.run(
                [sys.executable, "-m", "bes", "lease", "start", "--ssh-key", f"{key}.pub"],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            activity = begun.stdout.strip()
            deadline = started + timeout_s
            while time.monotonic() < deadline:
                done = subprocess.run(
                    [sys.executable, "-m", "bes", "ssh", activity, "--wait-timeout", str(timeout_s), "--", "-i", str(key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "true"],  # noqa: E501
                    capture_output=True, text=True, env=env, check=False,
                )  # fmt: skip
                if done.returncode == 0:
                    ready = time.monotonic() - started
                    subprocess.run(
                        [sys.executable, "-m", "bes", "cancel", activity],
                        env=env,
                        capture_output=True,
                        check=False,
                    )
                    return {"lease_to_ssh_s": round(ready, 1)}
                time.sleep(1)
            return {"lease_to_ssh_s": None, "error": done.stderr[-500:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=128, help="MiB up and down per path")
    parser.add_argument("--pings", type=int, default=500, help="one-byte round trips per path")
    parser.add_argument("--lease", action="store_true", help="also time a real lease (a VM)")
    parser.add_argument("--lease-timeout", type=float, default=1800.0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    figures = relay_figures(args.mib, args.pings)
    d, r = figures["direct"], figures["relay"]
    print(f"{args.mib} MiB each way, {args.pings} one-byte round trips, {os.cpu_count()} CPUs")
    print(f"{'path':<8} {'up MB/s':>9} {'down MB/s':>10} {'RTT p50 ms':>11} {'RTT p99 ms':>11}")
    for name, row in (("direct", d), ("relay", r)):
        rates = f"{row['up_mb_s']:>9} {row['down_mb_s']:>10}"
        print(f"{name:<8} {rates} {row['rtt_p50_ms']:>11} {row['rtt_p99_ms']:>11}")
    up, down = r["up_mb_s"] / d["up_mb_s"], r["down_mb_s"] / d["down_mb_s"]
    rtt = r["rtt_p50_ms"] / d["rtt_p50_ms"]
    print(f"relay/direct: up {up:.3f}, down {down:.3f}, RTT p50 x{rtt:.0f}")
    if args.lease:
        figures["lease"] = lease_figure(args.lease_timeout)
        print(f"bes lease start -> first working bes ssh: {figures['lease']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
