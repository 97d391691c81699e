"""A cloud pool's autoscaler and reconciler against libvirt's test driver, with the real queue
in SQLite and PostgreSQL: what an administrator would check is that instances come when jobs
wait, go when they are done, and that nothing is left running in any of the ways a pool ends
(completion, failure, termination, scale-down, boot timeout, a killed service)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from bes.backends.desktopgrid import DesktopGridBackend, DesktopGridConfig
from bes.clouds.base import TAG_DEPLOYMENT, TAG_POOL, Flavor
from bes.clouds.config import PoolConfig
from bes.clouds.libvirt import LibvirtProvider
from bes.clouds.plan import Limits
from bes.clouds.pools import CloudPools
from bes.db import cloud_rows, duty_rows
from bes.db import grid_rows as grid
from bes.db.cloud_rows import InstanceState
from bes.db.grid_rows import GridState
from bes.db.store import Database
from bes.ids import BackendJobId
from tests.support.libvirt_hosts import Hosts
from tests.support.queue import claim, job

T0 = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
W2 = Flavor(name="w2", memory_mib=2048, vcpus=2)
POOL = "cloud:lab"
LIMITS = Limits(max_instances=3, batch=2, idle_s=60, boot_timeout_s=300, overhead_mib=768)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class Site:
    """A desktop grid with one libvirt cloud pool on a test-driver host."""

    def __init__(self, db: Database, tmp_path: Path, hosts: Hosts, uri: str) -> None:
        self.db = db
        self.hosts = hosts
        self.uri = uri
        self.clock = Clock()
        self.tmp_path = tmp_path
        self.grid = self._grid()
        self.pools = self.start()

    def _grid(self) -> DesktopGridBackend:
        backend = DesktopGridBackend(
            self.db, DesktopGridConfig(outputs_dir=self.tmp_path / "outputs"), clock=self.clock
        )
        return backend

    def start(self, limits: Limits = LIMITS, *, burst_after_s: float | None = None) -> CloudPools:
        """The service's cloud road, as at a (re)start."""
        provider = LibvirtProvider(
            [self.uri],
            image="worker.qcow2",
            flavors=[W2],
            kernel="/srv/bes/vmlinux",
            initrd="/srv/bes/initrd",
            cmdline="console=ttyS0",
            connect=self.hosts.connect,
        )
        config = PoolConfig(
            name=POOL,
            provider="libvirt",
            provider_options={},
            limits=limits,
            service_url="http://10.0.2.2:8080",
            burst_after_s=burst_after_s,
        )
        pools = CloudPools(self.grid, [(config, provider)])
        pools.offer()
        return pools

    @property
    def autoscaler(self):  # type: ignore[no-untyped-def]
        return self.pools.autoscalers[0]

    def queue(self, count: int) -> list[BackendJobId]:
        jobs = [job(pool=POOL, at=self.clock.now) for _ in range(count)]
        self.db.write_sync(grid.add_grid_jobs, jobs)
        return [j.id for j in jobs]

    def round(self, seconds: float = 5.0) -> None:
        self.clock.advance(seconds)
        self.pools.round()

    def instances(self) -> dict[str, InstanceState]:
        return {i.name: i.state for i in self.db.read_sync(cloud_rows.live_instances, POOL)}

    def domains(self) -> list[str]:
        return self.hosts.domains(self.uri)

    def register(self, name: str) -> str:
        """The instance's worker registers (as bes worker does when it boots)."""
        [worker] = [w for w in self.db.read_sync(grid.list_workers) if w.name == name]
        facts = {"max_memory_mib": 1280, "max_vcpus": 2, "hypervisors": {"qemu": "7.2 tcg"}}
        assert self.db.write_sync(grid.register_worker, (worker.id, facts, self.clock.now))
        return worker.id

    def claim(self, worker_id: str, limit: int = 2) -> list[grid.Lease]:
        return claim(self.db, worker_id, now=self.clock.now, limit=limit, memory_mib=1280, vcpus=2)

    def finish(self, lease: grid.Lease, state: GridState = GridState.FINISHED) -> None:
        self.db.write_sync(
            grid.finish_leases,
            grid.Finish(ref=lease.ref, state=state, exit_code=0, now=self.clock.now),
        )

    def status(self) -> str | None:
        [found] = self.db.read_sync(duty_rows.duties, "autoscaler:" + POOL)
        return found.status


@pytest.fixture
def site(db: Database, tmp_path: Path) -> Iterator[Site]:
    hosts = Hosts(tmp_path)
    uri = hosts.add("h1", memory_mib=65536, cpus=32)
    yield Site(db, tmp_path, hosts, uri)
    hosts.close()


