"""The read-only status page, server-rendered HTML for a person in a browser::

    GET /bes/status                        the caller's activities, newest first (a page of
                                           them), the factory's state; for administrators
                                           also the workers and the queue
        ?state=Running                     only activities in that state
        &after=ID                          the page after activity ID (keyset, no OFFSET)
        &limit=50                          activities per page (at most 500)
        &refresh=30                        reload every 30 s (off by default)
    GET /bes/status/activities/ID          one activity: its state history, warnings, files

The caller is decided by the identity policy as for every request, and sees only its own
activities. Everything shown is escaped (job names and messages come from users); the page
has no script at all, and its Content-Security-Policy allows none: only its own inline style
(by hash), forms and links back to itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final
from urllib.parse import parse_qs, quote, urlencode

from bes.db.activity_rows import ActivityRecord
from bes.db.overview_rows import ActivityLine
from bes.http import Scope, Send, respond
from bes.ids import parse_activity_id
from bes.overview import MAX_PAGE, ActivityDetail, ActivityPage, GridView, Overview
from bes.principal import Principal
from bes.states import ActivityState
from bes.wire import ACTIVITY_PATH

STATUS_PATH: Final = "/bes/status"
_DETAIL: Final = STATUS_PATH + "/activities/"
HTML: Final = b"text/html; charset=utf-8"
_STYLE: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .6em;
border-bottom:1px solid #ddd;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right}code{font-size:.95em}dl{display:grid;grid-template-columns:max-content
auto;gap:.2em 1em}dt{font-weight:600}dd{margin:0}form{margin:.5em 0}.muted{color:#777}
.notice{background:#fff3cd;border:1px solid #e0c36c;padding:.5em}
.state{font-weight:600}.Finished{color:#176d17}.Failed{color:#b00020}.Running{color:#0b57a4}
.Cancelled{color:#7a5b00}nav a{margin-right:1em}.counts a{margin-right:.8em}
ul{margin:0;padding-left:1.2em}
"""
_CSP: Final = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()}'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS: Final = [
    (b"content-security-policy", _CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
_STATES: Final = {s.value: s for s in ActivityState}
_REFRESH_S: Final = (0, 10, 30, 60)
_LIMIT: Final = 50
_NONE: Final = '<span class="muted">&ndash;</span>'


@dataclass(frozen=True, slots=True, kw_only=True)
class _View:
    """What the list shows, as its query string says (nonsense in it is ignored)."""

    base: str
    state: ActivityState | None = None
    limit: int = _LIMIT
    refresh: int = 0

    @classmethod
    def parse(cls, base: str, query: Mapping[str, str]) -> _View:
        limit = max(1, min(_number(query.get("limit"), _LIMIT), MAX_PAGE))
        refresh = _number(query.get("refresh"), 0)
        return cls(
            base=base,
            state=_STATES.get(query.get("state", "")),
            limit=limit,
            refresh=refresh if refresh in _REFRESH_S else 0,
        )

    def url(self, *, after: str = "") -> str:
        """This view's address; its page after the activity ``after``."""
        params = [
            ("state", self.state.value if self.state else ""),
            ("after", after),
            ("limit", str(self.limit) if self.limit != _LIMIT else ""),
            ("refresh", str(self.refresh) if self.refresh else ""),
        ]
        query = urlencode([(k, v) for k, v in params if v])
        return f"{self.base}?{query}" if query else self.base


async def serve_status(
    scope: Scope,
    send: Send,
    *,
    caller: Principal,
    overview: Overview,
    endpoint: str,
    backends: Sequence[str],
    version: str,
    notices: Sequence[str] = (),
) -> None:
    """Answer a GET under ``/bes/status`` (``notices``: what the service warns of at the top
    of the list page, e.g. that it has no local worker)."""
    path: str = scope["path"]
    now = dt.datetime.now(dt.UTC)
    if path in (STATUS_PATH, STATUS_PATH + "/"):
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}
        view = _View.parse(endpoint + STATUS_PATH, query)
        page = await overview.page(
            caller,
            state=view.state,
            limit=view.limit,
            after=parse_activity_id(query.get("after", "")),
        )
        grid = await overview.grid(caller) if caller.admin else None
        facts = _Facts(
            caller=caller, backends=backends, version=version, endpoint=endpoint, notices=notices
        )
        await _html(send, 200, _list_page(page, grid, view=view, facts=facts, now=now))
        return
    activity_id = parse_activity_id(path[len(_DETAIL) :]) if path.startswith(_DETAIL) else None
    detail = await overview.detail(caller, activity_id) if activity_id else None
    if detail is None:
        await _html(send, 404, _document("Not found", _not_found(endpoint)))
        return
    await _html(send, 200, _detail_page(detail, endpoint=endpoint, now=now))


