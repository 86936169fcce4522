"""`GET /status` on a real proxy process (SPEC section 7.1): behind the admin token, live figures
of real tunnels, refusals and upstreams, hostile user names shown as text, and a real browser.

The browser is Debian's chromium in headless mode (.ci/run installs it): it logs in the way a
person does, by answering the 401's Basic challenge with `admin` and the token (given in the
URL), renders the page with its Content-Security-Policy in force, and prints the DOM and a
screenshot. Its console log would show any inline style or script the policy blocked.

Hostile values reach the page through user names: a `users` entry and an htpasswd line whose
names are HTML, a refused user name that is a script, each with tunnels or refusals of its own.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import yaml

from connectproxy.observe.statuspage import STYLE_HASH
from tests.conftest import ProxyFactory
from tests.support import (
    PASSWORD,
    PASSWORD_HASH,
    REPO_ROOT,
    SENSOR,
    OriginServer,
    ProxyProcess,
    Streamer,
    basic,
    connect_from,
    echo_exchange,
    free_port,
    open_tunnel_from_source,
    read_head,
    status_of,
    wait_until,
)

TOKEN = "0123456789abcdef" * 3  # 48 characters, URL-safe: it goes into the browser's URL
SCRIPT_USER = "<script>document.title='pwned'</script>"  # a `users` entry
IMG_USER = '"><img src=x onerror="document.title=\'img\'">'  # an htpasswd line
REFUSED_USER = "<svg onload=document.title='svg'>"  # sends a wrong password
HOSTILE = (SCRIPT_USER, IMG_USER, REFUSED_USER)
CHROMIUM = shutil.which("chromium")
# Where the browser test leaves its screenshot for a person (CI keeps the folder); gitignored.
ARTIFACTS = REPO_ROOT / "artifacts"


# ---- the page, parsed --------------------------------------------------------------------------


@dataclass
class Cell:
    text: str = ""
    attrs: dict[str, str | None] = field(default_factory=dict)


class StatusPage(HTMLParser):
    """The tables of a status page (from the server or from the browser's DOM) by id, the
    page's elements, and its title."""

    def __init__(self, body: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[Cell]]] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.title = ""
        self.text: list[str] = []
        self._table: str | None = None
        self._cell: Cell | None = None
        self._in_title = False
        self.feed(body)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        if tag == "table":
            self._table = found.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = Cell(attrs=found)
            self.tables[self._table][-1].append(self._cell)
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag in ("td", "th"):
            self._cell = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.text += data
        if self._in_title:
            self.title += data

    def rows(self, table: str) -> dict[str, list[Cell]]:
        """A table's body rows by their first cell's text (the header row left out)."""
        return {row[0].text: row for row in self.tables[table][1:] if row}

    def elements(self) -> set[str]:
        return {tag for tag, _ in self.tags}


def tunnel_figures(page: StatusPage) -> dict[str, tuple[int, int, int]]:
    """Client → (tunnels, bytes client→server, bytes server→client), the total row included."""
    figures = {}
    for client, row in page.rows("tunnels").items():
        if len(row) == 5:
            up, down = (int(cell.attrs["data-bytes"] or -1) for cell in row[2:4])
            figures[client] = (int(row[1].text.replace(",", "")), up, down)
    return figures


# ---- a proxy with hostile user names -----------------------------------------------------------


def site(tmp_path: Path, origin: OriginServer) -> dict[str, Any]:
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    htpasswd = tmp_path / "htpasswd"
    assert shutil.which("htpasswd"), "apache2-utils is installed by .ci/run"
    line = subprocess.run(
        ["htpasswd", "-nbm", IMG_USER, PASSWORD], capture_output=True, text=True, check=True
    ).stdout.strip()
    htpasswd.write_text(line + "\n")
    return {
        "allow": {
            "ports": [443, origin.port],
            "domains": [".azure-devices.net", "updates.example.com"],
        },
        # Only 127.0.0.1 is admitted by address: 127.0.0.3 must bring credentials.
        "clients": [{"name": "plant-a", "networks": ["127.0.0.1"]}],
        "users": [{"name": SCRIPT_USER, "password_hash": PASSWORD_HASH}],
        "htpasswd_file": str(htpasswd),
        "upstream": {
            # Nobody listens there: tunnels to updates.example.com fail and cool it down.
            "proxies": [{"url": f"http://127.0.0.1:{free_port()}"}],
            "direct_domains": [".azure-devices.net"],
        },
        "destinations": {
            "hosts": {SENSOR: "127.0.0.1"},
            "deny_networks": ["0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4"],
        },
        "admin": {"token_file": str(token_file)},
    }


