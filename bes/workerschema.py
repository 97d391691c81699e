"""The worker protocol's requests, checked against its OpenAPI document before any handler runs.

``schemas/worker-api-v1.json`` is the one source. Its operations (named by ``operationId``) give
the routes; their path and query parameters and JSON request bodies give the checks, built once
at start-up by :mod:`bes.jsonchecks` (a compiled predicate, with a ``jsonschema`` validator as
the reference). Bodies are parsed there too, with a bounded depth. Whatever is wrong becomes
:class:`BadRequest`, whose message names the place and the rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Final
from urllib.parse import parse_qs

import jsonschema  # type: ignore[import-untyped]  # no stubs in the dev dependencies

from bes.errors import ConfigError
from bes.jsonchecks import (
    MAX_DEPTH,
    BadRequest,
    Check,
    Schemas,
    escape_pointer,
    json_depth,
    parse_json,
)
from bes.schemas import schema_file

OPENAPI_FILE: Final = "worker-api-v1.json"
_BASE: Final = "urn:bes:worker-api-v1"
_JSON: Final = "application/json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """One operation of the document: its route and the checks of its request.

    Attributes:
        operation_id: Its ``operationId``.
        method: The HTTP method, upper case.
        template: The path template (``/worker/v1/leases/{lease}/complete``).
        path_parameters: Checks of the path parameters, by name.
        query_parameters: Checks of the query parameters, by name, and whether each is required.
        body: The check of the JSON body, or None if the body is not JSON (or there is none).
    """

    operation_id: str
    method: str
    template: str
    path_parameters: Mapping[str, Check]
    query_parameters: Mapping[str, tuple[Check, bool]]
    body: Check | None

    def check_parameters(self, path: Mapping[str, str], query_string: bytes = b"") -> None:
        """Check the path parameters (as decoded) and the query string.

        Raises:
            BadRequest: A parameter breaks its schema, or a required one is missing.
        """
        for name, check in self.path_parameters.items():
            check(path[name])
        if not self.query_parameters:
            return
        try:
            query = parse_qs(query_string.decode("latin-1"), errors="strict")
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest(f"the query string is malformed: {exc}") from None
        for name, (check, required) in self.query_parameters.items():
            values = query.get(name)
            if values is None:
                if required:
                    raise BadRequest(f"query parameter {name} is required")
                continue
            if len(values) > 1:
                raise BadRequest(f"query parameter {name} is given more than once")
            check(values[0])

    def parse_body(self, body: bytes) -> Any:
        """The JSON body, parsed with a bounded depth and checked.

        Raises:
            BadRequest: See :func:`parse_json` and :meth:`Check.__call__`.
        """
        if not body:
            raise BadRequest("the body is empty: send a JSON object")
        data = parse_json(body)
        if self.body is not None:
            self.body(data)
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class _Route:
    pattern: re.Pattern[str] | None  # None: a path without parameters
    template: str
    operations: Mapping[str, Operation]  # by method


class WorkerProtocol:
    """The operations of an OpenAPI document, their routes and checks, built once.

    Args:
        document: The OpenAPI 3.1 document.

    Raises:
        ConfigError: The document or one of its schemas is malformed.
    """

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self._schemas = Schemas(document, base=_BASE)
        self.operations: dict[str, Operation] = {}
        self._static: dict[str, _Route] = {}
        self._templated: list[_Route] = []
        try:
            self._build()
        except (KeyError, TypeError, ValueError, re.error, jsonschema.SchemaError) as exc:
            raise ConfigError(f"the worker API document is malformed: {exc}") from exc

    def route(self, path: str) -> tuple[Mapping[str, Operation], dict[str, str]] | None:
        """The operations (by method) at ``path`` (decoded) and its path parameters."""
        found = self._static.get(path)
        if found is not None:
            return found.operations, {}
        for route in self._templated:
            assert route.pattern is not None
            match = route.pattern.fullmatch(path)
            if match is not None:
                return route.operations, match.groupdict()
        return None

    # ------------------------------------------------------------------ building

    def _build(self) -> None:
        for template, item in self.document["paths"].items():
            pointer = "/paths/" + escape_pointer(template)
            operations: dict[str, Operation] = {}
            for method, spec in item.items():
                if method in ("parameters", "summary", "description", "servers", "$ref"):
                    continue
                operation = self._operation(template, pointer, item, method, spec)
                if operation.operation_id in self.operations:
                    raise ValueError(f"operationId {operation.operation_id} is used twice")
                self.operations[operation.operation_id] = operation
                operations[operation.method] = operation
            names = re.findall(r"\{([^}/]+)\}", template)
            if not names:
                self._static[template] = _Route(
                    pattern=None, template=template, operations=operations
                )
                continue
            self._templated.append(
                _Route(pattern=_path_pattern(template), template=template, operations=operations)
            )

    def _operation(
        self,
        template: str,
        pointer: str,
        item: Mapping[str, Any],
        method: str,
        spec: Mapping[str, Any],
    ) -> Operation:
        where = f"{pointer}/{method}"
        path: dict[str, Check] = {}
        query: dict[str, tuple[Check, bool]] = {}
        declared = [
            (f"{at}/parameters/{index}", parameter)
            for at, owner in ((pointer, item), (where, spec))
            for index, parameter in enumerate(owner.get("parameters", []))
        ]
        for at, given in declared:
            location = given["$ref"].removeprefix("#") if "$ref" in given else at
            parameter = self._schemas.resolve(location)
            name, place = parameter["name"], parameter["in"]
            check = self._schemas.check(f"{location}/schema", f"{place} parameter {name}")
            if place == "path":
                path[name] = check
            elif place == "query":
                query[name] = (check, bool(parameter.get("required", False)))
            else:
                raise ValueError(f"{template}: {place} parameters are not supported")
        missing = set(re.findall(r"\{([^}/]+)\}", template)) - set(path)
        if missing:
            raise ValueError(f"{template}: path parameters {sorted(missing)} are not declared")
        body = None
        content = spec.get("requestBody", {}).get("content", {})
        if _JSON in content:
            body = self._schemas.check(
                f"{where}/requestBody/content/{escape_pointer(_JSON)}/schema", "the body"
            )
        return Operation(
            operation_id=spec["operationId"],
            method=method.upper(),
            template=template,
            path_parameters=path,
            query_parameters=query,
            body=body,
        )

    def _resolve(self, pointer: str) -> Any:
        """What a JSON Pointer into the document points at."""
        return self._schemas.resolve(pointer)


def _path_pattern(template: str) -> re.Pattern[str]:
    """A template's regular expression: a parameter is one segment, but one that ends the
    template takes the rest of the path (an upload's name is a relative path)."""
    pieces = re.split(r"\{([^}/]+)\}", template)
    pattern = ""
    for index, piece in enumerate(pieces):
        if index % 2 == 0:
            pattern += re.escape(piece)
        else:
            last = index == len(pieces) - 2 and pieces[-1] == ""
            pattern += f"(?P<{piece}>{'.+' if last else '[^/]+'})"
    return re.compile(pattern)


@cache
def worker_protocol() -> WorkerProtocol:
    """The worker protocol of ``schemas/worker-api-v1.json``, built once per process.

    Raises:
        ConfigError: The document is missing or malformed.
    """
    try:
        document = json.loads(schema_file(OPENAPI_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the worker API document: {exc}") from exc
    return WorkerProtocol(document)


__all__ = [
    "MAX_DEPTH",
    "OPENAPI_FILE",
    "BadRequest",
    "Check",
    "Operation",
    "WorkerProtocol",
    "json_depth",
    "parse_json",
    "worker_protocol",
]
