"""What the client hands back: activity references, statuses and factory attributes.

Everything here is a plain frozen value. Identifiers keep the endpoint reference exactly as the
service sent it (``epr``, serialized XML), because GFD.108 lets a service put whatever it needs
into ``wsa:ReferenceParameters`` and expects it back unchanged: UNICORE, Genesis II and ARC all
do. No XML library is needed to use these values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from bes.ids import ActivityId


class State(StrEnum):
    """The basic activity states of OGSA-BES 1.0 (GFD.108 §5), with their wire values."""

    PENDING = "Pending"
    """Accepted, not running yet."""
    RUNNING = "Running"
    """Staging in, executing or staging out."""
    FINISHED = "Finished"
    """Ended normally."""
    FAILED = "Failed"
    """Ended abnormally (the job, its staging, or the system)."""
    CANCELLED = "Cancelled"
    """Terminated on request (the specification's "Terminated"; the May 2007 draft's wire
    value ``Terminated`` is read as this state too)."""
    UNKNOWN = "Unknown"
    """The service sent a state outside the BES enumeration; the raw value is kept in
    :attr:`ActivityStatus.raw_state`."""

    @property
    def terminal(self) -> bool:
        """True for Finished, Failed and Cancelled: nothing leaves these states."""
        return self in _TERMINAL

    @classmethod
    def parse(cls, value: str) -> State:
        """The state for a wire value; unknown values give :attr:`UNKNOWN`."""
        value = value.strip()
        if value == "Terminated":
            return cls.CANCELLED
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


_TERMINAL: Final = frozenset({State.FINISHED, State.FAILED, State.CANCELLED})


class SubState(StrEnum):
    """Sub-states this client recognizes (children of ``ActivityStatus``): ours and the HPC
    File Staging Profile's. Others are kept by name in :attr:`ActivityStatus.substates`."""

    QUEUED = "Queued"
    """Pending: stored, waiting to be handed to a backend."""
    SUBMITTED = "Submitted"
    """Pending: in the backend's queue (waiting for a worker)."""
    PROVISIONING = "Provisioning"
    """Pending: a VM is being prepared."""
    STAGING_IN = "Staging-In"
    """Running: inputs are being fetched (HPC File Staging Profile)."""
    EXECUTING = "Executing"
    """Running: the application runs."""
    STAGING_OUT = "Staging-Out"
    """Running: outputs are being delivered (HPC File Staging Profile)."""
    TERMINATING = "Terminating"
    """Termination was requested and is being carried out."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivityRef:
    """An activity's endpoint reference, as the service returned it.

    Attributes:
        address: The reference's ``wsa:Address``.
        epr: The whole ``wsa:EndpointReferenceType`` element, serialized; sent back verbatim.
        activity_id: Our service's ``besa:ActivityId``, when the reference carries one.
    """

    address: str
    epr: bytes = field(repr=False)
    activity_id: ActivityId | None = None

    @property
    def name(self) -> str:
        """A short name for people: the activity id if known, else the address."""
        return self.activity_id or self.address


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivityCount:
    """For a parameter sweep: how many of its points are in ``state``."""

    state: State
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseAccess:
    """How the owner of a VM lease reaches its VM (``besa:Access``).

    Attributes:
        user: The login.
        host_keys: The guest's SSH host keys (OpenSSH public key lines).
        ports: (guest port, port on the worker's loopback) for each forwarded port.
        tunnel: The WebSocket URL that relays streams to those ports (``?port=N``).
    """

    user: str | None
    host_keys: tuple[str, ...]
    ports: tuple[tuple[int, int], ...]
    tunnel: str | None


@dataclass(frozen=True, slots=True)
class ActivityStatus:
    """One activity's status.

    Attributes:
        ref: The activity, as the service echoed it (or as asked, if it echoed nothing).
        state: The basic state.
        raw_state: The state attribute as sent.
        substates: Names of the sub-state elements (``Executing``, ``Staging-In``, …), in order;
            foreign ones too.
        exit_code: The application's exit status, when the service reports one.
        message: A human reason (``besa:Message``), e.g. why it failed.
        outputs_url: Where the service lists the activity's kept files (``besa:Outputs``).
        changed: When it entered its current state or sub-state (ISO 8601, ``besa:Changed``).
        pool: The pool of workers a bes service routed it to (``besa:Pool``).
        access: For a running VM lease whose VM is up, how to reach it (``besa:Access``).
        warnings: Changes the service made to the document (``besa:Warning``).
        counts: For a sweep, its points per state.
        children: For a sweep, one reference per point.
        fault: Set instead of a state when the service refused this one identifier.
    """

    ref: ActivityRef
    state: State
    raw_state: str = ""
    substates: tuple[str, ...] = ()
    exit_code: int | None = None
    message: str | None = None
    outputs_url: str | None = None
    changed: str | None = None
    pool: str | None = None
    warnings: tuple[str, ...] = ()
    counts: tuple[ActivityCount, ...] = ()
    access: LeaseAccess | None = None
    children: tuple[ActivityRef, ...] = ()
    fault: Exception | None = None

    @property
    def terminal(self) -> bool:
        """True when the activity has ended (or the service does not know it)."""
        return self.state.terminal or self.fault is not None

    @property
    def label(self) -> str:
        """``State/Sub-state`` for people, e.g. ``Running/Executing``."""
        if self.fault is not None:
            return f"error: {self.fault}"
        return "/".join((self.state.value, *self.substates[:1]))


@dataclass(frozen=True, slots=True, kw_only=True)
class TerminateResult:
    """The answer for one identifier of TerminateActivities.

    Attributes:
        ref: The activity.
        terminated: The service says it is terminated. Services that omit the element (ARC)
            count as terminated unless they send a fault.
        fault: Why not, when the service sent a per-item fault (for instance
            :class:`~bes.client.faults.OperationWillBeAppliedEventuallyFault`: termination is
            under way).
    """

    ref: ActivityRef
    terminated: bool
    fault: Exception | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FactoryAttributes:
    """The factory's ``FactoryResourceAttributesDocument`` (GFD.108 §6.2); fields the service
    leaves out are None or empty."""

    accepting: bool | None
    name: str | None = None
    description: str | None = None
    total_activities: int | None = None
    activity_refs: tuple[ActivityRef, ...] = ()
    contained_resources: int | None = None
    naming_profiles: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    resource_manager: str | None = None
    cpu_count: float | None = None
    memory_bytes: float | None = None
    operating_system: str | None = None
    cpu_architecture: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputFile:
    """One file fetched by :meth:`~bes.client.BESClient.outputs`.

    Attributes:
        name: Its name on the service (``stdout``, ``stderr``, ``outputs/result.txt``).
        path: Where it was written.
        size_bytes: Its size.
    """

    name: str
    path: str
    size_bytes: int
