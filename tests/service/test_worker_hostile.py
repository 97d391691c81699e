"""The worker protocol against a hostile volunteer: every malformed request gets a 400 that
names what is wrong, before any handler runs, and random bodies (JSON values near the schema,
any JSON, any bytes) never get a 5xx. Requests go to the service in process, over ASGI.

``BES_FUZZ_EXAMPLES`` (default 200) sets the examples per endpoint of the fuzz runs, e.g.
``BES_FUZZ_EXAMPLES=20000 pytest tests/service/test_worker_hostile.py -k fuzz`` for a long one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bes.workerschema import MAX_DEPTH, BadRequest, Check, json_depth, parse_json, worker_protocol
from tests.service.test_worker_api import Grid, check, open_grid, vm_job

FUZZ_EXAMPLES = int(os.environ.get("BES_FUZZ_EXAMPLES", "200"))
PROTOCOL = worker_protocol()
DOCUMENT: dict[str, Any] = dict(PROTOCOL.document)
CLAIM = {"memory_mib": 4096, "vcpus": 4, "disk_mib": 100_000, "hypervisors": ["qemu"]}
JSON_OPERATIONS = ["register", "claim", "heartbeat", "complete", "fail", "release", "access"]
VERBS = ("complete", "fail", "release")


@contextlib.contextmanager
def grid_in_loop(tmp_path: Path) -> Iterator[tuple[asyncio.Runner, Grid]]:
    """The service in process, driven from synchronous code (as hypothesis needs)."""
    with asyncio.Runner() as runner:
        stack = contextlib.AsyncExitStack()
        grid = runner.run(stack.enter_async_context(open_grid(tmp_path, claim_wait_s="0.001")))
        try:
            yield runner, grid
        finally:
            runner.run(stack.aclose())


async def send(grid: Grid, token: str, method: str, path: str, body: bytes) -> httpx.Response:
    return await grid.http.request(
        method,
        "/worker/v1/" + path,
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )


def refused(response: httpx.Response, *words: str) -> str:
    """The 400 answer's message, checked to be the documented error naming ``words``."""
    assert response.status_code == 400, response.text
    answer = response.json()
    check("Error", answer)
    assert answer["error"] == "bad-request"
    for word in words:
        assert word in answer["message"], answer["message"]
    return str(answer["message"])


# ---------------------------------------------------------------------- the tester's findings


@pytest.mark.anyio
async def test_a_claim_whose_hypervisors_hold_objects_gets_a_400_naming_them(
    tmp_path: Path,
) -> None:
    async with open_grid(tmp_path) as grid:
        token = grid.token("hostile")
        await grid.submit(vm_job())
        for hypervisors in ([{"kind": "qemu"}], [["qemu"]], {"qemu": True}, [None], "qemu"):
            body = json.dumps({**CLAIM, "hypervisors": hypervisors}).encode()
            refused(await send(grid, token, "POST", "claim", body), "hypervisors")
        # Nothing was leased by those: an honest claim still gets the job.
        assert len(await grid.claim(token)) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
async def test_a_body_nested_5000_deep_gets_a_400_on_every_endpoint(
    tmp_path: Path, opener: bytes
) -> None:
    async with open_grid(tmp_path) as grid:
        token = grid.token("hostile")
        closer = b"]" if opener == b"[" else b"}"
        deep = opener * 5000 + b"1" + closer * 5000
        for path in ("register", "claim", "heartbeat", *(f"leases/j.1/{v}" for v in VERBS)):
            refused(await send(grid, token, "POST", path, deep), "deep")
        # Deep inside a valid body, and behind a string that looks like brackets.
        hidden = b'{"facts": {"os": "]]]]}}}}", "x": ' + deep + b"}}"
        refused(await send(grid, token, "POST", "register", hidden), "deep")


