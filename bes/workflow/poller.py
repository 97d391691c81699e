"""One thread that watches many activities, without a thread (or a request) per activity.

Each round asks :meth:`BESClient.status` for every activity still being watched in one vector
call (the client batches large vectors), and hands each status that has ended to the
callback given for it, on a small pool of threads so that a slow download does not hold up
the next round::

    poller = Poller(client, interval_s=1.0)
    poller.watch(ref, lambda status: print(status.state))
    ...
    poller.close()

If the service stops answering, the poller keeps trying for ``give_up_s`` and then ends every
watched activity with the error (``on_error``): a workflow never waits forever on a service
that is gone.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bes.client import ActivityRef, ActivityStatus, BESClient
from bes.client.faults import ClientError

log = logging.getLogger(__name__)

OnEnd = Callable[[ActivityStatus], None]
"""Called once with the activity's terminal status (or its per-item fault)."""
OnError = Callable[[ClientError], None]
"""Called once if the service could not be asked for ``give_up_s``."""


class Poller:
    """Watches activities of one service.

    Args:
        client: The service's client (thread-safe; shared with the submitting side).
        interval_s: Seconds between rounds.
        give_up_s: Seconds of failed rounds in a row after which watched activities end
            with the error.
        workers: Threads that run the callbacks.
    """

    def __init__(
        self,
        client: BESClient,
        *,
        interval_s: float = 1.0,
        give_up_s: float = 300.0,
        workers: int = 4,
    ) -> None:
        self.client = client
        self.interval_s = interval_s
        self.give_up_s = give_up_s
        self.rounds = 0
        """Status calls made so far (one per round, whatever the number of activities)."""
        self._watched: dict[ActivityRef, tuple[OnEnd, OnError]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bes-ended")
        self._thread = threading.Thread(target=self._run, name="bes-poller", daemon=True)
        self._thread.start()

    def watch(self, ref: ActivityRef, on_end: OnEnd, on_error: OnError) -> None:
        """Call ``on_end`` once ``ref`` has ended (``on_error`` if the service is gone)."""
        with self._lock:
            self._watched[ref] = (on_end, on_error)

    def forget(self, ref: ActivityRef) -> None:
        """Stop watching ``ref`` (e.g. after cancelling it); no callback follows."""
        with self._lock:
            self._watched.pop(ref, None)

    @property
    def watching(self) -> int:
        """How many activities are being watched."""
        with self._lock:
            return len(self._watched)

    def close(self, *, wait: bool = True) -> None:
        """Stop polling; with ``wait``, let running callbacks finish."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=max(5.0, self.interval_s * 2))
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def _run(self) -> None:
        failing_since: float | None = None
        while not self._stop.is_set():
            with self._lock:
                refs = list(self._watched)
            if refs:
                try:
                    statuses = self.client.status(refs)
                    self.rounds += 1
                except ClientError as exc:
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since >= self.give_up_s:
                        self._fail_all(refs, exc)
                        failing_since = None
                    else:
                        log.warning(
                            "cannot ask %s for statuses (%s); retrying", self.client.url, exc
                        )
                else:
                    failing_since = None
                    for ref, status in zip(refs, statuses, strict=True):
                        if status.terminal:
                            self._end(ref, functools.partial(_call_end, status=status))
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def _fail_all(self, refs: list[ActivityRef], error: ClientError) -> None:
        log.error("giving up on %d activities: %s", len(refs), error)
        for ref in refs:
            self._end(ref, functools.partial(_call_error, error=error))

    def _end(self, ref: ActivityRef, call: Callable[[tuple[OnEnd, OnError]], None]) -> None:
        with self._lock:
            callbacks = self._watched.pop(ref, None)
        if callbacks is not None:
            self._pool.submit(_guarded, call, callbacks)


def _call_end(callbacks: tuple[OnEnd, OnError], *, status: ActivityStatus) -> None:
    callbacks[0](status)


def _call_error(callbacks: tuple[OnEnd, OnError], *, error: ClientError) -> None:
    callbacks[1](error)


def _guarded(
    call: Callable[[tuple[OnEnd, OnError]], None], callbacks: tuple[OnEnd, OnError]
) -> None:
    try:
        call(callbacks)
    except Exception:  # a callback's bug must not kill the pool thread silently
        log.exception("an activity's end callback failed")
