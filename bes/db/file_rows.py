"""SQL of the file store (tables ``stored_file``, ``file_name``, ``file_ref``, ``file_usage``,
``file_upload``; see bes.filestore).

Write functions are batch functions for the group committer (one result per argument); reads
take a connection. Quota is held by one counter row per owner that only conditional UPDATEs
change, so it holds when several replicas take uploads at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, and_, delete, exists, func, insert, not_, or_, select, update

from bes.db.prepared import insert_if_absent
from bes.db.tables import (
    activity,
    file_name,
    file_ref,
    file_upload,
    file_usage,
    stored_file,
    user_image,
)
from bes.states import TERMINAL_STATES

_UNENDED = and_(*(activity.c.state != s.value for s in TERMINAL_STATES))


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredFile:
    """A file of one owner's store."""

    owner: str
    sha256: str
    bytes: int
    created_at: dt.datetime
    last_used_at: dt.datetime
    expired_at: dt.datetime | None = None
    names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    """What reserving room for an upload gave."""

    granted: bool
    total_bytes: int
    """The upload's size (an earlier reservation's, when the upload was under way)."""
    used_bytes: int = 0
    quota_bytes: int = 0


_FILE_COLUMNS = (
    stored_file.c.owner,
    stored_file.c.sha256,
    stored_file.c.bytes,
    stored_file.c.created_at,
    stored_file.c.last_used_at,
    stored_file.c.expired_at,
)


def _file(values: Sequence[object], names: tuple[str, ...] = ()) -> StoredFile:
    owner, sha256, size, created, used, expired = values
    assert isinstance(created, dt.datetime) and isinstance(used, dt.datetime)
    return StoredFile(
        owner=str(owner),
        sha256=str(sha256),
        bytes=int(str(size)),
        created_at=created,
        last_used_at=used,
        expired_at=expired if isinstance(expired, dt.datetime) else None,
        names=names,
    )


# ------------------------------------------------------------------------------ reads


def stored(conn: Connection, owner: str, sha256: str) -> StoredFile | None:
    """The owner's file with this sha256 (also when it expired), or None."""
    found = conn.execute(
        select(*_FILE_COLUMNS).where(stored_file.c.owner == owner, stored_file.c.sha256 == sha256)
    ).first()
    return _file(found) if found is not None else None


def named(conn: Connection, owner: str, name: str) -> str | None:
    """The sha256 the owner's ``name`` is bound to."""
    found = conn.execute(
        select(file_name.c.sha256).where(file_name.c.owner == owner, file_name.c.name == name)
    ).first()
    return str(found[0]) if found is not None else None


def listing(conn: Connection, owner: str, limit: int) -> list[StoredFile]:
    """The owner's live files, newest first, with their names."""
    rows = conn.execute(
        select(*_FILE_COLUMNS)
        .where(stored_file.c.owner == owner, stored_file.c.expired_at.is_(None))
        .order_by(stored_file.c.created_at.desc())
        .limit(limit)
    ).all()
    names: dict[str, list[str]] = {}
    for name, sha256 in conn.execute(
        select(file_name.c.name, file_name.c.sha256)
        .where(file_name.c.owner == owner)
        .order_by(file_name.c.name)
    ):
        names.setdefault(str(sha256), []).append(str(name))
    return [_file(r, tuple(names.get(str(r[1]), ()))) for r in rows]


def usage(conn: Connection, owner: str) -> tuple[int, int | None]:
    """The owner's used bytes (files and uploads under way) and own quota (None: default)."""
    found = conn.execute(
        select(file_usage.c.used_bytes, file_usage.c.quota_bytes).where(file_usage.c.owner == owner)
    ).first()
    if found is None:
        return 0, None
    return int(found[0]), int(found[1]) if found[1] is not None else None


def upload_total(conn: Connection, owner: str, sha256: str) -> int | None:
    """The declared size of the owner's upload under way of this sha256, or None."""
    found = conn.execute(
        select(file_upload.c.total_bytes).where(
            file_upload.c.owner == owner, file_upload.c.sha256 == sha256
        )
    ).first()
    return int(found[0]) if found is not None else None


