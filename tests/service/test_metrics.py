"""``GET /metrics`` as Prometheus scrapes it: a real ``bes serve`` on loopback, activities
submitted over SOAP and a worker driven through the worker protocol, and the figures an
operator's dashboard reads, parsed with prometheus_client's own parser."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bes.config import ServiceConfig
from bes.metrics import Census, Metrics
from tests.service.test_status_page import ROOT, HeaderPolicy, Site
from tests.support.grid import Worker, posix_job, submit
from tests.support.server import LiveServer, live_server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape: (name, labels) -> value. Raises if it is not the format."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_the_text_format_parses_and_holds_every_family() -> None:
    metrics = Metrics(version="9.9")
    metrics.submissions.inc(2)
    metrics.observe_request("soap", "CreateActivity", 0.003)
    metrics.observe_request("soap", "CreateActivity", 4.0)
    census = Census(
        activities={"Pending": 2, "Running": 0},
        queue={"queued": 2},
        oldest_queued_s=12.5,
        accepting=True,
        stored_bytes=3000,
        stored_files=2,
    )
    samples = parse(metrics.render(census).decode())
    assert value(samples, "bes_submissions_total") == 2
    assert value(samples, "bes_activities", state="Pending") == 2
    assert value(samples, "bes_queue_jobs", state="queued") == 2
    assert value(samples, "bes_queue_oldest_waiting_seconds") == 12.5
    assert value(samples, "bes_accepting_new_activities") == 1
    assert value(samples, "bes_build_info", version="9.9") == 1
    assert value(samples, "bes_file_store_bytes") == 3000
    assert value(samples, "bes_file_store_files") == 2
    timing = {"route": "soap", "operation": "CreateActivity"}
    assert value(samples, "bes_request_duration_seconds_count", **timing) == 2
    assert value(samples, "bes_request_duration_seconds_bucket", le="0.005", **timing) == 1
    assert value(samples, "bes_request_duration_seconds_bucket", le="+Inf", **timing) == 2
    for cause in ("infrastructure", "job"):
        assert value(samples, "bes_vm_failures_total", cause=cause) == 0


@pytest.mark.anyio
async def test_metrics_are_for_administrators(tmp_path: Path) -> None:
    from bes.app import create_app

    app = create_app(ServiceConfig(data_dir=tmp_path / "data"), identity=HeaderPolicy())
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bes.test") as http:
            site = Site(app, http)
            await site.submit("alice", posix_job("one"))
            refused = await site.get("alice", "/metrics")
            assert refused.status_code == 403 and "administrators" in refused.text
            assert (await site.get(None, "/metrics")).status_code == 401
            scraped = await site.get(ROOT, "/metrics")
            assert scraped.status_code == 200
            assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert value(parse(scraped.text), "bes_activities", state="Pending") == 1
            assert value(parse(scraped.text), "bes_file_store_files") == 0
            data = b"alice's input\n" * 100
            stored = await http.put(
                f"/bes/files/sha256/{hashlib.sha256(data).hexdigest()}",
                content=data,
                headers={"X-Test-User": "alice"},
            )
            assert stored.status_code == 201, stored.text
            scraped = await site.get(ROOT, "/metrics")
            assert value(parse(scraped.text), "bes_file_store_files") == 1
            assert value(parse(scraped.text), "bes_file_store_bytes") == len(data)
            assert (await http.post("/metrics")).status_code == 405
    finally:
        await app.shutdown()


@pytest.fixture(scope="module")
def grid_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    options = ["lease_s=2", "heartbeat_s=1", "claim_wait_s=2"]
    extra = [f"--backend-option={o}" for o in options]
    with live_server(tmp_path_factory.mktemp("metrics") / "data", extra=extra) as server:
        yield server


def scrape(server: LiveServer) -> Samples:
    response = httpx.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return parse(response.text)


def eventually(server: LiveServer, check: Callable[[Samples], bool], timeout_s: float) -> Samples:
    """Scrape until ``check`` holds (the service applies workers' reports within moments)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(server)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


@pytest.mark.slow
def test_a_scrape_counts_submissions_claims_boots_failures_and_expiries(
    grid_server: LiveServer,
) -> None:
    server = grid_server
    before = scrape(server)
    for name in ("one", "two", "three"):
        submit(server, posix_job(name))
    after = scrape(server)
    assert value(after, "bes_submissions_total") - value(before, "bes_submissions_total") == 3
    assert value(after, "bes_activities", state="Pending") == 3
    assert value(after, "bes_activities", state="Finished") == 0
    timing = {"route": "soap", "operation": "CreateActivity"}
    assert value(after, "bes_request_duration_seconds_count", **timing) == 3
    assert value(after, "bes_request_duration_seconds_bucket", le="+Inf", **timing) == 3
    assert value(after, "bes_request_duration_seconds_sum", **timing) > 0
    assert value(after, "bes_accepting_new_activities") == 1
    assert value(after, "process_resident_memory_bytes") > 0

    worker = Worker(server, "m1")
    worker.post("register", {"facts": {"max_vms": 1}})
    (lease,) = worker.claim()
    samples = scrape(server)
    assert value(samples, "bes_claims_total") == 1
    assert value(samples, "bes_queue_jobs", state="leased") == 1
    assert value(samples, "bes_queue_jobs", state="queued") == 2
    assert value(samples, "bes_queue_oldest_waiting_seconds") > 0

    worker.heartbeat(lease["lease"], "Executing")
    worker.heartbeat(lease["lease"], "Executing")  # (the same VM still: not a second boot)
    running = eventually(server, lambda s: value(s, "bes_activities", state="Running") == 1, 10)
    assert value(running, "bes_activities", state="Running") == 1
    assert value(running, "bes_activities", state="Pending") == 2
    assert value(running, "bes_vm_boots_total") == 1

    worker.post(f"leases/{lease['lease']}/fail", {"message": "the hypervisor broke", "retry": True})
    samples = scrape(server)
    assert value(samples, "bes_vm_failures_total", cause="infrastructure") == 1
    assert value(samples, "bes_vm_failures_total", cause="job") == 0

    # A lease nobody renews expires after lease_s (2 s) and the job goes back to the queue.
    worker.claim()
    samples = eventually(server, lambda s: value(s, "bes_lease_expiries_total") >= 1, 15)
    assert value(samples, "bes_lease_expiries_total") == 1
    assert value(samples, "bes_claims_total") == 2
    claims = {"route": "worker", "operation": "claim"}
    assert value(samples, "bes_request_duration_seconds_count", **claims) == 2
