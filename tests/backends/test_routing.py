"""The routing policy and the waiting reasons: pure functions, as README documents them."""

from __future__ import annotations

from bes.backends.desktopgrid.routing import (
    VOLUNTEERS,
    CloudPool,
    Needs,
    Offer,
    burst_pool,
    misfits,
    route,
    waiting_reason,
)

SMALL = Needs(memory_mib=256, vcpus=1, disk_mib=100, network=False, hypervisors=())
BIG = Needs(memory_mib=8192, vcpus=4, disk_mib=100, network=False, hypervisors=())


def offer(name: str = "pc1", pool: str = VOLUNTEERS, **kw: object) -> Offer:
    values: dict[str, object] = {
        "name": name,
        "pool": pool,
        "memory_mib": 2048,
        "vcpus": 2,
        "disk_mib": 10_000,
        "network": False,
        "hypervisors": frozenset({"qemu"}),
    }
    values.update(kw)
    return Offer(**values)  # type: ignore[arg-type]


def cloud(name: str = "cloud:lab", memory_mib: int = 16_384, **kw: object) -> CloudPool:
    largest = offer(f"{name}-largest", name, memory_mib=memory_mib, vcpus=8)
    return CloudPool(name=name, largest=largest, **kw)  # type: ignore[arg-type]


def test_a_named_pool_wins_over_everything() -> None:
    chosen = route(SMALL, named="cloud:lab", volunteers=[offer()], clouds=[cloud()])
    assert chosen.pool == "cloud:lab"
    assert "names this pool" in chosen.why


def test_a_job_a_volunteer_can_run_stays_with_the_volunteers() -> None:
    assert route(SMALL, named=None, volunteers=[offer()], clouds=[cloud()]).pool == VOLUNTEERS


def test_what_no_volunteer_can_run_goes_to_the_first_cloud_pool_that_can() -> None:
    small_cloud = cloud("cloud:small", memory_mib=4096)
    chosen = route(BIG, named=None, volunteers=[offer()], clouds=[small_cloud, cloud()])
    assert chosen.pool == "cloud:lab"
    assert chosen.why == "no registered volunteer can run it; cloud:lab can"


def test_without_volunteers_a_cloud_pool_takes_the_job() -> None:
    chosen = route(SMALL, named=None, volunteers=[], clouds=[cloud()])
    assert chosen.pool == "cloud:lab"
    assert chosen.why.startswith("no volunteer is registered")


def test_what_nobody_can_run_waits_with_the_volunteers() -> None:
    chosen = route(BIG, named=None, volunteers=[offer()], clouds=[cloud(memory_mib=1024)])
    assert chosen.pool == VOLUNTEERS


def test_a_job_bursts_only_after_the_pool_s_delay_and_only_where_it_fits() -> None:
    pools = [cloud(burst_after_s=600.0)]
    assert burst_pool(SMALL, 599.0, pools) is None
    assert burst_pool(SMALL, 600.0, pools) == "cloud:lab"
    assert burst_pool(BIG, 3600.0, [cloud(memory_mib=1024, burst_after_s=1.0)]) is None
    assert burst_pool(SMALL, 3600.0, [cloud()]) is None  # no burst_after_s: never


def test_misfits_name_each_requirement_a_worker_lacks() -> None:
    needs = Needs(
        memory_mib=4096, vcpus=4, disk_mib=50_000, network=True, hypervisors=("virtualbox",)
    )
    lacks = misfits(needs, offer())
    assert lacks == [
        "hypervisor virtualbox (it has qemu)",
        "memory 4096 MiB (it offers 2048 MiB)",
        "4 vCPUs (it offers 2)",
        "disk 50000 MiB (it has 10000 MiB free)",
        "a network for the guest (its owner allows none)",
    ]
    assert misfits(SMALL, offer(hypervisors=frozenset())) == [
        "a working hypervisor (it found none)"
    ]


def test_waiting_reasons_say_what_a_user_can_act_on() -> None:
    assert waiting_reason(SMALL, VOLUNTEERS, workers=[]) == (
        "no worker is registered; start one with bes worker (see bes worker --help)"
    )
    busy = waiting_reason(SMALL, VOLUNTEERS, workers=[offer(), offer("pc2")])
    assert busy == "waiting for a free worker: 2 of pool volunteers can run it, all busy"
    unfit = waiting_reason(BIG, VOLUNTEERS, workers=[offer(), offer("pc2", memory_mib=4096)])
    assert unfit.startswith("2 workers of pool volunteers, none can run it: pc2 lacks memory")
    only_cloud = waiting_reason(SMALL, VOLUNTEERS, workers=[offer("i1", "cloud:lab")])
    assert only_cloud.startswith("no worker of pool volunteers is registered (1 of other pools")
    scaling = waiting_reason(SMALL, "cloud:lab", workers=[], pool_status="scaling up: x")
    assert scaling == "pool cloud:lab: scaling up: x"
    assert waiting_reason(SMALL, "cloud:lab", workers=[]) == (
        "pool cloud:lab has no instance yet; its autoscaler starts one"
    )


def test_a_worker_s_offer_comes_from_the_facts_it_reported() -> None:
    facts = {
        "max_memory_mib": 3000,
        "max_vcpus": 2,
        "free_disk_mib": 900,
        "allow_network": True,
        "hypervisors": {"qemu": "7.2 tcg"},
    }
    found = Offer.from_facts("pc9", VOLUNTEERS, facts)
    assert (found.memory_mib, found.vcpus, found.disk_mib, found.network) == (3000, 2, 900, True)
    assert found.hypervisors == frozenset({"qemu"})
