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
