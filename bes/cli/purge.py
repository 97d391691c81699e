"""``bes purge``: remove ended activities and their kept files after a time (run on the
service's machine; the service may go on running meanwhile)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bes.cli._db import DATA_DIR, DATABASE_URL, database
from bes.cli._durations import Duration
from bes.errors import BesError

if TYPE_CHECKING:
    from bes.backends.base import Backend
    from bes.db.store import Database


@click.command("purge")
@click.option(
    "--older-than",
    type=Duration(),
    metavar="DURATION",
    help="Remove the activities that ended longer ago than this (e.g. 30d, 12h), with their "
    "history, documents and kept outputs.",
)
@click.option(
    "--batch",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Activities per transaction (smaller: shorter waits for the service's writes).",
)
@click.option(
    "--vacuum",
    is_flag=True,
    help="Afterwards, rebuild an SQLite database so that it gives freed space back from now "
    "on (once, for a database made before that was the default). Stop the service first; it "
    "takes about as long as copying the file and as much free disk space again.",
)
@DATA_DIR
@DATABASE_URL
@click.option(
    "--storage-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The service's --storage-dir, where kept outputs are (default: DATA_DIR).",
)
def purge(
    older_than: dt.timedelta | None,
    batch: int,
    vacuum: bool,
    data_dir: Path,
    database_url: str | None,
    storage_dir: Path | None,
) -> None:
    """Remove ended activities older than --older-than, and their kept outputs."""
    from bes.db.engine import default_url

    if older_than is None and not vacuum:
        raise click.UsageError("give --older-than DURATION, --vacuum, or both")
    url = database_url or default_url(data_dir)
    if older_than is not None:
        with database(data_dir, database_url) as db:
            _purge(db, data_dir, storage_dir, older_than, batch)
    if vacuum:
        _vacuum(url)


def _purge(
    db: Database, data_dir: Path, storage_dir: Path | None, older_than: dt.timedelta, batch: int
) -> None:
    from bes.retention import Retention

    backends: dict[str, Backend | None] = {}

    def backend_for(name: str) -> Backend | None:
        if name not in backends:
            backends[name] = _backend(db, data_dir, storage_dir, name)
        return backends[name]

    retention = Retention(db, backend_for, short=False)  # its --batch is the transaction
    try:
        report = asyncio.run(retention.purge_once(older_than, batch=batch))
    except BesError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        retention.close()
        for backend in backends.values():
            if backend is not None:
                backend.close()
    click.echo(
        f"removed {report.activities} ended activities"
        + (f" and {report.sweeps} parameter sweeps" if report.sweeps else "")
        + f", {_size(report.output_bytes)} of kept outputs"
        + (f", {report.requests} old CreateActivity requests" if report.requests else "")
        + (f"; the database gave back {_size(report.freed_bytes)}" if report.freed_bytes else "")
        + f"; in {report.seconds:.1f} s ({report.batches} batches)"
    )
    if report.kept_back:
        click.echo(
            f"kept {report.kept_back} activities whose files could not be removed (see the log)",
            err=True,
        )


def _backend(db: Database, data_dir: Path, storage_dir: Path | None, name: str) -> Backend | None:
    """The backend ``name`` as the service builds it, for its kept files; None if unknown."""
    from bes.backends.base import BackendContext
    from bes.backends.registry import backend_class
    from bes.storage import DirectoryStorage

    storage = DirectoryStorage(storage_dir or data_dir)
    context = BackendContext(db=db, data_dir=data_dir, storage=storage)
    try:
        return backend_class(name).build(context)
    except BesError as exc:
        click.echo(f"bes purge: backend {name}: {exc}; its files stay", err=True)
        return None


def _vacuum(url: str) -> None:
    from sqlalchemy.engine import make_url

    from bes.retention import vacuum

    if make_url(url).get_backend_name() != "sqlite":
        click.echo("not SQLite: nothing to vacuum (PostgreSQL's autovacuum reuses the space)")
        return
    try:
        before, after = vacuum(url)
    except BesError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"vacuumed: {_size(before.pages * before.page_size)} -> "
        f"{_size(after.pages * after.page_size)}, incremental auto-vacuum "
        + ("on" if after.auto_vacuum == 2 else "still off")
    )


def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 1024**2 else f"{n / 1024**2:,.1f} MiB"
