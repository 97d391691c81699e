"""Sizes on the command line: ``500M``, ``16G``, ``1T`` or a number of bytes."""

from __future__ import annotations

import re
from typing import Any, Final

import click

_UNITS: Final = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\Z", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of a size such as ``16G``, ``500MiB`` or ``1048576`` (binary units).

    Raises:
        ValueError: It is not a size.
    """
    match = _SIZE.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size (e.g. 500M, 16G, or bytes)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.upper()])


class ByteSize(click.ParamType[int]):
    """A click parameter taking :func:`parse_size` sizes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
