"""What a cloud pool's autoscaler should do now: a pure function of the queue and the pool.

Inputs: the pool's settings, the flavors it may use, its queued jobs (grouped by what they
need), its live instances (with how many jobs each worker holds), the time and the
instance-seconds used today. Output: instances to start (with their flavor), instances to
drain, instances to delete (with why), draining ones to take back, and one sentence for
people (what the pool is doing, or why it does not grow). The autoscaler
(:mod:`bes.clouds.autoscaler`) carries the plan out; tests check the policy here.

The policy:

* Each queued job group takes the smallest flavor that fits one of its jobs (memory plus the
  worker's own overhead, vCPUs); an instance of that flavor runs as many of them at once as
  its memory and vCPUs allow. Instances wanted = what the queue needs, minus instances still
  booting (they will take work soon) and idle ready ones; never more than ``max_instances``
  live, never fewer than ``min_instances``; at most ``batch`` started per round.
* An instance whose worker has not registered ``boot_timeout_s`` after it was created is
  deleted, and the next round starts another one (elsewhere, if the provider can choose).
* A ready instance idle for ``idle_s`` is drained (its worker claims nothing more), then
  deleted once it holds no job; a draining one is taken back if work arrives.
* Once the day's instance-seconds reach the budget, nothing more is started and the status
  says so (running instances finish their work and scale down as usual).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from bes.backends.desktopgrid.routing import Needs
from bes.clouds.base import Flavor
from bes.db.cloud_rows import InstanceRecord, InstanceState


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """A pool's scaling settings (see the module docstring)."""

    min_instances: int = 0
    max_instances: int = 4
    batch: int = 4
    idle_s: float = 300.0
    boot_timeout_s: float = 900.0
    budget_instance_hours: float | None = None
    """Instance-hours per UTC day; None: no cap."""
    overhead_mib: int = 768
    """Memory an instance keeps for its own system and worker (not offered to jobs)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Demand:
    """Queued jobs of the pool with the same needs."""

    needs: Needs
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What to do this round."""

    create: list[Flavor] = field(default_factory=list)
    drain: list[str] = field(default_factory=list)
    undrain: list[str] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)
    """(instance name, why)."""
    late: list[str] = field(default_factory=list)
    """Instances among ``delete`` whose worker did not register in time (their host is
    avoided for a while)."""
    idle: list[str] = field(default_factory=list)
    """Ready instances found idle for the first time (their idle time starts now)."""
    busy: list[str] = field(default_factory=list)
    """Instances that were idle and work again (their idle time is cleared)."""
    status: str = ""


def job_flavor(needs: Needs, flavors: Sequence[Flavor], overhead_mib: int) -> Flavor | None:
    """The smallest flavor that can run one job with ``needs`` (None: none can)."""
    for flavor in sorted(flavors, key=lambda f: (f.memory_mib, f.vcpus)):
        if flavor.memory_mib - overhead_mib >= needs.memory_mib and flavor.vcpus >= needs.vcpus:
            return flavor
    return None


def per_instance(needs: Needs, flavor: Flavor, overhead_mib: int) -> int:
    """How many jobs with ``needs`` an instance of ``flavor`` runs at once."""
    by_memory = (flavor.memory_mib - overhead_mib) // max(1, needs.memory_mib)
    by_cpus = flavor.vcpus // max(1, needs.vcpus)
    return max(1, min(by_memory, by_cpus))


def offered(flavor: Flavor, overhead_mib: int) -> Needs:
    """What a worker on ``flavor`` offers one job (the routing policy's view of the pool)."""
    return Needs(
        memory_mib=max(0, flavor.memory_mib - overhead_mib),
        vcpus=flavor.vcpus,
        disk_mib=0,
        network=False,
        hypervisors=("qemu",),
    )