def in_use_by(conn: Connection, owner: str, sha256: str) -> str | None:
    """An activity not yet ended that names this file, or None."""
    found = conn.execute(
        select(file_ref.c.activity_id)
        .join(activity, activity.c.id == file_ref.c.activity_id)
        .where(file_ref.c.owner == owner, file_ref.c.sha256 == sha256, _UNENDED)
        .limit(1)
    ).first()
    return str(found[0]) if found is not None else None


def image_of(conn: Connection, owner: str, sha256: str) -> str | None:
    """The name of one of the owner's images (bes.userimages) that is this file, or None."""
    found = conn.execute(
        select(user_image.c.name)
        .where(user_image.c.owner == owner, user_image.c.sha256 == sha256)
        .limit(1)
    ).first()
    return str(found[0]) if found is not None else None


def store_totals(conn: Connection) -> tuple[int, int]:
    """Bytes held for every owner (files and uploads under way) and live files."""
    used = conn.execute(select(func.coalesce(func.sum(file_usage.c.used_bytes), 0))).scalar_one()
    files = conn.execute(
        select(func.count()).select_from(stored_file).where(stored_file.c.expired_at.is_(None))
    ).scalar_one()
    return int(used), int(files)


# ------------------------------------------------------------------------------ writes


def _ensure_usage(conn: Connection, owner: str) -> None:
    insert_if_absent(conn, file_usage, file_usage.c.owner, owner=owner, used_bytes=0)


def _release(conn: Connection, owner: str, size: int) -> None:
    if size:
        floor = func.max if conn.dialect.name == "sqlite" else func.greatest
        conn.execute(
            update(file_usage)
            .where(file_usage.c.owner == owner)
            .values(used_bytes=floor(file_usage.c.used_bytes - size, 0))
        )


def reserve_upload(
    conn: Connection, items: Sequence[tuple[str, str, int, int, dt.datetime]]
) -> list[Reservation]:
    """Reserve room for uploads ``(owner, sha256, total_bytes, default_quota, at)``.

    An upload already under way keeps its reservation (and its size: the answer's
    ``total_bytes``). Otherwise the owner's counter grows by the size only if it stays within
    the quota, in one conditional UPDATE.
    """
    out = []
    for owner, sha256, total, default_quota, at in items:
        # The owner's counter row, locked first: replicas starting the same upload at once
        # take turns, so the second finds the first's upload instead of inserting it again.
        _ensure_usage(conn, owner)
        conn.execute(
            select(file_usage.c.owner).where(file_usage.c.owner == owner).with_for_update()
        )
        existing = upload_total(conn, owner, sha256)
        if existing is not None:
            conn.execute(
                update(file_upload)
                .where(file_upload.c.owner == owner, file_upload.c.sha256 == sha256)
                .values(updated_at=at)
            )
            out.append(Reservation(granted=True, total_bytes=existing))
            continue
        quota = func.coalesce(file_usage.c.quota_bytes, default_quota)
        granted = conn.execute(
            update(file_usage)
            .where(file_usage.c.owner == owner, file_usage.c.used_bytes + total <= quota)
            .values(used_bytes=file_usage.c.used_bytes + total)
        ).rowcount
        if not granted:
            used, own_quota = usage(conn, owner)
            out.append(
                Reservation(
                    granted=False,
                    total_bytes=total,
                    used_bytes=used,
                    quota_bytes=own_quota if own_quota is not None else default_quota,
                )
            )
            continue
        conn.execute(
            insert(file_upload).values(owner=owner, sha256=sha256, total_bytes=total, updated_at=at)
        )
        out.append(Reservation(granted=True, total_bytes=total))
    return out


