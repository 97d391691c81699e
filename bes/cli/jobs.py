"""The client commands: ``bes submit``, ``status``, ``wait``, ``cancel``, ``get``, ``forget``,
``attrs``, ``images`` and ``jsdl new``.

They work with any OGSA-BES 1.0 endpoint. The endpoint and credentials come from flags, then
the environment (``BES_ENDPOINT``, …), then ``~/.config/bes/client.toml``
(:mod:`bes.client.config`). Submitted activities are remembered in the job list
(:mod:`bes.client.joblist`), so later commands take an id, a unique prefix of one, or
``--all``.

Exit status (also in README):

    0  success
    1  an activity ended Failed or Cancelled, or has no results yet
    2  usage error: a bad option, or an activity that is not in the job list
    3  the service refused the request (a SOAP fault; its name is printed)
    4  the service could not be reached or did not answer SOAP (connection, TLS, HTTP)
    5  the JSDL document is invalid (nothing was sent)
    6  waiting timed out
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from bes.cli._render import ProgressLine, counts, emit_json, table

if TYPE_CHECKING:
    from bes.client import ActivityRef, ActivityStatus, BESClient
    from bes.client.config import ClientConfig
    from bes.client.joblist import Entry, JobList

EXIT_NOT_FINISHED: Final = 1
EXIT_USAGE: Final = 2
EXIT_FAULT: Final = 3
EXIT_UNREACHABLE: Final = 4
EXIT_INVALID_JSDL: Final = 5
EXIT_TIMEOUT: Final = 6

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(click.ClickException):
    """A failure reported as ``Error: …`` with its documented exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance


def _reported(fn: F) -> F:
    """Turn the client's exceptions into messages and exit statuses."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from bes.client import faults

        try:
            return fn(*args, **kwargs)
        except faults.InvalidJsdl as exc:
            raise CommandError(str(exc), EXIT_INVALID_JSDL) from exc
        except faults.SoapFault as exc:
            raise CommandError(f"the service refused: {exc}", EXIT_FAULT) from exc
        except faults.WaitTimeout as exc:
            raise CommandError(str(exc), EXIT_TIMEOUT) from exc
        except faults.NoOutputs as exc:
            raise CommandError(str(exc), EXIT_NOT_FINISHED) from exc
        except (faults.ConnectionProblem, faults.HttpProblem, faults.ProtocolProblem) as exc:
            raise CommandError(str(exc), EXIT_UNREACHABLE) from exc
        except faults.ClientError as exc:
            raise CommandError(str(exc), EXIT_USAGE) from exc

    return run  # type: ignore[return-value]


def _client_options(fn: F) -> F:
    options = [
        click.option(
            "-e",
            "--endpoint",
            help="The BES endpoint URL (default: BES_ENDPOINT, the config "
            "file, else http://127.0.0.1:8080/bes).",
        ),
        click.option("--username", help="Send a WS-Security UsernameToken as this user."),
        click.option(
            "--password-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="File holding the password (else BES_PASSWORD, the config file, or a prompt).",
        ),
        click.option(
            "--certificate",
            type=click.Path(dir_okay=False, path_type=Path),
            help="PEM client certificate for TLS (and for --sign).",
        ),
        click.option("--key", type=click.Path(dir_okay=False, path_type=Path), help="Its key."),
        click.option("--sign/--no-sign", default=None, help="Sign messages (WS-Security X.509)."),
        click.option(
            "--ca-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="CA certificates to trust for https.",
        ),
        click.option(
            "--request-timeout", "timeout_s", type=float, help="Seconds to wait for each answer."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@dataclass
class _Context:
    config: ClientConfig
    jobs: JobList
    _clients: dict[str, BESClient]

    def client(self, endpoint: str | None = None) -> BESClient:
        url = endpoint or self.config.endpoint
        if url not in self._clients:
            self._clients[url] = self.config.client(url)
        return self._clients[url]


def _context(**flags: Any) -> _Context:
    from bes.client.config import load_config
    from bes.client.joblist import JobList

    config = load_config(flags)
    if config.username and config.password is None and sys.stdin.isatty():
        password = click.prompt(f"password for {config.username}", hide_input=True)
        config = _replace(config, password=password)
    return _Context(config=config, jobs=JobList(), _clients={})


def _replace(config: ClientConfig, **changes: Any) -> ClientConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


# ---------------------------------------------------------------------- submit


@click.command()
@click.argument(
    "documents", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--wait", "wait_", is_flag=True, help="Wait until the activities end.")
@click.option("--wait-timeout", type=float, help="With --wait: give up after this many seconds.")
@click.option("--no-check", is_flag=True, help="Send the documents without validating them.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_client_options
@_reported
def submit(
    documents: tuple[Path, ...],
    wait_: bool,
    wait_timeout: float | None,
    no_check: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Submit JSDL DOCUMENTS (CreateActivity); print one activity id per line.

    Each document is checked against JSDL 1.0 first (with the variants the service
    normalizes forgiven); an invalid one is reported with its line and element and not sent.
    """
    from bes.client import faults, jsdl

    ctx = _context(**flags)
    client = ctx.client()
    refs = []
    for path in documents:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from exc
        if not no_check:
            try:
                jsdl.check(data)
            except faults.InvalidJsdl as exc:
                raise faults.InvalidJsdl(f"{path}: {exc}", exc.problems) from exc
        ref = client.submit(data, check=False)
        ctx.jobs.add(ref, endpoint=client.url, name=_job_name(data) or path.name)
        refs.append(ref)
        if not as_json:
            click.echo(ref.name)
            _note(f"submitted {path} as {ref.name}")
    if wait_:
        _wait_and_report(client, refs, wait_timeout, as_json=as_json)
    elif as_json:
        emit_json([{"id": r.name, "address": r.address} for r in refs])


