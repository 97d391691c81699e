"""A shell command with the local files it reads and writes, run as one BES activity.

Both workflow engines hand the service the same thing: a command for the guest's shell, the
local files it reads (uploaded to the service's file store and named in the JSDL as Sources,
under the relative name the command uses), and the files it writes (kept by the service and
fetched back to where the engine expects them)::

    task = VmTask(name="count", command="wc -l < data.csv > n.txt",
                  inputs={"data.csv": Path("data.csv")}, outputs={"n.txt": Path("n.txt")})
    ref = client.submit(to_jsdl(task, stage_in(client, task)))
    ...                                    # once the activity has ended:
    fetched = fetch_outputs(client, ref, task, scratch)

Guest names are relative paths inside the job's directory; the command runs there.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import shutil
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bes.client import ActivityRef, ActivityStatus, BESClient, jsdl
from bes.client.faults import NoOutputs
from bes.errors import BesError

STDOUT: Final = "stdout"
STDERR: Final = "stderr"
_TAIL_BYTES: Final = 2000


class TaskError(BesError):
    """A task cannot run as a BES activity (a file outside the working directory, a kind of
    rule or app that has no shell command, …). ``str(error)`` says what to change."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VmTask:
    """One command for the guest's shell and its files.

    Attributes:
        name: The activity's JobName.
        command: Shell text, run with ``shell -c`` in the job's directory.
        inputs: Guest name → local file, uploaded to the file store before submission.
        sources: Guest name → URL the service fetches itself (http, https, ftp).
        outputs: Guest name → local path the file is moved to after the activity finished.
        template: VM template (``tiny``: busybox; ``debian-12``: Debian with Python 3), or
            None for plain JSDL that any BES takes (it picks its own environment).
        shell: The guest's shell.
        memory_mib: Guest memory (default: the template's).
        vcpus: Virtual CPUs.
        wall_time_s: Seconds the activity may run, boot included.
        environment: Environment variables of the command.
    """

    name: str
    command: str
    inputs: Mapping[str, Path] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, Path] = field(default_factory=dict)
    template: str | None = "tiny"
    shell: str = "/bin/sh"
    memory_mib: int | None = None
    vcpus: int | None = None
    wall_time_s: int | None = None
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fetched:
    """What came back from an ended activity.

    Attributes:
        stdout: The command's standard output, downloaded (None if the service keeps none).
        stderr: Its standard error, likewise.
        missing: Guest names of outputs the activity did not leave.
    """

    stdout: Path | None
    stderr: Path | None
    missing: tuple[str, ...]


def guest_name(path: str | os.PathLike[str], root: Path) -> str | None:
    """``path`` as a relative name inside ``root`` (the engine's working directory), or None
    when it lies outside (then the caller maps it elsewhere, or refuses it)."""
    text = os.fspath(path)
    if not text:
        return None
    candidate = Path(text)
    absolute = candidate if candidate.is_absolute() else root / candidate
    normal = Path(os.path.normpath(absolute))
    base = Path(os.path.normpath(root.absolute()))
    if not normal.is_relative_to(base) or normal == base:
        return None
    return normal.relative_to(base).as_posix()


def script(task: VmTask) -> str:
    """The shell text the guest runs: the output folders made first (the engine would have
    made them on a shared file system), then the command, on one line (:func:`one_line`)."""
    folders = sorted({posixpath.dirname(name) for name in task.outputs} - {""})
    prefix = f"mkdir -p -- {' '.join(shlex.quote(f) for f in folders)}\n" if folders else ""
    return one_line(prefix + task.command)


def one_line(text: str) -> str:
    """Shell text without line breaks or tabs that runs ``text``.

    A JSDL Argument is an ``xs:normalizedString``: a service turns its line breaks and tabs
    into spaces, which would join a multi-line script into nonsense. Such a script travels
    escaped for POSIX ``printf %b`` and runs through ``eval`` in the same shell.
    """
    if not any(c in text for c in "\n\r\t"):
        return text
    escaped = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    escaped = escaped.replace("\t", "\\t")
    return f'eval "$(printf %b {shlex.quote(escaped)})"'


