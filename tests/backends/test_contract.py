"""The Backend contract, run against every implementation.

A new backend is added to ``IMPLEMENTATIONS`` (with a fake transport or runner if it talks to
an outside system) and must pass this suite before review.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bes.backends.base import Backend, CancelOutcome, Capability, JobState, JobStatus
from bes.backends.fake import FakeBackend, FakeConfig
from bes.backends.registry import BACKENDS, backend_class
from bes.errors import ConfigError
from bes.ids import ActivityId, BackendJobId
from bes.jsdl import load_job_definition
from tests.support.soap import HELLO_JSDL

JOB = load_job_definition(HELLO_JSDL)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


IMPLEMENTATIONS: dict[str, Callable[[Clock], Backend]] = {
    "fake": lambda clock: FakeBackend(clock=clock),
    "fake-slow-cancel": lambda clock: FakeBackend(FakeConfig(cancel_delay_s=5), clock=clock),
}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def backend(request: pytest.FixtureRequest, clock: Clock) -> Backend:
    return IMPLEMENTATIONS[request.param](clock)


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


def test_a_terminal_state_is_final(backend: Backend, clock: Clock) -> None:
    a = backend.submit(JOB, activity_id=ActivityId("a"))
    clock.now += 3600
    state = backend.status([a])[a].state
    assert state.terminal
    assert backend.cancel([a])[a] is CancelOutcome.ALREADY_TERMINAL
    clock.now += 3600
    assert backend.status([a])[a].state is state


def test_registry_lookup() -> None:
    assert backend_class("fake") is FakeBackend
    with pytest.raises(ConfigError, match="known backends: fake"):
        backend_class("nonesuch")
