"""``bes user``: the people who may use the service (run on the service's machine, before or
while it runs: a new user takes effect on every replica within seconds)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bes.cli._db import DATA_DIR, DATABASE_URL, database
from bes.cli._sizes import ByteSize
from bes.errors import BesError

if TYPE_CHECKING:
    from bes.accounts import Accounts
    from bes.db.store import Database

_SECRET_KEY_FILE = click.option(
    "--secret-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="BES_SECRET_KEY_FILE",
    help="The service's sealing key (default: DATA_DIR/secret.key, created if missing).",
)
_PASSWORD_FILE = click.option(
    "--password-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the password from the first line of this file (default: ask, twice).",
)


@click.group("user")
def user() -> None:
    """Add, list and remove the users who may call the service.

    Once a user exists, every request must authenticate: WS-Security UsernameToken or X.509
    signature, a TLS client certificate, or HTTP Basic over TLS.
    """


def _accounts(db: Database, data_dir: Path, secret_key_file: Path | None) -> Accounts:
    from bes.accounts import Accounts
    from bes.sealing import Sealer

    try:
        sealer = Sealer.from_file(secret_key_file or data_dir / "secret.key", create=True)
    except BesError as exc:
        raise click.ClickException(str(exc)) from exc
    return Accounts(db, sealer)


def _password(password_file: Path | None, *, required: bool) -> str | None:
    if password_file is not None:
        lines = password_file.read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0]:
            raise click.ClickException(f"{password_file}: the first line is empty")
        return lines[0]
    if not required and not sys.stdin.isatty():
        return None
    if not sys.stdin.isatty():
        raise click.ClickException("give --password-file (standard input is not a terminal)")
    password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May see everything and manage the service.")
@_PASSWORD_FILE
@click.option(
    "--no-password",
    is_flag=True,
    help="No password: the user signs in with a certificate only.",
)
@click.option(
    "--no-digest",
    is_flag=True,
    help="Keep only a one-way hash of the password: PasswordDigest cannot be checked for "
    "this user (PasswordText and Basic over TLS still work).",
)
@click.option(
    "--certificate-subject",
    metavar="DN",
    help="Subject of the user's certificates, /C=../O=../CN=.. or CN=..,O=..,C=.. "
    "(they must chain to the service's --tls-client-ca).",
)
@click.option(
    "--certificate",
    "certificate_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A PEM certificate of the user, trusted by its fingerprint even without a CA "
    "(its subject is registered too).",
)
@DATA_DIR
@DATABASE_URL
@_SECRET_KEY_FILE
def user_add(
    name: str,
    admin: bool,
    password_file: Path | None,
    no_password: bool,
    no_digest: bool,
    certificate_subject: str | None,
    certificate_file: Path | None,
    data_dir: Path,
    database_url: str | None,
    secret_key_file: Path | None,
) -> None:
    """Add user NAME (with a password, asked for unless --password-file, and/or a
    certificate)."""
    from bes.certs import certificate_der, fingerprint, normalize_dn, subject_of
    from bes.db import user_rows

    subject = normalize_dn(certificate_subject) if certificate_subject else None
    pinned = None
    if certificate_file is not None:
        try:
            der = certificate_der(certificate_file)
        except BesError as exc:
            raise click.ClickException(str(exc)) from exc
        pinned = fingerprint(der)
        subject = subject or subject_of(der)
    password = None
    if not no_password:
        password = _password(password_file, required=subject is None and pinned is None)
    if password is None and subject is None and pinned is None:
        raise click.ClickException("a user needs a password or a certificate")
    with database(data_dir, database_url) as db:
        accounts = _accounts(db, data_dir, secret_key_file)
        try:
            row = accounts.new_user(
                name,
                admin=admin,
                password=password,
                digest=not no_digest,
                certificate_subject=subject,
                certificate_fingerprint=pinned,
            )
            if not db.write_sync(user_rows.add_user, (row, dt.datetime.now(dt.UTC))):
                raise click.ClickException(f"a user named {name!r} exists already")
        except BesError as exc:
            raise click.ClickException(str(exc)) from exc
    ways = [w for w, on in (("password", password), ("certificate", subject or pinned)) if on]
    click.echo(
        f"added {'administrator' if admin else 'user'} {name} ({' and '.join(ways)})"
        + (f"; certificate subject {subject}" if subject else ""),
        err=True,
    )


@user.command("passwd")
@click.argument("name")
@_PASSWORD_FILE
@click.option("--no-digest", is_flag=True, help="Keep only a one-way hash (no PasswordDigest).")
@DATA_DIR
@DATABASE_URL
@_SECRET_KEY_FILE
def user_passwd(
    name: str,
    password_file: Path | None,
    no_digest: bool,
    data_dir: Path,
    database_url: str | None,
    secret_key_file: Path | None,
) -> None:
    """Set a new password for user NAME."""
    from bes.db import user_rows

    password = _password(password_file, required=True)
    with database(data_dir, database_url) as db:
        accounts = _accounts(db, data_dir, secret_key_file)
        try:
            password_hash, sealed = accounts.password_columns(password, digest=not no_digest)
        except BesError as exc:
            raise click.ClickException(str(exc)) from exc
        changed = db.write_sync(
            user_rows.set_password, (name, password_hash, sealed, dt.datetime.now(dt.UTC))
        )
    if not changed:
        raise click.ClickException(f"no user named {name!r}")
    click.echo(f"changed the password of {name}", err=True)


@user.command("remove")
@click.argument("name")
@DATA_DIR
@DATABASE_URL
def user_remove(name: str, data_dir: Path, database_url: str | None) -> None:
    """Remove user NAME (their activities stay, and a user of the same name gets them)."""
    from bes.db import user_rows

    with database(data_dir, database_url) as db:
        if not db.write_sync(user_rows.remove_user, name):
            raise click.ClickException(f"no user named {name!r}")
    click.echo(f"removed user {name}", err=True)


@user.command("list")
@DATA_DIR
@DATABASE_URL
def user_list(data_dir: Path, database_url: str | None) -> None:
    """List the users: name, role, how they sign in."""
    from bes.db import user_rows

    with database(data_dir, database_url) as db:
        users = db.read_sync(user_rows.list_users)
    for u in users:
        ways = []
        if u.password_hash:
            ways.append("password" + ("+digest" if u.password_sealed else ""))
        if u.certificate_fingerprint:
            ways.append("certificate:" + u.certificate_fingerprint[:16])
        if u.certificate_subject:
            ways.append(f"subject:{u.certificate_subject}")
        role = "admin" if u.admin else "user"
        click.echo(f"{u.name:20} {role:6} {' '.join(ways)}")


@user.command("quota")
@click.argument("name")
@click.argument("size", required=False, type=ByteSize())
@click.option("--default", "use_default", is_flag=True, help="Back to the site's quota.")
@DATA_DIR
@DATABASE_URL
def user_quota(
    name: str, size: int | None, use_default: bool, data_dir: Path, database_url: str | None
) -> None:
    """Show NAME's file store use, or set their quota to SIZE (e.g. 200G); --default gives
    them the site's (bes serve --file-quota)."""
    from bes.db import file_rows

    with database(data_dir, database_url) as db:
        if size is not None or use_default:
            db.write_sync(file_rows.set_quota, (name, None if use_default else size))
        used, quota = db.read_sync(file_rows.usage, name)
    shown = f"{quota} bytes" if quota is not None else "the site's (bes serve --file-quota)"
    click.echo(f"{name}: {used} bytes stored; quota {shown}")
