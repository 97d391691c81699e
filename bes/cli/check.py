"""``bes check [URL]``: the conformance and interoperability suite against any BES endpoint
(bes.check), and ``--load`` to measure one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from bes.cli._client import EXIT_NOT_FINISHED, client_options, context, reported


@click.command()
@click.argument("url", required=False)
@click.option(
    "--jsdl",
    "jsdl_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also submit this document (repeatable): a check of its own.",
)
@click.option("--admin", is_flag=True, help="Run the BES-Management checks (Stop/Start).")
@click.option(
    "--save",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep every request and answer in this directory.",
)
@click.option("--staging-url", help="A place the endpoint can reach, with PUT and GET.")
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to wait for an activity to end (a termination, a staging job).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML.")
@click.option("--html", type=click.Path(dir_okay=False, path_type=Path), help="Write an HTML page.")
@click.option("--load", "load_clients", type=click.IntRange(1, 1024), help="Load test: N clients.")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="Of the load test.")
@client_options
@reported
def check(
    url: str | None,
    jsdl_files: tuple[Path, ...],
    admin: bool,
    save: Path | None,
    staging_url: str | None,
    wait_s: float,
    as_json: bool,
    junit: Path | None,
    html: Path | None,
    load_clients: int | None,
    seconds: float,
    **flags: Any,
) -> None:
    """Check a BES endpoint (default: the configured one) against GFD.108, JSDL 1.0 and the
    HPC Basic Profile: one row per check, PASS / FAIL / WARN / SKIP, the evidence of each
    failure. Exit status 0 only if no check fails. Everything it creates it terminates."""
    from bes.check import Options, report, run
    from bes.check.load import load

    if url:
        flags["endpoint"] = url
    ctx = context(**flags)
    config = ctx.config
    credentials = config.credentials()
    if load_clients is not None:
        figures = load(
            config.endpoint,
            clients=load_clients,
            seconds=seconds,
            credentials=credentials,
            ca_file=config.ca_file,
            timeout_s=config.timeout_s,
        )
        if as_json:
            import json

            click.echo(json.dumps(figures.to_json(), indent=1))
        else:
            click.echo(figures.table())
        if figures.errors:
            sys.exit(EXIT_NOT_FINISHED)
        return
    options = Options(admin=admin, jsdl=jsdl_files, staging_url=staging_url, wait_s=wait_s)

    def progress(result: Any) -> None:
        if not as_json:
            click.echo(f"{result.verdict.value:<4}  {result.id}", err=True)

    found = run(
        config.endpoint,
        options,
        credentials=credentials,
        ca_file=config.ca_file,
        timeout_s=config.timeout_s,
        save=save,
        progress=progress,
    )
    if junit is not None:
        junit.write_bytes(report.junit(found))
    if html is not None:
        html.write_text(report.as_html(found))
    click.echo(report.as_json(found) if as_json else report.text(found))
    if found.failed:
        sys.exit(EXIT_NOT_FINISHED)
