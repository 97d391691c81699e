"""Users and remembered nonces on SQLite and PostgreSQL: what several replicas share."""

from __future__ import annotations

import datetime as dt
import threading

from bes.db import user_rows
from bes.db.store import Database
from bes.db.user_rows import UserRow

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def test_users_are_added_once_found_changed_and_removed(db: Database) -> None:
    alice = UserRow(name="alice", password_hash="h1", password_sealed="s1")
    assert db.write_sync(user_rows.add_user, (alice, NOW))
    assert not db.write_sync(user_rows.add_user, (alice, NOW))  # the name is taken
    assert db.read_sync(user_rows.count_users) == 1
    found = db.read_sync(user_rows.user_by_name, "alice")
    assert found is not None and found.password_hash == "h1" and not found.admin
    assert db.write_sync(user_rows.set_password, ("alice", "h2", None, NOW))
    changed = db.read_sync(user_rows.user_by_name, "alice")
    assert changed is not None and changed.password_hash == "h2"
    assert changed.password_sealed is None
    assert not db.write_sync(user_rows.set_password, ("bob", "h", None, NOW))
    assert db.write_sync(user_rows.remove_user, "alice")
    assert not db.write_sync(user_rows.remove_user, "alice")
    assert db.read_sync(user_rows.user_by_name, "alice") is None


def test_a_certificate_finds_its_user_by_fingerprint_before_subject(db: Database) -> None:
    db.write_sync(user_rows.add_user, (UserRow(name="a", certificate_subject="CN=A"), NOW))
    db.write_sync(
        user_rows.add_user,
        (UserRow(name="pinned", certificate_subject="CN=A", certificate_fingerprint="f" * 64), NOW),
    )
    by_print = db.read_sync(user_rows.users_by_certificate, "CN=A", "f" * 64)
    assert by_print[0].name == "pinned"
    by_subject = db.read_sync(user_rows.users_by_certificate, "CN=A", "0" * 64)
    assert sorted(u.name for u in by_subject) == ["a", "pinned"]
    assert db.read_sync(user_rows.users_by_certificate, None, "0" * 64) == []


def test_a_nonce_is_taken_once_until_it_expires(db: Database) -> None:
    later = NOW + dt.timedelta(minutes=10)
    assert db.write_sync(user_rows.remember_nonces, ("n:1", later, NOW))
    assert not db.write_sync(user_rows.remember_nonces, ("n:1", later, NOW))  # a replay
    after = later + dt.timedelta(seconds=1)  # expired: the key may be used again
    assert db.write_sync(user_rows.remember_nonces, ("n:1", after + dt.timedelta(hours=1), after))
    assert not db.write_sync(user_rows.remember_nonces, ("n:1", after, after))
    assert db.write_sync(user_rows.purge_nonces, after + dt.timedelta(hours=2)) == 1


def test_replicas_racing_for_one_nonce_let_exactly_one_through(db: Database) -> None:
    replicas = [Database(db.url) for _ in range(4)]
    wins: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(len(replicas) * 4)

    def take(replica: Database, key: str) -> None:
        start.wait(timeout=30)
        won = replica.write_sync(user_rows.remember_nonces, (key, NOW + dt.timedelta(hours=1), NOW))
        with lock:
            wins.append(won)

    try:
        threads = [
            threading.Thread(target=take, args=(replicas[i % 4], "n:race")) for i in range(16)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for replica in replicas:
            replica.close()
    assert len(wins) == 16
    assert wins.count(True) == 1
