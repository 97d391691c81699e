"""The desktop grid's queue on SQLite and PostgreSQL: claims, leases, expiry, late reports."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from bes.db import grid_rows as grid
from bes.db.store import Database
from bes.ids import BackendJobId
from tests.support.queue import LEASE, T0, add_worker, claim, job


def state_of(db: Database, job_id: BackendJobId) -> grid.GridJobStatus:
    return db.read_sync(grid.grid_statuses, [job_id])[job_id]


def test_many_concurrent_claimers_never_get_the_same_job(db: Database) -> None:
    jobs = [job() for _ in range(400)]
    for j in jobs:
        db.committer.submit(grid.add_grid_jobs, [j])
    workers = [add_worker(db, f"n{i:02d}") for i in range(16)]
    replicas = [Database(db.url) for _ in range(4)]
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(replica: Database, worker: str) -> None:
        for _ in range(200):
            leases = claim(replica, worker, limit=3)
            if not leases:
                return
            with lock:
                claimed.extend(lease.ref.job_id for lease in leases)

    threads = [
        threading.Thread(target=claimer, args=(replicas[i % 4], w)) for i, w in enumerate(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in replicas:
        r.close()
    assert len(claimed) == 400
    assert len(set(claimed)) == 400, "a job was leased to two workers"


def test_claims_take_only_jobs_that_fit_the_worker(db: Database) -> None:
    big = job(memory_mib=8192)
    networked = job(network=True)
    vbox_only = job(hypervisors=("virtualbox",))
    plain = job()
    for j in (big, networked, vbox_only, plain):
        db.write_sync(grid.add_grid_jobs, [j])
    worker = add_worker(db, "small")
    got = claim(db, worker, limit=10, memory_mib=2048, hypervisors=("qemu",), network=False)
    assert [lease.ref.job_id for lease in got] == [plain.id]
    got = claim(db, worker, limit=10, memory_mib=2048, hypervisors=("qemu",), network=True)
    assert [lease.ref.job_id for lease in got] == [networked.id]
    got = claim(db, worker, limit=10, memory_mib=16384, hypervisors=("qemu", "virtualbox"))
    assert {lease.ref.job_id for lease in got} == {big.id, vbox_only.id}


def test_claims_are_first_in_first_out(db: Database) -> None:
    later = job(at=T0 + dt.timedelta(seconds=5))
    earlier = job(at=T0)
    db.write_sync(grid.add_grid_jobs, [later])
    db.write_sync(grid.add_grid_jobs, [earlier])
    worker = add_worker(db, "fifo")
    assert [x.ref.job_id for x in claim(db, worker, now=T0 + dt.timedelta(seconds=9))] == [
        earlier.id
    ]


def test_heartbeats_renew_the_lease_and_carry_cancellation(db: Database) -> None:
    j = job()
    db.write_sync(grid.add_grid_jobs, [j])
    worker = add_worker(db, "beat")
    (lease,) = claim(db, worker)
    later = T0 + dt.timedelta(seconds=50)
    beat = grid.Heartbeat(
        ref=lease.ref, substate="Executing", running=True, now=later, until=later + LEASE
    )
    assert db.write_sync(grid.heartbeat, beat).action is grid.LeaseAction.CONTINUE
    status = state_of(db, j.id)
    assert (status.state, status.substate, status.ran) == (grid.GridState.LEASED, "Executing", True)
    # The lease now runs to later + 60 s: past the first minute, it still holds.
    assert db.read_sync(grid.lease_holds, lease.ref, T0 + dt.timedelta(seconds=100))
    assert db.write_sync(grid.cancel_grid_jobs, (j.id, later)) is grid.GridState.LEASED
    again = grid.Heartbeat(
        ref=lease.ref, substate="Executing", running=True, now=later, until=later
    )
    assert db.write_sync(grid.heartbeat, again).action is grid.LeaseAction.CANCEL


def test_a_late_report_from_an_expired_lease_cannot_overwrite_the_new_owner(db: Database) -> None:
    j = job()
    db.write_sync(grid.add_grid_jobs, [j])
    first, second = add_worker(db, "first"), add_worker(db, "second")
    (old,) = claim(db, first)
    expired = T0 + dt.timedelta(seconds=61)
    assert len(db.write_sync(grid.expire_leases, expired)) == 1
    status = state_of(db, j.id)
    assert status.state is grid.GridState.QUEUED
    assert "worker first stopped reporting" in (status.message or "")
    (new,) = claim(db, second, now=expired)
    assert new.ref.epoch == old.ref.epoch + 1 and new.attempt == 2

    late = grid.Finish(
        ref=old.ref, state=grid.GridState.FINISHED, exit_code=0, result={"epoch": 1}, now=expired
    )
    assert db.write_sync(grid.finish_leases, late) is None
    beat = grid.Heartbeat(ref=old.ref, substate=None, running=False, now=expired, until=expired)
    assert db.write_sync(grid.heartbeat, beat).action is grid.LeaseAction.LOST

    done = grid.Finish(
        ref=new.ref, state=grid.GridState.FAILED, exit_code=3, message="exit 3", now=expired
    )
    assert db.write_sync(grid.finish_leases, done).state is grid.GridState.FAILED
    status = state_of(db, j.id)
    assert (status.state, status.exit_code, status.worker) == (grid.GridState.FAILED, 3, "second")
    # And once ended, nobody's report changes it any more.
    assert db.write_sync(grid.finish_leases, late) is None


def test_a_report_after_the_lease_ran_out_is_refused_even_without_a_new_owner(
    db: Database,
) -> None:
    j = job()
    db.write_sync(grid.add_grid_jobs, [j])
    (lease,) = claim(db, add_worker(db, "slow"))
    too_late = T0 + LEASE + dt.timedelta(seconds=1)
    report = grid.Finish(ref=lease.ref, state=grid.GridState.FINISHED, exit_code=0, now=too_late)
    assert db.write_sync(grid.finish_leases, report) is None


def test_retries_stop_at_the_attempt_limit(db: Database) -> None:
    j = job(max_attempts=2)
    db.write_sync(grid.add_grid_jobs, [j])
    worker = add_worker(db, "flaky")
    now = T0
    for attempt in (1, 2):
        (lease,) = claim(db, worker, now=now)
        assert lease.attempt == attempt
        failed = grid.Finish(
            ref=lease.ref,
            state=grid.GridState.QUEUED,
            retry=True,
            message="hypervisor failed",
            now=now,
        )
        expected = grid.GridState.QUEUED if attempt == 1 else grid.GridState.FAILED
        assert db.write_sync(grid.finish_leases, failed).state is expected
        now += dt.timedelta(seconds=1)
    assert claim(db, worker, now=now) == []


def test_expired_leases_fail_the_job_once_attempts_are_used_up(db: Database) -> None:
    j = job(max_attempts=1)
    db.write_sync(grid.add_grid_jobs, [j])
    claim(db, add_worker(db, "gone"))
    assert len(db.write_sync(grid.expire_leases, T0 + dt.timedelta(minutes=5))) == 1
    status = state_of(db, j.id)
    assert status.state is grid.GridState.FAILED
    assert "given up after 1 attempts" in (status.message or "")


def test_a_hand_back_does_not_use_up_an_attempt(db: Database) -> None:
    j = job(max_attempts=1)
    db.write_sync(grid.add_grid_jobs, [j])
    worker = add_worker(db, "polite")
    (lease,) = claim(db, worker)
    back = grid.Finish(ref=lease.ref, state=grid.GridState.QUEUED, message="shutdown", now=T0)
    assert db.write_sync(grid.finish_leases, back).state is grid.GridState.QUEUED
    (again,) = claim(db, worker)
    assert again.attempt == 1


def test_cancelling_a_queued_job_is_immediate_and_a_leased_one_ends_at_hand_back(
    db: Database,
) -> None:
    queued, leased = job(), job(at=T0 + dt.timedelta(seconds=1))
    for j in (queued, leased):
        db.write_sync(grid.add_grid_jobs, [j])
    worker = add_worker(db, "c")
    later = T0 + dt.timedelta(seconds=2)
    assert db.write_sync(grid.cancel_grid_jobs, (queued.id, later)) is grid.GridState.CANCELLED
    (lease,) = claim(db, worker, now=later)
    assert lease.ref.job_id == leased.id
    assert db.write_sync(grid.cancel_grid_jobs, (leased.id, later)) is grid.GridState.LEASED
    stopped = grid.Finish(ref=lease.ref, state=grid.GridState.QUEUED, message="stopped", now=later)
    assert db.write_sync(grid.finish_leases, stopped).state is grid.GridState.CANCELLED
    assert db.write_sync(grid.cancel_grid_jobs, (leased.id, later)) is grid.GridState.CANCELLED
    assert db.write_sync(grid.cancel_grid_jobs, (BackendJobId("nope"), later)) is None


def test_worker_tokens_names_and_revocation(db: Database) -> None:
    assert db.write_sync(grid.create_worker, ("w1", "alpha", "a" * 64, T0, "volunteers"))
    assert not db.write_sync(grid.create_worker, ("w2", "alpha", "b" * 64, T0, "volunteers"))
    found = db.read_sync(grid.worker_by_token, "a" * 64)
    assert found is not None and found.name == "alpha" and not found.revoked
    assert db.read_sync(grid.worker_by_token, "c" * 64) is None
    db.write_sync(grid.register_worker, ("w1", {"cpus": 2}, T0))
    assert db.write_sync(grid.revoke_worker, ("alpha", T0))
    assert not db.write_sync(grid.revoke_worker, ("alpha", T0))
    found = db.read_sync(grid.worker_by_token, "a" * 64)
    assert found is not None and found.revoked
    assert [w.name for w in db.read_sync(grid.list_workers)] == ["alpha"]


@pytest.mark.parametrize("limit", [1, 5])
def test_a_claim_returns_at_most_its_limit(db: Database, limit: int) -> None:
    for _ in range(7):
        db.write_sync(grid.add_grid_jobs, [job()])
    assert len(claim(db, add_worker(db, "lim"), limit=limit)) == limit
