"""The `connectproxy tunnels` command: the command-line face of the admin API (SPEC section 7.1).

It talks to the running proxy the way any script would, over HTTP to the metrics listener with
the admin token, both read from the same config file the proxy runs on. Exit status: 0 done;
1 when the proxy cannot be reached or refuses the token (one line on stderr, never a
traceback); 2 for a config or command-line mistake, including a config without
`admin.token_file`.

The modules only this command needs (json, time, calendar, http.client) are imported where they
are used: cli.py imports this module to build the parser of every command (for `--help`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connectproxy.configfile.errors import ConfigError
from connectproxy.configfile.load import load_config
from connectproxy.server.tunnelfilter import FILTER_KEYS, FilterError, parse_filter_args

if TYPE_CHECKING:
    from connectproxy.config.model import Config

TIMEOUT = 10.0
# A wildcard listen address is reached on the loopback of its family.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class Unreachable(Exception):
    """The proxy did not answer, or refused: printed, exit 1."""


def add_tunnels_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tunnels",
        help="list the running proxy's open tunnels, or close some",
        description="List the running proxy's open tunnels through its admin API (metrics "
        "listener, admin.token_file), or close those matching every FILTER given. "
        "Exit 0 done, 1 proxy unreachable or token refused, 2 config or usage error.",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the running proxy's YAML config (default: "
        "/etc/connectproxy/connectproxy.yaml if present, else the embedded default)",
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    p.add_argument(
        "--close",
        nargs="+",
        metavar="FILTER",
        help="close the tunnels matching all of these KEY=VALUE filters, keys: "
        + ", ".join(FILTER_KEYS)
        + " (host= a domain pattern such as .example.com, or an IP address)",
    )
    p.set_defaults(func=cmd_tunnels)


def cmd_tunnels(args: argparse.Namespace) -> int:
    import json
    import time

    config = load_config(Path(args.config) if args.config else None)
    filters: dict[str, object] | None = None
    if args.close is not None:
        try:
            filters = parse_filter_args(args.close)
        except FilterError as exc:
            print(f"connectproxy: tunnels: --close: {exc}", file=sys.stderr)
            return 2
    host, port, token = _admin_address(config)
    try:
        if filters is not None:
            answer = _call(host, port, token, "POST", "/api/tunnels/close", filters)
            closed = answer.get("closed") if isinstance(answer, dict) else None
            if not isinstance(closed, int):
                raise Unreachable(f"unexpected answer from {_url(host, port)}: {answer!r}")
            print(f"closed {closed} tunnel{'' if closed == 1 else 's'}")
            return 0
        tunnels = _call(host, port, token, "GET", "/api/tunnels", None)
    except Unreachable as exc:
        print(f"connectproxy: tunnels: {exc}", file=sys.stderr)
        return 1
    if not isinstance(tunnels, list):
        print(f"connectproxy: tunnels: unexpected answer from {_url(host, port)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(tunnels, indent=2))
    else:
        print(format_table(tunnels, time.time()))
    return 0


def _admin_address(config: Config) -> tuple[str, int, str]:
    if config.admin.token is None:
        raise ConfigError(
            config.source,
            "admin.token_file",
            None,
            "is not set, so the proxy serves no admin API; set it to a file holding a token "
            "of at least 32 characters and reload the proxy",
        )
    metrics = config.metrics
    if metrics.host is None or metrics.port is None:
        raise ConfigError(
            config.source,
            "metrics.listen",
            None,
            "is null: the admin API is served on the metrics listener, which is off",
        )
    return _LOOPBACK.get(metrics.host, metrics.host), metrics.port, config.admin.token


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _call(host: str, port: int, token: str, method: str, path: str, body: object) -> Any:
    import json

    url = _url(host, port)
    payload = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}"}
    if payload is not None:
        headers["Content-Type"] = "application/json"
    import http.client  # only this command talks HTTP: `explain` stays light (cli.py)

    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise Unreachable(f"cannot reach the proxy's admin API at {url}: {reason}") from None
    finally:
        conn.close()
    if response.status == 401:
        raise Unreachable(
            f"the proxy at {url} refused the admin token (401): the token file is not the one "
            "it runs with; after changing it, reload the proxy (SIGHUP)"
        )
    if response.status == 404:
        raise Unreachable(
            f"the proxy at {url} serves no admin API (404): it runs without admin.token_file; "
            "reload it with this config"
        )
    try:
        answer = json.loads(data)
    except ValueError:
        raise Unreachable(f"{url}{path} answered {response.status} without JSON") from None
    if response.status != 200:
        message = answer.get("error") if isinstance(answer, dict) else None
        raise Unreachable(f"{url}{path} answered {response.status}: {message or answer!r}")
    return answer


# ---- the table --------------------------------------------------------------------------------

_COLUMNS = ["ID", "CLIENT", "USER", "POLICY", "FROM", "TARGET", "SNI", "UP", "DOWN", "AGE", "IDLE"]
_NUMERIC = {0, 7, 8, 9, 10}


def _cell(value: object) -> str:
    """Printable text only: a client's SNI or user name must not move the terminal's cursor."""
    if value is None:
        return "-"
    text = str(value)
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _bytes(value: object) -> str:
    if not isinstance(value, int):
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{value} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{value} B"


def _age(started: object, now: float) -> str:
    import calendar
    import time

    if not isinstance(started, str):
        return "-"
    try:
        stamp = time.strptime(started.split(".", 1)[0], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return "-"
    return _duration(now - calendar.timegm(stamp))


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def _row(tunnel: Any, now: float) -> list[str]:
    if not isinstance(tunnel, dict):
        return [_cell(tunnel)] + ["-"] * (len(_COLUMNS) - 1)
    idle = tunnel.get("idle_s")
    return [
        _cell(tunnel.get("id")),
        _cell(tunnel.get("client")),
        _cell(tunnel.get("user")),
        _cell(tunnel.get("policy")),
        _cell(tunnel.get("client_addr")),
        _cell(tunnel.get("target")),
        _cell(tunnel.get("sni")),
        _bytes(tunnel.get("bytes_client_to_server")),
        _bytes(tunnel.get("bytes_server_to_client")),
        _age(tunnel.get("started"), now),
        _duration(idle) if isinstance(idle, int | float) else "-",
    ]


def format_table(tunnels: Sequence[Any], now: float) -> str:
    """Aligned columns, numbers to the right, and a count at the end."""
    rows = [_COLUMNS, *(_row(t, now) for t in tunnels)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i])
            if i in _NUMERIC and row is not _COLUMNS
            else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    count = len(tunnels)
    lines.append(f"{count} open tunnel{'' if count == 1 else 's'}")
    return "\n".join(lines)
