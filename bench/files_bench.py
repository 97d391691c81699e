"""Benchmark of the file store: upload and download throughput of one large file over
loopback with the client library (BESClient.upload_file / download) next to ``curl`` against
the same server in the same run, and what a second upload of the same file sends.

Usage::

    .venv/bin/python bench/files_bench.py [--size-mib 1024] [--rounds 3] [--json FILE]

It starts ``bes serve --backend none`` (SQLite and the file store in a temporary directory)
pinned to one CPU when ``taskset`` is available, and runs the clients from this process on
the other. Each round uploads the file with curl (``PUT …/files/sha256/HEX``, the server
hashing and writing it as for any upload), removes it, uploads it with the client (which
hashes it first: that time is counted), then downloads it with both into files on disk.
Medians over the rounds are printed with the ratios; nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bes_bench import _pin, running, serve_argv
from bes.client import BESClient
from tests.support.server import free_port

_MIB = 1024 * 1024


def make_file(path: Path, size: int) -> str:
    """A file of ``size`` pseudo-random bytes (not compressible); its sha256."""
    digest = hashlib.sha256()
    block = os.urandom(_MIB)
    with path.open("wb") as out:
        for index in range(size // _MIB):
            chunk = hashlib.sha256(index.to_bytes(8, "big")).digest() + block[32:]
            out.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def curl(*args: str) -> float:
    """Seconds curl took to transfer (its own process start included)."""
    started = time.perf_counter()
    subprocess.run(["curl", "-sSf", *args], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    if shutil.which("curl") is None:
        sys.exit("curl is needed (apt-get install curl)")
    size = options.size_mib * _MIB
    with tempfile.TemporaryDirectory(prefix="bes-files-bench-") as temp:
        root = Path(temp)
        source = root / "input.bin"
        sha256 = make_file(source, size)
        port = free_port()
        argv = serve_argv(
            port, root / "data", "--backend", "none", "--file-quota", f"{4 * size + _MIB}"
        )
        endpoint = f"http://127.0.0.1:{port}/bes"
        url = f"{endpoint}/files/sha256/{sha256}"
        with running(argv, port, "/healthz"), BESClient(endpoint, timeout_s=600) as client:
            if _pin(1):
                os.sched_setaffinity(0, {1})
            figures: dict[str, list[float]] = {
                k: [] for k in ("curl_up", "bes_up", "curl_down", "bes_down")
            }
            again_sent = again_s = -1.0
            out = root / "out.bin"
            for _ in range(options.rounds):
                figures["curl_up"].append(curl("-o", "/dev/null", "-T", str(source), url))
                httpx.delete(url, timeout=60).raise_for_status()
                started = time.perf_counter()
                sent = client.upload_file(source).sent_bytes
                figures["bes_up"].append(time.perf_counter() - started)
                assert sent == size, sent
                started = time.perf_counter()
                again_sent = float(client.upload_file(source).sent_bytes)
                again_s = time.perf_counter() - started
                figures["curl_down"].append(curl("-o", str(out), url))
                out.unlink()
                started = time.perf_counter()
                client.download(url, out)
                figures["bes_down"].append(time.perf_counter() - started)
                out.unlink()
                httpx.delete(url, timeout=60).raise_for_status()
        median = {k: statistics.median(v) for k, v in figures.items()}
        mbps = {k: options.size_mib / v for k, v in median.items()}
        print(f"file store over loopback, {options.size_mib} MiB, {options.rounds} rounds (median)")
        print(f"{'':12}{'curl':>12}{'bes client':>14}{'ratio':>8}")
        for way in ("up", "down"):
            ratio = mbps[f"bes_{way}"] / mbps[f"curl_{way}"]
            print(
                f"{way + 'load':12}{mbps[f'curl_{way}']:>8.0f} MiB/s"
                f"{mbps[f'bes_{way}']:>8.0f} MiB/s{ratio:>8.2f}"
            )
            median[f"ratio_{way}"] = ratio
        print(f"second upload of the same file: {again_sent:.0f} bytes sent, {again_s:.2f} s")
        print(
            "spread (min..max s): "
            + ", ".join(f"{k} {min(v):.2f}..{max(v):.2f}" for k, v in figures.items())
        )
        median["again_sent_bytes"] = again_sent
        if options.json is not None:
            options.json.write_text(json.dumps(median, indent=1) + "\n")


if __name__ == "__main__":
    main()
