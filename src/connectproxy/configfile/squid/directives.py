"""The squid.conf directives around the access rules: listeners, authentication, timeouts, and
the ones connectproxy has no use for (docs/squid-migration.md).

Each is translated on its own, as it is read: `http_port` into `listen`, `auth_param basic
program basic_ncsa_auth FILE` into `htpasswd_file`, `connect_timeout` and `read_timeout` into
`timeouts`. What has no counterpart is reported, with the reason when the reason is known, and
ignored; a directive that would make the translation guess (`if`/`else`/`endif`) stops it.
ACLs and http_access lines are acls.py's; cache_peer and never_direct are upstream.py's.
"""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path
from typing import Any

from connectproxy.configfile.squid.parse import Directive
from connectproxy.configfile.squid.report import Report, refuse

__all__ = ["Settings", "anchored_path"]

# Squid time units (cache_cf.cc parseTimeUnits), matched by prefix so "minutes" is "minute".
_TIME_UNITS = (
    ("millisecond", 0.001),
    ("second", 1.0),
    ("minute", 60.0),
    ("hour", 3600.0),
    ("day", 86400.0),
    ("week", 7 * 86400.0),
    ("fortnight", 14 * 86400.0),
    ("month", 30 * 86400.0),
    ("year", 365.2522 * 86400.0),
    ("decade", 3652.522 * 86400.0),
)

# http_port modes that make Squid something other than a forward proxy.
_NOT_FORWARD_MODES = {"intercept", "transparent", "tproxy", "accel"}

# Why a well-known directive has no counterpart; anything else is "directive X ignored".
_IGNORED_BECAUSE = {
    "coredump_dir": "connectproxy writes no core dumps of its own",
    "cache_dir": "there is no cache",
    "cache_mem": "there is no cache",
    "maximum_object_size": "there is no cache",
    "refresh_pattern": "there is no cache",
    "access_log": "set log.access_log (and log.access_format: squid for Squid's line format)",
    "cache_log": "set log.level; logs go to stdout or the journal",
    "logfile_rotate": "connectproxy does not rotate logs; use logrotate or journald",
    "dns_nameservers": "connectproxy uses the system resolver",
    "visible_hostname": "connectproxy sends no error pages naming the host",
    "always_direct": "every tunnel goes through the upstream when one is configured",
    "proxy_protocol_access": (
        "connectproxy accepts a PROXY header from any peer on a listener with proxy_protocol; "
        "let only your load balancer reach that listener"
    ),
    "ssl_bump": "connectproxy never intercepts TLS",
    "http_reply_access": "connectproxy never sees HTTP replies inside a tunnel",
}


# Where Squid listens for an http_port without an address: every IPv4 and IPv6 address.
EVERY_ADDRESS = "::"