def touch_upload(conn: Connection, items: Sequence[tuple[str, str, dt.datetime]]) -> list[bool]:
    """Mark uploads ``(owner, sha256, at)`` as moving; False where none is under way."""
    return [
        bool(
            conn.execute(
                update(file_upload)
                .where(file_upload.c.owner == owner, file_upload.c.sha256 == sha256)
                .values(updated_at=at)
            ).rowcount
        )
        for owner, sha256, at in items
    ]


def finish_upload(
    conn: Connection, items: Sequence[tuple[str, str, str, dt.datetime]]
) -> list[bool]:
    """Turn completed uploads ``(owner, upload key, sha256, at)`` into stored files (their
    reservation becomes the file's usage; the key is the sha256 when it was known up front).
    False where no upload was under way."""
    out = []
    for owner, key, sha256, at in items:
        total = upload_total(conn, owner, key)
        if total is None:
            out.append(False)
            continue
        conn.execute(
            delete(file_upload).where(file_upload.c.owner == owner, file_upload.c.sha256 == key)
        )
        current = stored(conn, owner, sha256)
        if current is not None and current.expired_at is None:
            _release(conn, owner, total)  # stored meanwhile (another upload of the same file)
            conn.execute(
                update(stored_file)
                .where(stored_file.c.owner == owner, stored_file.c.sha256 == sha256)
                .values(last_used_at=at)
            )
        elif current is not None:
            conn.execute(
                update(stored_file)
                .where(stored_file.c.owner == owner, stored_file.c.sha256 == sha256)
                .values(bytes=total, created_at=at, last_used_at=at, expired_at=None)
            )
        else:
            conn.execute(
                insert(stored_file).values(
                    owner=owner, sha256=sha256, bytes=total, created_at=at, last_used_at=at
                )
            )
        out.append(True)
    return out


def abandon_upload(conn: Connection, items: Sequence[tuple[str, str]]) -> list[bool]:
    """Drop uploads ``(owner, sha256)`` and give their reservation back."""
    out = []
    for owner, sha256 in items:
        total = upload_total(conn, owner, sha256)
        if total is not None:
            conn.execute(
                delete(file_upload).where(
                    file_upload.c.owner == owner, file_upload.c.sha256 == sha256
                )
            )
            _release(conn, owner, total)
        out.append(total is not None)
    return out


def stale_uploads(conn: Connection, items: Sequence[dt.datetime]) -> list[list[tuple[str, str]]]:
    """Drop the uploads that have not moved since each given time; which went."""
    out = []
    for before in items:
        gone = [
            (str(o), str(s))
            for o, s in conn.execute(
                select(file_upload.c.owner, file_upload.c.sha256).where(
                    file_upload.c.updated_at < before
                )
            )
        ]
        abandon_upload(conn, gone)
        out.append(gone)
    return out


def _mark_used(conn: Connection, owner: str, sha256: str, at: dt.datetime) -> bool:
    """Mark the owner's live file used now; False if there is none."""
    return bool(
        conn.execute(
            update(stored_file)
            .where(
                stored_file.c.owner == owner,
                stored_file.c.sha256 == sha256,
                stored_file.c.expired_at.is_(None),
            )
            .values(last_used_at=at)
        ).rowcount
    )


def use_files(conn: Connection, items: Sequence[tuple[str, str, str, dt.datetime]]) -> list[bool]:
    """Record that activities use stored files ``(activity_id, owner, sha256, at)``; False
    where the file is not (or no longer) stored."""
    out = []
    for activity_id, owner, sha256, at in items:
        live = _mark_used(conn, owner, sha256, at)
        if (
            live
            and not conn.execute(
                select(file_ref.c.sha256).where(
                    file_ref.c.activity_id == activity_id, file_ref.c.sha256 == sha256
                )
            ).first()
        ):
            conn.execute(
                insert(file_ref).values(activity_id=activity_id, owner=owner, sha256=sha256)
            )
        out.append(bool(live))
    return out


