"""The routing policy: which pool of workers takes a job, and why a queued job waits.

Every worker belongs to one pool: ``volunteers`` (volunteers' and site nodes, the default) or
``cloud:NAME`` (instances a cloud pool's autoscaler started). A job is claimable only by its
pool's workers. The policy, in order:

1. a pool the job names (``vm:Pool`` in our VM extension) wins;
2. otherwise ``volunteers`` if a registered volunteer can run it;
3. otherwise the first configured cloud pool whose largest instance can run it;
4. otherwise ``volunteers``, where it waits for a volunteer that can.

A job left unclaimed in ``volunteers`` longer than a cloud pool's ``burst_after_s`` moves to
that pool (:func:`burst_pool`), unless it named its pool. Plain JSDL follows the same rules
(the service's default VM stands in for the missing extension). Everything here is a pure
function of its arguments: the backend gathers the workers and pools and stores the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

VOLUNTEERS: Final = "volunteers"
CLOUD_PREFIX: Final = "cloud:"


@dataclass(frozen=True, slots=True, kw_only=True)
class Needs:
    """What a job asks of a worker (the queue row's requirements)."""

    memory_mib: int
    vcpus: int
    disk_mib: int
    network: bool
    hypervisors: tuple[str, ...]
    """Acceptable hypervisors; empty for any."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """What a worker (or the largest instance of a cloud pool) can give one job."""

    name: str
    pool: str
    memory_mib: int
    vcpus: int
    disk_mib: int | None
    """Free disk; None when unknown (not checked)."""
    network: bool
    hypervisors: frozenset[str]

    @classmethod
    def from_facts(cls, name: str, pool: str, facts: Mapping[str, Any]) -> Offer:
        """A registered worker's offer, from the facts it reported."""
        hypervisors = facts.get("hypervisors") or {}
        return cls(
            name=name,
            pool=pool,
            memory_mib=int(facts.get("max_memory_mib") or facts.get("memory_mib") or 0),
            vcpus=int(facts.get("max_vcpus") or facts.get("cpus") or 1),
            disk_mib=int(facts["free_disk_mib"]) if "free_disk_mib" in facts else None,
            network=bool(facts.get("allow_network")),
            hypervisors=frozenset(hypervisors),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudPool:
    """A configured cloud pool, as the policy sees it."""

    name: str
    """``cloud:NAME``."""
    largest: Offer
    """What its largest instance offers one job."""
    burst_after_s: float | None = None
    """Take volunteers' jobs unclaimed for this long; None: never."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """The policy's decision."""

    pool: str
    why: str
    """One sentence for people (the status page, ``bes why``)."""


def misfits(needs: Needs, offer: Offer) -> list[str]:
    """What ``offer`` lacks to run a job with ``needs``, one phrase per requirement."""
    out = []
    if needs.hypervisors and not offer.hypervisors.intersection(needs.hypervisors):
        have = ", ".join(sorted(offer.hypervisors)) or "none"
        out.append(f"hypervisor {' or '.join(needs.hypervisors)} (it has {have})")
    if needs.memory_mib > offer.memory_mib:
        out.append(f"memory {needs.memory_mib} MiB (it offers {offer.memory_mib} MiB)")
    if needs.vcpus > offer.vcpus:
        out.append(f"{needs.vcpus} vCPUs (it offers {offer.vcpus})")
    if offer.disk_mib is not None and needs.disk_mib > offer.disk_mib:
        out.append(f"disk {needs.disk_mib} MiB (it has {offer.disk_mib} MiB free)")
    if needs.network and not offer.network:
        out.append("a network for the guest (its owner allows none)")
    if not offer.hypervisors:
        out.append("a working hypervisor (it found none)")
    return out


def fits(needs: Needs, offer: Offer) -> bool:
    """Whether ``offer`` can run a job with ``needs``."""
    return not misfits(needs, offer)


def route(
    needs: Needs,
    *,
    named: str | None,
    volunteers: Sequence[Offer],
    clouds: Sequence[CloudPool],
) -> Route:
    """Decide a job's pool (see the module docstring for the rules).

    Args:
        needs: What the job asks of a worker.
        named: The pool the job names (``vm:Pool``), if any; the caller has checked it exists.
        volunteers: The registered, live workers of the ``volunteers`` pool.
        clouds: The configured cloud pools, in configuration order.
    """
    if named is not None:
        return Route(pool=named, why="the job names this pool (vm:Pool)")
    if any(fits(needs, w) for w in volunteers):
        return Route(pool=VOLUNTEERS, why="a registered volunteer can run it")
    for cloud in clouds:
        if fits(needs, cloud.largest):
            if volunteers:
                why = f"no registered volunteer can run it; {cloud.name} can"
            else:
                why = f"no volunteer is registered; {cloud.name} can run it"
            return Route(pool=cloud.name, why=why)
    return Route(pool=VOLUNTEERS, why="no pool can run it now; it waits for a volunteer that can")


def burst_pool(needs: Needs, waited_s: float, clouds: Sequence[CloudPool]) -> str | None:
    """The cloud pool a volunteers' job that waited ``waited_s`` unclaimed moves to, if any."""
    for cloud in clouds:
        if (
            cloud.burst_after_s is not None
            and waited_s >= cloud.burst_after_s
            and fits(needs, cloud.largest)
        ):
            return cloud.name
    return None


def waiting_reason(
    needs: Needs,
    pool: str,
    *,
    workers: Sequence[Offer],
    pool_status: str | None = None,
) -> str:
    """Why a queued job of ``pool`` waits, in one sentence (``condor_q -better-analyze``).

    Args:
        needs: What the job asks of a worker.
        pool: Its pool.
        workers: The registered, live workers of every pool.
        pool_status: For a cloud pool, what its autoscaler last said (scaling up, at its
            maximum, over its budget, an API error).
    """
    members = [w for w in workers if w.pool == pool]
    able = [w for w in members if fits(needs, w)]
    if able:
        count = len(able)
        return f"waiting for a free worker: {count} of pool {pool} can run it, all busy"
    if pool.startswith(CLOUD_PREFIX):
        if pool_status:
            return f"pool {pool}: {pool_status}"
        if members:
            return _none_fits(needs, pool, members)
        return f"pool {pool} has no instance yet; its autoscaler starts one"
    if not members:
        elsewhere = len(workers)
        if elsewhere:
            return (
                f"no worker of pool {pool} is registered ({elsewhere} of other pools are); "
                f"start one with bes worker"
            )
        return "no worker is registered; start one with bes worker (see bes worker --help)"
    return _none_fits(needs, pool, members)


def _none_fits(needs: Needs, pool: str, members: Sequence[Offer]) -> str:
    """``N workers, none offering what it needs``, naming what the closest one lacks."""
    closest = min(members, key=lambda w: (len(misfits(needs, w)), -w.memory_mib, w.name))
    lacking = "; ".join(misfits(needs, closest))
    count = len(members)
    noun = "worker" if count == 1 else "workers"
    return f"{count} {noun} of pool {pool}, none can run it: {closest.name} lacks {lacking}"
