"""The JSDL model as JSON, for storage and for workers that never see XML.

``to_json(from_json(s)) == s`` and ``from_json(to_json(job)) == job``. Fields that hold their
default value are left out, so documents stay small. Encoders and decoders are derived from the
dataclass annotations once per class, so a field added to the model is carried without touching
this module, and encoding a job stays cheap (it runs on every CreateActivity).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from enum import Enum
from functools import cache
from typing import Any

from bes.errors import JsdlError
from bes.jsdl.model import JobDefinition

Encoder = Callable[[Any], Any]


def to_json(job: JobDefinition) -> str:
    """Serialize a job definition to compact JSON text."""
    return json.dumps(_encoder(JobDefinition)(job), separators=(",", ":"), ensure_ascii=False)


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


# ------------------------------------------------------------------------------ encoding


def _identity(value: Any) -> Any:
    return value


def _enum_value(value: Any) -> Any:
    return value.value if value is not None else None


@cache
def _encoder(cls: type) -> Encoder:
    """An encoder for one dataclass: a dict of its non-default fields, recursively."""
    hints = typing.get_type_hints(cls)
    plan = [(f.name, _default(f), _field_encoder(hints[f.name])) for f in dataclasses.fields(cls)]

    def encode(value: Any) -> Any:
        out = {}
        for name, default, encode_field in plan:
            v = getattr(value, name)
            if v is not default and v != default:
                out[name] = encode_field(v)
        return out

    return encode


def _field_encoder(hint: Any) -> Encoder:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        encode_inner = _field_encoder(inner)
        return lambda v: None if v is None else encode_inner(v)
    if origin is tuple:
        encode_item = _field_encoder(typing.get_args(hint)[0])
        return lambda v: [encode_item(x) for x in v]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _encoder(hint)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return _enum_value
    return _identity


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


# ------------------------------------------------------------------------------ decoding


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
