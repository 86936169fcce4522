"""The `/status` page: one self-contained HTML document for a person on call (docs/operations.md,
"The status page").

Rendered on the server from a `StatusSnapshot`, so it works without JavaScript and shows the same
figures as `/metrics` and `/api/tunnels` at the moment it was asked. It refreshes itself with a
meta refresh (no script), and loads nothing: its one style sheet is inline and the
Content-Security-Policy allows exactly that sheet by its hash and nothing else. A page that
reloads every five seconds on a wall screen must not fetch fonts or scripts from anywhere, and a
proxy for an isolated plant network may not reach anywhere anyway.

Every value goes through `_text`, which escapes it for HTML (quotes included, so a value is
safe in an attribute too). Host names are validated before they get here, but user names and
SNI are whatever a client sent, and a refused user name is shown on purpose: the page must show
them as text, never run them.

Pure: bytes out of a snapshot; the live figures are gathered by whoever serves the page.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from collections.abc import Iterable
from dataclasses import dataclass

from connectproxy.observe.refusals import RefusalCount

REFRESH_SECONDS = 5
MAX_SHOWN = 120  # characters of one value; the rest is elided (a user name can be 8 KiB)
# Rows of the refusal table; the rest are summed in one line. The counts keep up to ~15,000
# rows an hour under a flood of made-up names, too many for a page that reloads every 5 s.
MAX_REFUSAL_ROWS = 100

STYLE = """
:root { color-scheme: light; --ok: #1b7f3b; --bad: #b3261e; --warn: #8a5a00; --line: #d0d4da; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  margin: 1.5em auto; max-width: 72em; padding: 0 1em; color: #1c1f23; background: #fff; }
h1 { font-size: 1.5em; margin: 0 0 .3em; }
h2 { font-size: 1.1em; margin: 1.6em 0 .4em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid var(--line);
  vertical-align: top; overflow-wrap: anywhere; }
th { background: #f3f5f7; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.outcome { white-space: nowrap; }
tfoot td { font-weight: 600; border-bottom: none; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1.2em; margin: 0; }
dt { color: #5a6270; }
dd { margin: 0; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: .05em .6em; border-radius: 1em; color: #fff;
  font-weight: 600; }
.ok { background: var(--ok); }
.bad { background: var(--bad); }
.warn { background: var(--warn); }
.none { color: #5a6270; font-style: italic; }
footer { margin-top: 2em; color: #5a6270; font-size: .9em; }
"""

STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()

# Nothing but the inline sheet above: no script, image, font, frame, form or base URL.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; img-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

CONTENT_TYPE = "text/html; charset=utf-8"
# Sent with the page besides its Content-Type.
HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


@dataclass(frozen=True)
class ClientTunnels:
    """The open tunnels of one client label (`-` for none)."""

    client: str
    count: int
    bytes_client_to_server: int
    bytes_server_to_client: int
    oldest_s: float  # age of the longest-open tunnel


@dataclass(frozen=True)
class UpstreamState:
    name: str
    cooling_s: float  # seconds of cool-down left; 0 when the upstream is tried in order
    failures: int  # failed attempts since the proxy started


@dataclass(frozen=True)
class ReloadState:
    at: float  # wall-clock time of the last SIGHUP reload
    ok: bool
    error: str | None  # why it failed; the running config was kept


@dataclass(frozen=True)
class StatusSnapshot:
    """Everything the page shows, gathered at one moment."""

    now: float  # wall clock
    ready: bool  # what /readyz answers
    draining: bool
    version: str
    compiled: bool
    started: float  # wall clock
    config_source: str
    reload: ReloadState | None
    connections: int  # open client connections, tunnels and requests still being decided
    tunnels: tuple[ClientTunnels, ...]
    refusals: tuple[RefusalCount, ...]
    refusal_window_s: float
    upstream_strategy: str | None
    upstreams: tuple[UpstreamState, ...]
    # With `--workers N`: (workers that answered, N); the figures are theirs summed.
    workers: tuple[int, int] | None = None


def tunnels_by_client(
    tunnels: Iterable[tuple[str | None, int, int, float]], now: float
) -> tuple[ClientTunnels, ...]:
    """Open tunnels, each (client, bytes client→server, bytes server→client, wall-clock start),
    summed by client (None is `-`, as in the metrics): most tunnels first, then by name."""
    sums: dict[str, list[float]] = {}
    for client, up, down, started in tunnels:
        row = sums.get(client or "-")
        if row is None:
            sums[client or "-"] = [1, up, down, started]
        else:
            row[0] += 1
            row[1] += up
            row[2] += down
            row[3] = min(row[3], started)
    rows = [
        ClientTunnels(client, int(n), int(up), int(down), max(0.0, now - oldest))
        for client, (n, up, down, oldest) in sums.items()
    ]
    rows.sort(key=lambda row: (-row.count, row.client))
    return tuple(rows)


def render(snap: StatusSnapshot) -> bytes:
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        '<meta name="referrer" content="no-referrer">\n',
        "<title>connectproxy status</title>\n",
        f"<style>{STYLE}</style>\n</head>\n<body>\n",
        _summary(snap),
        _tunnels(snap.tunnels),
        _refusals(snap.refusals, snap.refusal_window_s),
        _upstreams(snap.upstream_strategy, snap.upstreams),
        f"<footer>Rendered {_text(_rfc3339(snap.now))}; this page reloads every "
        f"{REFRESH_SECONDS} s.</footer>\n</body>\n</html>\n",
    ]
    return "".join(parts).encode("utf-8")


# ---- sections ----------------------------------------------------------------------------------


def _summary(snap: StatusSnapshot) -> str:
    if snap.draining:
        health = '<span class="badge warn" id="health">draining</span>'
    elif snap.ready:
        health = '<span class="badge ok" id="health">serving</span>'
    else:
        health = '<span class="badge bad" id="health">not ready</span>'
    build = "compiled" if snap.compiled else "plain Python"
    rows = [
        ("Health", health),
        ("Version", f"{_text(snap.version)} ({build})"),
        ("Up since", f"{_text(_rfc3339(snap.started))} ({_duration(snap.now - snap.started)})"),
        ("Config file", f"<code>{_text(snap.config_source)}</code>"),
        ("Last reload", _reload(snap.reload, snap.now)),
        ("Open connections", f'<span id="connections">{snap.connections:,}</span>'),
    ]
    if snap.workers is not None:
        rows.append(("Workers", _workers(*snap.workers)))
    body = "".join(f"<dt>{name}</dt><dd>{value}</dd>\n" for name, value in rows)
    return f"<h1>connectproxy</h1>\n<dl>\n{body}</dl>\n"


def _workers(answered: int, total: int) -> str:
    if answered >= total:
        return f'<span class="badge ok" id="workers">{answered} of {total} answered</span>'
    return (
        f'<span class="badge bad" id="workers">{answered} of {total} answered</span> '
        "the figures below leave out the workers that did not answer in time"
    )


def _reload(reload: ReloadState | None, now: float) -> str:
    if reload is None:
        return '<span class="none">none since start</span>'
    when = f"{_text(_rfc3339(reload.at))} ({_duration(now - reload.at)} ago)"
    if reload.ok:
        return f'<span class="badge ok">success</span> {when}'
    why = f": {_text(reload.error)}" if reload.error else ""
    return f'<span class="badge bad">failed</span> {when}{why}; the previous config is running'


def _tunnels(rows: tuple[ClientTunnels, ...]) -> str:
    head = (
        '<h2>Open tunnels by client</h2>\n<table id="tunnels">\n<thead><tr><th>Client</th>'
        '<th class="num">Tunnels</th><th class="num">Client → server</th>'
        '<th class="num">Server → client</th><th class="num">Oldest</th></tr></thead>\n'
    )
    if not rows:
        return head + _empty(5, "no open tunnels")
    body = "".join(
        f'<tr><td class="client">{_text(row.client)}</td>'
        f'<td class="num count">{row.count:,}</td>'
        f"{_bytes_cell(row.bytes_client_to_server, 'up')}"
        f"{_bytes_cell(row.bytes_server_to_client, 'down')}"
        f'<td class="num">{_duration(row.oldest_s)}</td></tr>\n'
        for row in rows
    )
    total = (
        f'<tfoot><tr><td>{len(rows):,} clients</td><td class="num">'
        f"{sum(r.count for r in rows):,}</td>"
        f"{_bytes_cell(sum(r.bytes_client_to_server for r in rows), 'up')}"
        f"{_bytes_cell(sum(r.bytes_server_to_client for r in rows), 'down')}"
        f'<td class="num">{_duration(max(r.oldest_s for r in rows))}</td></tr></tfoot>\n'
    )
    return f"{head}<tbody>\n{body}</tbody>\n{total}</table>\n"


def _refusals(rows: tuple[RefusalCount, ...], window_s: float) -> str:
    head = (
        f'<h2>Refusals in the last {_window(window_s)}</h2>\n<table id="refusals">\n'
        "<thead><tr><th>Client</th><th>Outcome</th><th>Reason</th>"
        '<th class="num">Count</th></tr></thead>\n'
    )
    if not rows:
        return head + _empty(4, "no refusals")
    body = "".join(
        f'<tr><td class="client">{_text(row.who)}</td><td class="outcome">{_text(row.outcome)}</td>'
        f'<td>{_text(row.reason)}</td><td class="num">{row.count:,}</td></tr>\n'
        for row in rows[:MAX_REFUSAL_ROWS]
    )
    rest = rows[MAX_REFUSAL_ROWS:]
    foot = ""
    if rest:
        foot = (
            f'<tfoot><tr><td colspan="3">{len(rest):,} more rows, each refused less often '
            "(<code>GET /api/denials</code> has the latest refusals)</td>"
            f'<td class="num">{sum(row.count for row in rest):,}</td></tr></tfoot>\n'
        )
    return f"{head}<tbody>\n{body}</tbody>\n{foot}</table>\n"


def _upstreams(strategy: str | None, rows: tuple[UpstreamState, ...]) -> str:
    if not rows:
        return (
            '<h2>Upstream proxies</h2>\n<p class="none" id="upstreams">none configured: '
            "tunnels connect directly</p>\n"
        )
    head = (
        f'<h2>Upstream proxies ({_text(strategy or "-")})</h2>\n<table id="upstreams">\n'
        '<thead><tr><th>Upstream</th><th>State</th><th class="num">Failures</th></tr></thead>\n'
    )
    body = "".join(
        f"<tr><td>{_text(row.name)}</td><td>{_upstream_state(row.cooling_s)}</td>"
        f'<td class="num">{row.failures:,}</td></tr>\n'
        for row in rows
    )
    return f"{head}<tbody>\n{body}</tbody>\n</table>\n"


def _empty(columns: int, what: str) -> str:
    return f'<tbody><tr><td colspan="{columns}" class="none">{what}</td></tr></tbody>\n</table>\n'


def _upstream_state(cooling_s: float) -> str:
    if cooling_s <= 0:
        return '<span class="badge ok">up</span>'
    return f'<span class="badge warn">cooling down</span> {_duration(cooling_s)} left'


# ---- values ------------------------------------------------------------------------------------


def _text(value: str) -> str:
    """A value as HTML text, safe in an element and in a quoted attribute. Characters that do
    not print (bidirectional overrides, format characters) are shown as U+FFFD so a name cannot
    reorder the text around it, and a very long value is cut."""
    shown = "".join(c if c.isprintable() else "\ufffd" for c in value)
    if len(shown) > MAX_SHOWN:
        shown = shown[: MAX_SHOWN - 1] + "…"
    return html.escape(shown, quote=True)


def _bytes_cell(n: int, direction: str) -> str:
    return f'<td class="num {direction}" data-bytes="{n}" title="{n:,} bytes">{_size(n)}</td>'


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _window(seconds: float) -> str:
    s = int(seconds)
    if s == 3600:
        return "hour"
    if s % 3600 == 0:
        return f"{s // 3600} hours"
    if s % 60 == 0:
        return f"{s // 60} minutes"
    return f"{s} seconds"


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
