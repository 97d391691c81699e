"""The upload progress line of ``bes submit``: on a terminal a few times a second, in a pipe
never."""

from __future__ import annotations

import io
import re

from bes.cli._transfer import TransferLine, size


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


MIB = 1 << 20


def test_the_line_shows_bytes_percent_and_rate_at_most_four_times_a_second() -> None:
    terminal, clock = Terminal(), Clock()
    line = TransferLine("data.csv", stream=terminal, clock=clock)
    for step in range(1, 41):  # 40 chunks of 1 MiB, one every 50 ms
        clock.now += 0.05
        line(step * MIB, 40 * MIB)
    shown = [part for part in terminal.getvalue().split("\r") if part.strip()]
    assert 6 <= len(shown) <= 8  # 2 s of transfer, one update per 0.25 s
    found = re.fullmatch(r"data\.csv: (\S+) MiB of 40\.0 MiB +(\d+)% +(\S+) MiB/s *", shown[-1])
    assert found, shown[-1]
    sent, percent, rate = float(found[1]), int(found[2]), float(found[3])
    assert 34 <= sent <= 40 and percent == round(100 * sent / 40)
    assert 18 <= rate <= 20  # 1 MiB every 50 ms, from the first call on
    line.done()
    assert terminal.getvalue().endswith("\r")
    assert (line.calls, line.first_sent, line.last_sent, line.total) == (
        40,
        MIB,
        40 * MIB,
        40 * MIB,
    )


def test_a_short_transfer_draws_nothing_and_a_pipe_gets_nothing() -> None:
    terminal, clock = Terminal(), Clock()
    line = TransferLine("small", stream=terminal, clock=clock)
    line(10, 10)
    line.done()
    assert terminal.getvalue() == ""

    pipe = io.StringIO()
    quiet = TransferLine("big", stream=pipe, clock=clock)
    for step in range(10):
        clock.now += 1
        quiet(step, 10)
    quiet.done()
    assert pipe.getvalue() == "" and quiet.calls == 10


def test_sizes_read_like_ls_h() -> None:
    assert [size(n) for n in (0, 1023, 1024, 5 * MIB, 3 << 30, 5 << 40)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.0 MiB",
        "3.0 GiB",
        "5120.0 GiB",
    ]