def plan(
    *,
    limits: Limits,
    flavors: Sequence[Flavor],
    demand: Sequence[Demand],
    instances: Sequence[InstanceRecord],
    now: dt.datetime,
    used_s_today: float,
) -> Plan:
    """Decide this round (see the module docstring)."""
    out = Plan()
    live = [i for i in instances if i.state is not InstanceState.DELETING]
    # Boot timeouts.
    for i in live:
        waited = (now - i.created_at).total_seconds()
        if (
            i.state in (InstanceState.CREATING, InstanceState.BOOTING)
            and waited > limits.boot_timeout_s
        ):
            out.delete.append(
                (i.name, f"its worker did not register within {limits.boot_timeout_s:.0f} s")
            )
    out.late.extend(name for name, _ in out.delete)
    live = [i for i in live if i.name not in out.late]

    # What the queue needs.
    wanted: list[Flavor] = []
    unfit: list[Needs] = []
    for d in demand:
        flavor = job_flavor(d.needs, flavors, limits.overhead_mib)
        if flavor is None:
            unfit.append(d.needs)
            continue
        count = math.ceil(d.count / per_instance(d.needs, flavor, limits.overhead_mib))
        wanted.extend([flavor] * count)

    booting = [i for i in live if i.state in (InstanceState.CREATING, InstanceState.BOOTING)]
    ready = [i for i in live if i.state is InstanceState.READY]
    draining = [i for i in live if i.state is InstanceState.DRAINING]
    idle_ready = [i for i in ready if i.jobs == 0]

    # Take back draining instances before starting new ones.
    shortfall = max(0, len(wanted) - len(booting) - len(idle_ready))
    for i in draining:
        if shortfall <= 0:
            break
        out.undrain.append(i.name)
        shortfall -= 1
    active = len(booting) + len(ready) + len(out.undrain)
    shortfall = max(shortfall, limits.min_instances - active)

    # Start what is missing, within the maximum, the batch and the budget.
    room = limits.max_instances - len(live)
    budget_s = (
        limits.budget_instance_hours * 3600.0
        if limits.budget_instance_hours is not None
        else math.inf
    )
    over_budget = used_s_today >= budget_s
    if shortfall > 0 and not over_budget:
        count = max(0, min(shortfall, room, limits.batch))
        smallest = min(flavors, key=lambda f: (f.memory_mib, f.vcpus)) if flavors else None
        pending = wanted[len(booting) + len(idle_ready) :] if wanted else []
        for n in range(count):
            flavor = pending[n] if n < len(pending) else smallest
            if flavor is not None:
                out.create.append(flavor)

    _idle(out, limits, ready=ready, draining=draining, demand=demand, active=active, now=now)
    out_status = _status(
        limits,
        live=len(live) + len(out.create),
        booting=booting,
        created=len(out.create),
        shortfall=shortfall,
        over_budget=over_budget,
        used_s=used_s_today,
        unfit=unfit,
        flavors=flavors,
        now=now,
    )
    return Plan(
        create=out.create,
        drain=out.drain,
        undrain=out.undrain,
        delete=out.delete,
        late=out.late,
        idle=out.idle,
        busy=out.busy,
        status=out_status,
    )


def _idle(
    out: Plan,
    limits: Limits,
    *,
    ready: Sequence[InstanceRecord],
    draining: Sequence[InstanceRecord],
    demand: Sequence[Demand],
    active: int,
    now: dt.datetime,
) -> None:
    """Idle instances: start their clock, drain after idle_s, delete drained empty ones."""
    removable = max(0, active - limits.min_instances)
    for i in ready:
        if i.jobs > 0:
            if i.idle_since is not None:
                out.busy.append(i.name)
            continue
        if i.idle_since is None:
            out.idle.append(i.name)
            continue
        if demand and _could_serve(i, demand, limits):
            continue  # it will take one of them
        if (now - i.idle_since).total_seconds() >= limits.idle_s and removable > 0:
            out.drain.append(i.name)
            removable -= 1
    for i in draining:
        if i.name not in out.undrain and i.jobs == 0:
            out.delete.append((i.name, f"idle for {limits.idle_s:.0f} s"))


def _could_serve(instance: InstanceRecord, demand: Sequence[Demand], limits: Limits) -> bool:
    """Whether an idle instance could run one of the queued jobs (then it is not idle for long)."""
    room = Flavor(name=instance.flavor, memory_mib=instance.memory_mib, vcpus=instance.vcpus)
    return any(job_flavor(d.needs, [room], limits.overhead_mib) is not None for d in demand)


def _status(
    limits: Limits,
    *,
    live: int,
    booting: Sequence[InstanceRecord],
    created: int,
    shortfall: int,
    over_budget: bool,
    used_s: float,
    unfit: Sequence[Needs],
    flavors: Sequence[Flavor],
    now: dt.datetime,
) -> str:
    """One sentence on what the pool does (the waiting reason of its jobs)."""
    if unfit and not shortfall:
        largest = max(flavors, key=lambda f: (f.memory_mib, f.vcpus)) if flavors else None
        have = (
            f"its largest flavor {largest.name} offers "
            f"{max(0, largest.memory_mib - limits.overhead_mib)} MiB and {largest.vcpus} vCPUs"
            if largest
            else "it has no flavor"
        )
        return f"no flavor can run the job ({have})"
    if over_budget and shortfall > 0:
        hours = limits.budget_instance_hours or 0.0
        return (
            f"at its budget of {hours:g} instance-hours today ({used_s / 3600:.1f} used); "
            "no instance is started before 00:00 UTC"
        )
    if shortfall > 0 and created == 0 and live >= limits.max_instances:
        return f"at its maximum of {limits.max_instances} instances; waiting for one to be free"
    if created:
        return f"scaling up: starting {created} instance(s), {live} in all"
    if booting:
        first = min(booting, key=lambda i: i.created_at)
        since = (now - first.created_at).total_seconds()
        return (
            f"scaling up: instance {first.name} booting since "
            f"{first.created_at:%H:%M:%S} UTC ({since:.0f} s)"
        )
    return ""
