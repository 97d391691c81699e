"""A cloud pool's autoscaler and reconciler: it starts and deletes worker instances.

Every few seconds, on the one replica that holds the pool's duty (bes.db.duty_rows), a round:

1. reconcile: ask the provider for the instances tagged with this deployment and pool; adopt
   those a row explains (a create the service did not see finish), delete those no row
   explains (left by a crash between the provider's create and the row, or by another
   deployment's database being reset), and mark rows whose instance vanished as gone;
2. note registrations: an instance whose worker called the service is ready;
3. plan (bes.clouds.plan, a pure function) from the pool's queue and instances, and carry it
   out: mint a worker token for each new instance (revoked when it goes), record the
   instance, then ask the provider; drain idle ones, delete drained empty ones and those that
   did not boot in time;
4. say what the pool does (the duty's status), which becomes the waiting reason of its jobs.

Provider errors never escape a round: they become the pool's status and the next round
retries. The provider's calls block, so rounds run in a thread.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Final

from bes.backends.desktopgrid.routing import CloudPool, Needs, Offer
from bes.backends.desktopgrid.tokens import new_token, token_hash
from bes.clouds import plan as planning
from bes.clouds.base import (
    TAG_DEPLOYMENT,
    TAG_POOL,
    CloudError,
    CloudProvider,
    Flavor,
    InstanceRequest,
)
from bes.clouds.base import InstanceState as ProviderState
from bes.clouds.config import PoolConfig
from bes.clouds.userdata import WorkerSettings, user_data
from bes.db import cloud_rows, duty_rows
from bes.db import grid_rows as grid
from bes.db.cloud_rows import AUTOSCALER_DUTY, InstanceChange, InstanceRecord, InstanceState
from bes.db.committer import BatchFunction
from bes.db.duty import Duty
from bes.db.store import Database

log = logging.getLogger(__name__)

_DUTY_S: Final = 30.0
_BAD_HOST_S: Final = 3600.0
_CREATE_GRACE_S: Final = 300.0
Write = Callable[[BatchFunction[Any, Any], Any], Any]


class Autoscaler:
    """Starts and deletes one pool's instances (see the module docstring).

    Args:
        pool: The pool's configuration.
        provider: Its cloud.
        db: The service's database (read from here).
        write: Runs a batch write function on one item (the service's single writer).
        deployment: This deployment's id (tags its instances).
        holder: This replica's name, for the pool's duty.
        clock: The current time (aware, UTC).
    """

    def __init__(
        self,
        pool: PoolConfig,
        provider: CloudProvider,
        *,
        db: Database,
        write: Write,
        deployment: str,
        holder: str,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.pool = pool
        self.provider = provider
        self._db = db
        self._write = write
        self._deployment = deployment
        self._clock = clock
        self.duty = Duty(
            name=AUTOSCALER_DUTY + pool.name, holder=holder, hold_s=_DUTY_S, clock=clock
        )
        """The pool's duty, taken at every round."""
        self._flavors: list[Flavor] | None = None
        self._bad_hosts: dict[str, float] = {}
        self._late: str | None = None
        """The last instance that did not register in time, until one does."""
        self.status = ""
        """What the pool does, as last said."""

    @property
    def tags(self) -> dict[str, str]:
        """The tags of this pool's instances."""
        return {TAG_DEPLOYMENT: self._deployment, TAG_POOL: self.pool.name}

    def flavors(self) -> list[Flavor]:
        """The provider's flavors (asked once; an error leaves them unknown until next time)."""
        if self._flavors is None:
            self._flavors = list(self.provider.flavors())
        return self._flavors

    def offer(self) -> CloudPool:
        """The pool as the routing policy sees it: what its largest instance offers a job."""
        try:
            flavors = self.flavors()
        except CloudError as exc:
            log.warning("%s: cannot list flavors: %s", self.pool.name, exc)
            flavors = []
        largest = max(flavors, key=lambda f: (f.memory_mib, f.vcpus), default=None)
        overhead = self.pool.limits.overhead_mib
        return CloudPool(
            name=self.pool.name,
            largest=Offer(
                name=largest.name if largest else "(none)",
                pool=self.pool.name,
                memory_mib=max(0, largest.memory_mib - overhead) if largest else 0,
                vcpus=largest.vcpus if largest else 0,
                disk_mib=None,
                network=self.pool.allow_network,
                hypervisors=frozenset({"qemu"}) if largest else frozenset(),
            ),
            burst_after_s=self.pool.burst_after_s,
        )

    # ------------------------------------------------------------------ a round

    def round(self) -> bool:
        """One round (see the module docstring); False if another replica holds the duty."""
        take = self.duty.take()
        if not self.duty.taken(self._write(duty_rows.take_duties, take)):
            return False
        now = take.now
        problem = None
        try:
            self.reconcile()
        except CloudError as exc:
            problem = f"the cloud API failed ({exc.kind}): {exc.message}; retrying"
        instances = self._registrations(
            self._db.read_sync(cloud_rows.live_instances, self.pool.name)
        )
        groups = self._db.read_sync(grid.queued_groups, self.pool.name)
        demand = [
            planning.Demand(
                needs=Needs(
                    memory_mib=g.memory_mib,
                    vcpus=g.vcpus,
                    disk_mib=g.disk_mib,
                    network=g.network,
                    hypervisors=g.hypervisors,
                ),
                count=g.count,
            )
            for g in groups
        ]
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        used = self._db.read_sync(cloud_rows.instance_seconds, self.pool.name, day, now)
        try:
            flavors = self.flavors()
        except CloudError as exc:
            flavors = []
            problem = f"cannot list flavors ({exc.kind}): {exc.message}"
        decided = planning.plan(
            limits=self.pool.limits,
            flavors=flavors,
            demand=demand,
            instances=instances,
            now=now,
            used_s_today=used,
        )
        by_name = {i.name: i for i in instances}
        self._carry_out(decided, by_name, now)
        created_problem = self._create(decided.create, now) if decided.create else None
        if decided.late:
            self._late = (
                f"instance {decided.late[-1]} did not register within "
                f"{self.pool.limits.boot_timeout_s:.0f} s: can instances reach "
                f"{self.pool.service_url}?"
            )
        status = problem or created_problem or decided.status
        if self._late and status.startswith("scaling up"):
            status = f"{status}; {self._late}"
        if status != self.status:
            if status:
                log.info("%s: %s", self.pool.name, status)
            self.status = status
        self._write(duty_rows.set_duty_status, self.duty.say(status or None))
        return True

    def _registrations(self, instances: list[InstanceRecord]) -> list[InstanceRecord]:
        """Mark instances whose worker has called the service ready."""
        out = []
        for i in instances:
            if i.state in (InstanceState.CREATING, InstanceState.BOOTING) and i.worker_seen_at:
                self._change(
                    InstanceChange(
                        name=i.name,
                        state=InstanceState.READY,
                        registered_at=i.worker_seen_at,
                        message="its worker registered",
                    )
                )
                log.info("%s: instance %s is ready", self.pool.name, i.name)
                self._late = None
                out.append(
                    dataclasses.replace(
                        i, state=InstanceState.READY, registered_at=i.worker_seen_at
                    )
                )
            else:
                out.append(i)
        return out

    def _carry_out(
        self, decided: planning.Plan, by_name: dict[str, InstanceRecord], now: dt.datetime
    ) -> None:
        for name in decided.idle:
            self._change(InstanceChange(name=name, idle_since=now))
        for name in decided.busy:
            self._change(InstanceChange(name=name, clear_idle=True))
        for name in decided.undrain:
            self._write(grid.set_draining, (name, None))
            self._change(InstanceChange(name=name, state=InstanceState.READY, clear_idle=True))
        for name in decided.drain:
            # Its worker claims nothing from now on (checked in the claim's own statement);
            # the next round deletes it once it holds no job.
            self._write(grid.set_draining, (name, now))
            self._change(InstanceChange(name=name, state=InstanceState.DRAINING))
            log.info("%s: draining idle instance %s", self.pool.name, name)
        for name, why in decided.delete:
            instance = by_name.get(name)
            if instance is not None:
                if name in decided.late and instance.host:
                    self._bad_hosts[instance.host] = time.monotonic()
                self.delete(instance, why)

    def _create(self, flavors: list[Flavor], now: dt.datetime) -> str | None:
        """Start instances; the first provider error stops this round's creations."""
        avoid = frozenset(
            h for h, at in self._bad_hosts.items() if time.monotonic() - at < _BAD_HOST_S
        )
        for flavor in flavors:
            name = f"bes-{self.pool.key}-{secrets.token_hex(4)}"
            token = new_token()
            self._write(
                grid.create_worker,
                ("w-" + secrets.token_hex(8), name, token_hash(token), now, self.pool.name),
            )
            self._write(
                cloud_rows.add_instances,
                cloud_rows.NewInstance(
                    name=name,
                    pool=self.pool.name,
                    flavor=flavor.name,
                    memory_mib=flavor.memory_mib,
                    vcpus=flavor.vcpus,
                    at=now,
                ),
            )
            request = InstanceRequest(
                name=name,
                flavor=flavor,
                user_data=user_data(self._settings(flavor), token=token),
                tags=self.tags,
                avoid_hosts=avoid,
            )
            try:
                started = self.provider.create(request)
            except CloudError as exc:
                self._end(name, f"the cloud refused it ({exc.kind}): {exc.message}")
                log.warning("%s: cannot start an instance: %s", self.pool.name, exc)
                return f"cannot start an instance ({exc.kind}): {exc.message}; retrying"
            self._change(
                InstanceChange(
                    name=name,
                    state=InstanceState.BOOTING,
                    provider_id=started.id,
                    host=started.host,
                    message=f"booting ({flavor.name})",
                )
            )
            log.info(
                "%s: started instance %s (%s) on %s",
                self.pool.name,
                name,
                flavor.name,
                started.host or "the cloud",
            )
        return None

    def _settings(self, flavor: Flavor) -> WorkerSettings:
        pool = self.pool
        return WorkerSettings(
            service_url=pool.service_url,
            ca_pem=pool.ca_pem,
            tls_server_name=pool.tls_server_name,
            max_memory_mib=max(64, flavor.memory_mib - pool.limits.overhead_mib),
            max_vcpus=flavor.vcpus,
            max_vms=max(1, min(pool.max_vms, flavor.vcpus)),
            allow_network=pool.allow_network,
        )

    # ------------------------------------------------------------------ deleting

    def delete(self, instance: InstanceRecord, why: str) -> None:
        """Delete an instance (provider first, then its token and row)."""
        self._change(InstanceChange(name=instance.name, state=InstanceState.DELETING))
        if instance.provider_id is not None:
            try:
                self.provider.destroy([instance.provider_id])
            except CloudError as exc:  # the next round's reconcile tries again
                log.warning("%s: cannot delete %s yet: %s", self.pool.name, instance.name, exc)
                return
        self._end(instance.name, why)
        log.info("%s: deleted instance %s: %s", self.pool.name, instance.name, why)

    def _end(self, name: str, why: str) -> None:
        now = self._clock()
        self._write(grid.revoke_worker, (name, now))
        self._change(InstanceChange(name=name, state=InstanceState.GONE, message=why, ended_at=now))

    def reconcile(self) -> None:
        """Match the provider's instances of this pool with the rows (module docstring).

        Raises:
            CloudError: The provider could not be asked.
        """
        found = {i.name: i for i in self.provider.instances(self.tags)}
        rows = {r.name: r for r in self._db.read_sync(cloud_rows.live_instances, self.pool.name)}
        now = self._clock()
        for name, instance in found.items():
            row = rows.get(name)
            if row is None:
                log.warning(
                    "%s: deleting instance %s (%s): no worker row explains it",
                    self.pool.name,
                    name,
                    instance.id,
                )
                self.provider.destroy([instance.id])
            elif row.state is InstanceState.DELETING:
                self.delete(row, row.message or "deleted")
            elif row.provider_id is None:
                log.info("%s: adopting instance %s (%s)", self.pool.name, name, instance.id)
                self._change(
                    InstanceChange(
                        name=name,
                        state=InstanceState.BOOTING,
                        provider_id=instance.id,
                        host=instance.host,
                    )
                )
            elif instance.state is ProviderState.ERROR:
                self.delete(row, "the cloud reports it failed")
        for name, row in rows.items():
            if name in found:
                continue
            age = (now - row.created_at).total_seconds()
            if row.state is InstanceState.CREATING and age < _CREATE_GRACE_S:
                continue  # its create may still be under way
            self._end(name, "the instance is gone (deleted outside the service, or lost)")

    def _change(self, change: InstanceChange) -> None:
        self._write(cloud_rows.change_instances, change)

    def release(self) -> None:
        """Give up the duty (at shutdown), so another replica takes over at once."""
        self._write(duty_rows.release_duties, self.duty.release())
