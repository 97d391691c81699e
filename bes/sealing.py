"""Secrets at rest: values only the service may read back, sealed with a key of its own.

What is sealed: the passwords PasswordDigest needs in clear (a one-way hash cannot check a
digest), and the staging credentials and bearer tokens of JSDL documents, which the worker
that leases the job must be handed. The database alone does not reveal them; the database
and the key together do, so the key lives in a file of its own (mode 0600), outside the
database and its backups, and every replica is given the same file.

The key file holds one Fernet key (AES-128-CBC with HMAC-SHA256, from ``cryptography``) per
line: the first seals, every one opens, so a key is rotated by putting a new one first and
dropping the old one once nothing sealed with it is left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path
from typing import Final

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from bes.errors import BesError, ConfigError

log = logging.getLogger(__name__)

PREFIX: Final = "sealed:v1:"
"""Every sealed value starts with this, so a sealed value is never mistaken for a clear one."""


class UnsealError(BesError):
    """A sealed value could not be opened (another service's key, or damaged)."""


class Sealer:
    """Seals and opens short secrets with the service's key(s).

    Args:
        keys: Fernet keys (URL-safe base64 of 32 bytes), the sealing one first.
    """

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigError("no sealing key given")
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"a sealing key is not a valid key: {exc}") from exc

    @classmethod
    def from_file(cls, path: Path, *, create: bool = False) -> Sealer:
        """The sealer of a key file; with ``create``, a new key is written if it is missing.

        Raises:
            ConfigError: The file is missing (without ``create``), unreadable, readable by
                others, or holds no valid key.
        """
        if create and not path.exists():
            _create_key_file(path)
        try:
            text = path.read_text(encoding="ascii")
            mode = path.stat().st_mode
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the sealing key file {path}: {exc}") from exc
        if mode & 0o077:
            raise ConfigError(f"the sealing key file {path} is readable by others; chmod 600 it")
        keys = [line.strip().encode() for line in text.splitlines() if line.strip()]
        if not keys:
            raise ConfigError(f"the sealing key file {path} holds no key")
        return cls(keys)

    def seal(self, value: str) -> str:
        """``value`` sealed (a different text every time, even for the same value)."""
        return PREFIX + self._fernet.encrypt(value.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        """The value ``sealed`` came from.

        Raises:
            UnsealError: It is not a sealed value, or not sealed with any of our keys.
        """
        if not sealed.startswith(PREFIX):
            raise UnsealError("not a sealed value")
        try:
            return self._fernet.decrypt(sealed[len(PREFIX) :].encode("ascii")).decode()
        except (InvalidToken, UnicodeError) as exc:
            raise UnsealError(
                "a sealed value does not open with this service's key (another key file?)"
            ) from exc


def is_sealed(value: str) -> bool:
    """True for a value :meth:`Sealer.seal` made."""
    return value.startswith(PREFIX)


def _create_key_file(path: Path) -> None:
    """Write a new key, readable by the owner only. It is written whole to a file of its
    own (named uniquely, so neither another process nor another thread shares it), then
    linked into place, so a replica starting at the same moment sees either no file or a
    complete one, and the first link wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, Fernet.generate_key() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return  # another process made it first: use theirs
        log.info("created the sealing key %s: give the same file to every replica", path)
    except OSError as exc:
        raise ConfigError(f"cannot create the sealing key file {path}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