def bind_name(conn: Connection, items: Sequence[tuple[str, str, str, dt.datetime]]) -> list[bool]:
    """Bind names ``(owner, name, sha256, at)`` (replacing earlier bindings); marks the file
    used. False where the file is not stored."""
    out = []
    for owner, name, sha256, at in items:
        live = _mark_used(conn, owner, sha256, at)
        if live:
            conn.execute(
                delete(file_name).where(file_name.c.owner == owner, file_name.c.name == name)
            )
            conn.execute(
                insert(file_name).values(owner=owner, name=name, sha256=sha256, bound_at=at)
            )
        out.append(bool(live))
    return out


def unbind_name(conn: Connection, items: Sequence[tuple[str, str]]) -> list[bool]:
    """Remove names ``(owner, name)``; False where unknown."""
    return [
        bool(
            conn.execute(
                delete(file_name).where(file_name.c.owner == owner, file_name.c.name == name)
            ).rowcount
        )
        for owner, name in items
    ]


def remove_file(
    conn: Connection, items: Sequence[tuple[str, str, dt.datetime]]
) -> list[int | None]:
    """Remove stored files ``(owner, sha256, at)`` at their owner's request: the row is marked
    expired, its names go, its bytes are given back. None where there was no live file."""
    out: list[int | None] = []
    for owner, sha256, at in items:
        gone = _expire_one(conn, owner, sha256, at)
        out.append(gone)
    return out


def _expire_one(conn: Connection, owner: str, sha256: str, at: dt.datetime) -> int | None:
    found = conn.execute(
        update(stored_file)
        .where(
            stored_file.c.owner == owner,
            stored_file.c.sha256 == sha256,
            stored_file.c.expired_at.is_(None),
        )
        .values(expired_at=at)
        .returning(stored_file.c.bytes)
    ).first()
    if found is None:
        return None
    conn.execute(delete(file_name).where(file_name.c.owner == owner, file_name.c.sha256 == sha256))
    _release(conn, owner, int(found[0]))
    return int(found[0])


def expire_files(
    conn: Connection, items: Sequence[tuple[dt.datetime, dt.datetime, int]]
) -> list[list[tuple[str, str]]]:
    """For each ``(unused_since, now, limit)``: mark files used by an activity not yet ended as
    used now, then expire up to ``limit`` live files unused since ``unused_since``; which
    expired (their blobs are the caller's to delete). A file one of its owner's images uses
    never expires."""
    out = []
    for before, now, limit in items:
        in_use = exists(
            select(file_ref.c.sha256)
            .join(activity, activity.c.id == file_ref.c.activity_id)
            .where(
                file_ref.c.owner == stored_file.c.owner,
                file_ref.c.sha256 == stored_file.c.sha256,
                _UNENDED,
            )
        )
        imaged = exists(
            select(user_image.c.name).where(
                user_image.c.owner == stored_file.c.owner,
                user_image.c.sha256 == stored_file.c.sha256,
            )
        )
        conn.execute(
            update(stored_file)
            .where(stored_file.c.expired_at.is_(None), stored_file.c.last_used_at < before, in_use)
            .values(last_used_at=now)
        )
        candidates = conn.execute(
            select(stored_file.c.owner, stored_file.c.sha256)
            .where(
                stored_file.c.expired_at.is_(None),
                stored_file.c.last_used_at < before,
                not_(or_(in_use, imaged)),
            )
            .limit(limit)
        ).all()
        expired = []
        for owner, sha256 in candidates:
            if _expire_one(conn, str(owner), str(sha256), now) is not None:
                expired.append((str(owner), str(sha256)))
        out.append(expired)
    return out


def set_quota(conn: Connection, items: Sequence[tuple[str, int | None]]) -> list[bool]:
    """Set owners' quotas ``(owner, bytes or None for the site's default)``."""
    for owner, quota in items:
        _ensure_usage(conn, owner)
        conn.execute(
            update(file_usage).where(file_usage.c.owner == owner).values(quota_bytes=quota)
        )
    return [True] * len(items)


__all__ = ["Reservation", "StoredFile"]