async def _html(send: Send, status: int, body: str) -> None:
    await respond(send, status, body.encode(), HTML, extra=_HEADERS)


# ---------------------------------------------------------------------- pages


@dataclass(frozen=True, slots=True, kw_only=True)
class _Facts:
    caller: Principal
    backends: Sequence[str]
    version: str
    endpoint: str
    notices: Sequence[str] = ()


def _list_page(
    page: ActivityPage, grid: GridView | None, *, view: _View, facts: _Facts, now: dt.datetime
) -> str:
    caller = facts.caller
    counts = " ".join(
        f'<a href="{_e(replace(view, state=s).url())}">{_e(s.value)}: '
        f'<span data-count="{_e(s.value)}">{n}</span></a>'
        for s, n in page.counts.items()
    )
    backends = ", ".join(facts.backends) or "none (activities stay queued)"
    parts = [
        "<header><h1>bes status</h1>",
        f'<p>Signed in as <strong id="caller">{_e(caller.name)}</strong>'
        f"{' (administrator)' if caller.admin else ''}.</p></header>",
        *(f'<p class="notice">{_e(n)}</p>' for n in facts.notices),
        '<section id="factory"><h2>Factory</h2><dl>',
        f'<dt>Accepting new activities</dt><dd id="accepting">{"yes" if page.accepting else "no"}'
        "</dd>",
        f'<dt>Activities</dt><dd id="total">{sum(page.counts.values())}</dd>',
        f'<dt>Backend</dt><dd id="backends">{_e(backends)}</dd>',
        f'<dt>Version</dt><dd id="version">bes {_e(facts.version)}</dd>',
        "</dl></section>",
        '<section id="activities"><h2>Activities</h2>',
        _filter_form(view),
        f'<p class="counts">{counts}</p>',
        _activity_table(page.lines, endpoint=facts.endpoint, now=now),
        _pager(page, view),
        "</section>",
    ]
    if grid is not None:
        parts += [_workers(grid, now=now), _queue(grid, now=now)]
    title = f"bes status: {view.state.value}" if view.state else "bes status"
    return _document(title, "".join(parts), refresh=view.refresh)


def _filter_form(view: _View) -> str:
    options = ['<option value="">all</option>'] + [
        f'<option value="{_e(s.value)}"{" selected" if s is view.state else ""}>'
        f"{_e(s.value)}</option>"
        for s in ActivityState
    ]
    refreshes = [
        f'<option value="{s}"{" selected" if s == view.refresh else ""}>'
        f"{f'every {s} s' if s else 'off'}</option>"
        for s in _REFRESH_S
    ]
    limit = (
        f'<input type="hidden" name="limit" value="{view.limit}">' if view.limit != _LIMIT else ""
    )
    return (
        f'<form id="filter" method="get">{limit}'
        f'<label>State <select name="state" id="state">{"".join(options)}</select></label> '
        f'<label>Auto-refresh <select name="refresh" id="refresh">{"".join(refreshes)}'
        "</select></label> "
        '<button type="submit" id="show">Show</button></form>'
    )


