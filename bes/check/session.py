"""One run of the suite against one endpoint: what the checks share (the transport, what was
created, the dialect found so far) and the helpers they use to judge answers."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from lxml import etree

from bes.check import payloads
from bes.check.model import Exchange, Result, Verdict
from bes.check.staging import Place
from bes.check.transport import Endpoint, Reply
from bes.jsdl.schema import validate

FINAL: Final = "GFD.108"
DRAFT: Final = "draft-2007"
TERMINAL: Final = frozenset({"Finished", "Failed", "Cancelled", "Terminated"})
_POLL_S: Final = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """What the user asked of the run."""

    admin: bool = False
    """Run the BES-Management checks (Stop/StartAcceptingNewActivities)."""
    jsdl: tuple[Path, ...] = ()
    """More documents to submit, each a check of its own."""
    staging_url: str | None = None
    """A base URL the endpoint can reach for staging checks (``input.txt`` is read from it,
    ``output-*.txt`` written to it); None: served on loopback for a local endpoint."""
    wait_s: float = 120.0
    """How long to wait for an activity to reach the state a check needs."""


@dataclass(slots=True)
class Session:
    endpoint: Endpoint
    options: Options
    run: str = field(default_factory=lambda: secrets.token_hex(3))
    dialect: str = FINAL
    dialect_seen: bool = False
    created: list[bytes] = field(default_factory=list)
    """Every identifier the suite got back from CreateActivity (all terminated at the end)."""
    notes: dict[str, object] = field(default_factory=dict)
    """What one check leaves for another (the identifiers of the jobs it created, counts)."""
    features: dict[str, str] = field(default_factory=dict)
    place: Place | None = None
    """Where the staging checks put and find their files (None: they SKIP)."""

    def name(self, what: str) -> str:
        """A job name that says whose it is: ``bes-check-RUN-WHAT``."""
        return f"bes-check-{self.run}-{what}"

    # ------------------------------------------------------------------ calls

    def create(self, label: str, document: bytes) -> tuple[Reply, bytes | None]:
        reply = self.endpoint.soap(label, "CreateActivity", payloads.create_activity(document))
        epr = payloads.created_epr(reply.body)
        kept = payloads.kept(epr) if epr is not None else None
        if kept is not None:
            self.created.append(kept)
        return reply, kept

    def statuses(self, label: str, eprs: Sequence[bytes]) -> Reply:
        return self.endpoint.soap(
            label, "GetActivityStatuses", payloads.vector("GetActivityStatuses", eprs)
        )

    def terminate(self, label: str, eprs: Sequence[bytes]) -> Reply:
        return self.endpoint.soap(
            label, "TerminateActivities", payloads.vector("TerminateActivities", eprs)
        )

    def state(self, label: str, epr: bytes) -> tuple[str | None, Reply]:
        reply = self.statuses(label, [epr])
        found = payloads.responses(reply.body)
        return (payloads.state_of(found[0]) if found else None), reply

    def wait_state(
        self, epr: bytes, wanted: frozenset[str], timeout_s: float | None = None
    ) -> tuple[str | None, list[Exchange]]:
        """Poll until the activity is in one of ``wanted`` (or the time is up); the last
        state seen and the first and last exchanges."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.options.wait_s)
        seen: list[Exchange] = []
        while True:
            state, reply = self.state("poll-status", epr)
            seen = [*seen[:1], reply.exchange]
            if state in wanted or state is None or time.monotonic() >= deadline:
                return state, seen
            time.sleep(_POLL_S)

    # ------------------------------------------------------------------ judging

    def schema_problems(self, reply: Reply) -> list[str]:
        """The answer against the project's schemas (GFD.108, JSDL, SOAP, WS-Addressing); a
        draft-2007 endpoint is judged by shape instead (no schema of the draft's messages
        here), which the caller says."""
        if reply.envelope is None or self.dialect == DRAFT:
            return []
        return self.envelope_problems(reply.envelope)

    def envelope_problems(self, envelope: etree._Element) -> list[str]:
        """An envelope (an answer, or a copy of one with a known deviation taken out)
        against the project's schemas."""
        return [f"{p.path}: {p.message}" for p in validate(envelope)]

    def saw_dialect(self, dialect: str) -> None:
        if not self.dialect_seen or dialect == DRAFT:
            self.dialect = dialect
            self.dialect_seen = True


class Verdicts:
    """Builds one check's :class:`Result` (a context manager times it)."""

    def __init__(self, id: str, title: str, rule: str) -> None:
        self.id = id
        self.title = title
        self.rule = rule
        self.evidence: list[Exchange] = []
        self.started = time.perf_counter()

    def keep(self, *items: Reply | Exchange | None) -> None:
        for item in items:
            if item is None:
                continue
            exchange = item.exchange if isinstance(item, Reply) else item
            if exchange not in self.evidence:
                self.evidence.append(exchange)

    def result(
        self, verdict: Verdict, reason: str = "", *, deviation: str = "", rule: str = ""
    ) -> Result:
        return Result(
            id=self.id,
            title=self.title,
            verdict=verdict,
            reason=reason,
            rule=rule or self.rule,
            deviation=deviation,
            evidence=tuple(self.evidence) if verdict is not Verdict.PASS else (),
            seconds=time.perf_counter() - self.started,
        )

    def passed(self, reason: str = "") -> Result:
        return self.result(Verdict.PASS, reason)

    def failed(self, reason: str, *, rule: str = "") -> Result:
        return self.result(Verdict.FAIL, reason, rule=rule)

    def warned(self, reason: str, *, deviation: str = "") -> Result:
        return self.result(Verdict.WARN, reason, deviation=deviation)

    def skipped(self, reason: str) -> Result:
        return self.result(Verdict.SKIP, reason)

    def no_soap(self, reply: Reply, what: str) -> Result:
        """FAIL: the answer to ``what`` was not a SOAP envelope at all."""
        self.keep(reply)
        return self.failed(
            f"{what}: {reply.problem}",
            rule="SOAP 1.1 §6 (HTTP binding): an answer, or a fault, is a SOAP envelope",
        )


def text(element: etree._Element | None) -> str:
    return (element.text or "").strip() if element is not None else ""