def _job_name(document: bytes) -> str | None:
    from bes.client.jsdl import job_name

    return job_name(document)


# ---------------------------------------------------------------------- status, wait, cancel


_IDS = click.argument("ids", nargs=-1)
_ALL = click.option("--all", "all_", is_flag=True, help="Every activity in the job list.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.command()
@_IDS
@_ALL
@_JSON
@_client_options
@_reported
def status(ids: tuple[str, ...], all_: bool, as_json: bool, **flags: Any) -> None:
    """Show the state of activities (GetActivityStatuses).

    IDS are activity ids (or unique prefixes, or addresses) from the job list; with --all,
    every activity submitted from this account.
    """
    ctx = _context(**flags)
    chosen = _resolve(ctx, ids, all_)
    found = _statuses(ctx, chosen)
    _print_statuses(chosen, found, as_json=as_json)
    if any(s.fault is not None for s in found):
        sys.exit(EXIT_FAULT)


@click.command()
@_IDS
@_ALL
@click.option("--timeout", "wait_timeout", type=float, help="Give up after this many seconds.")
@_JSON
@_client_options
@_reported
def wait(
    ids: tuple[str, ...], all_: bool, wait_timeout: float | None, as_json: bool, **flags: Any
) -> None:
    """Wait until activities end; exit 0 only if all Finished."""
    ctx = _context(**flags)
    chosen = _resolve(ctx, ids, all_)
    endpoints = {endpoint for endpoint, _ in chosen}
    if len(endpoints) > 1:
        raise CommandError("wait for activities of one endpoint at a time", EXIT_USAGE)
    [endpoint] = endpoints
    _wait_and_report(ctx.client(endpoint), [r for _, r in chosen], wait_timeout, as_json=as_json)


@click.command()
@_IDS
@_ALL
@_JSON
@_client_options
@_reported
def cancel(ids: tuple[str, ...], all_: bool, as_json: bool, **flags: Any) -> None:
    """Terminate activities (TerminateActivities)."""
    ctx = _context(**flags)
    chosen = _resolve(ctx, ids, all_)
    results = []
    for endpoint, refs in _by_endpoint(chosen).items():
        results += ctx.client(endpoint).cancel(refs)
    rows = []
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
    if any(o.startswith("not terminated") for _, o in rows):
        sys.exit(EXIT_FAULT)


@click.command()
@_IDS
@_ALL
@_JSON
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
        _note(f"removed {removed} activities from {jobs.path}")


# ---------------------------------------------------------------------- results


@click.command()
@click.argument("activity")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@_JSON
@_client_options
@_reported
def get(activity: str, directory: Path | None, as_json: bool, **flags: Any) -> None:
    """Download an ended activity's files (stdout, stderr and kept outputs) into DIRECTORY
    (default: ./ID)."""
    ctx = _context(**flags)
    [(endpoint, ref)] = _resolve(ctx, (activity,), False)
    target = directory or Path(ref.activity_id or "results")
    files = ctx.client(endpoint).outputs(ref, target)
    if as_json:
        emit_json([{"name": f.name, "path": f.path, "bytes": f.size_bytes} for f in files])
        return
    click.echo(
        table(("FILE", "BYTES", "PATH"), [(f.name, str(f.size_bytes), f.path) for f in files])
    )
    _note(f"{len(files)} files in {target}")


@click.command()
@_JSON
@_client_options
@_reported
def attrs(as_json: bool, **flags: Any) -> None:
    """Show the factory's attributes (GetFactoryAttributesDocument)."""
    import dataclasses

    ctx = _context(**flags)
    found = ctx.client().attributes()
    values = dataclasses.asdict(found)
    values["activity_refs"] = [r.name for r in found.activity_refs]
    if as_json:
        emit_json({"endpoint": ctx.config.endpoint, **values})
        return
    rows = [("endpoint", ctx.config.endpoint)]
    for key, value in values.items():
        if value not in (None, (), []):
            rows.append((key.replace("_", " "), _readable_value(key, value)))
    click.echo(table(("ATTRIBUTE", "VALUE"), rows))


def _readable_value(key: str, value: Any) -> str:
    if key == "activity_refs":
        return f"{len(value)} listed"
    if key == "memory_bytes":
        return f"{value / 2**30:.1f} GiB"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple | list):
        return ", ".join(map(str, value))
    return str(value)


