"""Options and the database of the commands an operator runs on the service's machine
(``bes user``, ``bes worker-token``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from bes.errors import BesError

if TYPE_CHECKING:
    from bes.db.store import Database

DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bes-data"),
    show_default=True,
    help="The service's data directory (its embedded database).",
)
DATABASE_URL = click.option(
    "--database-url", envvar="BES_DATABASE_URL", help="The service's database, if not embedded."
)


def database(data_dir: Path, database_url: str | None) -> Database:
    """The service's database, created and migrated if need be (so an operator can set up
    users and worker tokens before the service's first start)."""
    from bes.db.engine import default_url
    from bes.db.store import Database

    if database_url is None:
        data_dir.mkdir(parents=True, exist_ok=True)  # before the first start: set up first
    db = Database(database_url or default_url(data_dir))
    try:
        db.migrate()
    except BesError as exc:
        db.close()
        raise click.ClickException(str(exc)) from exc
    return db
