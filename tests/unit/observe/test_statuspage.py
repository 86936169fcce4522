"""The status page: every value shown as text whatever it holds, nothing loaded from anywhere,
and a Content-Security-Policy that admits exactly the page's own style sheet."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import replace
from html.parser import HTMLParser

import pytest

from connectproxy.observe import statuspage
from connectproxy.observe.refusals import RefusalCount
from connectproxy.observe.statuspage import (
    ClientTunnels,
    ReloadState,
    StatusSnapshot,
    UpstreamState,
    render,
)

NOW = 1_764_680_000.0

HOSTILE = [
    "<script>document.title='pwned'</script>",
    '"><img src=x onerror="document.title=1">',
    "' onmouseover='alert(1)",
    "</td></tr></table><h1>fake</h1>",
    "&lt;already escaped&gt; &amp; <b>bold</b>",
    "<style>body{display:none}</style>",
    "<meta http-equiv=refresh content='0;url=http://evil.example/'>",
    "right-to-left \u202eoverride and zero\u200bwidth",
    "javascript:alert(1)",
]

# The elements and attributes the page itself writes; anything else came from a value.
TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "dl", "dt", "dd", "span",
    "code", "table", "thead", "tbody", "tfoot", "tr", "th", "td", "p", "footer",
}  # fmt: skip
ATTRIBUTES = {"lang", "charset", "http-equiv", "content", "name", "class", "id", "colspan",
              "data-bytes", "title"}  # fmt: skip


class Page(HTMLParser):
    """The parsed page: its elements, their attributes, its text, the style sheet."""

    def __init__(self, body: bytes) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self._in: list[str] = []
        self.feed(body.decode("utf-8"))
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        if self._in and self._in[-1] == "style":
            self.styles.append(data)
        else:
            self.text.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def snapshot(**changes: object) -> StatusSnapshot:
    base = StatusSnapshot(
        now=NOW,
        ready=True,
        draining=False,
        version="0.1.0",
        compiled=True,
        started=NOW - 3 * 3600 - 125,
        config_source="/etc/connectproxy/connectproxy.yaml",
        reload=ReloadState(at=NOW - 600, ok=True, error=None),
        connections=4,
        tunnels=(ClientTunnels("sensor1", 3, 1_500_000, 42_000_000, 930.0),),
        refusals=(RefusalCount("10.0.0.9", "auth_required", "proxy authentication required", 7),),
        refusal_window_s=3600,
        upstream_strategy="failover",
        upstreams=(UpstreamState("proxy.corp.example:8080", 0.0, 2),),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def hostile_snapshot(value: str) -> StatusSnapshot:
    """`value` in every string the page shows."""
    return snapshot(
        version=value,
        config_source=value,
        reload=ReloadState(at=NOW - 5, ok=False, error=value),
        tunnels=(ClientTunnels(value, 1, 10, 20, 1.0),),
        refusals=(RefusalCount(f"{value} from 10.0.0.1", value, value, 1),),
        upstream_strategy=value,
        upstreams=(UpstreamState(value, 12.0, 1),),
    )


def shown(value: str) -> str:
    """How the page shows a value as text: non-printing characters replaced."""
    return "".join(c if c.isprintable() else "\ufffd" for c in value)


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_in_every_field_stays_text(value: str) -> None:
    page = Page(render(hostile_snapshot(value)))
    for tag, attrs in page.tags:
        assert tag in TAGS, tag
        assert set(attrs) <= ATTRIBUTES, attrs
    assert [tag for tag, _ in page.tags].count("style") == 1
    assert [tag for tag, _ in page.tags].count("meta") == 4  # charset, refresh, viewport, referrer
    refresh = [a for t, a in page.tags if t == "meta" and a.get("http-equiv") == "refresh"]
    assert refresh == [{"http-equiv": "refresh", "content": "5"}]
    # The value is there as text, once per field (seven fields; two hold it twice in one cell).
    assert page.all_text.count(shown(value)) >= 7
    assert page.styles == [statuspage.STYLE]


def test_a_value_in_an_attribute_cannot_close_its_quotes() -> None:
    body = render(hostile_snapshot('"><script>x</script>')).decode()
    assert "<script>" not in body
    assert '"><' not in body.replace('"><span', "").replace('"><code', "")
    assert "&quot;&gt;&lt;script&gt;" in body


def test_a_long_value_is_cut() -> None:
    page = Page(render(snapshot(tunnels=(ClientTunnels("x" * 10_000, 1, 0, 0, 0.0),))))
    assert "x" * statuspage.MAX_SHOWN not in page.all_text
    assert "x" * (statuspage.MAX_SHOWN - 1) + "…" in page.all_text


def test_the_policy_admits_exactly_the_page_style_by_its_hash() -> None:
    page = Page(render(snapshot()))
    (style,) = page.styles
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    policy = dict(statuspage.HEADERS)["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in (part.strip() for part in policy.split(";"))}
    assert directives == {
        "default-src": ["'none'"],
        "style-src": [f"'sha256-{digest}'"],
        "img-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'none'"],
        "frame-ancestors": ["'none'"],
    }


def test_the_page_loads_nothing_and_carries_no_script_or_inline_style() -> None:
    body = render(snapshot()).decode()
    assert not re.search(r"(?i)<script|<link|<img|<iframe|\ssrc=|\shref=|\sstyle=|url\(", body)
    assert "@import" not in body and "http://" not in body and "https://" not in body


def test_the_answer_headers() -> None:
    headers = dict(statuspage.HEADERS)
    assert statuspage.CONTENT_TYPE == "text/html; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Frame-Options"] == "DENY"


def test_no_tunnels_no_refusals_no_upstreams() -> None:
    page = Page(
        render(snapshot(tunnels=(), refusals=(), upstreams=(), upstream_strategy=None, reload=None))
    )
    text = page.all_text
    assert "no open tunnels" in text
    assert "no refusals" in text
    assert "none configured" in text
    assert "none since start" in text
    assert not [a for t, a in page.tags if t == "tfoot"]


def test_many_clients_each_a_row_and_a_total() -> None:
    rows = tuple(
        ClientTunnels(f"sensor{i}", i + 1, 1000 * i, 2000 * i, float(i)) for i in range(500)
    )
    body = render(snapshot(tunnels=rows))
    page = Page(body)
    clients = [a for t, a in page.tags if t == "td" and a.get("class") == "client"]
    assert len(clients) == 500 + 1  # the tunnels' rows and the one refusal row
    up = [
        int(a["data-bytes"] or 0)
        for t, a in page.tags
        if t == "td" and "up" in (a.get("class") or "")
    ]
    assert up[:-1] == [1000 * i for i in range(500)]
    assert up[-1] == sum(1000 * i for i in range(500))  # the total row
    assert "125,250" in page.all_text  # 1 + 2 + … + 500 tunnels
    assert "500 clients" in page.all_text


def test_health_build_reload_and_upstream_state() -> None:
    text = Page(render(snapshot())).all_text
    assert "serving" in text and "0.1.0 (compiled)" in text
    assert "2025-12-02T12:53:20Z" in text  # NOW, in the footer
    assert "success" in text and "10 min 0 s ago" in text
    assert "3 h 2 min" in text  # up since
    assert "up" in text and "proxy.corp.example:8080" in text
    text = Page(
        render(
            snapshot(
                compiled=False,
                draining=True,
                ready=False,
                reload=ReloadState(NOW - 30, False, "config.yaml: line 3: allow.ports: not a list"),
                upstreams=(UpstreamState("u1", 12.4, 3),),
            )
        )
    ).all_text
    assert "draining" in text and "(plain Python)" in text
    assert "failed" in text and "allow.ports: not a list" in text
    assert "the previous config is running" in text
    assert "cooling down" in text and "12 s left" in text
    assert "not ready" in Page(render(snapshot(ready=False))).all_text


@pytest.mark.parametrize(
    ("n", "shown_as"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (42_000_000, "40.1 MiB"),
        (5 << 40, "5.0 TiB"),
    ],
)
def test_sizes(n: int, shown_as: str) -> None:
    assert statuspage._size(n) == shown_as


def test_tunnels_summed_by_client() -> None:
    rows = statuspage.tunnels_by_client(
        [
            ("sensor1", 10, 100, NOW - 5),
            (None, 1, 2, NOW - 50),
            ("sensor1", 20, 200, NOW - 30),
            ("jump", 7, 8, NOW - 1),
            ("sensor1", 5, 0, NOW - 10),
        ],
        NOW,
    )
    assert rows == (
        ClientTunnels("sensor1", 3, 35, 300, 30.0),
        ClientTunnels("-", 1, 1, 2, 50.0),
        ClientTunnels("jump", 1, 7, 8, 1.0),
    )
    assert statuspage.tunnels_by_client([], NOW) == ()


def test_the_refusal_table_shows_the_most_refused_rows_and_sums_the_rest() -> None:
    rows = tuple(
        RefusalCount(f"user{i} from 10.0.0.1", "auth_failed", "invalid proxy credentials", 500 - i)
        for i in range(150)
    )
    page = Page(render(snapshot(refusals=rows)))
    shown = [a for t, a in page.tags if t == "td" and a.get("class") == "outcome"]
    assert len(shown) == statuspage.MAX_REFUSAL_ROWS
    assert "user99 from" in page.all_text and "user100 from" not in page.all_text
    assert "50 more rows" in page.all_text
    assert f"{sum(500 - i for i in range(100, 150)):,}" in page.all_text
