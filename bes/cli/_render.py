"""Output of the client commands: tables for people, JSON for scripts, a live progress line."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # the client (and zeep) load only when a command needs them
    from bes.client.model import ActivityStatus


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def counts(statuses: Sequence[ActivityStatus]) -> str:
    """``2 Running, 1 Finished`` (in the order of the state machine)."""
    from bes.client.model import State

    order = (State.PENDING, State.RUNNING, State.FINISHED, State.FAILED, State.CANCELLED)
    tally = Counter(s.state for s in statuses if s.fault is None)
    errors = sum(1 for s in statuses if s.fault is not None)
    parts = [f"{tally[state]} {state.value}" for state in order if tally[state]]
    parts += [f"{tally[State.UNKNOWN]} in an unknown state"] if tally[State.UNKNOWN] else []
    parts += [f"{errors} unknown to the service"] if errors else []
    return ", ".join(parts) or "nothing"


def elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


class LiveLine:
    """One line on the terminal, rewritten in place; nothing at all when the stream is not a
    terminal (a log file or a pipe gets only the final result)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._width = 0

    def show(self, line: str) -> None:
        """Write ``line`` over the previous one."""
        if not self.live:
            return
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def done(self) -> None:
        """Clear the line (the caller then writes its result)."""
        if self.live and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


class ProgressLine(LiveLine):
    """The live line of a wait: elapsed time and the activities' states, after every poll."""

    def __call__(self, statuses: Sequence[ActivityStatus], seconds: float) -> None:
        if not self.live:
            return
        if len(statuses) == 1:
            what = statuses[0].label
        else:
            what = f"{len(statuses)} activities: {counts(statuses)}"
        self.show(f"waiting {elapsed(seconds)}  {what}")