def test_instances_come_when_jobs_wait_and_go_when_they_are_done(site: Site) -> None:
    site.queue(6)  # three instances' worth (two jobs each)
    site.round()
    booting = site.instances()
    assert list(booting.values()) == [InstanceState.BOOTING] * 2  # the batch
    assert sorted(site.domains()) == sorted(booting)
    assert site.status() == "scaling up: starting 2 instance(s), 2 in all"
    site.round()
    assert len(site.instances()) == 3  # the maximum
    assert site.status() == "scaling up: starting 1 instance(s), 3 in all"
    site.round()
    assert len(site.instances()) == 3
    assert site.status().startswith("scaling up: instance bes-lab-")
    assert "booting since 12:00:05 UTC (10 s)" in site.status()
    # Each instance got a worker of the pool with a token of its own.
    workers = {w.name: w for w in site.db.read_sync(grid.list_workers)}
    assert {workers[n].pool for n in site.instances()} == {POOL}

    leases = []
    for name in site.instances():
        leases += site.claim(site.register(name))
    assert len(leases) == 6
    site.round()
    assert set(site.instances().values()) == {InstanceState.READY}

    for lease in leases[:3]:
        site.finish(lease)
    for lease in leases[3:5]:
        site.finish(lease, GridState.FAILED)
    site.db.write_sync(grid.cancel_grid_jobs, (leases[5].ref.job_id, site.clock.now))
    site.finish(leases[5], GridState.CANCELLED)
    site.round()  # idle clocks start
    site.round(61)  # idle long enough: drained
    assert set(site.instances().values()) == {InstanceState.DRAINING}
    site.round()  # drained and empty: deleted
    assert site.instances() == {}
    assert site.domains() == []
    assert site.hosts.volumes(site.uri) == ["worker.qcow2"]
    # Their tokens are revoked.
    workers = site.db.read_sync(grid.list_workers)
    assert all(w.revoked_at is not None for w in workers if w.pool == POOL)


def test_a_drained_instance_is_not_given_work_and_is_taken_back_if_work_comes(
    site: Site,
) -> None:
    site.queue(1)
    site.round()
    [name] = site.instances()
    worker_id = site.register(name)
    [lease] = site.claim(worker_id)
    site.finish(lease)
    site.round()
    site.round(61)
    assert site.instances() == {name: InstanceState.DRAINING}
    site.queue(1)
    assert site.claim(worker_id) == []  # draining: its claims take nothing
    site.round()
    assert site.instances() == {name: InstanceState.READY}  # taken back, no new instance
    assert len(site.claim(worker_id)) == 1


def test_an_instance_that_never_registers_is_deleted_and_another_started(site: Site) -> None:
    site.queue(1)
    site.round()
    [first] = site.instances()
    site.round(301)
    instances = site.instances()
    assert first not in instances
    assert list(instances.values()) == [InstanceState.BOOTING]
    assert site.status().endswith(
        f"; instance {first} did not register within 300 s: can instances reach "
        "http://10.0.2.2:8080?"
    )
    assert first not in site.domains()
    rows = site.db.read_sync(grid.list_workers)
    assert next(w for w in rows if w.name == first).revoked_at is not None


def test_the_budget_stops_scale_up_and_the_jobs_say_so(site: Site) -> None:
    site.pools = site.start(
        Limits(max_instances=3, batch=2, budget_instance_hours=0.01, overhead_mib=768)
    )
    queued = site.queue(1)
    site.round()
    [name] = site.instances()
    site.round(60)  # 36 s of budget used: spent
    site.autoscaler.delete(site.db.read_sync(cloud_rows.live_instances, POOL)[0], "test")
    site.round()
    assert site.instances() == {}
    assert site.status().startswith("at its budget of 0.01 instance-hours today")
    site.grid.refresh_reasons(now=True)
    [row] = site.db.read_sync(grid.grid_statuses, queued).values()
    assert row.state is GridState.QUEUED
    assert row.reason == f"pool {POOL}: {site.status()}"
    assert name not in site.domains()


def test_after_a_crash_the_reconciler_adopts_known_instances_and_deletes_strangers(
    site: Site,
) -> None:
    site.queue(2)
    site.round()
    [known] = site.instances()
    # A stranger: tagged for this deployment and pool, but no row explains it (the service
    # died between the provider's create and its own record).
    stranger = site.autoscaler.provider.create(_request("bes-lab-stranger", site.pools.deployment))
    assert stranger.name in site.domains()
    # The service is killed and starts again: a new cloud road on the same database.
    site.pools = site.start()
    assert site.pools.deployment == site.autoscaler._deployment  # same deployment id
    site.round()
    assert "bes-lab-stranger" not in site.domains()
    assert known in site.domains()
    assert site.instances() == {known: InstanceState.BOOTING}  # adopted, not replaced


