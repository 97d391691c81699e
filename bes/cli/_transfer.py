"""A live line for a file transfer on a terminal: bytes, percent and rate."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, Final

from bes.cli._render import LiveLine

_INTERVAL_S: Final = 0.25
"""At most four updates a second; a transfer that ends sooner shows no line at all."""


class TransferLine(LiveLine):
    """Called as ``line(sent_bytes, total_bytes)`` while a file moves; writes one line on
    the terminal, rewritten in place, and nothing when the stream is not a terminal.

    Attributes:
        calls: How many times it was called.
        first_sent: ``sent_bytes`` of the first call (a resumed upload starts above 0).
        last_sent: ``sent_bytes`` of the last call.
        total: The last ``total_bytes``.
    """

    def __init__(
        self,
        label: str,
        *,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(stream)
        self.label = label
        self.calls = 0
        self.first_sent: int | None = None
        self.last_sent = 0
        self.total = 0
        self._clock = clock
        self._started = clock()
        self._shown = self._started

    def __call__(self, sent_bytes: int, total_bytes: int) -> None:
        self.calls += 1
        if self.first_sent is None:
            self.first_sent = sent_bytes
        self.last_sent, self.total = sent_bytes, total_bytes
        now = self._clock()
        if not self.live or now - self._shown < _INTERVAL_S:
            return
        self._shown = now
        moved = sent_bytes - (self.first_sent or 0)
        rate = moved / (now - self._started) if now > self._started else 0.0
        percent = f"{100 * sent_bytes / total_bytes:3.0f}%" if total_bytes else ""
        self.show(
            f"{self.label}: {size(sent_bytes)} of {size(total_bytes)}  {percent}  {size(rate)}/s"
        )

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._started


def size(count: float) -> str:
    """``512 B``, ``12.0 KiB``, ``3.4 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"  # not reached