def get(
    proxy: ProxyProcess, path: str = "/status", authorization: str | None = None
) -> tuple[int, dict[str, list[str]], str]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.metrics_port, timeout=10)
    try:
        headers = {"Authorization": authorization} if authorization else {}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        found: dict[str, list[str]] = {}
        for name, value in response.getheaders():
            found.setdefault(name.lower(), []).append(value)
        return response.status, found, response.read().decode("utf-8")
    finally:
        conn.close()


def admin_basic(token: str = TOKEN) -> str:
    return "Basic " + base64.b64encode(f"admin:{token}".encode()).decode()


@contextlib.contextmanager
def traffic(proxy: ProxyProcess, origin_port: int) -> Iterator[list[socket.socket]]:
    """Open tunnels of three clients (one a plain client, two with hostile user names), each
    echoing 1,000 bytes each way, and provoke one refusal of each kind the page groups; yields
    the open tunnel sockets, in echo mode."""
    target = f"{SENSOR}:{origin_port}"
    opened: list[socket.socket] = []
    try:
        for _ in range(2):
            opened.append(open_tunnel_from_source(proxy.port, target))
        opened.append(
            open_tunnel_from_source(proxy.port, target, basic(SCRIPT_USER, PASSWORD), "127.0.0.3")
        )
        opened.append(
            open_tunnel_from_source(proxy.port, target, basic(IMG_USER, PASSWORD), "127.0.0.3")
        )
        refusals = [
            ("127.0.0.3", target, ""),  # auth_required
            ("127.0.0.3", target, basic(REFUSED_USER, "wrong")),  # auth_failed
            ("127.0.0.3", target, basic(REFUSED_USER, "wrong")),
            ("127.0.0.1", "evil.example.net:443", ""),  # forbidden
            ("127.0.0.1", "updates.example.com:443", ""),  # connect_failed, through the upstream
        ]
        for source, host, headers in refusals:
            with connect_from(source, proxy.port) as sock:
                sock.sendall(f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
                assert status_of(read_head(sock)) in (403, 407, 502)
        for sock in opened:
            echo_exchange(sock, b"E" + b"x" * 999)  # the origin echoes from its first byte on
        yield opened
    finally:
        for sock in opened:
            sock.close()


def refusal_rows(page: StatusPage) -> list[tuple[str, str, str, int]]:
    return [
        (row[0].text, row[1].text, row[2].text, int(row[3].text.replace(",", "")))
        for row in page.tables["refusals"][1:]
    ]


def refusal_reason(proxy: ProxyProcess, outcome: str) -> str:
    """The `error` of the access log's one record of `outcome`: what the page must show. The
    log is written about once a second."""
    found: list[dict[str, Any]] = []

    def logged() -> bool:
        found[:] = [r for r in proxy.access_records() if r["outcome"] == outcome]
        return bool(found)

    wait_until(logged, what=f"a {outcome} record")
    (rec,) = found
    return str(rec["error"])


# ---- over HTTP ---------------------------------------------------------------------------------


def test_status_needs_the_token_and_shows_live_figures(
    make_proxy: ProxyFactory, origin: OriginServer, tmp_path: Path
) -> None:
    proxy = make_proxy(site(tmp_path, origin))

    status, headers, body = get(proxy)
    assert status == 401
    assert any(v.startswith('Basic realm="') for v in headers["www-authenticate"]), headers
    assert "<table" not in body
    assert get(proxy, authorization=admin_basic("f" * 48))[0] == 401
    assert (
        get(proxy, authorization="Basic " + base64.b64encode(b"root:" + TOKEN.encode()).decode())[0]
        == 401
    )
    assert get(proxy, authorization=f"Bearer {TOKEN}")[0] == 200

    with traffic(proxy, origin.port) as tunnels:
        echo_exchange(tunnels[0], b"y" * 500)

        status, headers, body = get(proxy, authorization=admin_basic())
        assert status == 200
        assert headers["content-type"] == ["text/html; charset=utf-8"]
        policy = headers["content-security-policy"][0]
        assert f"style-src 'sha256-{STYLE_HASH}'" in policy
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert headers["x-content-type-options"] == ["nosniff"]
        assert headers["referrer-policy"] == ["no-referrer"]
        assert headers["cache-control"] == ["no-store"]

        page = StatusPage(body)
        assert page.title == "connectproxy status"
        assert tunnel_figures(page) == {
            "plant-a": (2, 2500, 2500),
            SCRIPT_USER: (1, 1000, 1000),
            IMG_USER: (1, 1000, 1000),
            "3 clients": (4, 4500, 4500),
        }
        # Each hostile name is text on the page, not an element.
        assert page.elements().isdisjoint({"script", "img", "svg"})
        for name in HOSTILE:
            assert "".join(page.text).count(name) >= 1, name
            assert name not in body  # only its escaped form is in the bytes

        assert sorted(refusal_rows(page)) == sorted(
            [
                ("127.0.0.3", "auth_required", "proxy authentication required", 1),
                (f"{REFUSED_USER} from 127.0.0.3", "auth_failed", "invalid proxy credentials", 2),
                ("plant-a", "forbidden", refusal_reason(proxy, "forbidden"), 1),
                ("plant-a", "connect_failed", refusal_reason(proxy, "connect_failed"), 1),
            ]
        )
        (upstream,) = page.rows("upstreams").values()
        assert "cooling down" in upstream[1].text
        assert upstream[2].text == "1"

    wait_until(lambda: "no open tunnels" in get(proxy, authorization=admin_basic())[2])


def test_status_shows_the_last_reload(
    make_proxy: ProxyFactory, origin: OriginServer, tmp_path: Path
) -> None:
    config = site(tmp_path, origin)
    proxy = make_proxy(config)
    assert "none since start" in get(proxy, authorization=admin_basic())[2]

    broken = dict(config, allow={"ports": "every one"})
    proxy.config_path.write_text(yaml.safe_dump(broken))
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: "failed" in get(proxy, authorization=admin_basic())[2], what="the failure")
    body = get(proxy, authorization=admin_basic())[2]
    assert "the previous config is running" in body and "allow.ports" in body

    proxy.write_config(config)
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: "success" in get(proxy, authorization=admin_basic())[2], what="a reload")