def test_an_instance_deleted_behind_the_service_s_back_is_marked_gone(site: Site) -> None:
    site.queue(1)
    site.round()
    [name] = site.instances()
    conn = site.hosts.connect(site.uri)
    domain = conn.lookupByName(name)
    domain.destroy()
    domain.undefine()
    site.round()
    assert name not in site.instances()


def test_one_replica_scales_a_pool_at_a_time(site: Site) -> None:
    site.queue(2)
    other = site.start()
    other.autoscalers[0].duty.holder = "another-replica"
    assert site.autoscaler.round()
    assert not other.autoscalers[0].round()  # the duty is held
    site.autoscaler.release()
    assert other.autoscalers[0].round()


def _request(name: str, deployment: str):  # type: ignore[no-untyped-def]
    from bes.clouds.base import InstanceRequest

    return InstanceRequest(
        name=name,
        flavor=W2,
        user_data="#cloud-config\n{}\n",
        tags={TAG_DEPLOYMENT: deployment, TAG_POOL: POOL},
    )


def test_bes_cloud_list_shows_what_each_pool_does_and_its_instances(site: Site) -> None:
    from click.testing import CliRunner

    from bes.cli import main

    site.queue(1)
    site.round()
    [name] = site.instances()
    shown = CliRunner().invoke(
        main, ["cloud", "list", "--database-url", site.db.url], catch_exceptions=False
    )
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].startswith("cloud:lab: scaling up: starting 1 instance(s)")
    assert lines[1].split()[:4] == [name, POOL, "booting", "w2"]


def test_a_cloud_that_refuses_becomes_the_jobs_waiting_reason_and_is_retried(
    db: Database, tmp_path: Path
) -> None:
    hosts = Hosts(tmp_path)
    uri = hosts.add("h1", memory_mib=65536, cpus=32, image=False)  # the image is missing
    try:
        site = Site(db, tmp_path, hosts, uri)
        queued = site.queue(1)
        site.round()
        assert site.instances() == {}
        assert site.status().startswith("cannot start an instance (image): ")
        assert site.status().endswith("; retrying")
        site.grid.refresh_reasons(now=True)
        [row] = site.db.read_sync(grid.grid_statuses, queued).values()
        assert row.state is GridState.QUEUED  # nothing lost
        assert row.reason == f"pool {POOL}: {site.status()}"
        # The administrator fixes the image: the next round starts the instance.
        pool = hosts.connect(uri).storagePoolLookupByName("default")
        pool.createXML(
            "<volume><name>worker.qcow2</name><capacity unit='MiB'>64</capacity>"
            "<target><format type='qcow2'/></target></volume>",
            0,
        )
        site.round()
        assert list(site.instances().values()) == [InstanceState.BOOTING]
        # The failed attempt's worker token was revoked, and its row closed.
        workers = [w for w in site.db.read_sync(grid.list_workers) if w.pool == POOL]
        assert len(workers) == 2
        assert sum(w.revoked_at is not None for w in workers) == 1
    finally:
        hosts.close()


def test_a_volunteers_job_left_unclaimed_bursts_to_the_cloud_pool(site: Site) -> None:
    site.pools = site.start(burst_after_s=60.0)
    waiting = [job(at=site.clock.now), job(at=site.clock.now)]  # routed to volunteers
    pinned = grid.NewGridJob(**{**_fields(job(at=site.clock.now)), "pinned": True})
    site.db.write_sync(grid.add_grid_jobs, [*waiting, pinned])
    site.clock.advance(30)
    site.grid.refresh_reasons(now=True)
    rows = site.db.read_sync(grid.grid_statuses, [j.id for j in (*waiting, pinned)])
    assert {r.pool for r in rows.values()} == {"volunteers"}
    site.clock.advance(31)
    site.grid.refresh_reasons(now=True)
    rows = site.db.read_sync(grid.grid_statuses, [j.id for j in (*waiting, pinned)])
    assert [rows[j.id].pool for j in waiting] == [POOL, POOL]
    assert rows[pinned.id].pool == "volunteers"  # it named its pool: never moved
    assert rows[waiting[0].id].message == "moved from pool volunteers after 60 s unclaimed"
    assert (
        rows[waiting[0].id].reason
        == "pool cloud:lab has no instance yet; its autoscaler starts one"
    )
    site.round()
    assert len(site.instances()) == 1  # the cloud pool now serves them


def _fields(new: grid.NewGridJob) -> dict[str, object]:
    return {f: getattr(new, f) for f in new.__dataclass_fields__}