def _activity_table(lines: Sequence[ActivityLine], *, endpoint: str, now: dt.datetime) -> str:
    if not lines:
        return '<p id="no-activities" class="muted">No activities.</p>'
    head = (
        "<tr><th>Activity</th><th>Name</th><th>State</th><th>Backend</th><th>Worker</th>"
        "<th>Created</th><th>Started</th><th>Ended</th><th>Run time</th><th>Exit code</th>"
        "<th>Files</th></tr>"
    )
    rows = []
    for line in lines:
        r = line.record
        detail = f"{endpoint}{_DETAIL}{r.id}"
        files = (
            f'<a class="outputs" href="{_e(_outputs_url(endpoint, r.id))}">outputs</a>'
            if r.outputs
            else _NONE
        )
        rows.append(
            f'<tr data-activity="{_e(r.id)}" data-state="{_e(r.state.value)}">'
            f'<td><a class="detail" href="{_e(detail)}"><code>{_e(r.id)}</code></a></td>'
            f'<td class="name">{_text(r.job_name)}</td>'
            f"<td>{_state(r.state, r.substate)}{_waiting(r)}</td>"
            f"<td>{_text(r.backend)}</td><td>{_text(line.worker)}</td>"
            f"<td>{_time(r.created_at)}</td><td>{_time(line.started_at)}</td>"
            f"<td>{_time(line.ended_at)}</td><td>{_run_time(line, now)}</td>"
            f'<td class="num">{_text(r.exit_code)}</td><td>{files}</td></tr>'
        )
    return f'<table id="activity-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _pager(page: ActivityPage, view: _View) -> str:
    links = []
    if page.more and page.lines:
        older = view.url(after=page.lines[-1].record.id)
        links.append(f'<a rel="next" id="older" href="{_e(older)}">Older activities</a>')
    links.append(f'<a id="newest" href="{_e(view.url())}">Newest</a>')
    return f"<nav>{''.join(links)}</nav>"


def _workers(grid: GridView, *, now: dt.datetime) -> str:
    if not grid.workers:
        return '<section id="workers"><h2>Workers</h2><p class="muted">No workers.</p></section>'
    rows = "".join(
        f'<tr data-worker="{_e(w.name)}"><td>{_e(w.name)}</td>'
        f"<td>{_time(w.last_seen_at)}{_ago(w.last_seen_at, now)}</td>"
        f'<td class="num">{w.leases}</td><td>{_capacity(w.max_vms, w.memory_mib)}</td>'
        f"<td>{'revoked' if w.revoked else 'live'}</td></tr>"
        for w in grid.workers
    )
    return (
        '<section id="workers"><h2>Workers</h2><table><thead><tr><th>Name</th>'
        "<th>Last seen</th><th>Running leases</th><th>Capacity</th><th>Token</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )


def _queue(grid: GridView, *, now: dt.datetime) -> str:
    queue = grid.queue
    cells = "".join(
        f'<tr><td>{_e(s.value)}</td><td class="num" data-queue="{_e(s.value)}">{n}</td></tr>'
        for s, n in queue.counts.items()
    )
    oldest = queue.oldest_queued_at
    waiting = (
        f"since {_time(oldest)} ({_duration((now - oldest).total_seconds())})"
        if oldest is not None
        else "nothing waits"
    )
    return (
        '<section id="queue"><h2>Queue</h2><table><thead><tr><th>Queue state</th>'
        f"<th>Jobs</th></tr></thead><tbody>{cells}</tbody></table>"
        f'<p>Oldest waiting: <span id="oldest">{waiting}</span></p></section>'
    )


def _detail_page(detail: ActivityDetail, *, endpoint: str, now: dt.datetime) -> str:
    line = detail.line
    r = line.record
    facts: list[tuple[str, str]] = [
        ("Activity", f"<code>{_e(r.id)}</code>"),
        ("Name", _text(r.job_name)),
        ("State", _state(r.state, r.substate)),
        ("Message", _text(r.message)),
        ("Exit code", _text(r.exit_code)),
        ("Backend", _text(r.backend)),
        ("Pool", _text(r.pool)),
        ("Worker", _text(line.worker)),
        ("Created", _time(r.created_at)),
        ("Started", _time(line.started_at)),
        ("Ended", _time(line.ended_at)),
        ("Run time", _run_time(line, now)),
    ]
    if r.outputs:
        outputs = _outputs_url(endpoint, r.id)
        links = "".join(
            f'<li><a href="{_e(f"{outputs}/{quote(name)}")}">{_e(name)}</a> '
            f'<span class="muted">({size} bytes)</span></li>'
            for name, size in detail.files
        )
        listing = f'<a id="outputs" href="{_e(outputs)}">listing (JSON)</a>'
        facts.append(("Files", f'<ul class="files">{links}</ul>{listing}'))
    if r.access is not None and not r.state.terminal:
        ports = ", ".join(f"{g} (worker's {h})" for g, h in r.access.ports)
        keys = "".join(f"<br><code>{_e(key)}</code>" for key in r.access.host_keys)
        facts.append(
            (
                "VM lease",
                f'<span id="lease">log in with <code>bes ssh {_e(r.id)}</code> as '
                f"<code>{_e(r.access.user)}</code>; ports {_e(ports)}; host key{keys}</span>",
            )
        )
    if r.parent_id:
        parent = f"{endpoint}{_DETAIL}{r.parent_id}"
        facts.append(
            ("Parameter sweep", f'<a href="{_e(parent)}"><code>{_e(r.parent_id)}</code></a>')
        )
    listed = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    parts = [
        f'<nav><a id="back" href="{_e(endpoint + STATUS_PATH)}">All activities</a></nav>',
        f"<h1>{_e(r.job_name or r.id)}</h1>",
        f'<section id="activity"><dl>{listed}</dl></section>',
    ]
    if r.warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in r.warnings)
        parts.append(f'<section id="warnings"><h2>Warnings</h2><ul>{items}</ul></section>')
    if r.sweep is not None:
        children = "".join(
            f'<li><a href="{_e(f"{endpoint}{_DETAIL}{c}")}"><code>{_e(c)}</code></a></li>'
            for c in r.sweep.children[:1000]
        )
        counts = ", ".join(f"{n} {s.value}" for s, n in r.sweep.counts.items() if n)
        parts.append(
            f'<section id="points"><h2>Points ({_e(counts)})</h2><ul>{children}</ul></section>'
        )
    history = "".join(
        f"<tr><td>{_time(h.at)}</td><td>{_e(h.state)}</td><td>{_text(h.substate)}</td>"
        f"<td>{_text(h.message)}</td></tr>"
        for h in detail.history
    )
    parts.append(
        '<section id="history"><h2>History</h2><table><thead><tr><th>Time</th><th>State</th>'
        f"<th>Sub-state</th><th>Message</th></tr></thead><tbody>{history}</tbody></table>"
        "</section>"
    )
    return _document(f"bes: {r.job_name or r.id}", "".join(parts))


