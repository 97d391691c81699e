"""Durations on the command line: ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or seconds."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Final

import click

_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)\Z", re.IGNORECASE)


def parse_duration(text: str) -> dt.timedelta:
    """The duration ``text`` names: a number with a unit (s, m, h, d, w), or seconds.

    Raises:
        ValueError: It is not a duration.
    """
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (e.g. 30d, 12h, 90m, 45s)")
    number, unit = match.groups()
    return dt.timedelta(seconds=float(number) * _UNITS[unit.lower()])


class Duration(click.ParamType[dt.timedelta]):
    """A click parameter taking :func:`parse_duration` durations."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.timedelta:
        if isinstance(value, dt.timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