@pytest.mark.anyio
async def test_a_heartbeat_whose_state_is_an_object_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    async with open_grid(tmp_path) as grid:
        token = grid.token("hostile")
        activity = await grid.submit(vm_job())
        (lease,) = await grid.claim(token)
        name = lease["lease"]
        executing = {"lease": name, "substate": "Executing"}
        for entry, words in (
            ({"lease": name, "state": {"Executing": True}}, ["state", "unexpected"]),
            ({"lease": name, "substate": {"x": 1}}, ["substate"]),
            ({"lease": name, "substate": "Finished"}, ["substate", "Finished"]),
            ({"lease": {"id": name}}, ["lease"]),
        ):
            # Beside a good report: the whole request is refused before anything is applied.
            body = json.dumps({"leases": [executing, entry]}).encode()
            refused(await send(grid, token, "POST", "heartbeat", body), "leases[1]", *words)
        assert (await grid.state(activity))[0] == "Pending"  # not Running: nothing applied
        beat = await grid.worker(token, "heartbeat", {"leases": [executing]})
        assert beat["leases"] == {name: "continue"}
        assert (await grid.state(activity))[0] == "Running"


# ---------------------------------------------------------------------- more hostile input


@pytest.mark.anyio
async def test_values_no_store_takes_are_refused_at_the_door(tmp_path: Path) -> None:
    async with open_grid(tmp_path) as grid:
        token = grid.token("hostile")
        await grid.submit(vm_job())
        (lease,) = await grid.claim(token)
        fail = f"leases/{lease['lease']}/fail"
        for body, words in (
            (b'{"message": "x", "retry": NaN}', ["NaN"]),
            (b'{"exit_code": 0, "timing": {"vm": 1e999}}', ["range"]),
            (b'{"message": "\\ud800"}', ["surrogate"]),
            (b'{"message": "a\\u0000b"}', ["NUL"]),
            ('{"message": "caf\u00e9"}'.encode("latin-1"), ["UTF-8"]),
            (b"", ["empty"]),
            (b"[]", ["object"]),
            (b'{"message": "x", "retry": "yes"}', ["retry"]),
            (b'{"message": "x", "files": ["stdout\\n"]}', ["files[0]"]),
        ):
            refused(await send(grid, token, "POST", fail, body), *words)
        answer = await grid.worker(token, fail, {"message": "the disk broke", "retry": True})
        assert answer == {"state": "queued"}  # the lease was untouched until then


@pytest.mark.anyio
async def test_unknown_fields_and_out_of_range_numbers_are_named(tmp_path: Path) -> None:
    async with open_grid(tmp_path) as grid:
        token = grid.token("hostile")
        for path, body, words in (
            ("claim", {**CLAIM, "priority": 9}, ["priority"]),
            ("claim", {**CLAIM, "memory_mib": 2**70}, ["memory_mib"]),
            ("claim", {**CLAIM, "wait_s": 10**6}, ["wait_s"]),
            ("register", {"facts": {"notes": ["a", "list"]}}, ["facts.notes"]),
            ("register", {"facts": {"hostname": "h" * 300}}, ["hostname"]),
            ("register", {"facts": {f"k{i}": i for i in range(40)}}, ["facts"]),
            ("leases/j.1/complete", {"exit_code": 2**40}, ["exit_code"]),
            ("leases/j.1/complete", {"exit_code": 0, "claim": {"vcpus": 1}}, ["claim"]),
            ("heartbeat", {"leases": [{"lease": "j.1"}] * 257}, ["leases"]),
            # An epoch past 2**63 fits no database's integer (found by the fuzz run).
            ("heartbeat", {"leases": [{"lease": "0.10000000000000000000"}]}, ["lease"]),
            ("leases/j.99999999999999999999/release", {}, ["lease"]),
        ):
            refused(await send(grid, token, "POST", path, json.dumps(body).encode()), *words)


@pytest.mark.anyio
async def test_path_parameters_are_checked_before_the_handler(tmp_path: Path) -> None:
    async with open_grid(tmp_path) as grid:
        token = grid.token("hostile")
        await grid.submit(vm_job())
        (lease,) = await grid.claim(token)
        name = lease["lease"]
        for verb in VERBS:
            body = json.dumps({"exit_code": 0, "message": "x"}).encode()
            refused(await send(grid, token, "POST", f"leases/no-epoch/{verb}", body), "lease")
        nul = await grid.upload(token, name, "stdout%00.txt", b"data")
        refused(nul, "name")
        long = await grid.upload(token, name, "x" * 2000, b"data")
        refused(long, "name")
        bad_lease = await grid.upload(token, "not a lease", "stdout", b"data")
        refused(bad_lease, "lease")
        wrong_method = await grid.http.get(
            f"/worker/v1/leases/{name}/complete", headers={"Authorization": f"Bearer {token}"}
        )
        assert wrong_method.status_code == 405
        assert wrong_method.headers["allow"] == "POST"
        assert (await grid.upload(token, name, "outputs/a.txt", b"ok")).status_code == 200