def test_no_status_page_without_the_admin_token(
    make_proxy: ProxyFactory, origin: OriginServer, tmp_path: Path
) -> None:
    config = site(tmp_path, origin)
    del config["admin"]
    proxy = make_proxy(config)
    assert get(proxy)[0] == 404
    assert get(proxy, authorization=admin_basic())[0] == 404


# ---- in a real browser -------------------------------------------------------------------------


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless chromium as root in a test: no sandbox (it needs user namespaces as root), no
    GPU, a profile of its own, console messages on stderr."""
    assert CHROMIUM, "chromium is installed by .ci/run"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "HOME": str(profile)},
    )


def test_a_browser_logs_in_and_sees_the_live_page_with_hostile_names_as_text(
    make_proxy: ProxyFactory, origin: OriginServer, tmp_path: Path
) -> None:
    proxy = make_proxy(site(tmp_path, origin))
    url = f"http://127.0.0.1:{proxy.metrics_port}/status"
    logged_in = f"http://admin:{TOKEN}@127.0.0.1:{proxy.metrics_port}/status"
    profile = tmp_path / "chromium"

    # Without credentials, or with a wrong token, the browser meets the Basic challenge, has
    # nothing (right) to answer it with (headless, it cannot ask a person), and gets no page.
    status, headers, _ = get(proxy)
    assert status == 401 and any(v.startswith("Basic ") for v in headers["www-authenticate"])
    wrong = f"http://admin:{'f' * 48}@127.0.0.1:{proxy.metrics_port}/status"
    for attempt in (url, wrong):
        denied = chromium(profile, "--dump-dom", attempt)
        assert "ERR_INVALID_AUTH_CREDENTIALS" in denied.stderr, denied.stderr
        assert 'id="tunnels"' not in denied.stdout

    with traffic(proxy, origin.port) as tunnels:
        streamers = [Streamer(sock) for sock in tunnels]  # the page is taken under load
        try:
            for streamer in streamers:
                streamer.wait_rounds(5)
            shown = chromium(profile, "--dump-dom", logged_in)
            assert shown.returncode == 0, shown.stderr
            ARTIFACTS.mkdir(exist_ok=True)
            screenshot = ARTIFACTS / "status-page.png"
            screenshot.unlink(missing_ok=True)
            shot = chromium(
                profile, f"--screenshot={screenshot}", "--window-size=1280,1000", logged_in
            )
            assert shot.returncode == 0, shot.stderr
        finally:
            for streamer in streamers:
                streamer.stop()

    page = StatusPage(shown.stdout)
    # The browser parsed and ran the page: had a name become markup, its element would be in
    # the DOM and its handler would have renamed the document.
    assert page.title == "connectproxy status"
    assert page.elements().isdisjoint({"script", "img", "svg", "iframe", "object"})
    text = "".join(page.text)
    for name in HOSTILE:
        assert name in text, name
    figures = tunnel_figures(page)
    assert [figures[c][0] for c in ("plant-a", SCRIPT_USER, IMG_USER)] == [2, 1, 1]
    assert all(up >= 5 * 16384 and down >= 5 * 16384 for _, up, down in figures.values())
    assert (f"{REFUSED_USER} from 127.0.0.3", "auth_failed", "invalid proxy credentials", 2) in (
        refusal_rows(page)
    )
    # The policy was in force and blocked nothing: the one inline style matched its hash.
    for log in (shown.stderr, shot.stderr):
        assert "Content Security Policy" not in log, log
    assert screenshot.stat().st_size > 10_000
    with screenshot.open("rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    print(f"status page screenshot: {screenshot}")
