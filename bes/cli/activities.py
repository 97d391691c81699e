"""The commands on submitted activities: ``bes status``, ``why``, ``wait``, ``cancel``, ``get``
and ``forget``.

Activities are named by id, unique id prefix or address from the job list, or all at once with
``--all``; they may live at several endpoints, and an endpoint that is gone does not hide the
activities of the others (``status`` marks its activities unreachable and exits 4).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bes.cli._client import (
    ALL,
    EXIT_FAULT,
    EXIT_NOT_FINISHED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    IDS,
    JSON,
    CommandError,
    by_endpoint,
    client_options,
    context,
    note,
    reported,
    resolve,
)
from bes.cli._render import ProgressLine, counts, emit_json, table

if TYPE_CHECKING:
    from bes.client import ActivityRef, ActivityStatus, BESClient
    from bes.client.joblist import Unreachable


@click.command()
@IDS
@ALL
@JSON
@client_options
@reported
def status(ids: tuple[str, ...], all_: bool, as_json: bool, **flags: Any) -> None:
    """Show the state of activities (GetActivityStatuses).

    IDS are activity ids (or unique prefixes, or addresses) from the job list; with --all,
    every activity submitted from this account. The activities of an endpoint that cannot be
    reached are shown as unreachable, with the reason once per endpoint, and the exit status
    is then 4.
    """
    from bes.client.joblist import Unreachable, statuses

    ctx = context(**flags)
    chosen = resolve(ctx, ids, all_)
    found = statuses(chosen, ctx.client)
    print_statuses(chosen, found, as_json=as_json)
    unreachable = [s for s in found if isinstance(s, Unreachable)]
    if any(not s.refused for s in unreachable):
        sys.exit(EXIT_UNREACHABLE)
    if unreachable or any(s.fault is not None for s in found if not isinstance(s, Unreachable)):
        sys.exit(EXIT_FAULT)


@click.command()
@IDS
@ALL
@click.option("--timeout", "wait_timeout", type=float, help="Give up after this many seconds.")
@JSON
@client_options
@reported
def wait(
    ids: tuple[str, ...], all_: bool, wait_timeout: float | None, as_json: bool, **flags: Any
) -> None:
    """Wait until activities end; exit 0 only if all Finished."""
    ctx = context(**flags)
    chosen = resolve(ctx, ids, all_)
    endpoints = {endpoint for endpoint, _ in chosen}
    if len(endpoints) > 1:
        raise CommandError("wait for activities of one endpoint at a time", EXIT_USAGE)
    [endpoint] = endpoints
    wait_and_report(ctx.client(endpoint), [r for _, r in chosen], wait_timeout, as_json=as_json)


@click.command()
@IDS
@ALL
@JSON
@client_options
@reported
def cancel(ids: tuple[str, ...], all_: bool, as_json: bool, **flags: Any) -> None:
    """Terminate activities (TerminateActivities)."""
    from bes.client.faults import ClientError, SoapFault

    ctx = context(**flags)
    chosen = resolve(ctx, ids, all_)
    rows = []
    unreachable = False
    for endpoint, refs in by_endpoint(chosen).items():
        try:
            results = ctx.client(endpoint).cancel(refs)
        except SoapFault:
            raise
        except ClientError as exc:  # this endpoint is gone: the others are still cancelled
            unreachable = True
            rows += [(r.name, f"not terminated: {exc}") for r in refs]
            continue
        for result in results:
            if result.fault is not None and getattr(result.fault, "fault_name", "") == (
                "OperationWillBeAppliedEventuallyFault"
            ):
                outcome = "terminating (ends Cancelled shortly)"
            elif result.fault is not None:
                outcome = f"not terminated: {result.fault}"
            else:
                outcome = "terminated" if result.terminated else "not terminated"
            rows.append((result.ref.name, outcome))
    if as_json:
        emit_json([{"id": i, "outcome": o} for i, o in rows])
    else:
        click.echo(table(("ID", "OUTCOME"), rows))
    if unreachable:
        sys.exit(EXIT_UNREACHABLE)
    if any(o.startswith("not terminated") for _, o in rows):
        sys.exit(EXIT_FAULT)


@click.command()
@IDS
@ALL
@JSON
def forget(ids: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Remove activities from the job list (they stay on the service)."""
    from bes.client.joblist import JobList

    jobs = JobList()
    entries = jobs.entries()
    keys = [e.key for e in entries] if all_ else []
    for text in ids:
        entry = jobs.find(text)
        if entry is None:
            raise CommandError(f"{text} is not in the job list", EXIT_USAGE)
        keys.append(entry.key)
    removed = jobs.forget(keys)
    if as_json:
        emit_json({"removed": removed})
    else:
        note(f"removed {removed} activities from {jobs.path}")


@click.command()
@click.argument("activity")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@JSON
@client_options
@reported
def get(activity: str, directory: Path | None, as_json: bool, **flags: Any) -> None:
    """Download an ended activity's files (stdout, stderr and kept outputs) into DIRECTORY
    (default: ./ID)."""
    ctx = context(**flags)
    [(endpoint, ref)] = resolve(ctx, (activity,), False)
    target = directory or Path(ref.activity_id or "results")
    files = ctx.client(endpoint).outputs(ref, target)
    if as_json:
        emit_json([{"name": f.name, "path": f.path, "bytes": f.size_bytes} for f in files])
        return
    click.echo(
        table(("FILE", "BYTES", "PATH"), [(f.name, str(f.size_bytes), f.path) for f in files])
    )
    note(f"{len(files)} files in {target}")


