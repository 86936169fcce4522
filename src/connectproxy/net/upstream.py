"""Chaining: opening the tunnel through an upstream proxy (docs/configuration.md, "upstream").

The upstream is trusted by configuration: it resolves the destination (we do no DNS for tunnels it
carries) and `deny_networks` does not apply to its own address. It gets our CONNECT with its own
credentials, never the client's `Proxy-Authorization`.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import ssl
import time
from collections.abc import Callable

from connectproxy.config.model import Upstream, UpstreamProxy
from connectproxy.net.dial import DialError, lookup, open_tcp
from connectproxy.net.sockio import handshake, recv, send_all
from connectproxy.wire.http import Target

COOL_DOWN = 30.0  # seconds a failed upstream is tried only after the healthy ones
MAX_RESPONSE_HEAD = 16384
# RFC 9112: exactly three ASCII digits. Checked on bytes, so a byte such as 0xB2 ("²" in
# latin-1, a digit to str.isdigit but not to int) cannot slip through and crash the connection.
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})(?: (.*))?")


def tls_context(proxy: UpstreamProxy) -> ssl.SSLContext:
    ctx = ssl.create_default_context(
        cafile=str(proxy.ca_file) if proxy.ca_file is not None else None
    )
    if proxy.cert_file is not None:
        key = str(proxy.key_file) if proxy.key_file is not None else None
        ctx.load_cert_chain(str(proxy.cert_file), key)
    return ctx


def connect_head(proxy: UpstreamProxy, target: Target) -> bytes:
    lines = [f"CONNECT {target.authority} HTTP/1.1", f"Host: {target.authority}"]
    if proxy.username is not None:
        token = base64.b64encode(f"{proxy.username}:{proxy.password or ''}".encode()).decode()
        lines.append(f"Proxy-Authorization: Basic {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class _Unusable(Exception):
    """This upstream could not be used (connect, TLS, or a garbled answer): try the next one.

    Not a `Refusal`: it never reaches the client. `Upstreams.open` turns the failures of every
    upstream into one DialError. (It could not subclass DialError anyway: DialError is compiled
    (setup.py), and an interpreted class cannot subclass a compiled one.)"""

    def __init__(self, reason: str, timed_out: bool = False) -> None:
        super().__init__(reason, timed_out)
        self.reason = reason
        self.timed_out = timed_out


class Upstreams:
    """The configured upstreams, their TLS contexts, the rotation and the cool-downs."""

    def __init__(self, upstream: Upstream, clock: Callable[[], float] = time.monotonic) -> None:
        self.proxies = upstream.proxies
        self.strategy = upstream.strategy
        self.clock = clock
        self.contexts = {p.name: tls_context(p) for p in self.proxies if p.scheme == "https"}
        self.cooling_until: dict[str, float] = {}
        self._next = 0

    def order(self) -> list[UpstreamProxy]:
        """Healthy upstreams first (in order, or rotated for round_robin), cooling ones last so
        that when all have failed recently we still try rather than refuse outright."""
        proxies = list(self.proxies)
        if self.strategy == "round_robin" and proxies:
            start = self._next % len(proxies)
            self._next += 1
            proxies = proxies[start:] + proxies[:start]
        now = self.clock()
        healthy = [p for p in proxies if self.cooling_until.get(p.name, 0.0) <= now]
        cooling = [p for p in proxies if p not in healthy]
        return healthy + cooling

    def failed(self, proxy: UpstreamProxy) -> None:
        self.cooling_until[proxy.name] = self.clock() + COOL_DOWN

    def succeeded(self, proxy: UpstreamProxy) -> None:
        self.cooling_until.pop(proxy.name, None)

    async def open(
        self, target: Target, timeout: float, failed: Callable[[str], None]
    ) -> tuple[socket.socket, bytes, UpstreamProxy]:
        """A socket tunnelled to `target` through the first upstream that works, and any bytes
        the upstream sent after its 2xx head (they belong to the tunnel). `failed` is told the
        name of each upstream that could not be used (the metrics count it)."""
        failures: list[_Unusable] = []
        for proxy in self.order():
            try:
                async with asyncio.timeout(timeout):
                    sock, status, reason, rest = await self._try(proxy, target)
            except TimeoutError:
                failure = _Unusable(f"{proxy.name} timed out", timed_out=True)
            except _Unusable as exc:
                failure = exc
            else:
                self.succeeded(proxy)
                if 200 <= status < 300:
                    return sock, rest, proxy
                sock.close()
                raise DialError(
                    502,
                    "upstream_refused",
                    f"upstream {proxy.name} answered {status} {reason}",
                    upstream=proxy.name,
                )
            failed(proxy.name)
            self.failed(proxy)
            failures.append(failure)
        detail = "; ".join(f.reason for f in failures)
        if failures and all(f.timed_out for f in failures):
            raise DialError(504, "connect_timeout", f"every upstream timed out: {detail}")
        raise DialError(502, "connect_failed", f"no upstream could be reached: {detail}")

    async def _try(
        self, proxy: UpstreamProxy, target: Target
    ) -> tuple[socket.socket, int, str, bytes]:
        sock = await self._connect(proxy)
        try:
            await send_all(sock, connect_head(proxy, target))
            status, reason, rest = await _read_response(sock, proxy)
        except OSError as exc:  # includes ssl.SSLError
            sock.close()
            raise _Unusable(f"{proxy.name}: {exc.strerror or exc}") from None
        except BaseException:
            sock.close()
            raise
        return sock, status, reason, rest

    async def _connect(self, proxy: UpstreamProxy) -> socket.socket:
        try:
            sock, _ = await open_tcp(await lookup(proxy.host, proxy.port), proxy.port)
        except (OSError, DialError) as exc:
            raise _Unusable(f"{proxy.name}: {exc}") from None
        ctx = self.contexts.get(proxy.name)
        if ctx is None:
            return sock
        tls = ctx.wrap_socket(sock, server_hostname=proxy.host, do_handshake_on_connect=False)
        try:
            await handshake(tls)
        except OSError as exc:
            tls.close()
            raise _Unusable(f"{proxy.name}: TLS handshake failed: {exc}") from None
        except BaseException:
            tls.close()
            raise
        return tls


async def _read_response(sock: socket.socket, proxy: UpstreamProxy) -> tuple[int, str, bytes]:
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(data) > MAX_RESPONSE_HEAD:
            raise _Unusable(f"{proxy.name}: response head too large")
        chunk = await recv(sock, 65536)
        if not chunk:
            raise _Unusable(f"{proxy.name}: closed without answering")
        data += chunk
    match = _STATUS_LINE.fullmatch(data[: data.find(b"\r\n")])
    if match is None:
        raise _Unusable(f"{proxy.name}: not an HTTP answer")
    # The reason goes into our answer line: keep it printable and short.
    reason = "".join(c for c in (match[2] or b"").decode("latin-1") if c.isprintable())[:80]
    return int(match[1]), reason, data[end + 4 :]
