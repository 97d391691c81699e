"""JSON request bodies parsed with bounded depth, and JSON Schema compiled into fast checks.

Bodies are parsed with a bounded depth and no recursion beyond it (``json.loads`` recurses, and
raises RecursionError on deep input), must be UTF-8 without NaN or infinities, and their
strings may hold neither NUL nor unpaired surrogates (no store takes them).

The schemas of a JSON document (found by JSON Pointer) become checks, each built once in two
forms from the same schema:

* a predicate compiled from the JSON Schema keywords it knows (``type``, ``enum``, bounds,
  lengths, ``pattern``, ``properties``, ``required``, ``additionalProperties``,
  ``propertyNames``, ``items``, ``not``, ``$ref``), which every instance passes through: a few
  microseconds, where a ``jsonschema`` validator takes tens (a service may check thousands
  of requests a second);
* a ``jsonschema`` Draft 2020-12 validator (the dialect of OpenAPI 3.1), the reference: it names
  what is wrong when the predicate refuses, and it does all the checking for a schema with a
  keyword the compiler does not know.

Whatever is wrong becomes :class:`BadRequest`, whose message names the place and the rule.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jsonschema  # type: ignore[import-untyped]  # no stubs in the dev dependencies
from jsonschema.exceptions import ValidationError, best_match  # type: ignore[import-untyped]
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from bes.errors import InvalidRequest

log = logging.getLogger(__name__)

MAX_DEPTH: Final = 32  # arrays and objects nested in a body; real protocols need a few
_MAX_ERRORS: Final = 32  # errors looked at to name the best one (a body may hold thousands)
_MAX_MESSAGE: Final = 300

# Outside strings, a JSON text's brackets give its depth. This strips strings from UTF-8
# input (in UTF-8 neither '"' nor '\\' occurs inside a multi-byte character), then keeps
# only brackets, mapped to 2 (open) and 0 (close).
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS: Final = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")

_ANNOTATIONS: Final = frozenset(
    {"description", "default", "title", "examples", "deprecated", "readOnly", "writeOnly"}
    | {"format", "$comment", "contentMediaType", "contentEncoding"}
)
_OBJECT_KEYWORDS: Final = frozenset(
    {"properties", "additionalProperties", "required", "maxProperties", "minProperties"}
    | {"propertyNames"}
)

Predicate = Callable[[Any], bool]


class BadRequest(InvalidRequest):
    """A request breaks its protocol (HTTP 400); the message says where and how."""


# ---------------------------------------------------------------------- parsing


def parse_json(body: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """A request body as JSON, refused if it nests deeper than ``max_depth``.

    Raises:
        BadRequest: Not UTF-8, not JSON, too deep, NaN or an infinity, or a string with NUL
            or an unpaired surrogate.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8: {exc}") from None
    # Cheap first: fewer brackets than the limit cannot nest deeper than it.
    if body.count(b"[") + body.count(b"{") > max_depth and json_depth(body) > max_depth:
        raise BadRequest(f"the body nests arrays and objects more than {max_depth} deep")
    try:
        data = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not JSON: {str(exc)[:_MAX_MESSAGE]}") from None
    if "\\u" in text:  # only escapes make NUL or lone surrogates (raw ones are refused)
        _check_text(data, "$")
    return data


def json_depth(body: bytes) -> int:
    """How deep arrays and objects nest in a UTF-8 JSON text: linear, no recursion.

    Counted on what the parser would read before its first error, so an invalid text cannot
    hide depth from the parser either.
    """
    brackets = _STRING.sub(b"", body).translate(_BRACKETS, _NOT_BRACKETS)
    if not brackets:
        return 0
    # After the k-th bracket: accumulate = 2 * opened, and k = opened + closed.
    depth: int = max(map(operator.sub, itertools.accumulate(brackets), itertools.count(1)))
    return depth


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


_DECODER: Final = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def _check_text(data: Any, where: str) -> None:
    if isinstance(data, str):
        _check_string(data, where)
    elif isinstance(data, dict):
        for key, value in data.items():
            _check_string(key, f"{where} (a key)")
            _check_text(value, f"{where}.{key[:40]}")
    elif isinstance(data, list):
        for index, value in enumerate(data):
            _check_text(value, f"{where}[{index}]")


def _check_string(text: str, where: str) -> None:
    if "\x00" in text:
        raise BadRequest(f"the body at {where}: strings may not hold NUL")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"the body at {where}: a string holds an unpaired surrogate") from None


