"""SQL of users and of the nonces their requests used (tables ``service_user``, ``seen_nonce``).

Write functions are batch functions for the group committer (one result per argument);
reads take a connection.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from bes.db.prepared import Prepared, db_time
from bes.db.tables import seen_nonce, service_user


@dataclass(frozen=True, slots=True, kw_only=True)
class UserRow:
    """A user as stored.

    Attributes:
        name: The user's name; it owns their activities.
        admin: May see everything and use BES-Management, worker tokens and the queue view.
        password_hash: argon2id hash of the password (None: no password).
        password_sealed: The password sealed with the service's key, for PasswordDigest
            (None: digest not allowed for this user).
        certificate_subject: Canonical subject DN of the user's certificates.
        certificate_fingerprint: sha256 (hex) of one registered certificate, trusted
            without a CA.
    """

    name: str
    admin: bool = False
    password_hash: str | None = field(default=None, repr=False)
    password_sealed: str | None = field(default=None, repr=False)
    certificate_subject: str | None = None
    certificate_fingerprint: str | None = None


_COLUMNS = (
    service_user.c.name,
    service_user.c.admin,
    service_user.c.password_hash,
    service_user.c.password_sealed,
    service_user.c.certificate_subject,
    service_user.c.certificate_fingerprint,
)


def _row(values: Sequence[object]) -> UserRow:
    name, admin, password_hash, sealed, subject, fingerprint = values
    return UserRow(
        name=str(name),
        admin=bool(admin),
        password_hash=password_hash if isinstance(password_hash, str) else None,
        password_sealed=sealed if isinstance(sealed, str) else None,
        certificate_subject=subject if isinstance(subject, str) else None,
        certificate_fingerprint=fingerprint if isinstance(fingerprint, str) else None,
    )


# ------------------------------------------------------------------------------ reads


def user_by_name(conn: Connection, name: str) -> UserRow | None:
    """The user called ``name``."""
    found = conn.execute(select(*_COLUMNS).where(service_user.c.name == name)).first()
    return _row(found) if found is not None else None


def users_by_certificate(conn: Connection, subject: str | None, fingerprint: str) -> list[UserRow]:
    """Users registered with this certificate's fingerprint or subject (fingerprint first)."""
    condition = service_user.c.certificate_fingerprint == fingerprint
    if subject is not None:
        condition = condition | (service_user.c.certificate_subject == subject)
    rows = [_row(r) for r in conn.execute(select(*_COLUMNS).where(condition))]
    return sorted(rows, key=lambda u: u.certificate_fingerprint != fingerprint)


def list_users(conn: Connection) -> list[UserRow]:
    """Every user, by name."""
    return [_row(r) for r in conn.execute(select(*_COLUMNS).order_by(service_user.c.name))]


def count_users(conn: Connection) -> int:
    """How many users there are."""
    return int(conn.execute(select(func.count()).select_from(service_user)).scalar_one())


# ------------------------------------------------------------------------------ writes


def add_user(conn: Connection, items: Sequence[tuple[UserRow, dt.datetime]]) -> list[bool]:
    """Insert users; False where the name is taken."""
    out = []
    for user, at in items:
        if conn.execute(
            select(service_user.c.name).where(service_user.c.name == user.name)
        ).first():
            out.append(False)
            continue
        conn.execute(
            insert(service_user).values(
                name=user.name,
                admin=user.admin,
                password_hash=user.password_hash,
                password_sealed=user.password_sealed,
                certificate_subject=user.certificate_subject,
                certificate_fingerprint=user.certificate_fingerprint,
                created_at=at,
                changed_at=at,
            )
        )
        out.append(True)
    return out


def set_password(
    conn: Connection, items: Sequence[tuple[str, str | None, str | None, dt.datetime]]
) -> list[bool]:
    """Replace the password of users ``(name, hash, sealed, at)``; False where unknown."""
    out = []
    for name, password_hash, sealed, at in items:
        updated = conn.execute(
            update(service_user)
            .where(service_user.c.name == name)
            .values(password_hash=password_hash, password_sealed=sealed, changed_at=at)
        ).rowcount
        out.append(bool(updated))
    return out


def remove_user(conn: Connection, items: Sequence[str]) -> list[bool]:
    """Delete users by name; False where unknown. Their activities stay (owned by the name)."""
    return [
        bool(conn.execute(delete(service_user).where(service_user.c.name == name)).rowcount)
        for name in items
    ]


def _upsert(dialect_insert: Any) -> Prepared:
    statement = dialect_insert(seen_nonce).values(
        key=bindparam("key"), expires_at=bindparam("expires_at")
    )
    statement = statement.on_conflict_do_update(
        index_elements=[seen_nonce.c.key],
        set_={"expires_at": statement.excluded.expires_at},
        where=seen_nonce.c.expires_at < bindparam("now"),
    )
    return Prepared(statement.returning(seen_nonce.c.key))


# One statement on both dialects (the same SQL: INSERT … ON CONFLICT (key) DO UPDATE … WHERE
# … RETURNING key), built by each dialect's own insert and compiled once: it is on the path
# of every authenticated request.
_REMEMBER: Final = {"sqlite": _upsert(sqlite.insert), "postgresql": _upsert(postgresql.insert)}


def remember_nonces(
    conn: Connection, items: Sequence[tuple[str, dt.datetime, dt.datetime]]
) -> list[bool]:
    """Record keys ``(key, expires_at, now)``; True where the key is new (or its earlier use
    has expired), False for a replay. One statement per key, atomic on both dialects, so two
    replicas that see the same nonce at once cannot both take it."""
    statement = _REMEMBER[conn.dialect.name]
    return [
        bool(
            statement.fetchall(
                conn,
                {
                    "key": key,
                    "expires_at": db_time(conn, expires_at),
                    "now": db_time(conn, now),
                },
            )
        )
        for key, expires_at, now in items
    ]


def purge_nonces(conn: Connection, items: Sequence[dt.datetime]) -> list[int]:
    """Delete the keys that expired before each given time; how many went."""
    return [
        int(conn.execute(delete(seen_nonce).where(seen_nonce.c.expires_at < now)).rowcount)
        for now in items
    ]