def to_jsdl(task: VmTask, uploaded: Mapping[str, str]) -> bytes:
    """The JSDL document of ``task``, its inputs named by the URLs ``uploaded`` (guest name →
    file store URL, from :func:`stage_in`).

    Raises:
        InvalidJsdl: The task gives an invalid document (an unsafe file name, …).
    """
    return jsdl.build(
        [task.shell, "-c", script(task)],
        name=task.name,
        image=task.template or "tiny",
        vm=task.template is not None,
        memory_mib=task.memory_mib,
        vcpus=task.vcpus,
        wall_time_s=task.wall_time_s,
        environment=task.environment or None,
        inputs={**task.sources, **uploaded},
        keep=sorted(task.outputs),
    )


class UploadCache:
    """File store URLs of local files already uploaded by this process, by path, size and
    modification time: a file many tasks read is hashed and sent once, even when tasks are
    submitted from several threads at once (the store refuses a second concurrent upload of
    the same file with 409). Thread-safe."""

    def __init__(self) -> None:
        self._urls: dict[tuple[str, int, int], Future[str]] = {}
        self._lock = threading.Lock()

    def upload(self, client: BESClient, path: Path) -> str:
        """The file store URL of ``path``, uploading it unless this process did (or does).

        Raises:
            TaskError: The file is missing or not a regular file.
            ClientError: The upload failed (over quota, too large, unreachable, …).
        """
        try:
            info = path.stat()
        except OSError as exc:
            raise TaskError(f"the input {path} cannot be read: {exc.strerror}") from exc
        if not path.is_file():
            raise TaskError(f"the input {path} is not a regular file (folders are not moved)")
        key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
        with self._lock:
            known = self._urls.get(key)
            mine = known is None
            if known is None:
                known = self._urls[key] = Future()
        if not mine:
            return known.result()  # another thread's upload of the same file
        try:
            known.set_result(client.upload(path))
        except BaseException as exc:
            with self._lock:
                del self._urls[key]  # a later task tries again
            known.set_exception(exc)
            raise
        return known.result()


def stage_in(client: BESClient, task: VmTask, cache: UploadCache | None = None) -> dict[str, str]:
    """Upload the task's local inputs; guest name → file store URL.

    Raises:
        TaskError: An input is missing or a folder.
        ClientError: An upload failed.
    """
    cache = cache or UploadCache()
    return {name: cache.upload(client, path) for name, path in task.inputs.items()}


def fetch_outputs(client: BESClient, ref: ActivityRef, task: VmTask, scratch: Path) -> Fetched:
    """Download what the ended activity left into ``scratch`` and move each output of the
    task to its local path. The caller removes ``scratch``.

    Raises:
        NoOutputs: The service keeps no files for the activity but the task has outputs.
        ClientError: A download failed.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        client.outputs(ref, scratch)
    except NoOutputs:
        if task.outputs:
            raise
        return Fetched(stdout=None, stderr=None, missing=())
    missing = []
    for name, dest in task.outputs.items():
        found = scratch / "outputs" / name
        if not found.is_file():
            missing.append(name)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(found, dest)
    stdout, stderr = scratch / STDOUT, scratch / STDERR
    return Fetched(
        stdout=stdout if stdout.is_file() else None,
        stderr=stderr if stderr.is_file() else None,
        missing=tuple(missing),
    )


def tail(path: Path | None, limit: int = _TAIL_BYTES) -> str:
    """The end of a downloaded text file, for an error message ("" if there is none)."""
    if path is None:
        return ""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - limit))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").strip()
    return ("…" + text) if size > limit else text


def ended(status: ActivityStatus) -> str:
    """How an activity ended, for people: ``Failed (exit code 2): the job exited with …``."""
    if status.fault is not None:
        return f"unknown to the service ({status.fault})"
    parts = [status.state.value]
    if status.exit_code is not None:
        parts.append(f"(exit code {status.exit_code})")
    text = " ".join(parts)
    return f"{text}: {status.message}" if status.message else text