# ---------------------------------------------------------------------- checks


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """One schema of the document, ready to check instances.

    Attributes:
        where: What is checked, for messages ("the body", "path parameter lease").
        fast: The compiled predicate, or None if the schema uses a keyword it lacks.
        full: The ``jsonschema`` validator of the same schema (the reference).
    """

    where: str
    fast: Predicate | None
    full: jsonschema.protocols.Validator

    def __call__(self, instance: Any) -> None:
        """Return if ``instance`` is valid.

        Raises:
            BadRequest: It is not; the message names the first place and rule it breaks.
        """
        if self.fast is not None and self.fast(instance):
            return
        errors = list(itertools.islice(self.full.iter_errors(instance), _MAX_ERRORS))
        if not errors:
            if self.fast is not None:  # the reference accepts: follow it, and say so
                log.warning("%s: the compiled check refused what jsonschema accepts", self.where)
            return
        raise BadRequest(self.describe(best_match(errors)))

    def describe(self, error: ValidationError) -> str:
        """A message for people: where the error is and which rule it breaks."""
        place = "" if error.json_path == "$" else f" at {error.json_path}"
        message = error.message
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 3] + "..."
        return f"{self.where}{place}: {message}"


class Schemas:
    """The schemas of one JSON document, found by JSON Pointer and made into checks.

    Predicates are compiled once per pointer and shared by the checks that refer to them.

    Args:
        document: The document (an OpenAPI document, say) holding the schemas.
        base: The URI the validators know the document by.
    """

    def __init__(self, document: Mapping[str, Any], *, base: str) -> None:
        self.document = document
        self.base = base
        resource = DRAFT202012.create_resource(dict(document))
        self._registry: Registry[Any] = Registry().with_resource(base, resource)
        self._compiled: dict[str, Predicate] = {}
        self._compiling: set[str] = set()

    def check(self, pointer: str, where: str) -> Check:
        """The check of the schema at ``pointer``, named ``where`` in messages.

        Raises:
            jsonschema.SchemaError: The schema is not valid JSON Schema 2020-12.
            KeyError: Nothing is at ``pointer`` (or at a ``$ref`` it holds).
        """
        schema = self.resolve(pointer)
        jsonschema.Draft202012Validator.check_schema(schema)
        full = jsonschema.Draft202012Validator(
            {"$ref": f"{self.base}#{pointer}"}, registry=self._registry
        )
        try:
            fast: Predicate | None = self._compile_ref(pointer)
        except _Unsupported as exc:
            log.warning("%s: checked by jsonschema alone (%s)", where, exc)
            fast = None
        return Check(where=where, fast=fast, full=full)

    def resolve(self, pointer: str) -> Any:
        """What the JSON Pointer ``pointer`` (``/paths/~1worker~1v1``) points at.

        Raises:
            KeyError: It points at nothing (or IndexError, TypeError, ValueError, by the node
                it cannot step into).
        """
        node: Any = self.document
        for escaped in pointer.split("/")[1:]:
            part = escaped.replace("~1", "/").replace("~0", "~")
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    # ------------------------------------------------------------------ compiling

    def _compile_ref(self, pointer: str) -> Predicate:
        known = self._compiled.get(pointer)
        if known is not None:
            return known
        if pointer in self._compiling:
            raise _Unsupported(f"recursive reference {pointer}")
        self._compiling.add(pointer)
        try:
            compiled = self._compile(self.resolve(pointer))
        finally:
            self._compiling.discard(pointer)
        self._compiled[pointer] = compiled
        return compiled

    def _compile(self, schema: Any) -> Predicate:
        if schema is True:
            return _always
        if schema is False:
            return _never
        if not isinstance(schema, dict):
            raise _Unsupported(f"schema {schema!r}")
        parts: list[Predicate] = []
        for key, value in schema.items():
            if key in _ANNOTATIONS or key in _OBJECT_KEYWORDS:
                continue
            if key == "$ref":
                if not isinstance(value, str) or not value.startswith("#"):
                    raise _Unsupported(f"$ref {value!r}")
                parts.append(self._compile_ref(value[1:]))
            elif key == "type":
                parts.append(_type(value))
            elif key == "enum":
                parts.append(_enum(value))
            elif key in _BOUNDS:
                parts.append(_bound(key, value))
            elif key in ("minLength", "maxLength"):
                parts.append(_length(key, value))
            elif key == "pattern":
                parts.append(_pattern(value))
            elif key in ("minItems", "maxItems"):
                parts.append(_items_count(key, value))
            elif key == "items":
                parts.append(_items(self._compile(value)))
            elif key == "not":
                parts.append(_not(self._compile(value)))
            else:
                raise _Unsupported(f"keyword {key}")
        if _OBJECT_KEYWORDS.intersection(schema):
            parts.append(self._object(schema))
        return _all(parts)

    def _object(self, schema: Mapping[str, Any]) -> Predicate:
        properties = {k: self._compile(v) for k, v in schema.get("properties", {}).items()}
        additional = schema.get("additionalProperties", True)
        closed = additional is False
        extra = None if additional is True or closed else self._compile(additional)
        required = tuple(schema.get("required", ()))
        most = schema.get("maxProperties", math.inf)
        least = schema.get("minProperties", 0)
        names = self._compile(schema["propertyNames"]) if "propertyNames" in schema else None

        def check(x: Any) -> bool:
            if type(x) is not dict:
                return True
            if not least <= len(x) <= most:
                return False
            for key in required:
                if key not in x:
                    return False
            for key, value in x.items():
                if names is not None and not names(key):
                    return False
                known = properties.get(key)
                if known is not None:
                    if not known(value):
                        return False
                elif closed or (extra is not None and not extra(value)):
                    return False
            return True

        return check