class Settings:
    """What the directives other than the access rules and the upstream translate into."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.listen: list[str | dict[str, Any]] = []
        self.saw_http_port = False
        self.htpasswd: tuple[int, Directive, Path] | None = None
        self.timeouts: dict[str, float] = {}
        self.ignored: dict[str, list[tuple[int, Directive]]] = {}

    def read(self, index: int, d: Directive) -> None:
        """One directive; anything not named here is collected and reported as ignored."""
        match d.name:
            case "http_port":
                self.http_port(index, d)
            case "auth_param":
                self.auth_param(index, d)
            case "connect_timeout":
                self.timeouts["connect"] = self.seconds(index, d)
            case "read_timeout":
                self.timeouts["idle"] = self.seconds(index, d)
            case "cache":
                if d.args != ("deny", "all"):
                    self.report.warn(index, d.where, "`cache` ignored: there is no cache")
            case "if" | "else" | "endif":
                raise refuse(
                    d,
                    "conditional configuration (if/else/endif) cannot be translated: which "
                    "branch Squid uses depends on its worker process; keep the branch you need",
                )
            case _:
                self.ignored.setdefault(d.name, []).append((index, d))

    def report_ignored(self) -> None:
        """One warning per ignored directive name, at its first line, listing the other lines."""
        for name, places in self.ignored.items():
            index, first = places[0]
            message = f"directive {name} ignored"
            reason = _IGNORED_BECAUSE.get(name)
            if reason:
                message += f": {reason}"
            others = [d.where for _, d in places[1:]]
            if others:
                shown = ", ".join(others[:5])
                more = f" and {len(others) - 5} more" if len(others) > 5 else ""
                message += f" (also at {shown}{more})"
            self.report.warn(index, first.where, message)

    def seconds(self, index: int, d: Directive) -> float:
        """A Squid time value: "30 seconds", "2 minutes", "1.5 hours"... A bare number is
        seconds, as older Squid releases read it (Squid 5 refuses it)."""
        if not d.args or len(d.args) > 2:
            raise refuse(d, f"{d.name} needs a time such as `{d.name} 30 seconds`")
        try:
            value = float(d.args[0])
        except ValueError:
            raise refuse(d, f"{d.name}: {d.args[0]!r} is not a number") from None
        factor = 1.0
        if len(d.args) == 2:
            unit = d.args[1].lower()
            factors = [f for name, f in _TIME_UNITS if unit.startswith(name)]
            if not factors:
                raise refuse(d, f"{d.name}: unknown time unit {d.args[1]!r}")
            factor = factors[0]
        else:
            self.report.warn(index, d.where, f"{d.name} has no time unit: taken as seconds")
        seconds = value * factor
        if not math.isfinite(seconds) or seconds <= 0:
            raise refuse(d, f"{d.name} must be a positive time")
        return seconds

    # --- http_port ---

    def http_port(self, index: int, d: Directive) -> None:
        self.saw_http_port = True
        if not d.args:
            raise refuse(d, "http_port needs a port, as in `http_port 3128`")
        host, port = _listen_address(d)
        options = d.args[1:]
        modes = sorted(_NOT_FORWARD_MODES.intersection(options))
        if modes:
            self.report.warn(
                index,
                d.where,
                f"http_port in {'/'.join(modes)} mode is not a forward proxy listener; "
                "connectproxy only serves explicit CONNECT proxies, so this port is not translated",
            )
            return
        proxy_protocol = "require-proxy-header" in options
        unknown = [o for o in options if o != "require-proxy-header"]
        if "ssl-bump" in unknown:
            self.report.warn(index, d.where, "ssl-bump ignored: connectproxy never intercepts TLS")
            unknown.remove("ssl-bump")
        if unknown:
            self.report.warn(index, d.where, f"http_port options ignored: {' '.join(unknown)}")
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if proxy_protocol:
            # Squid's require-proxy-header accepts both PROXY protocol versions.
            self.listen.append({"address": shown, "proxy_protocol": "any"})
        else:
            self.listen.append(shown)

    # --- auth_param ---

    def auth_param(self, index: int, d: Directive) -> None:
        if len(d.args) < 2:
            raise refuse(d, "auth_param needs a scheme and a parameter")
        scheme, parameter, *values = d.args
        if scheme != "basic":
            self.report.warn(
                index,
                d.where,
                f"auth_param {scheme} ignored: connectproxy only does Basic authentication",
            )
            return
        if parameter == "program":
            self.auth_program(index, d, values)
        elif parameter == "realm":
            self.report.warn(
                index,
                d.where,
                'auth_param basic realm ignored: connectproxy always uses realm "connectproxy"',
            )
        else:
            self.report.warn(index, d.where, f"auth_param basic {parameter} ignored")

    def auth_program(self, index: int, d: Directive, values: list[str]) -> None:
        helper = Path(values[0]).name if values else ""
        if helper not in ("basic_ncsa_auth", "ncsa_auth") or len(values) < 2:
            self.report.warn(
                index,
                d.where,
                "auth_param basic program ignored: only basic_ncsa_auth FILE (an htpasswd file) "
                "can be translated",
            )
            return
        self.htpasswd = (index, d, anchored_path(index, d, values[-1], self.report))


def _listen_address(d: Directive) -> tuple[str, int]:
    """Squid's `[host:]port`. A bare port is every IPv4 and IPv6 address, as in Squid: "[::]",
    one dual-stack socket (IPv4 alone on a host without IPv6, server.listening.open_listener)."""
    text = d.args[0]
    host_text, sep, port_text = text.rpartition(":")
    if not sep:
        host_text = EVERY_ADDRESS
    elif host_text.startswith("[") and host_text.endswith("]"):
        host_text = host_text[1:-1]
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise refuse(d, f"http_port {text!r}: the port must be a number from 1 to 65535")
    if host_text == "localhost":
        host_text = "127.0.0.1"
    try:
        host = str(ipaddress.ip_address(host_text))
    except ValueError:
        raise refuse(
            d,
            f"http_port {text!r}: the address must be an IP address "
            "(connectproxy does not resolve listen addresses)",
        ) from None
    return host, int(port_text)


def anchored_path(index: int, d: Directive, text: str, report: Report) -> Path:
    """An absolute path: the translated config may be saved anywhere, so a relative path
    is anchored now, against the folder of the file that names it (Squid would use its
    working directory, which a reader of the file cannot see)."""
    path = Path(text)
    if path.is_absolute():
        return path
    anchored = (Path(d.file).parent / path).absolute()
    report.warn(
        index,
        d.where,
        f"relative path {text!r} taken as {anchored} (Squid resolves it against its working "
        "directory)",
    )
    return anchored
