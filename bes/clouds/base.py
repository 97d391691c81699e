"""The interface of a cloud provider: what the autoscaler asks of any IaaS to run worker nodes.

A provider starts instances from a worker image with cloud-init user-data, lists the ones it
started (by their tags, so a restarted service finds them again) and deletes them. It knows
nothing of jobs, pools' queues or the database: the autoscaler (:mod:`bes.clouds.autoscaler`)
decides, the provider carries out. Shape from Libcloud's ``NodeDriver`` and Parsl's
``ExecutionProvider``: small verbs, results keyed by id, per-item trouble as values, only
whole-call failures raised (as :class:`CloudError`, with a kind the service turns into a
waiting reason or a retry).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from bes.errors import BesError

TAG_DEPLOYMENT: Final = "bes-deployment"
"""Tag naming the service deployment (its database) that started an instance."""
TAG_POOL: Final = "bes-pool"
"""Tag naming the pool (``cloud:NAME``) an instance works for."""


class CloudErrorKind(StrEnum):
    """Why a provider call failed, as far as the caller can act on it."""

    QUOTA = "quota"
    """The project's quota (instances, cores, RAM) is used up: wait, do not retry at once."""
    IMAGE = "image"
    """The worker image is missing or unusable: an administrator must fix the configuration."""
    FLAVOR = "flavor"
    """No flavor (or host) can hold the instance asked for."""
    UNAVAILABLE = "unavailable"
    """The API did not answer (down, slow, refused the connection): retry later."""
    REFUSED = "refused"
    """The API answered with an error not covered above (its message says which)."""


class CloudError(BesError):
    """A provider call failed as a whole.

    Attributes:
        kind: What the caller can do about it.
        message: A sentence for a person (the API's own words where it gave some).
    """

    def __init__(self, kind: CloudErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later without anyone changing anything."""
        return self.kind in (CloudErrorKind.QUOTA, CloudErrorKind.UNAVAILABLE)


class InstanceState(StrEnum):
    """An instance's state as the provider reports it."""

    PENDING = "pending"
    """Created, not running yet (building, scheduling)."""
    RUNNING = "running"
    """Powered on (the worker inside may still be booting)."""
    STOPPED = "stopped"
    """Powered off or paused; it does no work but still exists (and may cost)."""
    ERROR = "error"
    """The provider gave up on it; it must be deleted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Flavor:
    """A size of instance: what a worker on it can offer to jobs.

    Attributes:
        name: The provider's name for it (an OpenStack flavor, or one of the libvirt
            provider's configured sizes).
        memory_mib: Instance memory.
        vcpus: Instance virtual CPUs.
        disk_gb: Root disk, when the flavor fixes one.
    """

    name: str
    memory_mib: int
    vcpus: int
    disk_gb: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceRequest:
    """One instance to start.

    Attributes:
        name: Unique name (also the name of its worker and of its token).
        flavor: Its size.
        user_data: cloud-init user-data (``#cloud-config``) that starts its worker.
        tags: Metadata kept with the instance; always holds :data:`TAG_DEPLOYMENT` and
            :data:`TAG_POOL`, so that :meth:`CloudProvider.instances` finds it again.
        avoid_hosts: Hosts where an earlier instance of this pool failed to boot; placement
            picks another one when it can.
    """

    name: str
    flavor: Flavor
    user_data: str
    tags: Mapping[str, str]
    avoid_hosts: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class Instance:
    """An instance as the provider sees it.

    Attributes:
        id: The provider's identifier (a libvirt domain UUID, an OpenStack server id).
        name: The name it was created with.
        state: Its state.
        tags: Its metadata (see :class:`InstanceRequest`).
        host: Where it runs (a libvirt URI, an availability zone), when known.
    """

    id: str
    name: str
    state: InstanceState
    tags: Mapping[str, str] = field(default_factory=dict)
    host: str | None = None


class CloudProvider(abc.ABC):
    """Starts, lists and deletes worker instances on one cloud.

    Implementations raise :class:`CloudError` for whole-call failures and never let their
    library's exceptions out. Calls block (the autoscaler runs them in a thread).
    """

    name: str
    """Short name of the provider kind (``libvirt``, ``openstack``)."""

    @abc.abstractmethod
    def flavors(self) -> Sequence[Flavor]:
        """The sizes an instance can have, smallest first."""

    @abc.abstractmethod
    def create(self, request: InstanceRequest) -> Instance:
        """Start one instance.

        Returns:
            The instance, with the id that :meth:`destroy` takes.

        Raises:
            CloudError: It could not be started (quota, image, flavor, API).
        """

    @abc.abstractmethod
    def instances(self, tags: Mapping[str, str]) -> Sequence[Instance]:
        """Every instance carrying all of ``tags`` (whatever its state).

        Raises:
            CloudError: The provider could not be asked.
        """

    @abc.abstractmethod
    def destroy(self, ids: Sequence[str]) -> Mapping[str, bool]:
        """Delete instances and what was made for them (disks, seeds).

        Returns:
            For each id, True once it is gone or being deleted, False if there was no such
            instance (already gone).

        Raises:
            CloudError: The provider could not be asked.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
