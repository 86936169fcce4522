"""One way to reach a destination: resolve → filter → connect, directly or through the upstreams.

The server, `doctor` and the tests all open their server-side connections here, so what `doctor`
reports is what the proxy does (docs/operations.md, "doctor"). These are the "resolve and check"
and "connect" steps of docs/configuration.md ("How the keys combine"): resolve once
(`destinations.hosts`, then DNS), drop every address in `destinations.deny_networks`, connect to
exactly the addresses that were checked; or hand the target to the upstream chain, which
resolves it itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from connectproxy.config.model import Config
from connectproxy.matching.addresses import endpoint_text
from connectproxy.matching.netset import IPAddress
from connectproxy.net.deadlines import Deadlines
from connectproxy.net.dial import DialError, open_tcp, resolve
from connectproxy.net.sockio import peer_address
from connectproxy.net.upstream import Upstreams
from connectproxy.policy.decide import Route, usable_addresses
from connectproxy.wire.http import Target


class AddressesDenied(DialError):
    """Every resolved address is in `destinations.deny_networks` (403); `addresses` lists them,
    for `doctor`'s explanation (the client's answer never names them)."""

    def __init__(self, addresses: list[IPAddress]) -> None:
        super().__init__(403, "forbidden", "destination address is not allowed")
        self.args = (addresses,)
        self.addresses = addresses


class Dialed:
    """An open server-side connection and how it was reached.

    A plain class: compiled (setup.py), a dataclass's generated __init__ would run interpreted."""

    def __init__(
        self,
        sock: Any,
        server_addr: str | None,
        early: bytes = b"",
        upstream: str | None = None,
        addresses: list[IPAddress] | None = None,
    ) -> None:
        self.sock = sock
        self.server_addr = server_addr  # "host:port" as the access log shows it
        self.early = early  # bytes the upstream sent after its 2xx: the tunnel's first bytes
        self.upstream = upstream  # the upstream proxy's name, None when direct
        self.addresses = addresses or []  # the addresses left after the deny check (direct)


class Connector:
    """Opens connections for one config; rebuilt with it on reload (process/app.py)."""

    def __init__(
        self,
        config: Config,
        upstreams: Upstreams | None,
        deadlines: Deadlines,
        upstream_failed: Callable[[str], None],
    ) -> None:
        self.config = config
        self.upstreams = upstreams
        self.deadlines = deadlines
        self.upstream_failed = upstream_failed  # told each upstream's failure (metrics)

    async def open(self, target: Target, route: Route, task: asyncio.Task[Any]) -> Dialed:
        """Reach `target` within `timeouts.connect`; `task`, the caller's, is what the timeout
        cancels. Raises DialError with the status and outcome the client is answered with."""
        if route == "upstream" and self.upstreams is not None:
            return await self.through_upstream(target)
        stage = "resolve"
        try:
            with self.deadlines.limit(task, self.config.timeouts.connect):
                usable = await self.addresses(target)
                stage = "connect"
                return await self.connect(usable, target)
        except TimeoutError:
            if stage == "resolve":
                raise DialError(
                    504, "resolve_failed", f"resolving {target.host} timed out"
                ) from None
            raise DialError(
                504, "connect_timeout", f"connecting to {target.authority} timed out"
            ) from None

    async def addresses(self, target: Target) -> list[IPAddress]:
        """Resolve and check: resolve once and drop every denied address; what is left is all
        `connect` may use."""
        addrs = await resolve(target, self.config)
        usable = usable_addresses(addrs, self.config)
        if not usable:
            raise AddressesDenied(addrs)
        return usable

    async def connect(self, usable: list[IPAddress], target: Target) -> Dialed:
        """Connect, directly: the first of the checked addresses that answers (Happy Eyeballs)."""
        sock, reached = await open_tcp(usable, target.port)
        return Dialed(sock, endpoint_text(reached, target.port), addresses=usable)

    async def through_upstream(self, target: Target) -> Dialed:
        """Connect through the upstream chain, with its failover and cool-downs
        (docs/configuration.md, "upstream")."""
        assert self.upstreams is not None
        timeout = self.config.timeouts.connect
        sock, early, proxy = await self.upstreams.open(target, timeout, self.upstream_failed)
        return Dialed(sock, peer_address(sock), early, proxy.name)
