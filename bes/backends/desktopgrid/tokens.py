"""Worker tokens: issued by an administrator, shown once, stored only as their sha256.

A token is 256 random bits; hashing it with sha256 is enough (there is nothing to guess that a
slow hash would protect), and lets the service find the worker with one indexed lookup.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from pathlib import Path
from typing import Final

from bes.db import grid_rows as grid
from bes.db.store import Database
from bes.errors import ConfigError

TOKEN_PREFIX: Final = "besw_"  # noqa: S105 - a prefix that marks worker tokens, not a secret
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def new_token() -> str:
    """A fresh worker token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database stores of a token."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


def create_worker(db: Database, name: str, *, pool: str = "volunteers") -> str:
    """Register a worker named ``name`` and return its token (shown once, never stored).

    Args:
        db: The service's database.
        name: The worker's name.
        pool: The pool whose jobs it may claim (``volunteers``, or ``cloud:NAME``).

    Raises:
        ConfigError: The name is malformed or taken.
    """
    if not _NAME.match(name):
        raise ConfigError(
            f"worker name {name!r}: use 1 to 64 letters, digits, dots, dashes or underscores"
        )
    token = new_token()
    worker_id = "w-" + secrets.token_hex(8)
    created = db.write_sync(
        grid.create_worker, (worker_id, name, token_hash(token), dt.datetime.now(dt.UTC), pool)
    )
    if not created:
        raise ConfigError(f"a worker named {name!r} exists already")
    return token


def local_worker_token(db: Database, name: str, token_file: Path) -> str:
    """The token of the service's own local worker, kept in ``token_file`` (mode 0600).

    A token that still opens the worker is reused; otherwise a new one replaces it.
    """
    if token_file.exists():
        token = token_file.read_text().strip()
        found = db.read_sync(grid.worker_by_token, token_hash(token))
        if found is not None and found.name == name and not found.revoked:
            return token
    token = new_token()
    db.write_sync(
        grid.rotate_worker,
        ("w-" + secrets.token_hex(8), name, token_hash(token), dt.datetime.now(dt.UTC)),
    )
    token_file.parent.mkdir(parents=True, exist_ok=True)
    partial = token_file.with_name(token_file.name + ".partial")
    partial.unlink(missing_ok=True)
    partial.touch(mode=0o600)
    partial.write_text(token + "\n")
    partial.replace(token_file)
    return token


def revoke_worker(db: Database, name: str) -> None:
    """Revoke a worker's token: its next call is refused.

    Raises:
        ConfigError: No worker of that name holds a live token.
    """
    if not db.write_sync(grid.revoke_worker, (name, dt.datetime.now(dt.UTC))):
        raise ConfigError(f"no worker named {name!r} with a live token")
