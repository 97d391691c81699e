"""The activities a user submitted from this account, as ``arcsub`` and ``ucc`` keep them.

A JSON-lines file at ``$XDG_DATA_HOME/bes/activities.jsonl`` (by default
``~/.local/share/bes/activities.jsonl``): one line per activity with its endpoint, the endpoint
reference the service returned (needed verbatim by services other than ours), the job name and
when it was submitted. Appends are locked and synced, so two ``bes submit`` at once both land;
a line cut short by a crash is skipped when reading.

The list outlives the services it names: a test service is stopped, a laptop leaves the
network. :func:`statuses` asks every endpoint at once, one call each, and an endpoint that
cannot be reached (or refuses the whole call) gives :class:`Unreachable` for its activities
instead of failing the others; a short connect timeout finds a dead host quickly.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from bes.client.faults import ClientError, SoapFault
from bes.client.model import ActivityRef, ActivityStatus
from bes.ids import ActivityId

if TYPE_CHECKING:
    from bes.client.service import BESClient

CONNECT_TIMEOUT_S: Final = 3.0
"""How long :func:`statuses` waits for a TCP connection to an endpoint."""
_PARALLEL: Final = 8


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Unreachable:
    """In place of a status: the activity's endpoint could not be asked.

    Attributes:
        ref: The activity.
        endpoint: Its BES endpoint.
        reason: Why, as a sentence that names the endpoint (the same for all its activities).
        refused: The endpoint answered but refused the whole call (a SOAP fault, e.g. other
            credentials needed), rather than not answering at all.
    """

    ref: ActivityRef
    endpoint: str
    reason: str
    refused: bool = False


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


def statuses(
    chosen: Sequence[tuple[str, ActivityRef]],
    client_for: Callable[[str], BESClient],
    *,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> list[ActivityStatus | Unreachable]:
    """GetActivityStatuses for activities of any number of endpoints.

    One call per endpoint (batched by the client), up to eight endpoints at once. Before it,
    a TCP connection is tried with ``connect_timeout_s`` (unless a proxy is configured for the
    URL), so a host that is gone costs that long once, not the request timeout per activity.

    Args:
        chosen: ``(endpoint, reference)`` pairs, e.g. from :meth:`JobList.entries`.
        client_for: The client to use for an endpoint (called once per endpoint, here).
        connect_timeout_s: Seconds a TCP connection may take.

    Returns:
        One item per pair, in order: its status, or :class:`Unreachable`.
    """
    grouped: dict[str, list[int]] = {}
    for index, (endpoint, _) in enumerate(chosen):
        grouped.setdefault(endpoint, []).append(index)
    clients = {endpoint: client_for(endpoint) for endpoint in grouped}

    def ask(endpoint: str) -> list[ActivityStatus | Unreachable]:
        refs = [chosen[i][1] for i in grouped[endpoint]]
        reason = unreachable_reason(endpoint, connect_timeout_s)
        refused = False
        if reason is None:
            try:
                return list(clients[endpoint].status(refs))
            except SoapFault as exc:
                reason, refused = f"{endpoint} refused the request: {exc}", True
            except ClientError as exc:  # connection, TLS, HTTP, an unreadable answer
                reason = str(exc)
        return [Unreachable(ref=r, endpoint=endpoint, reason=reason, refused=refused) for r in refs]

    found: dict[int, ActivityStatus | Unreachable] = {}
    with ThreadPoolExecutor(max_workers=min(_PARALLEL, len(grouped) or 1)) as pool:
        for endpoint, answers in zip(grouped, pool.map(ask, grouped), strict=True):
            found.update(zip(grouped[endpoint], answers, strict=True))
    return [found[i] for i in range(len(chosen))]


def unreachable_reason(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why no TCP connection to ``url``'s host and port opens within ``timeout_s``, or None
    when one does (or when a proxy is configured for it, which this cannot test)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return f"{url} is not a URL"
    if parts.scheme not in ("http", "https") or not host:
        return None
    if parts.scheme in getproxies() and not proxy_bypass(host):
        return None
    try:
        with socket.create_connection((host, port or _PORTS[parts.scheme]), timeout=timeout_s):
            return None
    except TimeoutError:
        why = f"no connection within {timeout_s:g} s (is the host up and reachable?)"
    except ConnectionRefusedError:
        why = "connection refused (is the service running, on this host and port?)"
    except socket.gaierror:
        why = "the host name is unknown"
    except OSError as exc:
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            why = "the network or host is unreachable"
        else:
            why = exc.strerror or str(exc)
    return f"cannot connect to {url}: {why}"


_PORTS: Final = {"http": 80, "https": 443}


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
