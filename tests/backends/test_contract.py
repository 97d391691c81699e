"""The Backend contract, run against every implementation.

A new backend is added to ``IMPLEMENTATIONS`` (with a fake transport or runner if it talks to
an outside system) and must pass this suite before review.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bes.backends.base import Backend, CancelOutcome, Capability, JobState, JobStatus
from bes.backends.desktopgrid import DesktopGridBackend, DesktopGridConfig
from bes.backends.fake import FakeBackend, FakeConfig
from bes.backends.registry import BACKENDS, backend_class
from bes.db import grid_rows as grid
from bes.db.store import Database
from bes.errors import ConfigError
from bes.ids import ActivityId, BackendJobId
from bes.jsdl import load_job_definition
from tests.support.soap import HELLO_JSDL

JOB = load_job_definition(HELLO_JSDL)
FIXTURES = Path(__file__).parent.parent / "fixtures" / "jsdl" / "valid"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    """A backend under test and a way to make its jobs end ("time passes")."""

    backend: Backend
    finish_all: Callable[[], None]


def fake(config: FakeConfig | None = None) -> Callable[[Path], Iterator[Harness]]:
    def make(tmp_path: Path) -> Iterator[Harness]:
        del tmp_path
        clock = Clock()

        def later() -> None:
            clock.now += 3600

        yield Harness(FakeBackend(config, clock=clock), later)

    return make


def desktop_grid(tmp_path: Path) -> Iterator[Harness]:
    """The real backend on a real database; a worker is simulated with the queue's SQL."""
    db = Database(f"sqlite:///{tmp_path / 'bes.sqlite3'}")
    db.migrate()
    backend = DesktopGridBackend(db, DesktopGridConfig(outputs_dir=tmp_path / "outputs"))
    db.write_sync(
        grid.create_worker, ("w-1", "w1", "h" * 64, dt.datetime.now(dt.UTC), "volunteers")
    )

    def workers_run_everything() -> None:
        now = dt.datetime.now(dt.UTC)
        claim = grid.Claim(
            worker_id="w-1",
            limit=16,
            memory_mib=1 << 20,
            vcpus=64,
            disk_mib=1 << 30,
            hypervisors=("qemu",),
            network=True,
            now=now,
            until=now + dt.timedelta(minutes=1),
        )
        while leases := db.write_sync(grid.claim_grid_jobs, claim):
            for lease in leases:
                done = grid.Finish(
                    ref=lease.ref, state=grid.GridState.FINISHED, exit_code=0, now=now
                )
                db.write_sync(grid.finish_leases, done)

    try:
        yield Harness(backend, workers_run_everything)
    finally:
        db.close()


IMPLEMENTATIONS: dict[str, Callable[[Path], Iterator[Harness]]] = {
    "fake": fake(),
    "fake-slow-cancel": fake(FakeConfig(cancel_delay_s=5)),
    "desktopgrid": desktop_grid,
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    yield from IMPLEMENTATIONS[request.param](tmp_path)


@pytest.fixture
def backend(harness: Harness) -> Backend:
    return harness.backend


def test_declarations(backend: Backend) -> None:
    assert backend.name in BACKENDS
    assert backend.capabilities <= frozenset(Capability)
    assert backend.poll_interval_s > 0


def test_submit_returns_a_truthy_id(backend: Backend) -> None:
    ids = {backend.submit(JOB, activity_id=ActivityId(f"a{i}")) for i in range(5)}
    assert len(ids) == 5 and all(ids)


def test_status_is_keyed_by_id_with_one_entry_per_distinct_id(backend: Backend) -> None:
    a = backend.submit(JOB, activity_id=ActivityId("a"))
    b = backend.submit(JOB, activity_id=ActivityId("b"))
    unknown = BackendJobId("never-submitted")
    result = backend.status([b, unknown, a, b])
    assert set(result) == {a, b, unknown}
    assert all(isinstance(s, JobStatus) for s in result.values())
    assert result[unknown].state is JobState.UNKNOWN
    assert backend.status([]) == {}


def test_cancel_is_keyed_by_id_and_reports_per_item(backend: Backend) -> None:
    a = backend.submit(JOB, activity_id=ActivityId("a"))
    unknown = BackendJobId("never-submitted")
    result = backend.cancel([a, unknown])
    assert set(result) == {a, unknown}
    assert result[unknown] is CancelOutcome.UNKNOWN_ID
    assert result[a] in (CancelOutcome.CANCELLED, CancelOutcome.WILL_APPLY_LATER)
    if result[a] is CancelOutcome.CANCELLED:
        assert backend.status([a])[a].state is JobState.CANCELLED
    assert backend.cancel([]) == {}


def test_a_terminal_state_is_final(harness: Harness) -> None:
    backend = harness.backend
    a = backend.submit(JOB, activity_id=ActivityId("a"))
    harness.finish_all()
    state = backend.status([a])[a].state
    assert state.terminal
    assert backend.cancel([a])[a] is CancelOutcome.ALREADY_TERMINAL
    harness.finish_all()
    assert backend.status([a])[a].state is state


def test_unsupported_features_are_named_before_submission(backend: Backend) -> None:
    assert backend.unsupported(JOB) == []
    if Capability.SPMD_APPLICATION not in backend.capabilities:
        spmd = load_job_definition((FIXTURES / "spmd-mpi.jsdl").read_bytes())
        assert any("SPMD" in feature for feature in backend.unsupported(spmd))


def test_registry_lookup() -> None:
    assert backend_class("fake") is FakeBackend
    assert backend_class("desktopgrid") is DesktopGridBackend
    with pytest.raises(ConfigError, match="known backends: desktopgrid, fake"):
        backend_class("nonesuch")
