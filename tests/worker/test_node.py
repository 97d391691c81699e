"""The worker's decisions that need no service: when the host counts as busy, how it backs off."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bes.worker import node
from bes.worker.config import WorkerConfig
from bes.worker.node import Worker, _Backoff


def worker(tmp_path: Path, **settings: object) -> Worker:
    config = WorkerConfig(
        service="http://127.0.0.1:9",
        token="t",
        cache_dir=tmp_path,
        **settings,  # type: ignore[arg-type]
    )
    return Worker(config)


def test_the_host_is_busy_when_its_own_load_passes_the_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = worker(tmp_path, busy_load=1.5)
    load = [0.5]
    monkeypatch.setattr(node.os, "getloadavg", lambda: (load[0], 0.0, 0.0))
    monkeypatch.setattr(node, "_BUSY_CHECK_S", 0.0)
    assert not w.busy()
    load[0] = 2.0
    assert w.busy()
    # Two of our own VMs account for 2 of the load: the owner is not busy.
    w._running = {"a": object(), "b": object()}  # type: ignore[dict-item]
    load[0] = 3.0
    assert not w.busy()


def test_without_a_threshold_the_host_is_never_busy(tmp_path: Path) -> None:
    assert not worker(tmp_path).busy()


def test_backoff_grows_with_jitter_up_to_its_cap() -> None:
    stop = threading.Event()
    waits: list[float] = []

    class Recorder(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout or 0.0)
            return False

    backoff = _Backoff(8.0)
    recorder = Recorder()
    for _ in range(6):
        backoff.wait(recorder, "down")
    assert all(0.5 <= w <= 8.0 for w in waits)
    assert waits[-1] >= 4.0, "the delay reaches the cap's neighbourhood"
    assert waits[0] <= 1.0
    backoff.reset()
    backoff.wait(recorder, "down")
    assert waits[-1] <= 1.0
    assert not stop.is_set()


def test_facts_say_what_the_host_offers(tmp_path: Path) -> None:
    facts = worker(tmp_path, max_vms=3, allow_network=True).facts()
    assert facts["max_vms"] == 3 and facts["allow_network"] is True
    assert facts["cpus"] >= 1 and facts["memory_mib"] > 0 and facts["free_disk_mib"] > 0