class _Unsupported(Exception):
    """The schema uses what the compiler does not know: jsonschema alone checks it."""


def escape_pointer(part: str) -> str:
    """``part`` escaped to be one reference token of a JSON Pointer (RFC 6901)."""
    return part.replace("~", "~0").replace("/", "~1")


def _always(x: Any) -> bool:
    return True


def _never(x: Any) -> bool:
    return False


def _all(parts: list[Predicate]) -> Predicate:
    if not parts:
        return _always
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda x: first(x) and second(x)
    frozen = tuple(parts)

    def every(x: Any) -> bool:
        for part in frozen:  # noqa: SIM110 - a loop: all() and its generator cost more
            if not part(x):
                return False
        return True

    return every


def _is_integer(x: Any) -> bool:
    kind = type(x)
    return kind is int or (kind is float and x.is_integer())


_TYPES: Final[Mapping[str, Predicate]] = {
    "object": lambda x: type(x) is dict,
    "array": lambda x: type(x) is list,
    "string": lambda x: type(x) is str,
    "integer": _is_integer,
    "number": lambda x: type(x) is int or type(x) is float,
    "boolean": lambda x: type(x) is bool,
    "null": lambda x: x is None,
}


def _type(names: Any) -> Predicate:
    if isinstance(names, str):
        return _TYPES[names]
    checks = tuple(_TYPES[name] for name in names)
    return lambda x: any(check(x) for check in checks)


def _enum(values: Any) -> Predicate:
    if not all(value is None or isinstance(value, str) for value in values):
        raise _Unsupported("an enum of other than strings and null")
    strings = frozenset(value for value in values if value is not None)
    null = None in values
    return lambda x: (x is None and null) or (type(x) is str and x in strings)


_BOUNDS: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "minimum": operator.ge,
    "maximum": operator.le,
    "exclusiveMinimum": operator.gt,
    "exclusiveMaximum": operator.lt,
}


def _bound(key: str, limit: Any) -> Predicate:
    compare = _BOUNDS[key]
    return lambda x: not (type(x) is int or type(x) is float) or compare(x, limit)


def _length(key: str, limit: int) -> Predicate:
    if key == "maxLength":
        return lambda x: type(x) is not str or len(x) <= limit
    return lambda x: type(x) is not str or len(x) >= limit


def _pattern(expression: str) -> Predicate:
    search = re.compile(expression).search
    return lambda x: type(x) is not str or search(x) is not None


def _not(inner: Predicate) -> Predicate:
    return lambda x: not inner(x)


def _items_count(key: str, limit: int) -> Predicate:
    if key == "maxItems":
        return lambda x: type(x) is not list or len(x) <= limit
    return lambda x: type(x) is not list or len(x) >= limit


def _items(each: Predicate) -> Predicate:
    def check(x: Any) -> bool:
        if type(x) is not list:
            return True
        return all(each(item) for item in x)

    return check


__all__ = [
    "MAX_DEPTH",
    "BadRequest",
    "Check",
    "Predicate",
    "Schemas",
    "escape_pointer",
    "json_depth",
    "parse_json",
]
