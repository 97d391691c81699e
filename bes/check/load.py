"""``bes check URL --load N --seconds S``: a load test of any BES, the measurement the
QCG-Computing benchmark made by hand. N clients create activities for S seconds (each its own
keep-alive connection); then GetActivityStatuses for vectors of 1,000 of them is timed; every
activity created is terminated at the end."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bes.check import documents, payloads
from bes.check.runner import clean_up
from bes.check.session import Options, Session
from bes.check.transport import Endpoint
from bes.client.auth import Credential

_VECTOR: Final = 1000
_STATUS_ROUNDS: Final = 10


@dataclass(slots=True)
class LoadFigures:
    clients: int
    seconds: float
    created: int = 0
    errors: int = 0
    first_error: str = ""
    create_ms: list[float] = field(default_factory=list)
    status_ms: list[float] = field(default_factory=list)
    cleanup: str = ""

    @property
    def rate(self) -> float:
        return self.created / self.seconds if self.seconds else 0.0

    def table(self) -> str:
        def pct(values: list[float], q: float) -> str:
            if not values:
                return "-"
            ordered = sorted(values)
            return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.1f}"

        lines = [
            f"{'measure':<42} {'value':>12}",
            f"{'clients':<42} {self.clients:>12}",
            f"{'CreateActivity/s':<42} {self.rate:>12.1f}",
            f"{'CreateActivity p50 / p99 ms':<42} "
            f"{pct(self.create_ms, 0.5):>5} / {pct(self.create_ms, 0.99):>4}",
            f"{'GetActivityStatuses (1,000 ids) p50 / p99 ms':<42} "
            f"{pct(self.status_ms, 0.5):>5} / {pct(self.status_ms, 0.99):>4}",
            f"{'errors':<42} {self.errors:>12}",
        ]
        if self.first_error:
            lines.append(f"first error: {self.first_error}")
        lines.append(f"clean-up: {self.cleanup}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {
            "clients": self.clients,
            "seconds": self.seconds,
            "created": self.created,
            "creates_per_second": round(self.rate, 1),
            "create_p50_ms": round(statistics.median(self.create_ms), 2)
            if self.create_ms
            else None,
            "status_1000_p50_ms": round(statistics.median(self.status_ms), 2)
            if self.status_ms
            else None,
            "errors": self.errors,
            "first_error": self.first_error or None,
            "cleanup": self.cleanup,
        }


def load(
    url: str,
    *,
    clients: int,
    seconds: float,
    credentials: Sequence[Credential] = (),
    ca_file: Path | None = None,
    timeout_s: float = 30.0,
) -> LoadFigures:
    figures = LoadFigures(clients=clients, seconds=seconds)
    lock = threading.Lock()
    created: list[bytes] = []
    stop_at = time.monotonic() + seconds
    session = Session(
        endpoint=Endpoint(url, credentials=credentials, ca_file=ca_file, timeout_s=timeout_s),
        options=Options(),
    )

    def client(number: int) -> None:
        endpoint = Endpoint(url, credentials=credentials, ca_file=ca_file, timeout_s=timeout_s)
        try:
            sent = 0
            while time.monotonic() < stop_at:
                document = documents.posix_job(session.name(f"load-{number}-{sent}"))
                started = time.perf_counter()
                reply = endpoint.soap("load", "CreateActivity", payloads.create_activity(document))
                elapsed = (time.perf_counter() - started) * 1000
                epr = payloads.created_epr(reply.body)
                sent += 1
                with lock:
                    if epr is None:
                        figures.errors += 1
                        figures.first_error = figures.first_error or (
                            reply.problem or reply.fault_string() or "no identifier"
                        )
                    else:
                        created.append(payloads.kept(epr))
                        figures.create_ms.append(elapsed)
        finally:
            endpoint.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout_s + 10)
    figures.created = len(created)
    session.created = created
    if created:
        vector = (created * (_VECTOR // len(created) + 1))[:_VECTOR]
        for _ in range(_STATUS_ROUNDS):
            started = time.perf_counter()
            reply = session.statuses("load-status", vector)
            if len(payloads.responses(reply.body)) == _VECTOR:
                figures.status_ms.append((time.perf_counter() - started) * 1000)
            else:
                figures.errors += 1
                figures.first_error = figures.first_error or (reply.problem or "short answer")
    figures.cleanup = clean_up(session)
    session.endpoint.close()
    return figures