# ---------------------------------------------------------------------- the document


def test_every_operation_is_served_and_checked_by_compiled_predicates() -> None:
    """The document is the single source: each operation has its handler, each schema is valid
    JSON Schema 2020-12, and each check runs compiled (no slow jsonschema-only fallback)."""
    raw = {"upload", "fetchStored", "deliverStored"}  # bodies and answers are files
    raw.add("tunnel")  # a WebSocket: no body, no JSON answer
    assert set(PROTOCOL.operations) == {"openapi", *JSON_OPERATIONS, *raw}
    for schema in DOCUMENT["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    for operation in PROTOCOL.operations.values():
        checks = [*operation.path_parameters.values()]
        if operation.body is not None:
            checks.append(operation.body)
        for each in checks:
            assert each.fast is not None, (operation.operation_id, each.where)
        assert (operation.body is not None) == (operation.operation_id in JSON_OPERATIONS)


def test_the_real_workers_requests_pass_the_checks(tmp_path: Path) -> None:
    from bes.worker.config import WorkerConfig
    from bes.worker.node import Worker

    node = Worker(WorkerConfig(service="http://127.0.0.1:9", token="t", cache_dir=tmp_path))
    body_check("register")({"facts": node.facts()})
    claim = {**node._claim_body(2048), "wait_s": 20.0}
    body_check("claim")(claim)
    beats = [{"lease": "3f2a.1", "substate": None}, {"lease": "x.2", "substate": "Executing"}]
    body_check("heartbeat")({"leases": beats})
    complete = {"exit_code": 0, "failure": None, "timing": {"vm": 1.5}, "files": ["stdout"]}
    body_check("complete")({**complete, "claim": {**claim, "wait_s": 0.0}})
    body_check("fail")({"message": "x" * 10_000, "retry": False, "files": []})
    body_check("release")({"message": "the worker is shutting down"})


def body_check(operation: str) -> Check:
    found = PROTOCOL.operations[operation].body
    assert found is not None
    return found


def schema_of(each: Check) -> Any:
    """The schema a check was built from (its validator refers to it in the document)."""
    return PROTOCOL._resolve(each.full.schema["$ref"].partition("#")[2])


def near(schema: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """JSON values that the schema accepts, sprinkled with values that break it somewhere."""
    if isinstance(schema, dict) and "$ref" in schema:
        node: Any = DOCUMENT
        for part in schema["$ref"][2:].split("/"):
            node = node[part]
        return near(node, depth)
    wild = any_json(2) if depth < 3 else st.none()
    if not isinstance(schema, dict):
        return wild
    exact = st.sampled_from(schema["enum"]) if "enum" in schema else _exact(schema, depth)
    return st.one_of(exact, exact, exact, wild) if depth else exact | wild


def _exact(schema: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
    kinds = schema.get("type", "object")
    kind = kinds if isinstance(kinds, str) else kinds[0]
    low, high = schema.get("minimum"), schema.get("maximum")
    if kind == "object":
        properties = schema.get("properties", {})
        required = {
            k: near(v, depth + 1) for k, v in properties.items() if k in schema.get("required", ())
        }
        optional = {k: near(v, depth + 1) for k, v in properties.items() if k not in required}
        return st.fixed_dictionaries(required, optional=optional)
    if kind == "array":
        return st.lists(near(schema.get("items", {}), depth + 1), max_size=4)
    if kind == "integer":
        return st.integers(low, high) | st.integers()
    if kind == "number":
        return st.floats(low, high, allow_nan=False) | st.integers(low, high)
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        if "pattern" in schema:
            pattern = schema["pattern"]
            return st.from_regex(pattern, fullmatch=True) | st.text(max_size=8)
        return st.text(max_size=schema.get("maxLength", 40) + 2)
    return st.none()


def any_json(depth: int = 4) -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=depth * 4,
    )


def _checks() -> list[tuple[str, Check]]:
    found = []
    for operation in PROTOCOL.operations.values():
        for name, parameter in operation.path_parameters.items():
            found.append((f"{operation.operation_id}:{name}", parameter))
        if operation.body is not None:
            found.append((operation.operation_id, operation.body))
    return found


@pytest.mark.parametrize(("where", "each"), _checks(), ids=[w for w, _ in _checks()])
def test_the_compiled_predicates_agree_with_jsonschema(where: str, each: Check) -> None:
    schema = schema_of(each)

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None)
    @given(instance=near(schema))
    def agree(instance: Any) -> None:
        assert each.fast is not None
        assert each.fast(instance) == each.full.is_valid(instance), instance

    agree()


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None)
@given(value=any_json(8))
def test_the_depth_scan_measures_what_the_parser_would_nest(value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False).encode()
    assert json_depth(text) == depth_of(value)
    if b"\\u0000" in text:  # NUL, which no store takes
        with pytest.raises(BadRequest, match="NUL"):
            parse_json(text)
    elif depth_of(value) <= MAX_DEPTH:
        assert parse_json(text) == value


