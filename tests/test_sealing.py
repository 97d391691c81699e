"""Sealing secrets at rest: the key file, sealing and opening, rotation, concurrent creation."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from bes.errors import ConfigError
from bes.sealing import PREFIX, Sealer, UnsealError, is_sealed


def test_a_sealed_value_opens_to_itself_and_shows_nothing_of_it(tmp_path: Path) -> None:
    sealer = Sealer.from_file(tmp_path / "secret.key", create=True)
    sealed = sealer.seal("correct horse battery staple ✓")
    assert is_sealed(sealed) and sealed.startswith(PREFIX)
    assert "horse" not in sealed
    assert sealer.open(sealed) == "correct horse battery staple ✓"
    # Sealing twice gives two different texts (no equality leaks between rows).
    assert sealer.seal("same") != sealer.seal("same")
    assert sealer.open(sealer.seal("")) == ""


def test_another_key_or_a_damaged_value_does_not_open(tmp_path: Path) -> None:
    ours = Sealer.from_file(tmp_path / "ours.key", create=True)
    theirs = Sealer.from_file(tmp_path / "theirs.key", create=True)
    sealed = ours.seal("s3cret")
    with pytest.raises(UnsealError, match="another key file"):
        theirs.open(sealed)
    with pytest.raises(UnsealError):
        ours.open(sealed[:-4] + "AAAA")
    with pytest.raises(UnsealError, match="not a sealed value"):
        ours.open("s3cret")
    assert not is_sealed("s3cret")


def test_the_key_file_is_created_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "secret.key"
    first = Sealer.from_file(path, create=True)
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    again = Sealer.from_file(path, create=True)  # exists: read, not replaced
    assert path.read_text() == text
    assert again.open(first.seal("x")) == "x"
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    Sealer.from_file(path, create=True)
    for mode in (0o644, 0o640, 0o604, 0o660):
        path.chmod(mode)
        with pytest.raises(ConfigError, match="chmod 600"):
            Sealer.from_file(path)
    path.chmod(0o400)
    Sealer.from_file(path)


def test_a_missing_empty_or_bad_key_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    with pytest.raises(ConfigError, match="cannot read"):
        Sealer.from_file(path)
    assert not path.exists()
    path.write_text("\n\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="holds no key"):
        Sealer.from_file(path)
    path.write_text("not-a-key\n")
    with pytest.raises(ConfigError, match="not a valid key"):
        Sealer.from_file(path)


def _key_file(path: Path, *keys: bytes) -> Path:
    path.write_bytes(b"".join(k + b"\n" for k in keys))
    path.chmod(0o600)
    return path


def test_rotation_the_first_key_seals_every_key_opens(tmp_path: Path) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    before = Sealer.from_file(_key_file(tmp_path / "a", old))
    by_old = before.seal("sealed before the rotation")

    # Step 1: the new key is added after the old one: the old one still seals.
    added = Sealer.from_file(_key_file(tmp_path / "b", old, new))
    still_old = added.seal("sealed while the new key waits")
    assert before.open(still_old) == "sealed while the new key waits"

    # Step 2: the new key goes first: it seals, and both keys' values open.
    rotated = Sealer.from_file(_key_file(tmp_path / "c", new, old))
    by_new = rotated.seal("sealed after the rotation")
    assert rotated.open(by_old) == "sealed before the rotation"
    assert rotated.open(by_new) == "sealed after the rotation"
    with pytest.raises(UnsealError):
        before.open(by_new)  # only the new key opens what it sealed

    # Step 3: the old key is dropped: what only it sealed no longer opens.
    only_new = Sealer.from_file(_key_file(tmp_path / "d", new))
    assert only_new.open(by_new) == "sealed after the rotation"
    with pytest.raises(UnsealError):
        only_new.open(by_old)


def test_concurrent_creation_gives_everyone_the_same_key(tmp_path: Path) -> None:
    """Replicas (processes) and threads starting together all end up with the one key."""
    path = tmp_path / "data" / "secret.key"
    script = (
        "import sys; from pathlib import Path; from bes.sealing import Sealer;"
        "print(Sealer.from_file(Path(sys.argv[1]), create=True).seal('from a replica'))"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    sealers: list[Sealer] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            sealers.append(Sealer.from_file(path, create=True))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    sealed_by_replicas = [p.communicate(timeout=60)[0].strip() for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert not errors, errors
    assert len(sealers) == 8
    assert len(path.read_text().split()) == 1  # one key, written whole
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret.key"]
    one = Sealer.from_file(path)
    for sealed in sealed_by_replicas:
        assert one.open(sealed) == "from a replica"
    for sealer in sealers:
        assert one.open(sealer.seal("from a thread")) == "from a thread"
