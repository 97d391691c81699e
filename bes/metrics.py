"""What the service counts for monitoring, in the Prometheus text format (``GET /metrics``).

One :class:`Metrics` per service process, handed to the parts that count (no module-level
state): the activity registry counts submissions, the desktop grid claims, lease expiries, the
VMs its workers report executing and the runs they report failed, and the HTTP entry point
times every request. Counters are this process's (a replica counts what it
did; sum over replicas). What the database holds (activities by state, the queue) is read at
scrape time and passed to :meth:`Metrics.render` as a :class:`Census`, so those gauges are
cluster-wide whichever replica is scraped.

Counting is cheap enough for the hottest path: an increment is one uncontended lock, a
request timing a dictionary lookup and a bucket search.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric

CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"
"""The media type of the text format that every Prometheus server reads."""

# From a fast CreateActivity (about a millisecond) to a worker's long poll for work (20 s).
LATENCY_BUCKETS_S: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

INFRASTRUCTURE: Final = "infrastructure"
"""A failure that was not the job's (a hypervisor or host that broke): retried elsewhere."""
JOB: Final = "job"
"""A failure of the job itself (a staging error, a checksum mismatch): final."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Census:
    """What the database says at scrape time (the whole service, every replica).

    Attributes:
        activities: Activities per basic state (wire values: ``Pending``, ``Running``, ...).
        queue: Desktop-grid jobs per queue state (``queued``, ``leased``, ...).
        oldest_queued_s: Age of the job that has waited longest for a worker, or None.
        accepting: Whether CreateActivity is accepted.
        stored_bytes: Bytes the file store holds for all users (uploads under way included).
        stored_files: Files in the file store.
        cloud_instances: Cloud pools' live instances per (pool, state).
    """

    activities: Mapping[str, int]
    queue: Mapping[str, int]
    oldest_queued_s: float | None
    accepting: bool
    stored_bytes: int = 0
    stored_files: int = 0
    cloud_instances: Mapping[tuple[str, str], int] = field(default_factory=dict)


class Metrics:
    """The counters and timings of one service process (see the module docstring).

    Args:
        version: The service's version, exported as ``bes_build_info``.
    """

    def __init__(self, *, version: str = "") -> None:
        self.version = version
        self.registry = CollectorRegistry()
        registry = self.registry
        self.submissions = Counter(
            "bes_submissions",
            "CreateActivity requests accepted (a parameter sweep counts once)",
            registry=registry,
        )
        self.claims = Counter(
            "bes_claims", "Jobs leased to desktop-grid workers", registry=registry
        )
        self.lease_expiries = Counter(
            "bes_lease_expiries",
            "Leases taken back because their worker stopped reporting",
            registry=registry,
        )
        self.vm_boots = Counter(
            "bes_vm_boots",
            "Jobs whose VM a worker reported executing (once per lease: each attempt counts)",
            registry=registry,
        )
        self._vm_failures = Counter(
            "bes_vm_failures",
            "Jobs a worker could not run, by cause: infrastructure (retried) or job (final)",
            ["cause"],
            registry=registry,
        )
        self.vm_failures = {
            cause: self._vm_failures.labels(cause) for cause in (INFRASTRUCTURE, JOB)
        }
        self._auth_failures = Counter(
            "bes_auth_failures",
            "Requests refused as not authorized, by reason (the caller is told only 'not "
            "authorized'; the log says why)",
            ["reason"],
            registry=registry,
        )
        self.auth_throttled = Counter(
            "bes_auth_throttled",
            "Requests delayed because their source failed to authenticate repeatedly",
            registry=registry,
        )
        self._requests = Histogram(
            "bes_request_duration_seconds",
            "Time to answer an HTTP request, by route (soap, worker, status, outputs, metrics, "
            "other) and operation (the SOAP operation or worker call)",
            ["route", "operation"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self._timers: dict[tuple[str, str], Histogram] = {}
        # The process's CPU, memory and file descriptors (process_*), the interpreter's version.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)

    def auth_failure(self, reason: str) -> None:
        """Count one refused authentication (``reason`` from a small fixed set)."""
        self._auth_failures.labels(reason).inc()

    def observe_request(self, route: str, operation: str, seconds: float) -> None:
        """Count one HTTP request that took ``seconds`` (labels from a small fixed set)."""
        timer = self._timers.get((route, operation))
        if timer is None:
            timer = self._timers[(route, operation)] = self._requests.labels(route, operation)
        timer.observe(seconds)

    def render(self, census: Census, extra: Iterable[Metric] = ()) -> bytes:
        """Everything, in the Prometheus text format (``extra``: more scrape-time metrics,
        e.g. the relay's per-lease figures)."""
        gauges = [*_gauges(census, self.version), *extra]
        return generate_latest(_Scrape(self.registry, gauges))


class _Scrape:
    """The registry's metrics followed by the scrape-time gauges (a Collector)."""

    def __init__(self, registry: CollectorRegistry, gauges: Iterable[Metric]) -> None:
        self._registry = registry
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._gauges


def _gauges(census: Census, version: str) -> list[Metric]:
    activities = GaugeMetricFamily(
        "bes_activities", "Activities by basic state (all owners)", labels=["state"]
    )
    for state, n in census.activities.items():
        activities.add_metric([state], n)
    queue = GaugeMetricFamily(
        "bes_queue_jobs", "Desktop-grid jobs by queue state", labels=["state"]
    )
    for state, n in census.queue.items():
        queue.add_metric([state], n)
    oldest = GaugeMetricFamily(
        "bes_queue_oldest_waiting_seconds",
        "How long the job waiting longest for a worker has waited (0: none waits)",
        value=census.oldest_queued_s or 0.0,
    )
    accepting = GaugeMetricFamily(
        "bes_accepting_new_activities",
        "1 while CreateActivity is accepted, 0 after StopAcceptingNewActivities",
        value=1.0 if census.accepting else 0.0,
    )
    stored_bytes = GaugeMetricFamily(
        "bes_file_store_bytes",
        "Bytes the file store holds for all users (uploads under way included)",
        value=float(census.stored_bytes),
    )
    stored_files = GaugeMetricFamily(
        "bes_file_store_files", "Files in the file store", value=float(census.stored_files)
    )
    instances = GaugeMetricFamily(
        "bes_cloud_instances",
        "Cloud pools' live instances by pool and state (creating, booting, ready, draining, "
        "deleting)",
        labels=["pool", "state"],
    )
    for (pool, state), n in sorted(census.cloud_instances.items()):
        instances.add_metric([pool, state], n)
    info = InfoMetricFamily("bes_build", "The service's version", value={"version": version})
    return [activities, queue, oldest, accepting, stored_bytes, stored_files, instances, info]
