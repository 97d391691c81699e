"""The job's disks on the host side: the input archive, the output and scratch disks, and
reading the results back from the output disk without mounting anything (see guest.py)."""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bes.errors import BesError
from bes.vm.guest import input_marker, output_marker, scratch_marker
from bes.vm.spec import ContextFile

_MIB = 1024 * 1024


class GuestResultsMissing(BesError):
    """The guest wrote no results on its output disk."""


class UnsafePath(BesError):
    """A file name that would leave the job's directory."""


@dataclass(frozen=True)
class GuestResults:
    exit_code: int
    stdout: Path
    stderr: Path
    outputs: Mapping[str, Path]
    missing: tuple[str, ...]
    guest_seconds: float | None


def safe_relative(name: str) -> str:
    """A relative path inside the job's directory, or UnsafePath."""
    normal = posixpath.normpath(name)
    if not name or posixpath.isabs(name) or normal == ".." or normal.startswith("../"):
        raise UnsafePath(f"{name!r} is not a path inside the job's directory")
    return normal


def write_input_disk(
    path: Path,
    instance_id: str,
    *,
    inputs: Mapping[str, Path],
    files: Sequence[ContextFile] = (),
) -> None:
    """A tar archive: the marker first, then job/<name> inputs and context/<path> files."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        marker = tarfile.TarInfo(input_marker(instance_id))
        archive.addfile(marker)
        for name, source in sorted(inputs.items()):
            archive.add(str(source), arcname=f"job/{safe_relative(name)}", recursive=True)
        modes = []
        for context in files:
            relative = safe_relative(context.path.lstrip("/"))
            _add_bytes(archive, f"context/{relative}", context.content.encode(), 0o600)
            modes.append(f"{context.mode:o} /{relative}\n")
        if modes:
            _add_bytes(archive, "modes", "".join(modes).encode(), 0o644)


def create_output_disk(path: Path, instance_id: str, size_mib: int) -> None:
    _marked_sparse_file(path, output_marker(instance_id), size_mib)


def create_scratch_disk(path: Path, instance_id: str, size_mib: int) -> None:
    _marked_sparse_file(path, scratch_marker(instance_id), size_mib)


def read_results(disk: Path, instance_id: str, dest: Path) -> GuestResults:
    """Unpack the guest's result archive into ``dest`` (only files and directories)."""
    with disk.open("rb") as device:
        if device.read(len(output_marker(instance_id))) == output_marker(instance_id):
            raise GuestResultsMissing("the guest wrote no results on its output disk")
        device.seek(0)
        try:
            with tarfile.open(fileobj=device, mode="r:") as archive:
                _extract(archive, dest)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise GuestResultsMissing(f"the guest's result archive is unreadable: {exc}") from exc
    try:
        exit_code = int((dest / "exit_code").read_text().strip())
    except (OSError, ValueError) as exc:
        raise GuestResultsMissing("the guest's results carry no exit code") from exc
    for stream in ("stdout", "stderr"):
        (dest / stream).touch()
    outputs_dir = dest / "outputs"
    outputs = {
        str(file.relative_to(outputs_dir)): file
        for file in sorted(outputs_dir.rglob("*"))
        if file.is_file()
    }
    missing_file = dest / "missing"
    missing = tuple(missing_file.read_text().split("\n")) if missing_file.exists() else ()
    return GuestResults(
        exit_code=exit_code,
        stdout=dest / "stdout",
        stderr=dest / "stderr",
        outputs=outputs,
        missing=tuple(name for name in missing if name),
        guest_seconds=_guest_seconds(dest / "timing"),
    )


def _extract(archive: tarfile.TarFile, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for member in archive:
        try:
            relative = safe_relative(member.name)
        except UnsafePath:
            continue
        if relative == ".":
            continue
        target = dest / relative
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        elif member.isfile():
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            if source is None:
                continue
            with source, target.open("wb") as out:
                shutil.copyfileobj(source, out)
        # links, devices and fifos from the guest are not brought back


def _guest_seconds(timing: Path) -> float | None:
    try:
        fields = dict(line.split() for line in timing.read_text().splitlines() if line.strip())
        return round(float(fields["finished"]) - float(fields["started"]), 3)
    except (OSError, ValueError, KeyError):
        return None


def _marked_sparse_file(path: Path, marker: bytes, size_mib: int) -> None:
    with path.open("wb") as disk:
        disk.write(marker)
        disk.truncate(size_mib * _MIB)
    os.chmod(path, 0o600)


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    archive.addfile(info, io.BytesIO(data))
