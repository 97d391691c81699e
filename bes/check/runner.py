"""One run of ``bes check``: the checks in order, then the clean-up that terminates every
activity the suite created (whatever happened before)."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

from bes.check import payloads
from bes.check.checks import SUITE, timed
from bes.check.model import Report, Result
from bes.check.session import TERMINAL, Options, Session
from bes.check.staging import Place, is_local, loopback_place
from bes.check.transport import Endpoint
from bes.client.auth import Credential

_BATCH: Final = 100


def run(
    url: str,
    options: Options,
    *,
    credentials: Sequence[Credential] = (),
    ca_file: Path | None = None,
    timeout_s: float = 30.0,
    save: Path | None = None,
    progress: Callable[[Result], None] = lambda _: None,
) -> Report:
    """Run the suite against ``url``; ``progress`` sees each result as it comes."""
    report = Report(endpoint=url, started=dt.datetime.now(dt.UTC))
    started = time.perf_counter()
    endpoint = Endpoint(
        url, credentials=credentials, ca_file=ca_file, timeout_s=timeout_s, save=save
    )
    session = Session(endpoint=endpoint, options=options)
    try:
        with _place(url, options, ca_file) as place:
            session.place = place
            try:
                for check in SUITE:
                    for result in timed(check, session):
                        report.results.append(result)
                        progress(result)
            finally:
                report.cleanup = clean_up(session)
    finally:
        endpoint.close()
    report.dialect = session.dialect + ("" if session.dialect_seen else " (assumed)")
    report.features = dict(session.features)
    report.created = len(session.created)
    report.seconds = time.perf_counter() - started
    return report


@contextlib.contextmanager
def _place(url: str, options: Options, ca_file: Path | None) -> Iterator[Place | None]:
    if options.staging_url:
        yield Place(options.staging_url, verify=str(ca_file) if ca_file else True)
    elif is_local(url):
        with loopback_place() as place:
            yield place
    else:
        yield None


def clean_up(session: Session) -> str:
    """Terminate every activity the suite created; say how that went."""
    if not session.created:
        return "nothing to clean up"
    left: list[str] = []
    for start in range(0, len(session.created), _BATCH):
        batch = session.created[start : start + _BATCH]
        reply = session.terminate("clean-up", batch)
        if reply.envelope is None:
            left.append(f"{len(batch)} not terminated: {reply.problem}")
            continue
        answered = payloads.responses(reply.body)
        if len(answered) != len(batch):
            left.append(f"{len(batch) - len(answered)} without an answer")
    states = _states(session)
    still = [s for s in states if s not in TERMINAL]
    done = f"terminated the {len(session.created)} activities the suite created"
    if left:
        return f"{done}, except: " + "; ".join(left)
    if still:
        return f"{done}; {len(still)} not ended yet ({', '.join(sorted(set(still)))}), as asked"
    return done


def _states(session: Session) -> list[str]:
    states: list[str] = []
    for start in range(0, len(session.created), _BATCH):
        reply = session.statuses("clean-up-status", session.created[start : start + _BATCH])
        for response in payloads.responses(reply.body):
            state = payloads.state_of(response)
            if state is not None:
                states.append(state)
    return states