def wait_and_report(
    client: BESClient, refs: list[ActivityRef], timeout_s: float | None, *, as_json: bool
) -> None:
    """Wait for activities of one endpoint, print their statuses, and exit 1 unless all
    Finished."""
    progress = ProgressLine()
    try:
        found = client.wait(refs, timeout_s, progress=progress)
    finally:
        progress.done()
    print_statuses([(client.url, r) for r in refs], found, as_json=as_json)
    from bes.client import State

    if not all(s.state is State.FINISHED for s in found):
        if not as_json:
            note(f"not all finished: {counts(found)}")
        sys.exit(EXIT_NOT_FINISHED)


def print_statuses(
    chosen: Sequence[tuple[str, ActivityRef]],
    found: Sequence[ActivityStatus | Unreachable],
    *,
    as_json: bool,
) -> None:
    """A table (or JSON) with one row per activity; activities of an endpoint that could not
    be asked get the state ``unreachable`` (or ``refused``), and its reason is said once."""
    from bes.client import to_json
    from bes.client.joblist import JobList, Unreachable

    names = {e.key: e.name for e in JobList().entries()}
    if as_json:
        rows_json = []
        for (endpoint, _), item in zip(chosen, found, strict=True):
            row = _unreachable_json(item) if isinstance(item, Unreachable) else to_json(item)
            row.update(name=names.get(item.ref.name), endpoint=endpoint)
            rows_json.append(row)
        emit_json(rows_json)
        return
    rows = []
    reasons: dict[tuple[str, str], int] = {}
    for (endpoint, _), status_ in zip(chosen, found, strict=True):
        name = names.get(status_.ref.name, "")
        if isinstance(status_, Unreachable):
            state = "refused" if status_.refused else "unreachable"
            reasons[state, status_.reason] = reasons.get((state, status_.reason), 0) + 1
            rows.append((status_.ref.name, name, state, "", "", "", endpoint))
            continue
        exit_code = "" if status_.exit_code is None else str(status_.exit_code)
        text = status_.message or ""
        if status_.counts:
            text = ", ".join(f"{c.count} {c.state.value}" for c in status_.counts)
        if status_.fault is not None:
            text = str(status_.fault)
        rows.append(
            (
                status_.ref.name,
                name,
                "error" if status_.fault is not None else status_.label,
                exit_code,
                (status_.changed or "")[:19].replace("T", " "),
                status_.pool or "",
                text,
            )
        )
    click.echo(table(("ID", "NAME", "STATE", "EXIT", "SINCE (UTC)", "POOL", "NOTE"), rows))
    for (state, reason), count in reasons.items():
        note(f"{count} {'activity' if count == 1 else 'activities'} {state}: {reason}")


def _unreachable_json(item: Unreachable) -> dict[str, Any]:
    """The keys of :func:`bes.client.to_json`, with the state ``unreachable`` (or
    ``refused``) and the reason as the message."""
    return {
        "id": item.ref.name,
        "address": item.ref.address,
        "state": "refused" if item.refused else "unreachable",
        "substates": [],
        "exit_code": None,
        "message": item.reason,
        "outputs": None,
        "changed": None,
        "pool": None,
        "warnings": [],
        "counts": None,
        "children": None,
        "access": None,
        "fault": None,
    }


@click.command()
@click.argument("activity")
@JSON
@client_options
@reported
def why(activity: str, as_json: bool, **flags: Any) -> None:
    """Say why an activity waits (or where it runs): its pool, what it needs, its place in
    the queue, what each worker of its pool lacks, and the pool's instances (a bes service)."""
    ctx = context(**flags)
    [(endpoint, ref)] = resolve(ctx, (activity,), False)
    found = ctx.client(endpoint).why(ref)
    if as_json:
        emit_json(found)
        return
    click.echo(render_why(found))


def render_why(found: dict[str, Any]) -> str:
    """``bes why`` for people."""
    analysis = found.get("analysis") or {}
    state = "/".join(s for s in (found.get("state"), found.get("substate")) if s)
    lines = [f"{found.get('activity')}: {state}"]
    if found.get("message"):
        lines.append(f"  {found['message']}")
    if found.get("pool"):
        lines.append(
            f"pool: {found['pool']} (this service's pools: {', '.join(analysis.get('pools', []))})"
        )
    needs = analysis.get("needs")
    if needs:
        lines.append(
            f"needs: {needs['memory_mib']} MiB, {needs['vcpus']} vCPU(s), "
            f"{needs['disk_mib']} MiB disk, hypervisor {' or '.join(needs['hypervisors'])}, "
            f"{'a network' if needs['network'] else 'no network'}"
        )
    if "position" in analysis:
        lines.append(f"queue position in its pool: {analysis['position']}")
    if analysis.get("attempts"):
        lines.append(f"attempts: {analysis['attempts']}")
    if analysis.get("worker"):
        lines.append(f"worker: {analysis['worker']}")
    if analysis.get("pool_status"):
        lines.append(f"pool status: {analysis['pool_status']}")
    workers = analysis.get("workers")
    if workers is not None:
        if not workers:
            lines.append("workers: none registered")
        for w in workers:
            verdict = "can run it" if not w["lacks"] else "lacks " + "; ".join(w["lacks"])
            lines.append(f"  worker {w['name']} ({w['pool']}): {verdict}")
    for i in analysis.get("instances", []):
        lines.append(
            f"  instance {i['name']}: {i['state']} since {i['since']} ({i.get('message') or ''})"
        )
    if analysis.get("reason") and not found.get("message"):
        lines.append(f"reason: {analysis['reason']}")
    return "\n".join(lines)
