"""What ``bes check`` finds: one :class:`Result` per check, with its verdict and evidence, and
the :class:`Report` of a run."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    PASS = "PASS"  # noqa: S105 (a verdict, not a password)
    FAIL = "FAIL"
    """The endpoint breaks a rule of the standard (cited)."""
    WARN = "WARN"
    """Works, but not as the standard says: a known deviation of a deployed implementation
    (named), or something a shared endpoint explains (other users' activities)."""
    SKIP = "SKIP"
    """Not run, with why: not applicable, needs --admin, the endpoint says it does not
    support it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Exchange:
    """One request and what came back, byte for byte."""

    label: str
    method: str
    url: str
    request_headers: Mapping[str, str]
    request: bytes
    status: int | None = None
    """None: no answer at all (``error`` says why)."""
    response_headers: Mapping[str, str] = field(default_factory=dict)
    response: bytes = b""
    seconds: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "method": self.method,
            "url": self.url,
            "status": self.status,
            "seconds": round(self.seconds, 4),
            "error": self.error,
            "request": self.request.decode("utf-8", "replace"),
            "response": self.response.decode("utf-8", "replace"),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """The outcome of one check."""

    id: str
    title: str
    verdict: Verdict
    reason: str = ""
    """Why it is not PASS (or, for a PASS, what was found: the dialect, a feature)."""
    rule: str = ""
    """The rule the check is about: ``GFD.108 §6.1``, ``JSDL 1.0 §7``, ``HPC Basic Profile §3``."""
    deviation: str = ""
    """The name of a known deviation of a deployed implementation, when one explains a WARN."""
    evidence: tuple[Exchange, ...] = ()
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "rule": self.rule,
            "deviation": self.deviation or None,
            "seconds": round(self.seconds, 3),
            "evidence": [e.to_json() for e in self.evidence],
        }


@dataclass(slots=True, kw_only=True)
class Report:
    """A whole run against one endpoint."""

    endpoint: str
    started: dt.datetime
    results: list[Result] = field(default_factory=list)
    dialect: str = "unknown"
    features: dict[str, str] = field(default_factory=dict)
    """JSDL feature probes: name -> ``supported``, ``not supported (…)`` or ``unknown (…)``."""
    created: int = 0
    """Activities the suite created (every one terminated at the end)."""
    cleanup: str = ""
    """What the clean-up did, or why it could not."""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any(r.verdict is Verdict.FAIL for r in self.results)

    def counts(self) -> dict[str, int]:
        return {v.value: sum(r.verdict is v for r in self.results) for v in Verdict}

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "started": self.started.isoformat(),
            "seconds": round(self.seconds, 2),
            "dialect": self.dialect,
            "counts": self.counts(),
            "features": dict(self.features),
            "created": self.created,
            "cleanup": self.cleanup,
            "results": [r.to_json() for r in self.results],
        }
