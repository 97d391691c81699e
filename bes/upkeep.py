"""Upkeep that the service does once, not once per replica: backends' housekeeping (the desktop
grid takes back the leases of workers that stopped reporting) and folding the tally.

Several ``bes serve`` processes on one PostgreSQL each run an :class:`Upkeep`, and only the one
holding the ``upkeep`` duty (:mod:`bes.db.duty_rows`) does the work. It renews the duty well
before it lapses; when it stops it gives the duty up, so another replica carries on within a
second; when it dies (a crash, SIGKILL) the duty lapses and another takes it over within
``duty_s``. Two replicas never hold it at once: taking it is one conditional UPDATE.

Nothing here must be done exactly once for correctness (taking back a lease is conditional on
its epoch, a fold moves counts without changing totals): the duty saves every replica from
scanning the same rows every second, and keeps the log and the lease-expiry counter in one
place.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Final

from bes.backends.base import Backend
from bes.db import duty_rows, tally_rows
from bes.db.duty import Duty
from bes.db.store import Database
from bes.errors import BesError

log = logging.getLogger(__name__)

DUTY: Final = "upkeep"
DUTY_S: Final = 15.0
"""How long the holder holds the duty after taking or renewing it."""
RENEW_S: Final = 5.0
"""How often the holder renews it (another replica takes over ``DUTY_S`` after the last)."""
FOLD_EVERY_S: Final = 60.0
"""How often the tally's slots of ended database sessions are folded (PostgreSQL)."""
_ROUND_S: Final = 1.0


class Upkeep:
    """The service's once-only upkeep (see the module docstring).

    Args:
        db: The service's database.
        backends: The configured backends, whose housekeeping runs here.
        holder: This replica's name, for the duty.
        clock: The current time (aware, UTC); the duty's times are measured against it.
    """

    def __init__(
        self,
        db: Database,
        backends: Mapping[str, Backend],
        *,
        holder: str,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._db = db
        self._backends = backends
        self.holder = holder
        """This replica's name, for the duty."""
        self._duty = Duty(name=DUTY, holder=holder, hold_s=DUTY_S, renew_s=RENEW_S, clock=clock)
        self._done = dict.fromkeys(backends, -math.inf)  # (everything is due at the start)
        self._folded = -math.inf

    async def run(self, stop: asyncio.Event) -> None:
        """A round every second until ``stop`` is set; then give the duty up."""
        try:
            while not stop.is_set():
                try:
                    await self.round()
                except BesError as exc:
                    log.warning("upkeep failed: %s", exc)
                except Exception:  # upkeep must go on; the next round retries
                    log.exception("upkeep failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _ROUND_S)
        finally:
            await self.release()

    async def round(self) -> bool:
        """Take or renew the duty when due and, holding it, do what is due; whether held."""
        if not await self._hold():
            return False
        now = time.monotonic()
        for name, backend in self._backends.items():
            interval = backend.housekeeping_interval_s
            if interval is not None and now - self._done[name] >= interval:
                self._done[name] = now
                await asyncio.to_thread(backend.housekeeping)
        if self._db.dialect == "postgresql" and now - self._folded >= FOLD_EVERY_S:
            self._folded = now
            folded = await self._db.write(tally_rows.fold_tally, None)
            if folded:
                log.debug("folded %d tally rows of ended sessions", folded)
        return True

    @property
    def held(self) -> bool:
        """Whether this replica held the duty at its last round."""
        return self._duty.held

    async def _hold(self) -> bool:
        duty = self._duty
        if not duty.due():
            return True
        was = duty.held
        held = duty.taken(await self._db.write(duty_rows.take_duties, duty.take()))
        if held != was:
            if held:
                log.info("upkeep: %s holds the %s duty (lease expiry, tally)", self.holder, DUTY)
            else:
                log.warning("upkeep: %s lost the %s duty to another replica", self.holder, DUTY)
        return held

    async def release(self) -> None:
        """Give the duty up (at shutdown), so that another replica takes it at once."""
        if not self._duty.held:
            return
        gone = self._duty.release()
        with contextlib.suppress(BesError):
            await self._db.write(duty_rows.release_duties, gone)
            log.info("upkeep: %s gave up the %s duty", self.holder, DUTY)
