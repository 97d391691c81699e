"""The autoscaler's policy (bes.clouds.plan): a pure function of queue, instances and time."""

from __future__ import annotations

import datetime as dt

from bes.backends.desktopgrid.routing import Needs
from bes.clouds.base import Flavor
from bes.clouds.plan import Demand, Limits, Plan, job_flavor, per_instance, plan
from bes.db.cloud_rows import InstanceRecord, InstanceState

T0 = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
W2 = Flavor(name="w2", memory_mib=2048, vcpus=2)
W8 = Flavor(name="w8", memory_mib=8192, vcpus=8)
JOB = Needs(memory_mib=256, vcpus=1, disk_mib=100, network=False, hypervisors=())
LIMITS = Limits(max_instances=4, batch=2, idle_s=60, boot_timeout_s=300, overhead_mib=768)


def instance(
    name: str,
    state: InstanceState = InstanceState.READY,
    *,
    jobs: int = 0,
    age_s: float = 100.0,
    idle_s: float | None = None,
) -> InstanceRecord:
    return InstanceRecord(
        name=name,
        pool="cloud:lab",
        provider_id=name,
        host="h1",
        flavor="w2",
        memory_mib=2048,
        vcpus=2,
        state=state,
        message=None,
        created_at=T0 - dt.timedelta(seconds=age_s),
        registered_at=None,
        idle_since=T0 - dt.timedelta(seconds=idle_s) if idle_s is not None else None,
        ended_at=None,
        jobs=jobs,
    )


def decide(
    demand: int | list[Demand] = 0, instances: tuple[InstanceRecord, ...] = (), **kw: object
) -> Plan:
    jobs = demand if isinstance(demand, list) else [Demand(needs=JOB, count=demand)]
    values: dict[str, object] = {
        "limits": LIMITS,
        "flavors": [W8, W2],
        "demand": [d for d in jobs if d.count],
        "instances": list(instances),
        "now": T0,
        "used_s_today": 0.0,
    }
    values.update(kw)
    return plan(**values)  # type: ignore[arg-type]


def test_each_job_takes_the_smallest_flavor_that_fits_and_instances_pack_jobs() -> None:
    assert job_flavor(JOB, [W8, W2], 768) == W2
    big = Needs(memory_mib=4096, vcpus=2, disk_mib=0, network=False, hypervisors=())
    assert job_flavor(big, [W8, W2], 768) == W8
    huge = Needs(memory_mib=9000, vcpus=1, disk_mib=0, network=False, hypervisors=())
    assert job_flavor(huge, [W8, W2], 768) is None
    assert per_instance(JOB, W2, 768) == 2  # two vCPUs, 1280 MiB free: two jobs


def test_a_burst_scales_up_in_batches_within_the_maximum() -> None:
    first = decide(demand=200)
    assert first.create == [W2, W2]  # the batch
    assert first.status.startswith("scaling up: starting 2 instance(s)")
    booting = (instance("a", InstanceState.BOOTING), instance("b", InstanceState.BOOTING))
    second = decide(demand=200, instances=booting)
    assert second.create == [W2, W2]
    full = decide(demand=200, instances=(*booting, instance("c", jobs=2), instance("d", jobs=2)))
    assert full.create == []
    assert full.status == "at its maximum of 4 instances; waiting for one to be free"


def test_booting_and_idle_instances_count_before_new_ones() -> None:
    assert decide(demand=2, instances=(instance("a", InstanceState.BOOTING),)).create == []
    assert decide(demand=2, instances=(instance("a", idle_s=5),)).create == []
    assert decide(demand=3, instances=(instance("a", InstanceState.BOOTING),)).create == [W2]


def test_an_instance_that_does_not_register_in_time_is_deleted_and_replaced() -> None:
    late = instance("late", InstanceState.BOOTING, age_s=301)
    decided = decide(demand=1, instances=(late,))
    assert decided.delete == [("late", "its worker did not register within 300 s")]
    assert decided.late == ["late"]
    assert decided.create == [W2]


def test_idle_instances_are_timed_then_drained_then_deleted() -> None:
    assert decide(instances=(instance("a"),)).idle == ["a"]
    assert decide(instances=(instance("a", idle_s=30),)).drain == []
    assert decide(instances=(instance("a", idle_s=61),)).drain == ["a"]
    assert decide(instances=(instance("a", InstanceState.DRAINING),)).delete == [
        ("a", "idle for 60 s")
    ]
    still_working = decide(instances=(instance("a", InstanceState.DRAINING, jobs=1),))
    assert still_working.delete == []
    assert decide(instances=(instance("a", jobs=1, idle_s=500),)).busy == ["a"]


def test_work_arriving_takes_back_a_draining_instance_instead_of_starting_one() -> None:
    decided = decide(demand=1, instances=(instance("a", InstanceState.DRAINING),))
    assert decided.undrain == ["a"]
    assert decided.create == []
    assert decided.delete == []


def test_the_minimum_is_kept_running_even_when_idle() -> None:
    limits = Limits(min_instances=1, max_instances=4, idle_s=60, overhead_mib=768)
    assert decide(limits=limits).create == [W2]
    assert decide(limits=limits, instances=(instance("a", idle_s=3600),)).drain == []


def test_the_daily_budget_stops_new_instances_and_says_so() -> None:
    limits = Limits(max_instances=4, budget_instance_hours=2.0, overhead_mib=768)
    decided = decide(demand=5, limits=limits, used_s_today=2 * 3600.0)
    assert decided.create == []
    assert decided.status.startswith("at its budget of 2 instance-hours today (2.0 used)")


def test_a_job_no_flavor_can_run_is_explained() -> None:
    huge = Needs(memory_mib=100_000, vcpus=1, disk_mib=0, network=False, hypervisors=())
    decided = decide(demand=[Demand(needs=huge, count=1)])
    assert decided.create == []
    assert decided.status.startswith("no flavor can run the job (its largest flavor w8 offers")
