"""What the client commands share: their options, the documented exit statuses, the context
(configuration, job list, one client per endpoint) and naming activities.

Exit status (also in README):

    0  success
    1  an activity ended Failed or Cancelled, or has no results yet
    2  usage error: a bad option, an activity that is not in the job list, a local input file
       that cannot be read
    3  the service refused the request (a SOAP fault; its name is printed)
    4  the service could not be reached or did not answer SOAP (connection, TLS, HTTP); for
       ``status``, at least one endpoint could not be reached (the others are shown)
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

if TYPE_CHECKING:
    from bes.client import ActivityRef, BESClient
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


def reported(fn: F) -> F:
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


def client_options(fn: F) -> F:
    """The endpoint and credential options every command that talks to a service takes."""
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


IDS: Final = click.argument("ids", nargs=-1)
ALL: Final = click.option("--all", "all_", is_flag=True, help="Every activity in the job list.")
JSON: Final = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@dataclass
class Context:
    """One command's configuration, job list and clients (one per endpoint)."""

    config: ClientConfig
    jobs: JobList
    _clients: dict[str, BESClient]

    def client(self, endpoint: str | None = None) -> BESClient:
        url = endpoint or self.config.endpoint
        if url not in self._clients:
            self._clients[url] = self.config.client(url)
        return self._clients[url]


def context(**flags: Any) -> Context:
    """The context from the command's client options (and a password prompt if needed)."""
    import dataclasses

    from bes.client.config import load_config
    from bes.client.joblist import JobList

    config = load_config(flags)
    if config.username and config.password is None and sys.stdin.isatty():
        password = click.prompt(f"password for {config.username}", hide_input=True)
        config = dataclasses.replace(config, password=password)
    return Context(config=config, jobs=JobList(), _clients={})


def resolve(ctx: Context, ids: Sequence[str], all_: bool) -> list[tuple[str, ActivityRef]]:
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


def by_endpoint(chosen: Sequence[tuple[str, ActivityRef]]) -> dict[str, list[ActivityRef]]:
    grouped: dict[str, list[ActivityRef]] = {}
    for endpoint, ref in chosen:
        grouped.setdefault(endpoint, []).append(ref)
    return grouped


def note(message: str) -> None:
    """A line for people, on standard error, so standard output stays machine-readable."""
    click.echo(message, err=True)
