"""The ``bes`` command line."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import click

from bes import __version__
from bes.config import ServiceConfig
from bes.errors import BesError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bes")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """bes: OGSA-BES job submission to virtual machines on a desktop grid or a cloud."""
    level = logging.WARNING - 10 * verbose if verbose else logging.INFO
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if verbose < 2:
        logging.getLogger("alembic").setLevel(logging.WARNING)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bes-data"),
    show_default=True,
    help="Directory for the embedded database and other state (created if missing).",
)
@click.option(
    "--database-url",
    envvar="BES_DATABASE_URL",
    help="SQLAlchemy URL of the database, e.g. postgresql://user@host/bes "
    "(default: SQLite in the data directory).",
)
@click.option(
    "--public-url",
    help="Base URL clients use, e.g. https://bes.example.org "
    "(default: taken from each request's Host header).",
)
@click.option(
    "--max-request-bytes",
    default=4 * 1024 * 1024,
    show_default=True,
    type=click.IntRange(1024),
    help="Refuse larger request bodies before parsing.",
)
@click.option(
    "--backend",
    help="Backend that runs new activities (default: none; they stay "
    "Pending until one is configured).",
)
def serve(
    host: str,
    port: int,
    data_dir: Path,
    database_url: str | None,
    public_url: str | None,
    max_request_bytes: int,
    backend: str | None,
) -> None:
    """Run the BES service (SOAP at http://HOST:PORT/bes)."""
    import uvicorn

    from bes.app import create_app

    config = ServiceConfig(
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=database_url,
        public_url=public_url,
        max_request_bytes=max_request_bytes,
        backend=backend,
    )
    try:
        app = create_app(config)
    except BesError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"bes {__version__}: BES endpoint http://{host}:{port}/bes "
        f"(WSDL: http://{host}:{port}/bes?wsdl)",
        err=True,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_keep_alive=30,
        server_header=False,
    )


@main.group()
def vm() -> None:
    """Run VM jobs on this machine, without the service."""


@vm.command("run")
@click.argument("document", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for stdout, stderr and output files (default: ./JOBNAME-ID).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Image cache and VM directory (default: $XDG_CACHE_HOME/bes).",
)
@click.option(
    "--catalog",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A site's template catalog (JSON) besides the built-in tiny template.",
)
@click.option(
    "--hypervisor",
    type=click.Choice(["qemu", "virtualbox"]),
    help="Use this hypervisor (default: the document's preference, else the first that works).",
)
@click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    default="auto",
    show_default=True,
    help="QEMU accelerator; auto uses KVM only where it really runs guests.",
)
def vm_run(
    document: Path,
    results: Path | None,
    cache_dir: Path | None,
    catalog: Path | None,
    hypervisor: str | None,
    accel: str,
) -> None:
    """Run the VM job of a JSDL DOCUMENT here and print its stdout.

    The exit status is the job's; 125 means the VM did not bring the job to its end.
    """
    from bes.jsdl.parse import load_job_definition
    from bes.vm.repository import Catalog
    from bes.vm.spec import Hypervisor
    from bes.vmlocal import default_cache_dir, run_local

    try:
        job = load_job_definition(document.read_bytes())
        run = run_local(
            job,
            document_dir=document.resolve().parent,
            results_dir=results,
            cache_dir=cache_dir or default_cache_dir(),
            catalog=Catalog.load(catalog) if catalog else None,
            hypervisor=Hypervisor(hypervisor) if hypervisor else None,
            accelerator=accel,
        )
    except BesError as exc:
        raise click.ClickException(str(exc)) from exc
    outcome = run.outcome
    if outcome.results is not None:
        sys.stdout.buffer.write(outcome.results.stdout.read_bytes())
        sys.stdout.flush()
        sys.stderr.buffer.write(outcome.results.stderr.read_bytes())
    summary = (
        f"bes: job {run.job_id} in a {run.host.hypervisor.value} VM ({run.host.accelerator}), "
        f"{outcome.vm_seconds:.1f} s; results in {run.results_dir}"
    )
    if not outcome.completed or outcome.exit_code is None:
        click.echo(f"{summary}\nbes: the job did not complete: {outcome.reason}", err=True)
        if outcome.console_tail:
            click.echo(f"bes: last console lines:\n{outcome.console_tail}", err=True)
        sys.exit(125)
    outputs = sorted(outcome.results.outputs) if outcome.results else []
    click.echo(f"{summary}; exit status {outcome.exit_code}", err=True)
    if outputs:
        click.echo(f"bes: outputs: {', '.join(outputs)}", err=True)
    if outcome.results is not None and outcome.results.missing:
        click.echo(f"bes: missing outputs: {', '.join(outcome.results.missing)}", err=True)
    for path in run.delivered:
        click.echo(f"bes: delivered {path}", err=True)
    sys.exit(outcome.exit_code)
