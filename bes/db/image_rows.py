"""SQL of users' own VM images (table ``user_image``; see bes.userimages).

Write functions are batch functions for the group committer (one result per argument); reads
take a connection. An image is one owner's, named uniquely among that owner's images; a
published name is unique among published images (checked in the same transaction that
publishes).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, or_, select, update

from bes.db.tables import file_ref, user_image


@dataclass(frozen=True, slots=True, kw_only=True)
class UserImageRow:
    """A user's image as stored."""

    owner: str
    name: str
    sha256: str
    """Of the disk in the owner's file store."""
    format: str
    """Its format as qemu-img reads it (bes.vm.spec.ImageFormat values)."""
    os_type: str | None = None
    min_memory_mib: int | None = None
    published: bool = False
    created_at: dt.datetime


_COLUMNS = (
    user_image.c.owner,
    user_image.c.name,
    user_image.c.sha256,
    user_image.c.format,
    user_image.c.os_type,
    user_image.c.min_memory_mib,
    user_image.c.published,
    user_image.c.created_at,
)


def _row(values: Sequence[object]) -> UserImageRow:
    owner, name, sha256, image_format, os_type, memory, published, created = values
    assert isinstance(created, dt.datetime)
    return UserImageRow(
        owner=str(owner),
        name=str(name),
        sha256=str(sha256),
        format=str(image_format),
        os_type=os_type if isinstance(os_type, str) else None,
        min_memory_mib=int(str(memory)) if memory is not None else None,
        published=bool(published),
        created_at=created,
    )


# ------------------------------------------------------------------------------ reads


def owned(conn: Connection, owner: str, name: str) -> UserImageRow | None:
    """The owner's image of this name."""
    found = conn.execute(
        select(*_COLUMNS).where(user_image.c.owner == owner, user_image.c.name == name)
    ).first()
    return _row(found) if found is not None else None


def named(conn: Connection, name: str) -> list[UserImageRow]:
    """Every owner's image of this name, published ones first."""
    rows = conn.execute(
        select(*_COLUMNS)
        .where(user_image.c.name == name)
        .order_by(user_image.c.published.desc(), user_image.c.owner)
    ).all()
    return [_row(r) for r in rows]


def published(conn: Connection, name: str) -> UserImageRow | None:
    """The published image of this name."""
    found = conn.execute(
        select(*_COLUMNS).where(user_image.c.name == name, user_image.c.published.is_(True))
    ).first()
    return _row(found) if found is not None else None


def visible(conn: Connection, owner: str, *, every: bool, limit: int) -> list[UserImageRow]:
    """The owner's images and the published ones (``every``: all images), by name."""
    query = select(*_COLUMNS)
    if not every:
        query = query.where(or_(user_image.c.owner == owner, user_image.c.published.is_(True)))
    rows = conn.execute(query.order_by(user_image.c.name, user_image.c.owner).limit(limit)).all()
    return [_row(r) for r in rows]


def file_owner(conn: Connection, activity_id: str, sha256: str) -> str | None:
    """Whose stored file with this sha256 the activity was recorded to use."""
    found = conn.execute(
        select(file_ref.c.owner).where(
            file_ref.c.activity_id == activity_id, file_ref.c.sha256 == sha256
        )
    ).first()
    return str(found[0]) if found is not None else None


# ------------------------------------------------------------------------------ writes


def add_image(conn: Connection, items: Sequence[UserImageRow]) -> list[bool]:
    """Record images; False where the owner has an image of that name already."""
    out = []
    for image in items:
        if owned(conn, image.owner, image.name) is not None:
            out.append(False)
            continue
        conn.execute(
            insert(user_image).values(
                owner=image.owner,
                name=image.name,
                sha256=image.sha256,
                format=image.format,
                os_type=image.os_type,
                min_memory_mib=image.min_memory_mib,
                published=image.published,
                created_at=image.created_at,
            )
        )
        out.append(True)
    return out


def remove_image(conn: Connection, items: Sequence[tuple[str, str]]) -> list[bool]:
    """Remove images ``(owner, name)``; False where there was none."""
    return [
        bool(
            conn.execute(
                delete(user_image).where(user_image.c.owner == owner, user_image.c.name == name)
            ).rowcount
        )
        for owner, name in items
    ]


def set_published(conn: Connection, items: Sequence[tuple[str, str, bool]]) -> list[str | None]:
    """Publish or withdraw images ``(owner, name, published)``. None where done; else the
    owner of the published image that already has the name, or ``""`` where there is no
    such image."""
    out: list[str | None] = []
    for owner, name, value in items:
        if value:
            other = published(conn, name)
            if other is not None and other.owner != owner:
                out.append(other.owner)
                continue
        changed = conn.execute(
            update(user_image)
            .where(user_image.c.owner == owner, user_image.c.name == name)
            .values(published=value)
        ).rowcount
        out.append(None if changed else "")
    return out


__all__ = ["UserImageRow"]
