"""The JSDL model as JSON, for storage and for workers that never see XML.

``to_json(from_json(s)) == s`` and ``from_json(to_json(job)) == job``. Fields that hold their
default value are left out, so documents stay small. The encoding is driven by the dataclass
annotations, so a field added to the model is carried without touching this module.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from enum import Enum
from functools import cache
from typing import Any, TypeVar

from bes.errors import JsdlError
from bes.jsdl.model import JobDefinition

T = TypeVar("T")


def to_json(job: JobDefinition) -> str:
    """Serialize a job definition to compact JSON text."""
    return json.dumps(_encode(job), separators=(",", ":"), ensure_ascii=False)


def from_json(text: str) -> JobDefinition:
    """Rebuild a job definition from :func:`to_json` output.

    Raises:
        JsdlError: The text is not a stored job definition.
    """
    try:
        job: JobDefinition = _decode(JobDefinition, json.loads(text))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise JsdlError(f"stored job definition is unreadable: {exc}") from exc
    return job


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f, default in _defaults(type(value)):
            v = getattr(value, f.name)
            if v != default:
                out[f.name] = _encode(v)
        return out
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    return value


def _decode(hint: Any, data: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if data is None:
            return None
        if len(args) != 1:
            raise TypeError(f"ambiguous union {hint}")
        return _decode(args[0], data)
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(hint)
        return tuple(_decode(item, v) for v in data)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = _hints(hint)
        kwargs = {name: _decode(hints[name], v) for name, v in data.items()}
        return hint(**kwargs)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(data)
    if hint is float and isinstance(data, int):
        return float(data)
    if hint in (str, int, float, bool) and not isinstance(data, hint):
        raise TypeError(f"expected {hint.__name__}, found {data!r}")
    return data


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def _defaults(cls: type) -> tuple[tuple[dataclasses.Field[Any], Any], ...]:
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out.append((f, default))
    return tuple(out)
