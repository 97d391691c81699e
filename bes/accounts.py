"""Users and their credentials: how passwords are kept and checked, certificates mapped,
nonces remembered. The policy that decides who calls (bes.authn) asks this module.

Passwords are kept two ways (the trade-off is documented in the README):

* an **argon2id** hash (argon2-cffi's defaults, RFC 9106) checks PasswordText and HTTP Basic.
  A verification costs tens of milliseconds of CPU by design, so successful checks are
  remembered for :data:`VERIFIED_FOR_S` seconds under a keyed hash of name, password and
  stored hash (never the password itself), and at most :data:`HASHING_AT_ONCE` run at a time,
  on threads, so the event loop never waits for one;
* **sealed** with the service's key (bes.sealing), for WS-Security PasswordDigest, whose check
  needs the password itself. A user made with ``--no-digest`` has no sealed copy.

Lookups are cached for a few seconds (:data:`LOOKUP_TTL_S`): a removed user or a changed
password takes effect on every replica within that time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from typing import Final, Generic, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error, InvalidHashError

from bes.db import user_rows
from bes.db.store import Database
from bes.db.user_rows import UserRow
from bes.errors import ConfigError
from bes.sealing import Sealer, UnsealError

VERIFIED_FOR_S: Final = 60.0
LOOKUP_TTL_S: Final = 5.0
HASHING_AT_ONCE: Final = 2
_CACHE_SIZE: Final = 10_000
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}\Z")
_PURGE_EVERY_S: Final = 60.0

K = TypeVar("K")
V = TypeVar("V")


class _Expiring(Generic[K, V]):
    """A bounded map whose entries expire (least recently stored go first when full)."""

    def __init__(self, ttl_s: float, size: int = _CACHE_SIZE) -> None:
        self._ttl_s = ttl_s
        self._size = size
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> tuple[bool, V | None]:
        found = self._items.get(key)
        if found is None or found[0] < time.monotonic():
            return False, None
        return True, found[1]

    def put(self, key: K, value: V) -> None:
        self._items[key] = (time.monotonic() + self._ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


def check_name(name: str) -> str:
    """``name`` if it is a valid user name.

    Raises:
        ConfigError: It is not (1 to 128 letters, digits, dots, dashes, underscores, @).
    """
    if not _NAME.match(name):
        raise ConfigError(
            f"user name {name!r}: use 1 to 128 letters, digits, dots, dashes, underscores or @"
        )
    return name


class Accounts:
    """The users of one service database.

    Args:
        db: The service's database.
        sealer: Seals and opens the passwords kept for PasswordDigest.
        hasher: The argon2 hasher (tests pass cheaper parameters).
    """

    def __init__(
        self, db: Database, sealer: Sealer, *, hasher: PasswordHasher | None = None
    ) -> None:
        self.db = db
        self.sealer = sealer
        self.hasher = hasher or PasswordHasher()
        self._verified: _Expiring[bytes, bool] = _Expiring(VERIFIED_FOR_S)
        self._users: _Expiring[str, UserRow | None] = _Expiring(LOOKUP_TTL_S)
        self._by_certificate: _Expiring[tuple[str | None, str], UserRow | None] = _Expiring(
            LOOKUP_TTL_S
        )
        # Opened PasswordDigest passwords, by their sealed text (a digest check costs a
        # decryption otherwise); kept as briefly as lookups, in this process's memory only.
        self._opened: _Expiring[str, str] = _Expiring(LOOKUP_TTL_S)
        self._any: tuple[float, bool] = (0.0, False)
        self._key = secrets.token_bytes(32)  # keys the verification cache; never leaves memory
        self._hashing = asyncio.Semaphore(HASHING_AT_ONCE)
        self._purged_at = 0.0

    # ------------------------------------------------------------------ administration

    def new_user(
        self,
        name: str,
        *,
        admin: bool = False,
        password: str | None = None,
        digest: bool = True,
        certificate_subject: str | None = None,
        certificate_fingerprint: str | None = None,
    ) -> UserRow:
        """The row for a new user (not stored yet)."""
        password_hash, sealed = self.password_columns(password, digest=digest)
        return UserRow(
            name=check_name(name),
            admin=admin,
            password_hash=password_hash,
            password_sealed=sealed,
            certificate_subject=certificate_subject,
            certificate_fingerprint=certificate_fingerprint,
        )

    def password_columns(self, password: str | None, *, digest: bool) -> tuple[str | None, ...]:
        """``(hash, sealed)`` to store for ``password``."""
        if password is None:
            return None, None
        if not password:
            raise ConfigError("an empty password is not a password")
        return self.hasher.hash(password), self.sealer.seal(password) if digest else None

    # ------------------------------------------------------------------ lookups

    async def any_users(self) -> bool:
        """Whether any user exists (cached briefly: a first user secures the service on
        every replica within :data:`LOOKUP_TTL_S`)."""
        checked_at, found = self._any
        if time.monotonic() - checked_at < LOOKUP_TTL_S:
            return found
        found = await self.db.read(user_rows.count_users) > 0
        self._any = (time.monotonic(), found)
        return found

    async def user(self, name: str) -> UserRow | None:
        """The user called ``name``, if any."""
        hit, row = self._users.get(name)
        if hit:
            return row
        row = await self.db.read(user_rows.user_by_name, name)
        self._users.put(name, row)
        return row

    async def user_of_certificate(self, subject: str | None, fingerprint: str) -> UserRow | None:
        """The user a certificate stands for: the one registered with its fingerprint, else
        the one registered with its subject (when several share a subject, none: ambiguous)."""
        hit, row = self._by_certificate.get((subject, fingerprint))
        if hit:
            return row
        rows = await self.db.read(user_rows.users_by_certificate, subject, fingerprint)
        if rows and rows[0].certificate_fingerprint == fingerprint:
            row = rows[0]
        else:
            row = rows[0] if len(rows) == 1 else None
        self._by_certificate.put((subject, fingerprint), row)
        return row

    # ------------------------------------------------------------------ checks

    async def password_matches(self, user: UserRow, password: str) -> bool:
        """Whether ``password`` is the user's (argon2 verification, on a thread)."""
        if user.password_hash is None:
            return False
        key = hmac.new(
            self._key,
            b"\0".join((user.name.encode(), password.encode(), user.password_hash.encode())),
            hashlib.sha256,
        ).digest()
        hit, _ = self._verified.get(key)
        if hit:
            return True
        async with self._hashing:
            matches = await asyncio.to_thread(_verify, self.hasher, user.password_hash, password)
        if matches:
            self._verified.put(key, True)
        return matches

    def digest_password(self, user: UserRow) -> str | None:
        """The user's password for a PasswordDigest check; None if they have none kept."""
        if user.password_sealed is None:
            return None
        hit, opened = self._opened.get(user.password_sealed)
        if hit and opened is not None:
            return opened
        try:
            opened = self.sealer.open(user.password_sealed)
            self._opened.put(user.password_sealed, opened)
            return opened
        except UnsealError as exc:
            raise ConfigError(
                f"the password of user {user.name} was sealed with another key: {exc}"
            ) from exc

    async def first_use(self, key: str, expires_at: dt.datetime) -> bool:
        """Record a nonce (or a signature) as used until ``expires_at``; False if it was
        used already (a replay), on this replica or any other."""
        now = dt.datetime.now(dt.UTC)
        if time.monotonic() - self._purged_at > _PURGE_EVERY_S:
            self._purged_at = time.monotonic()
            await self.db.write(user_rows.purge_nonces, now)
        return await self.db.write(user_rows.remember_nonces, (key, expires_at, now))

    def forget_cached(self) -> None:
        """Drop every cached lookup and verification (tests, and after administration)."""
        self._verified.clear()
        self._opened.clear()
        self._users.clear()
        self._by_certificate.clear()
        self._any = (0.0, False)


def _verify(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    try:
        return hasher.verify(password_hash, password)
    except (InvalidHashError, Argon2Error):  # a mismatch, or a hash argon2 cannot read
        return False
