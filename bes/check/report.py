"""A ``bes check`` report for people (a table with the evidence of each failure), for scripts
(JSON), for CI (JUnit XML) and for a wiki (HTML)."""

from __future__ import annotations

import html
import json
from typing import Final
from xml.etree import ElementTree as ET

from bes.check.model import Exchange, Report, Result, Verdict
from bes.check.session import DRAFT

_EXCERPT: Final = 1200
_BY_SHAPE: Final = (
    "answers judged by shape (element names, order, counts): there is no schema of the 2007 "
    "draft's messages here; GFD.108's schemas judge the final dialect"
)


def text(report: Report, *, evidence: bool = True) -> str:
    counts = report.counts()
    lines = [
        f"bes check {report.endpoint}",
        f"dialect: {report.dialect}; {len(report.results)} checks in {report.seconds:.1f} s: "
        + ", ".join(f"{n} {v}" for v, n in counts.items() if n),
    ]
    if report.dialect.startswith(DRAFT):
        lines.append(_BY_SHAPE)
    lines.append("")
    width = max((len(r.id) for r in report.results), default=10)
    for result in report.results:
        detail = result.reason
        if result.deviation:
            detail = f"[{result.deviation}] {detail}"
        lines.append(f"{result.verdict.value:<4}  {result.id:<{width}}  {detail}".rstrip())
    if report.features:
        lines += [
            "",
            "JSDL features: " + "; ".join(f"{k}: {v}" for k, v in report.features.items()),
        ]
    lines += ["", f"clean-up: {report.cleanup}"]
    if evidence:
        for result in report.results:
            if result.verdict is Verdict.FAIL:
                lines += ["", *_evidence(result)]
    return "\n".join(lines)


def _evidence(result: Result) -> list[str]:
    lines = [f"--- FAIL {result.id}: {result.title}", f"why: {result.reason}"]
    if result.rule:
        lines.append(f"rule: {result.rule}")
    for exchange in result.evidence[-2:]:
        lines += _exchange(exchange)
    return lines


def _exchange(exchange: Exchange) -> list[str]:
    answer = (
        f"HTTP {exchange.status}"
        if exchange.status is not None
        else f"no answer ({exchange.error})"
    )
    lines = [f"sent ({exchange.label}): {exchange.method} {exchange.url}"]
    if exchange.request:
        lines.append("  " + _excerpt(exchange.request))
    lines.append(f"came back: {answer}")
    if exchange.response:
        lines.append("  " + _excerpt(exchange.response))
    return lines


def _excerpt(data: bytes) -> str:
    shown = data.decode("utf-8", "replace")
    return shown if len(shown) <= _EXCERPT else shown[:_EXCERPT] + f"… ({len(shown)} characters)"


def as_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=1)


def junit(report: Report) -> bytes:
    """JUnit XML: one testsuite, one testcase per check (FAIL a failure, SKIP skipped, WARN a
    pass with its reason in system-out)."""
    counts = report.counts()
    suite = ET.Element(
        "testsuite",
        name=f"bes check {report.endpoint}",
        tests=str(len(report.results)),
        failures=str(counts[Verdict.FAIL.value]),
        skipped=str(counts[Verdict.SKIP.value]),
        errors="0",
        time=f"{report.seconds:.3f}",
        timestamp=report.started.replace(tzinfo=None).isoformat(timespec="seconds"),
    )
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="dialect", value=report.dialect)
    for feature, state in report.features.items():
        ET.SubElement(properties, "property", name=f"feature: {feature}", value=state)
    for result in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname="bes-check",
            name=f"{result.id}: {result.title}",
            time=f"{result.seconds:.3f}",
        )
        if result.verdict is Verdict.FAIL:
            failure = ET.SubElement(
                case, "failure", message=result.reason, type=result.rule or "FAIL"
            )
            failure.text = "\n".join(_evidence(result))
        elif result.verdict is Verdict.SKIP:
            ET.SubElement(case, "skipped", message=result.reason)
        elif result.verdict is Verdict.WARN:
            out = ET.SubElement(case, "system-out")
            out.text = (
                f"WARN [{result.deviation}] {result.reason}"
                if result.deviation
                else f"WARN {result.reason}"
            )
    data: bytes = ET.tostring(suite, encoding="utf-8", xml_declaration=True)
    return data


_STYLE: Final = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
td.v { font-weight: bold; }
tr.PASS td.v { color: #176f2c; } tr.FAIL td.v { color: #b00020; }
tr.WARN td.v { color: #a05a00; } tr.SKIP td.v { color: #666; }
pre { white-space: pre-wrap; max-height: 20em; overflow: auto; background: #f6f6f6; }
"""


def as_html(report: Report) -> str:
    """One self-contained page: the summary, the table, the evidence of each failure."""
    e = html.escape
    counts = ", ".join(f"{n} {v}" for v, n in report.counts().items() if n)
    rows = "".join(
        f'<tr class="{r.verdict.value}"><td class="v">{r.verdict.value}</td>'
        f"<td><code>{e(r.id)}</code><br>{e(r.title)}</td>"
        f"<td>{e(r.deviation + ': ' if r.deviation else '')}{e(r.reason)}</td>"
        f"<td>{e(r.rule)}</td></tr>"
        for r in report.results
    )
    features = "".join(f"<li>{e(k)}: {e(v)}</li>" for k, v in report.features.items())
    failures = "".join(
        f'<section class="evidence" id="{e(r.id)}"><h3>{e(r.id)}</h3>'
        f"<pre>{e(chr(10).join(_evidence(r)))}</pre></section>"
        for r in report.results
        if r.verdict is Verdict.FAIL
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>bes check {e(report.endpoint)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>bes check <code>{e(report.endpoint)}</code></h1>"
        f'<p id="summary">{e(counts)}; dialect {e(report.dialect)}; '
        f"{report.seconds:.1f} s; started {e(report.started.isoformat(timespec='seconds'))}"
        f"{'; ' + e(_BY_SHAPE) if report.dialect.startswith(DRAFT) else ''}</p>"
        '<table id="results"><thead><tr><th>Verdict</th><th>Check</th><th>Why</th>'
        f"<th>Rule</th></tr></thead><tbody>{rows}</tbody></table>"
        f"<h2>JSDL features</h2><ul>{features}</ul>"
        f"<p>Clean-up: {e(report.cleanup)}</p>{failures}</body></html>"
    )