def test_the_depth_limit_holds_without_recursion_on_a_full_size_body() -> None:
    body = b"[" * (256 * 1024)
    assert json_depth(body) == 256 * 1024
    with pytest.raises(BadRequest, match="deep"):
        parse_json(body)
    just_enough = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert depth_of(parse_json(just_enough)) == MAX_DEPTH


# ---------------------------------------------------------------------- fuzzing the service


def lease_names(real: list[str]) -> st.SearchStrategy[str]:
    return (
        st.sampled_from(real)
        | st.from_regex(r"[a-z0-9]{1,8}\.[0-9]{1,3}", fullmatch=True)
        | st.text(max_size=12)
    )


def bodies(operation: str) -> st.SearchStrategy[bytes]:
    schema = schema_of(body_check(operation))
    as_json = (near(schema) | any_json()).map(lambda v: json.dumps(v).encode())
    return st.one_of(as_json, as_json, st.binary(max_size=64), st.text(max_size=32).map(str.encode))


def answered_well(response: httpx.Response) -> None:
    """The answer of a protocol endpoint: 2xx or 4xx, JSON, and an Error when it refuses."""
    assert response.status_code < 500, response.text
    # The client resolves "." and ".." segments (a lease named ".."): those requests went
    # elsewhere. Raw ".." in a name is in test_worker_api's uploads test.
    assume(response.request.url.path.startswith("/worker/v1/"))
    if response.status_code == 405:
        return
    answer = response.json()
    if response.status_code >= 400:
        check("Error", answer)


@pytest.mark.parametrize("operation", JSON_OPERATIONS)
def test_fuzz_json_endpoints_never_answer_5xx(tmp_path: Path, operation: str) -> None:
    with grid_in_loop(tmp_path) as (runner, grid):
        token = grid.token("fuzzer")
        for _ in range(3):
            runner.run(grid.submit(vm_job()))
        real = [lease["lease"] for lease in runner.run(grid.claim(token, slots=2, wait_s=0))]
        template = PROTOCOL.operations[operation].template

        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(body=bodies(operation), lease=lease_names(real))
        def one(body: bytes, lease: str) -> None:
            path = template.removeprefix("/worker/v1/").replace("{lease}", quote(lease, safe=""))
            answered_well(runner.run(send(grid, token, "POST", path, body)))

        one()


def test_fuzz_uploads_never_answer_5xx(tmp_path: Path) -> None:
    with grid_in_loop(tmp_path) as (runner, grid):
        token = grid.token("fuzzer")
        runner.run(grid.submit(vm_job()))
        real = [lease["lease"] for lease in runner.run(grid.claim(token, wait_s=0))]

        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(
            lease=lease_names(real),
            name=st.text(min_size=1, max_size=40),
            data=st.binary(max_size=64),
        )
        def one(lease: str, name: str, data: bytes) -> None:
            path = f"leases/{quote(lease, safe='')}/files/{quote(name, safe='/')}"
            response = runner.run(send(grid, token, "PUT", path, data))
            answered_well(response)
            if response.status_code == 200:
                assert response.json()["bytes"] == len(data)

        one()
