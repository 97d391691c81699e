"""The activities a user submitted from this account, as ``arcsub`` and ``ucc`` keep them.

A JSON-lines file at ``$XDG_DATA_HOME/bes/activities.jsonl`` (by default
``~/.local/share/bes/activities.jsonl``): one line per activity with its endpoint, the endpoint
reference the service returned (needed verbatim by services other than ours), the job name and
when it was submitted. Appends are locked and synced, so two ``bes submit`` at once both land;
a line cut short by a crash is skipped when reading.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bes.client.model import ActivityRef
from bes.ids import ActivityId


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One submitted activity.

    Attributes:
        ref: Its reference.
        endpoint: The BES endpoint it was submitted to.
        name: The document's JobName, or the file name.
        submitted: When (UTC, ISO 8601).
    """

    ref: ActivityRef
    endpoint: str
    name: str
    submitted: str

    @property
    def key(self) -> str:
        """What people type to name it: the activity id, else the address."""
        return self.ref.name


class JobList:
    """The file of submitted activities."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()

    def add(self, ref: ActivityRef, *, endpoint: str, name: str) -> Entry:
        """Record a newly submitted activity."""
        entry = Entry(
            ref=ref,
            endpoint=endpoint,
            name=name,
            submitted=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked("a") as handle:
            handle.write(json.dumps(_to_json(entry)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return entry

    def entries(self) -> list[Entry]:
        """Every recorded activity, oldest first."""
        if not self.path.exists():
            return []
        with self._locked("r") as handle:
            return list(_read(handle))

    def find(self, text: str) -> Entry | None:
        """The entry named by an activity id, a unique id prefix (six characters or more), or
        an address; None if there is none or the prefix is ambiguous."""
        text = text.strip()
        entries = self.entries()
        for entry in entries:
            if text in (entry.ref.activity_id, entry.ref.address):
                return entry
        if len(text) >= 6:
            matches = [e for e in entries if (e.ref.activity_id or "").startswith(text)]
            if len(matches) == 1:
                return matches[0]
        return None

    def forget(self, keys: Iterable[str]) -> int:
        """Remove the entries with these ids or addresses; returns how many went."""
        drop = set(keys)
        if not self.path.exists() or not drop:
            return 0
        with self._locked("r+") as handle:
            everything = list(_read(handle))
            kept = [e for e in everything if not {e.ref.activity_id, e.ref.address} & drop]
            handle.seek(0)
            handle.truncate()
            handle.writelines(json.dumps(_to_json(e)) + "\n" for e in kept)
            handle.flush()
            os.fsync(handle.fileno())
        return len(everything) - len(kept)

    @contextmanager
    def _locked(self, mode: str) -> Iterator[IO[str]]:
        with self.path.open(mode, encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH if mode == "r" else fcntl.LOCK_EX)
            try:
                yield handle
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def default_path() -> Path:
    """``$XDG_DATA_HOME/bes/activities.jsonl``."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "bes" / "activities.jsonl"


def _read(handle: IO[str]) -> Iterator[Entry]:
    for line in handle:
        try:
            data = json.loads(line)
            ref = ActivityRef(
                address=data["address"],
                epr=data["epr"].encode("utf-8"),
                activity_id=ActivityId(data["id"]) if data.get("id") else None,
            )
            yield Entry(
                ref=ref,
                endpoint=data["endpoint"],
                name=data.get("name", ""),
                submitted=data.get("submitted", ""),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a line cut short by a crash, or edited by hand


def _to_json(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.ref.activity_id,
        "address": entry.ref.address,
        "endpoint": entry.endpoint,
        "name": entry.name,
        "submitted": entry.submitted,
        "epr": entry.ref.epr.decode("utf-8"),
    }
