"""The worker's main loop: register, claim what fits, run each job in a thread, heartbeat.

* Pull only: the worker opens every connection, so it works behind NAT.
* The service may be down for a while: every call is retried with exponential backoff and
  jitter (never a busy loop); claims are long polls, so an idle worker asks rarely.
* On start, VMs left by an earlier run of this worker (a crash, a power cut) are found by
  their deterministic names and removed.
* While the host's owner is busy (load average above ``busy_load``, not counting our VMs),
  running VMs are paused and no work is taken.
* ``stop`` (SIGTERM) ends the loop gracefully: no new work, running VMs are stopped and their
  jobs handed back to the service for another worker.
* A revoked token stops the worker at its next call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import shutil
import socket
import threading
import time
from typing import Any, Final

from bes import __version__
from bes.errors import BesError, HypervisorUnavailable
from bes.states import SubState
from bes.vm.drivers import DEFAULT_ORDER, make_driver
from bes.vm.drivers.base import HostInfo, HypervisorDriver
from bes.vm.images import Download, ImageCache
from bes.vm.repository import Catalog, ImageRepository
from bes.vm.spec import Hypervisor
from bes.vmjob import VmDefaults
from bes.worker.client import ServiceClient, ServiceUnavailable, Work, WorkerRefused
from bes.worker.config import WorkerConfig
from bes.worker.execution import Assignment, Node, execute, memory_of

log = logging.getLogger(__name__)

_CATALOG_MAX_AGE_S: Final = 60.0
_BUSY_CHECK_S: Final = 5.0
_MIB: Final = 1024 * 1024


class Worker:
    """One worker process (see the module docstring).

    Args:
        config: Its settings.
        client: The service's protocol client (default: one for ``config.service``).
    """

    def __init__(self, config: WorkerConfig, *, client: ServiceClient | None = None) -> None:
        self.config = config
        self.client = client or ServiceClient(
            config.service,
            config.token,
            ca_file=config.ca_file,
            server_name=config.tls_server_name,
        )
        self.defaults = VmDefaults(boot_timeout_s=config.boot_timeout_s)
        self.drivers: dict[Hypervisor, HypervisorDriver] = {}
        self.hosts: dict[Hypervisor, HostInfo] = {}
        self._running: dict[str, Assignment] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._poke = threading.Event()
        self._slot_freed = threading.Event()
        self._stopping = threading.Event()
        self._catalog: tuple[float, Catalog] | None = None
        self._busy_at = 0.0
        self._busy = False
        self.refused: str | None = None
        """Why the service refused this worker, if it did (the process then exits 3)."""

    # ------------------------------------------------------------------ lifecycle

    def prepare(self) -> None:
        """Find the hypervisors, remove VMs left by an earlier run, open the image cache.

        Raises:
            HypervisorUnavailable: No hypervisor works here.
        """
        shutil.rmtree(self.config.cache_dir / "jobs", ignore_errors=True)  # an earlier run's
        reasons = []
        for hypervisor in self.config.hypervisors or DEFAULT_ORDER:
            driver = make_driver(
                hypervisor,
                self.config.cache_dir / "vms" / hypervisor.value,
                accelerator=self.config.accelerator,
            )
            try:
                self.hosts[hypervisor] = driver.probe()
            except HypervisorUnavailable as exc:
                reasons.append(f"{hypervisor.value}: {exc}")
                continue
            self.drivers[hypervisor] = driver
            for stale in driver.find_stale():
                log.warning("removing VM %s left by an earlier run", stale.name)
                driver.destroy(stale)
        if not self.drivers:
            raise HypervisorUnavailable("no hypervisor works here (" + "; ".join(reasons) + ")")
        for hypervisor, host in self.hosts.items():
            log.info("hypervisor %s %s (%s)", hypervisor.value, host.version, host.accelerator)

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set (or the service refuses this worker)."""
        self.prepare()
        settings = self._register(stop)
        if settings is None:
            return
        heartbeat_s = float(settings.get("heartbeat_s", 15.0))

        def stopper() -> None:  # stop running VMs at once, even while a claim is waiting
            stop.wait()
            self._stopping.set()

        threading.Thread(target=stopper, name="stopper", daemon=True).start()
        beats = threading.Thread(
            target=self._heartbeats, args=(stop, heartbeat_s), name="heartbeat", daemon=True
        )
        beats.start()
        try:
            self._claim_loop(stop)
        finally:
            self._shutdown()
            self._poke.set()
            beats.join(10.0)

    # ------------------------------------------------------------------ registration

    def _register(self, stop: threading.Event) -> dict[str, Any] | None:
        backoff = _Backoff(self.config.max_backoff_s)
        while not stop.is_set():
            try:
                settings = self.client.register(self.facts())
                log.info("registered with %s as %s", self.config.service, settings.get("worker"))
                return settings
            except WorkerRefused as exc:
                self._refuse(stop, str(exc))
                return None
            except (ServiceUnavailable, BesError) as exc:
                backoff.wait(stop, f"cannot register: {exc}")
        return None

    def facts(self) -> dict[str, Any]:
        """What this host is, for the service's administrators."""
        memory = 0
        with contextlib.suppress(ValueError, OSError):
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // _MIB
        return {
            "hostname": socket.gethostname(),
            "os": f"{platform.system()} {platform.release()}",
            "cpus": os.cpu_count() or 1,
            "memory_mib": memory,
            "free_disk_mib": self._free_disk_mib(),
            "hypervisors": {
                h.value: f"{info.version} {info.accelerator}" for h, info in self.hosts.items()
            },
            "max_vms": self.config.max_vms,
            "max_memory_mib": self.config.max_memory_mib,
            "max_vcpus": self.config.max_vcpus,
            "cpu_cap_percent": self.config.cpu_cap_percent,
            "allow_network": self.config.allow_network,
            "version": __version__,
        }

    # ------------------------------------------------------------------ claiming

    def _claim_loop(self, stop: threading.Event) -> None:
        backoff = _Backoff(self.config.max_backoff_s)
        while not stop.is_set():
            if self.busy():
                stop.wait(_BUSY_CHECK_S)
                continue
            with self._lock:
                slots = self.config.max_vms - len(self._running)
                memory = self.config.max_memory_mib - sum(
                    a.memory_mib for a in self._running.values()
                )
            if slots <= 0 or memory < 64:
                self._slot_freed.wait(5.0)
                self._slot_freed.clear()
                continue
            try:
                works = self.client.claim(wait_s=20.0, **self._claim_body(memory))
            except WorkerRefused as exc:
                self._refuse(stop, str(exc))
                return
            except (ServiceUnavailable, BesError) as exc:
                backoff.wait(stop, f"cannot claim work: {exc}")
                continue
            backoff.reset()
            for work in works:
                if stop.is_set():  # leased while we were told to stop: give it back
                    self._hand_back(work)
                else:
                    self._start(work)

    def _claim_body(self, memory_mib: int) -> dict[str, Any]:
        return {
            "slots": 1,
            "memory_mib": memory_mib,
            "vcpus": self.config.max_vcpus,
            "disk_mib": self._free_disk_mib(),
            "hypervisors": [h.value for h in self.drivers],
            "network": self.config.allow_network,
        }

    def _next_claim(self, finishing: Assignment) -> dict[str, Any] | None:
        """What to ask for along with a completion: the slot it frees, if work is welcome."""
        if self._stopping.is_set() or self.busy():
            return None
        with self._lock:
            others = [a for a in self._running.values() if a is not finishing]
        memory = self.config.max_memory_mib - sum(a.memory_mib for a in others)
        if len(others) >= self.config.max_vms or memory < 64:
            return None
        return self._claim_body(memory)

    def _adopt(self, works: list[Work]) -> None:
        for work in works:
            if self._stopping.is_set():
                self._hand_back(work)
            else:
                self._start(work)

    def _hand_back(self, work: Work) -> None:
        try:
            self.client.release(work.lease, message="the worker is shutting down")
        except BesError as exc:
            log.warning("%s: could not hand back lease %s: %s", work.activity, work.lease, exc)

    def _start(self, work: Work) -> None:
        assignment = Assignment(
            work=work, memory_mib=memory_of(work, self.defaults), changed=self._poke.set
        )
        node = Node(
            config=self.config,
            client=self.client,
            drivers=self.drivers,
            repository=self.repository,
            defaults=self.defaults,
            stopping=self._stopping,
            busy=self.busy,
            next_claim=self._next_claim,
            adopt=self._adopt,
        )

        def run() -> None:
            try:
                execute(assignment, node)
            finally:
                with self._lock:
                    self._running.pop(work.lease, None)
                    self._threads.pop(work.lease, None)
                self._slot_freed.set()
                self._poke.set()

        thread = threading.Thread(target=run, name=f"job-{work.activity}", daemon=True)
        with self._lock:
            self._running[work.lease] = assignment
            self._threads[work.lease] = thread
        log.info(
            "%s: claimed (lease %s, attempt %d of %d)",
            work.activity,
            work.lease,
            work.attempt,
            work.max_attempts,
        )
        thread.start()

    def repository(self, download: Download | None = None) -> ImageRepository:
        """The node's image cache with the service's current template catalog; user images
        in the service's file store come through ``download`` (a lease's)."""
        now = time.monotonic()
        if self._catalog is None or now - self._catalog[0] > _CATALOG_MAX_AGE_S:
            try:
                self._catalog = (now, self.client.catalog())
            except BesError as exc:
                if self._catalog is None:
                    raise
                log.warning("keeping the previous template catalog: %s", exc)
        cache = ImageCache(
            self.config.image_cache_dir or self.config.cache_dir / "images",
            limit_bytes=self.config.cache_limit_mib * _MIB,
            download=download,
        )
        return ImageRepository(cache, self._catalog[1])

    # ------------------------------------------------------------------ heartbeats

    def _heartbeats(self, stop: threading.Event, interval_s: float) -> None:
        """Renew the leases every ``interval_s`` and at once when a sub-state changes."""
        while True:
            with self._lock:
                running = dict(self._running)
            if stop.is_set() and not running:
                return
            try:
                actions = self.client.heartbeat([(k, a.substate) for k, a in running.items()])
            except WorkerRefused as exc:
                self._refuse(stop, str(exc))
                for assignment in running.values():
                    assignment.lost.set()
                actions = {}
            except (ServiceUnavailable, BesError) as exc:
                log.warning("heartbeat failed: %s", exc)
                actions = {}
            for lease, action in actions.items():
                held = running.get(lease)
                if held is None:
                    continue
                if action == "cancel" and not held.cancel.is_set():
                    log.info("%s: the service asks to cancel it", held.work.activity)
                    held.cancel.set()
                elif action == "lost" and not held.lost.is_set():
                    log.warning("%s: lease lost", held.work.activity)
                    held.lost.set()
                elif action == "suspend" and not held.suspend.is_set():
                    log.info("%s: its owner suspends it", held.work.activity)
                    held.suspend.set()
                    held.enter(SubState.SUSPENDED)
                elif action == "continue" and held.suspend.is_set():
                    log.info("%s: its owner resumes it", held.work.activity)
                    held.suspend.clear()
                    held.enter(SubState.EXECUTING)
            self._poke.wait(interval_s)
            self._poke.clear()

    # ------------------------------------------------------------------ protection

    def busy(self) -> bool:
        """True while the host's owner needs the machine (load not counting our VMs)."""
        if self.config.busy_load is None:
            return False
        now = time.monotonic()
        if now - self._busy_at >= _BUSY_CHECK_S:
            self._busy_at = now
            with self._lock:
                ours = len(self._running)
            load = os.getloadavg()[0] - ours
            was, self._busy = self._busy, load > self.config.busy_load
            if self._busy != was:
                log.info(
                    "host %s (load %.2f besides our VMs, threshold %.2f)",
                    "busy: pausing" if self._busy else "idle again: resuming",
                    load,
                    self.config.busy_load,
                )
        return self._busy

    def _free_disk_mib(self) -> int:
        try:
            return int(shutil.disk_usage(self.config.cache_dir).free // _MIB)
        except OSError:
            return 0

    def _refuse(self, stop: threading.Event, reason: str) -> None:
        log.error("%s; stopping", reason)
        self.refused = reason
        stop.set()

    def _shutdown(self) -> None:
        """Stop running VMs; their threads hand the jobs back."""
        self._stopping.set()
        with self._lock:
            threads = list(self._threads.values())
        if threads:
            log.info("stopping %d job(s) and handing them back", len(threads))
        deadline = time.monotonic() + self.config.stop_grace_s
        for thread in threads:
            thread.join(max(0.1, deadline - time.monotonic()))


class _Backoff:
    """Exponential backoff with jitter, interruptible by ``stop``."""

    def __init__(self, max_s: float) -> None:
        self._max_s = max_s
        self._delay = 1.0

    def wait(self, stop: threading.Event, why: str) -> None:
        delay = min(self._delay, self._max_s) * random.uniform(0.5, 1.0)  # noqa: S311
        log.warning("%s; retrying in %.1f s", why, delay)
        stop.wait(delay)
        self._delay = min(self._delay * 2, self._max_s)

    def reset(self) -> None:
        self._delay = 1.0


def watch_parent(parent_pid: int, stop: threading.Event) -> None:
    """Set ``stop`` when the process ``parent_pid`` is gone (a local worker of ``bes serve``)."""

    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent_pid:
                log.warning("the parent process %d is gone; stopping", parent_pid)
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
