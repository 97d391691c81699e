"""One replica's hold on a duty (:mod:`bes.db.duty_rows`): when to take or renew it, until
when, whether it is held, and how to give it up.

Every job done by one replica at a time (the upkeep, retention, a cloud pool's autoscaler,
the waiting reasons) keeps a :class:`Duty` and writes what it builds through its own writer,
blocking or in the event loop::

    if duty.due():
        held = duty.taken(write(duty_rows.take_duties, duty.take()))
    ...
    write(duty_rows.release_duties, duty.release())  # at shutdown

No I/O happens here, so the same object serves the blocking writers and the async ones.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bes.db.duty_rows import Take


@dataclass(slots=True, kw_only=True)
class Duty:
    """This replica's hold on duty ``name``.

    Args:
        name: The duty.
        holder: This replica's name.
        hold_s: How long a take or renewal holds the duty (another replica takes it over
            this long after the holder's last renewal).
        renew_s: How often the holder renews it (0: whenever asked).
        clock: The current time (aware, UTC); the duty's times are measured against it.
        monotonic: Seconds on a clock that never goes back, which times the renewals.
    """

    name: str
    holder: str
    hold_s: float
    renew_s: float = 0.0
    clock: Callable[[], dt.datetime]
    monotonic: Callable[[], float] = time.monotonic
    held: bool = field(default=False, init=False)
    """Whether this replica held the duty at its last take."""
    _asked: float = field(default=-math.inf, init=False, repr=False)
    _renewed: float = field(default=-math.inf, init=False, repr=False)

    def due(self) -> bool:
        """Whether to take the duty now: it is not held, or ``renew_s`` passed since the last
        renewal."""
        return not self.held or self.monotonic() - self._renewed >= self.renew_s

    def take(self) -> Take:
        """The item for :func:`~bes.db.duty_rows.take_duties`: hold the duty ``hold_s`` from
        now; pass its result to :meth:`taken`."""
        self._asked = self.monotonic()
        now = self.clock()
        return Take(
            name=self.name,
            holder=self.holder,
            now=now,
            until=now + dt.timedelta(seconds=self.hold_s),
        )

    def taken(self, held: bool) -> bool:
        """Note the result of the last :meth:`take`; whether the duty is held."""
        self.held = bool(held)
        if self.held:
            self._renewed = self._asked
        return self.held

    def release(self) -> tuple[str, str]:
        """The item for :func:`~bes.db.duty_rows.release_duties` (at shutdown), so another
        replica takes the duty at once; it is no longer held from here on."""
        self.held = False
        return self.name, self.holder

    def say(self, status: str | None) -> tuple[str, str, str | None]:
        """The item for :func:`~bes.db.duty_rows.set_duty_status`: what the holder says of the
        duty (None: nothing)."""
        return self.name, self.holder, status