def _not_found(endpoint: str) -> str:
    return (
        "<h1>Not found</h1><p>No such activity (or it is not yours).</p>"
        f'<nav><a id="back" href="{_e(endpoint + STATUS_PATH)}">All activities</a></nav>'
    )


def _document(title: str, body: str, *, refresh: int = 0) -> str:
    reload = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title>{reload}<style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


# ---------------------------------------------------------------------- pieces


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _text(value: object | None) -> str:
    return _NONE if value is None or value == "" else _e(value)


def _state(state: ActivityState, substate: object | None) -> str:
    sub = f' <span class="muted">({_e(substate)})</span>' if substate else ""
    return f'<span class="state {_e(state.value)}">{_e(state.value)}</span>{sub}'


def _waiting(record: ActivityRecord) -> str:
    """Under a Pending activity's state: why it waits, and in which pool."""
    if record.state is not ActivityState.PENDING or not record.message:
        return ""
    pool = f" ({_e(record.pool)})" if record.pool else ""
    return f'<div class="why muted">{_e(record.message)}{pool}</div>'


def _time(at: dt.datetime | None) -> str:
    if at is None:
        return _NONE
    at = at.astimezone(dt.UTC)
    shown = at.strftime("%Y-%m-%d %H:%M:%S")
    return f'<time datetime="{at.isoformat(timespec="seconds")}">{shown}Z</time>'


def _ago(at: dt.datetime | None, now: dt.datetime) -> str:
    if at is None:
        return ""
    return f' <span class="muted">({_duration((now - at).total_seconds())} ago)</span>'


def _run_time(line: ActivityLine, now: dt.datetime) -> str:
    if line.started_at is None:
        return _NONE
    end = line.ended_at or now
    suffix = "" if line.ended_at else " so far"
    return _duration((end - line.started_at).total_seconds()) + suffix


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _capacity(max_vms: int | None, memory_mib: int | None) -> str:
    parts = []
    if max_vms is not None:
        parts.append(f"{max_vms} VM{'s' if max_vms != 1 else ''}")
    if memory_mib is not None:
        parts.append(f"{memory_mib} MiB")
    return _e(", ".join(parts)) if parts else _NONE


def _outputs_url(endpoint: str, activity_id: str) -> str:
    return f"{endpoint}{ACTIVITY_PATH}{quote(activity_id)}/outputs"


def _number(text: str | None, default: int) -> int:
    return int(text) if text is not None and text.isdigit() and len(text) < 7 else default
