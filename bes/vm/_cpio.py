"""A gzip-compressed cpio archive in the "newc" format the Linux kernel unpacks as initramfs."""

from __future__ import annotations

import gzip
import stat
from pathlib import Path


class InitramfsWriter:
    """Writes directories, files and symlinks; close() adds the trailer."""

    def __init__(self, path: Path) -> None:
        self._file = gzip.GzipFile(path, "wb", compresslevel=6, mtime=0)
        self._inode = 1

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, b"")

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def close(self) -> None:
        self._entry("TRAILER!!!", 0, b"")
        self._file.close()

    def _entry(self, name: str, mode: int, data: bytes) -> None:
        encoded = name.encode() + b"\0"
        fields = (
            self._inode,  # ino
            mode,
            0,  # uid
            0,  # gid
            2 if stat.S_ISDIR(mode) else 1,  # nlink
            0,  # mtime: reproducible archives
            len(data),
            0,  # devmajor
            0,  # devminor
            0,  # rdevmajor
            0,  # rdevminor
            len(encoded),
            0,  # check
        )
        self._inode += 1
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._file.write(header + encoded)
        self._file.write(b"\0" * _pad(len(header) + len(encoded)))
        self._file.write(data)
        self._file.write(b"\0" * _pad(len(data)))


def _pad(length: int) -> int:
    return (4 - length % 4) % 4