@click.command()
@_JSON
@_client_options
@_reported
def images(as_json: bool, **flags: Any) -> None:
    """List the template images of the service's repository."""
    ctx = _context(**flags)
    found = ctx.client().images()
    if as_json:
        emit_json(found)
        return
    rows = [
        (
            str(t.get("name", "")),
            str(t.get("os_type", "")),
            str(t.get("min_memory_mib", "")),
            str(t.get("format", "built on the node") if t.get("sha256") else "built on the node"),
            str(t.get("description", "")),
        )
        for t in found
    ]
    click.echo(table(("NAME", "OS", "MIN MiB", "FORMAT", "DESCRIPTION"), rows))


# ---------------------------------------------------------------------- jsdl new


@click.group()
def jsdl() -> None:
    """Write JSDL documents."""


@jsdl.command("new", context_settings={"allow_interspersed_args": False})
@click.argument("command", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (default: standard output).",
)
@click.option("--name", help="The job's name.")
@click.option("--image", default="tiny", show_default=True, help="Template image (bes images).")
@click.option("--image-uri", help="Your own image instead: its URL ...")
@click.option("--sha256", help="... its sha256 ...")
@click.option(
    "--format", "image_format", default="qcow2", show_default=True, help="... and its format."
)
@click.option("--memory-mib", type=click.IntRange(1), help="Guest memory.")
@click.option("--vcpus", type=click.IntRange(1), help="Virtual CPUs.")
@click.option("--wall-time", "wall_time_s", type=click.IntRange(1), help="Seconds it may run.")
@click.option("--env", "environment", multiple=True, metavar="NAME=VALUE", help="Environment.")
@click.option("--input", "inputs", multiple=True, metavar="FILE=URI", help="Fetch before.")
@click.option("--output-to", "outputs", multiple=True, metavar="FILE=URI", help="Deliver after.")
@click.option("--keep", multiple=True, metavar="FILE", help="Keep a file for bes get.")
@click.option("--no-vm", is_flag=True, help="Plain JSDL: the service picks its default VM.")
def jsdl_new(
    command: tuple[str, ...],
    output: Path | None,
    name: str | None,
    image: str,
    image_uri: str | None,
    sha256: str | None,
    image_format: str,
    memory_mib: int | None,
    vcpus: int | None,
    wall_time_s: int | None,
    environment: tuple[str, ...],
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    keep: tuple[str, ...],
    no_vm: bool,
) -> None:
    """Write a commented JSDL document that runs COMMAND in a VM.

    Everything after the first argument belongs to the command:
    bes jsdl new -o job.jsdl --name hello /bin/echo hello
    """
    from bes.client import faults
    from bes.client import jsdl as builder

    if image_uri and not sha256:
        raise click.UsageError("--image-uri needs --sha256")
    chosen: str | builder.ImageURI = (
        builder.ImageURI(uri=image_uri, sha256=sha256 or "", format=image_format)
        if image_uri
        else image
    )
    try:
        document = builder.build(
            list(command),
            name=name,
            image=chosen,
            vm=not no_vm,
            memory_mib=memory_mib,
            vcpus=vcpus,
            wall_time_s=wall_time_s,
            environment=_pairs(environment, "--env"),
            inputs=_pairs(inputs, "--input"),
            outputs=_pairs(outputs, "--output-to"),
            keep=list(keep),
            commented=True,
        )
    except faults.InvalidJsdl as exc:
        raise CommandError(str(exc), EXIT_INVALID_JSDL) from exc
    if output is None:
        sys.stdout.buffer.write(document)
    else:
        output.write_bytes(document)
        _note(f"wrote {output}; submit it with: bes submit {output} --wait")


