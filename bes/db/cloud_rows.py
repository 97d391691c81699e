"""SQL for cloud pools: the instances their autoscaler started, and their workers.

An instance is ``creating`` (asked of the provider), ``booting`` (the provider has it; its
worker has not registered yet), ``ready`` (its worker registered), ``draining`` (its worker
claims nothing more; it is deleted once idle), ``deleting`` (being deleted) and ``gone``. Rows
stay after the instance is gone: they count towards the pool's daily budget of instance-hours,
and tell the reconciler which provider instances this deployment still explains.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import Connection, func, insert, select, update

from bes.db.grid_rows import GridState
from bes.db.prepared import from_db_time, insert_if_absent
from bes.db.tables import cloud_instance, grid_job, setting, worker

AUTOSCALER_DUTY: Final = "autoscaler:"
"""Prefix of the duty (bes.db.duty_rows) of each pool's autoscaler: ``autoscaler:cloud:NAME``."""


class InstanceState(StrEnum):
    """Where an instance is in its life (see the module docstring)."""

    CREATING = "creating"
    BOOTING = "booting"
    READY = "ready"
    DRAINING = "draining"
    DELETING = "deleting"
    GONE = "gone"


LIVE: Final = tuple(s.value for s in InstanceState if s is not InstanceState.GONE)


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceRecord:
    """A row of ``cloud_instance``, with what its worker is doing."""

    name: str
    pool: str
    provider_id: str | None
    host: str | None
    flavor: str
    memory_mib: int
    vcpus: int
    state: InstanceState
    message: str | None
    created_at: dt.datetime
    registered_at: dt.datetime | None
    idle_since: dt.datetime | None
    ended_at: dt.datetime | None
    worker_seen_at: dt.datetime | None = None
    """When its worker last called the service (None: never)."""
    jobs: int = 0
    """Jobs its worker holds now."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NewInstance:
    """An instance about to be asked of the provider."""

    name: str
    pool: str
    flavor: str
    memory_mib: int
    vcpus: int
    at: dt.datetime


def add_instances(conn: Connection, items: Sequence[NewInstance]) -> list[None]:
    """Record instances before asking the provider for them (so a crash in between leaves a
    row the reconciler can explain)."""
    for i in items:
        conn.execute(
            insert(cloud_instance).values(
                name=i.name,
                pool=i.pool,
                flavor=i.flavor,
                memory_mib=i.memory_mib,
                vcpus=i.vcpus,
                state=InstanceState.CREATING.value,
                created_at=i.at,
            )
        )
    return [None] * len(items)


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceChange:
    """A change of one instance's row: only the fields given (not None) are written."""

    name: str
    state: InstanceState | None = None
    provider_id: str | None = None
    host: str | None = None
    message: str | None = None
    registered_at: dt.datetime | None = None
    idle_since: dt.datetime | None = None
    clear_idle: bool = False
    ended_at: dt.datetime | None = None


def change_instances(conn: Connection, items: Sequence[InstanceChange]) -> list[bool]:
    """Apply changes; False for an unknown instance."""
    out = []
    for c in items:
        values: dict[str, Any] = {}
        for key in ("provider_id", "host", "message"):
            if getattr(c, key) is not None:
                values[key] = getattr(c, key)
        if c.state is not None:
            values["state"] = c.state.value
        for key in ("registered_at", "idle_since", "ended_at"):
            if getattr(c, key) is not None:
                values[key] = getattr(c, key)
        if c.clear_idle:
            values["idle_since"] = None
        if not values:
            out.append(True)
            continue
        out.append(
            conn.execute(
                update(cloud_instance).where(cloud_instance.c.name == c.name).values(values)
            ).rowcount
            > 0
        )
    return out


def live_instances(conn: Connection, pool: str | None = None) -> list[InstanceRecord]:
    """The instances not gone (of one pool, or all), oldest first, with their workers'
    last call and how many jobs each holds."""
    held = (
        select(grid_job.c.worker_id, func.count().label("jobs"))
        .where(grid_job.c.state == GridState.LEASED.value)
        .group_by(grid_job.c.worker_id)
        .subquery()
    )
    query = (
        select(
            cloud_instance,
            worker.c.last_seen_at,
            func.coalesce(held.c.jobs, 0),
        )
        .select_from(
            cloud_instance.outerjoin(worker, worker.c.name == cloud_instance.c.name).outerjoin(
                held, held.c.worker_id == worker.c.id
            )
        )
        .where(cloud_instance.c.state.in_(LIVE))
        .order_by(cloud_instance.c.created_at, cloud_instance.c.name)
    )
    if pool is not None:
        query = query.where(cloud_instance.c.pool == pool)
    return [_record(r) for r in conn.execute(query)]


def _record(row: Sequence[Any]) -> InstanceRecord:
    (
        name,
        pool,
        provider_id,
        host,
        flavor,
        memory_mib,
        vcpus,
        state,
        message,
        created_at,
        registered_at,
        idle_since,
        ended_at,
        seen,
        jobs,
    ) = row
    return InstanceRecord(
        name=name,
        pool=pool,
        provider_id=provider_id,
        host=host,
        flavor=flavor,
        memory_mib=memory_mib,
        vcpus=vcpus,
        state=InstanceState(state),
        message=message,
        created_at=from_db_time(created_at),
        registered_at=from_db_time(registered_at) if registered_at else None,
        idle_since=from_db_time(idle_since) if idle_since else None,
        ended_at=from_db_time(ended_at) if ended_at else None,
        worker_seen_at=from_db_time(seen) if seen else None,
        jobs=int(jobs),
    )


def instance_seconds(conn: Connection, pool: str, since: dt.datetime, now: dt.datetime) -> float:
    """Instance-seconds the pool used between ``since`` and ``now`` (its budget's measure)."""
    rows = conn.execute(
        select(cloud_instance.c.created_at, cloud_instance.c.ended_at).where(
            cloud_instance.c.pool == pool,
            (cloud_instance.c.ended_at.is_(None)) | (cloud_instance.c.ended_at > since),
        )
    )
    total = 0.0
    for created_at, ended_at in rows:
        start = max(from_db_time(created_at), since)
        end = from_db_time(ended_at) if ended_at is not None else now
        total += max(0.0, (min(end, now) - start).total_seconds())
    return total


DEPLOYMENT_SETTING: Final = "deployment"


def deployment_id(conn: Connection, items: Sequence[str]) -> list[str]:
    """This deployment's id (the database's): stored the first time from the candidate given,
    the same for every replica afterwards. It tags the instances the service starts."""
    out = []
    for candidate in items:
        insert_if_absent(conn, setting, setting.c.name, name=DEPLOYMENT_SETTING, value=candidate)
        out.append(
            conn.execute(
                select(setting.c.value).where(setting.c.name == DEPLOYMENT_SETTING)
            ).scalar_one()
        )
    return out


def instance_counts(conn: Connection) -> dict[tuple[str, str], int]:
    """Live instances per (pool, state), for /metrics."""
    rows = conn.execute(
        select(cloud_instance.c.pool, cloud_instance.c.state, func.count())
        .where(cloud_instance.c.state.in_(LIVE))
        .group_by(cloud_instance.c.pool, cloud_instance.c.state)
    )
    return {(pool, state): n for pool, state, n in rows}
