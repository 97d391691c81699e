"""The shared storage (bes.storage) on a real directory: objects appear whole or not at all,
listings by prefix, removal, locks held against another process, and keys that would leave
the storage refused before anything is touched."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from bes.backends.desktopgrid.outputs import OutputStore
from bes.ids import BackendJobId
from bes.storage import DirectoryStorage, NoSuchKey, StorageBusy, UnsafeKey
from bes.vm.media import UnsafePath


@pytest.fixture
def storage(tmp_path: Path) -> DirectoryStorage:
    return DirectoryStorage(tmp_path / "shared")


def every_file(top: Path) -> list[str]:
    return sorted(str(p.relative_to(top)) for p in top.rglob("*") if p.is_file())


def test_an_object_appears_only_when_its_writer_closes(storage: DirectoryStorage) -> None:
    key = "outputs/g1/1/result.txt"
    with storage.writer(key) as out:
        out.write(b"first half, ")
        out.flush()
        assert storage.size(key) is None
        assert storage.listing("outputs") == []
        with pytest.raises(NoSuchKey):
            storage.open(key)
        out.write(b"second half")
    assert storage.size(key) == len(b"first half, second half")
    with storage.open(key) as read:
        assert read.read() == b"first half, second half"
    assert every_file(storage.root) == ["outputs/g1/1/result.txt"]  # nothing else left


def test_a_failed_write_leaves_the_object_as_it_was(storage: DirectoryStorage) -> None:
    key = "files/abc/0123"
    with storage.writer(key) as out:
        out.write(b"version 1")
    with pytest.raises(OSError, match="disk gone"), storage.writer(key) as out:
        out.write(b"version 2, cut sh")
        raise OSError("disk gone")
    with storage.open(key) as read:
        assert read.read() == b"version 1"
    assert every_file(storage.root) == ["files/abc/0123"]


def test_a_reader_never_sees_half_an_object(storage: DirectoryStorage) -> None:
    """A reader polling while a writer replaces an object reads one version or the other,
    whole, every time."""
    key = "outputs/g2/1/big"
    old, new = b"o" * 300_000, b"n" * 500_000
    with storage.writer(key) as out:
        out.write(old)
    seen: set[int] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            with storage.open(key) as source:
                seen.add(len(source.read()))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(20):
            with storage.writer(key) as out:
                for start in range(0, len(new), 4096):
                    out.write(new[start : start + 4096])
            with storage.writer(key) as out:
                out.write(old)
    finally:
        stop.set()
        reader.join(10)
    assert seen <= {len(old), len(new)} and len(old) in seen


def test_listing_by_prefix(storage: DirectoryStorage) -> None:
    for key, data in {
        "outputs/g1/1/stdout": b"out",
        "outputs/g1/1/outputs/a/b.txt": b"deep",
        "outputs/g1/2/stdout": b"other attempt",
        "outputs/g10/1/stdout": b"another job",
        "files/k/sha": b"a file",
    }.items():
        with storage.writer(key) as out:
            out.write(data)
    assert storage.listing("outputs/g1/1") == [("outputs/a/b.txt", 4), ("stdout", 3)]
    assert [key for key, _ in storage.listing("outputs/g1")] == [
        "1/outputs/a/b.txt",
        "1/stdout",
        "2/stdout",
    ]
    assert len(storage.listing("")) == 5
    assert storage.listing("outputs/nothing") == []
    assert storage.listing("outputs/g1/1/stdout") == []  # an object is not a folder
    # An object being written is counted only when asked for (bytes under way).
    with storage.writer("outputs/g1/1/growing") as out:
        out.write(b"12345")
        out.flush()
        assert storage.listing("outputs/g1/1") == [("outputs/a/b.txt", 4), ("stdout", 3)]
        incomplete = storage.listing("outputs/g1/1", incomplete=True)
        assert sum(size for _, size in incomplete) == 4 + 3 + 5


def test_delete_and_delete_prefix(storage: DirectoryStorage) -> None:
    for key in ("outputs/g1/1/stdout", "outputs/g1/2/stdout", "outputs/g2/1/stdout"):
        with storage.writer(key) as out:
            out.write(b"x")
    storage.delete("outputs/g1/1/stdout")
    storage.delete("outputs/g1/1/stdout")  # gone already: nothing to do
    assert storage.size("outputs/g1/1/stdout") is None
    storage.delete_prefix("outputs/g1")
    storage.delete_prefix("outputs/g1")
    assert storage.listing("outputs") == [("g2/1/stdout", 1)]
    with pytest.raises(UnsafeKey, match="never removed"):
        storage.delete_prefix("")
    assert storage.listing("outputs") == [("g2/1/stdout", 1)]


@pytest.mark.parametrize(
    "key",
    [
        "../outside",
        "outputs/../../outside",
        "/etc/passwd",
        "outputs//stdout",
        "outputs/./stdout",
        "outputs/",
        "",
        "a\0b",
        "outputs/g1/1/stdout.partial",
        "files/k/sha.lock",
    ],
)
def test_keys_that_leave_the_storage_are_refused(tmp_path: Path, key: str) -> None:
    storage = DirectoryStorage(tmp_path / "shared")
    with (tmp_path / "outside").open("wb") as secret:
        secret.write(b"not yours")
    for attempt in (
        lambda: storage.writer(key).__enter__(),
        lambda: storage.appender(key).__enter__(),
        lambda: storage.open(key),
        lambda: storage.size(key),
        lambda: storage.delete(key),
        lambda: storage.delete_prefix(key),
        lambda: storage.rename("files/ok", key),
        lambda: storage.lock(key).__enter__(),
    ):
        with pytest.raises(UnsafeKey) as refused:
            attempt()
        if key:  # says which key and why
            assert str(refused.value).startswith(f"{key!r} is not a storage key")
    if key:  # the empty key is the whole storage, as a prefix only
        with pytest.raises(UnsafeKey):
            storage.listing(key)
    assert (tmp_path / "outside").read_bytes() == b"not yours"
    assert not (tmp_path / "shared").exists()  # nothing was created either


def test_an_upload_in_parts_is_renamed_into_place(storage: DirectoryStorage) -> None:
    part = "files/k/partial/upload-1"
    with storage.appender(part) as out:
        out.write(b"0123")
    with pytest.raises(ConnectionError), storage.appender(part) as out:
        out.write(b"4567")
        raise ConnectionError("the client went away")
    assert storage.size(part) == 8  # what arrived is kept, to resume from
    with storage.appender(part) as out:
        out.write(b"89")
    assert storage.size("files/k/sha") is None
    storage.rename(part, "files/k/sha")
    assert storage.size(part) is None
    with storage.open("files/k/sha") as read:
        assert read.read() == b"0123456789"
    with pytest.raises(NoSuchKey):
        storage.rename(part, "files/k/sha")


def test_a_lock_is_held_against_this_process_and_another(storage: DirectoryStorage) -> None:
    key = "files/k/partial/abc"
    probe = textwrap.dedent(
        f"""
        from pathlib import Path
        from bes.storage import DirectoryStorage, StorageBusy
        try:
            with DirectoryStorage(Path({str(storage.root)!r})).lock({key!r}):
                print("held")
        except StorageBusy as exc:
            print("busy:", exc)
        """
    )

    def other_process() -> str:
        done = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
        )
        return done.stdout.strip()

    with storage.lock(key):
        with pytest.raises(StorageBusy, match="locked"), storage.lock(key):
            pass
        assert other_process().startswith("busy: 'files/k/partial/abc' is locked")
    assert other_process() == "held"
    with storage.lock(key):  # let go: free again, and no lock file left behind
        pass
    assert every_file(storage.root) == []


def test_the_service_layout_is_kept(tmp_path: Path) -> None:
    """The default storage is the data directory: kept outputs stay where existing installs
    have them, ``DATA_DIR/outputs/<job>/<epoch>/NAME``."""
    outputs = OutputStore(DirectoryStorage(tmp_path), max_bytes=1000)
    job = BackendJobId("gJob1")
    with outputs.writer(job, 2, "outputs/result.txt") as out:
        out.write(b"42")
    assert (tmp_path / "outputs" / "gJob1" / "2" / "outputs" / "result.txt").read_bytes() == b"42"
    assert outputs.attempt_dir(job, 2) == tmp_path / "outputs" / "gJob1" / "2"
    assert outputs.files(job, 2) == {"outputs/result.txt": 2}
    assert outputs.uploaded(job, 2, ["./outputs/result.txt"]) == {"outputs/result.txt": 2}
    with pytest.raises(UnsafePath):
        outputs.writer(job, 2, "../../escape").__enter__()
    with pytest.raises(UnsafePath):
        outputs.writer(job, 2, "outputs/sneaky.partial").__enter__()
    with outputs.writer(job, 1, "stdout") as out:
        out.write(b"an earlier attempt")
    outputs.keep_only(job, 2)
    assert outputs.files(job, 1) == {} and outputs.used_bytes(job, 2) == 2
    outputs.keep_only(job, None)
    assert every_file(tmp_path) == []