def _pairs(values: Sequence[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise click.UsageError(f"{option} takes NAME=VALUE, not {value!r}")
        pairs[key] = rest
    return pairs


# ---------------------------------------------------------------------- helpers


def _resolve(ctx: _Context, ids: Sequence[str], all_: bool) -> list[tuple[str, ActivityRef]]:
    """(endpoint, reference) for each id given, or for the whole job list."""
    if all_:
        if ids:
            raise click.UsageError("give activity ids or --all, not both")
        return [(e.endpoint, e.ref) for e in ctx.jobs.entries()]
    if not ids:
        raise click.UsageError("name at least one activity (or --all)")
    chosen = []
    for text in ids:
        entry: Entry | None = ctx.jobs.find(text)
        if entry is not None:
            chosen.append((entry.endpoint, entry.ref))
            continue
        from bes.client.faults import ClientError

        try:
            chosen.append((ctx.config.endpoint, ctx.client().ref(text)))
        except ClientError:
            raise CommandError(
                f"{text} is not in the job list (bes status --all lists it) and is not an "
                "activity id or address",
                EXIT_USAGE,
            ) from None
    return chosen


def _by_endpoint(chosen: Sequence[tuple[str, ActivityRef]]) -> dict[str, list[ActivityRef]]:
    grouped: dict[str, list[ActivityRef]] = {}
    for endpoint, ref in chosen:
        grouped.setdefault(endpoint, []).append(ref)
    return grouped


def _statuses(ctx: _Context, chosen: Sequence[tuple[str, ActivityRef]]) -> list[ActivityStatus]:
    by_ref: dict[int, ActivityStatus] = {}
    positions: dict[str, list[int]] = {}
    for i, (endpoint, _) in enumerate(chosen):
        positions.setdefault(endpoint, []).append(i)
    for endpoint, indexes in positions.items():
        found = ctx.client(endpoint).status([chosen[i][1] for i in indexes])
        by_ref.update(zip(indexes, found, strict=True))
    return [by_ref[i] for i in range(len(chosen))]


def _wait_and_report(
    client: BESClient, refs: list[ActivityRef], timeout_s: float | None, *, as_json: bool
) -> None:
    progress = ProgressLine()
    try:
        found = client.wait(refs, timeout_s, progress=progress)
    finally:
        progress.done()
    _print_statuses([(client.url, r) for r in refs], found, as_json=as_json)
    from bes.client import State

    if not all(s.state is State.FINISHED for s in found):
        if not as_json:
            _note(f"not all finished: {counts(found)}")
        sys.exit(EXIT_NOT_FINISHED)


def _print_statuses(
    chosen: Sequence[tuple[str, ActivityRef]], found: Sequence[ActivityStatus], *, as_json: bool
) -> None:
    from bes.client import to_json
    from bes.client.joblist import JobList

    names = {e.key: e.name for e in JobList().entries()}
    if as_json:
        emit_json(
            [
                {**to_json(s), "name": names.get(s.ref.name), "endpoint": e}
                for (e, _), s in zip(chosen, found, strict=True)
            ]
        )
        return
    rows = []
    for status_ in found:
        exit_code = "" if status_.exit_code is None else str(status_.exit_code)
        note = status_.message or ""
        if status_.counts:
            note = ", ".join(f"{c.count} {c.state.value}" for c in status_.counts)
        if status_.fault is not None:
            note = str(status_.fault)
        rows.append(
            (
                status_.ref.name,
                names.get(status_.ref.name, ""),
                "error" if status_.fault is not None else status_.label,
                exit_code,
                (status_.changed or "")[:19].replace("T", " "),
                note,
            )
        )
    click.echo(table(("ID", "NAME", "STATE", "EXIT", "SINCE (UTC)", "NOTE"), rows))


def _note(message: str) -> None:
    """A line for people, on standard error, so standard output stays machine-readable."""
    click.echo(message, err=True)


CLIENT_COMMANDS: Final = (submit, status, wait, cancel, get, forget, attrs, images, jsdl)
