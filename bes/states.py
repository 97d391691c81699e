"""The activity state model of OGSA-BES 1.0 (GFD.108 §5) and our sub-states.

Basic states::

    Pending ──► Running ──► Finished
       │           │
       └──────┬────┘
              ▼
     Cancelled | Failed

Finished, Cancelled and Failed are terminal: nothing leaves them. Sub-states refine a basic
state and never replace it, so a client that knows only the five basic states keeps working.
"""

from enum import StrEnum
from typing import Final


class ActivityState(StrEnum):
    """Basic BES activity states, with their wire values."""

    PENDING = "Pending"
    """Accepted, not yet executing: queued, waiting for a worker or a VM being provisioned."""
    RUNNING = "Running"
    """Staging data in, executing, or staging data out."""
    FINISHED = "Finished"
    """Ended normally. The job's own exit code may still be non-zero only if the backend says so."""
    CANCELLED = "Cancelled"
    """Terminated on request. The spec text calls this state "Terminated"; the wire value is
    ``Cancelled`` (the ActivityStateEnumeration of the BES schema)."""
    FAILED = "Failed"
    """Ended abnormally: the job failed, staging failed, or the system gave up on it."""

    @property
    def terminal(self) -> bool:
        """True for Finished, Cancelled and Failed."""
        return self in TERMINAL_STATES


TERMINAL_STATES: Final = frozenset(
    {ActivityState.FINISHED, ActivityState.CANCELLED, ActivityState.FAILED}
)

_ALLOWED: Final[dict[ActivityState, frozenset[ActivityState]]] = {
    ActivityState.PENDING: frozenset(
        {ActivityState.RUNNING, ActivityState.CANCELLED, ActivityState.FAILED}
    ),
    ActivityState.RUNNING: frozenset(
        {ActivityState.FINISHED, ActivityState.CANCELLED, ActivityState.FAILED}
    ),
    ActivityState.FINISHED: frozenset(),
    ActivityState.CANCELLED: frozenset(),
    ActivityState.FAILED: frozenset(),
}


def can_transition(old: ActivityState, new: ActivityState) -> bool:
    """True if the state machine allows ``old`` → ``new``.

    Staying in the same non-terminal state (a sub-state change) is allowed.
    """
    if old == new:
        return not old.terminal
    return new in _ALLOWED[old]


class SubState(StrEnum):
    """Refinements of a basic state, sent as child elements of ``ActivityStatus``.

    ``STAGING_IN`` and ``STAGING_OUT`` are the HPC File Staging Profile's ``fs:Staging-In`` and
    ``fs:Staging-Out``; the others are elements in our own namespace.
    """

    QUEUED = "Queued"
    """Pending: stored and waiting to be handed to a backend."""
    SUBMITTED = "Submitted"
    """Pending: handed to a backend, which has not started it yet (in the desktop grid: in
    its queue, waiting for a worker)."""
    PROVISIONING = "Provisioning"
    """Pending: a virtual machine or cloud instance is being prepared for the job."""
    STAGING_IN = "Staging-In"
    """Running: input files are being fetched."""
    EXECUTING = "Executing"
    """Running: the application runs."""
    STAGING_OUT = "Staging-Out"
    """Running: output files are being delivered."""
    SUSPENDED = "Suspended"
    """Running: a VM lease's VM is paused by its owner; its wall time does not run."""
    TERMINATING = "Terminating"
    """Pending or Running: termination was requested and is being carried out."""

    @property
    def state(self) -> ActivityState:
        """The basic state this sub-state refines (``TERMINATING`` refines Running)."""
        return _SUBSTATE_OF[self]


_SUBSTATE_OF: Final = {
    SubState.QUEUED: ActivityState.PENDING,
    SubState.SUBMITTED: ActivityState.PENDING,
    SubState.PROVISIONING: ActivityState.PENDING,
    SubState.STAGING_IN: ActivityState.RUNNING,
    SubState.EXECUTING: ActivityState.RUNNING,
    SubState.STAGING_OUT: ActivityState.RUNNING,
    SubState.SUSPENDED: ActivityState.RUNNING,
    SubState.TERMINATING: ActivityState.RUNNING,
}


def substate_fits(state: ActivityState, substate: SubState | None) -> bool:
    """True if ``substate`` may refine ``state`` (terminal states carry none)."""
    if substate is None:
        return True
    if state.terminal:
        return False
    return substate is SubState.TERMINATING or substate.state is state
