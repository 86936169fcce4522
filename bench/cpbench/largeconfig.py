"""The large policy config: 10,000 domain patterns across 100 policies, 1,000 clients and 1,000
users, for the `connectproxy-large` target.

The claim it tests (docs/configuration.md, "Policies"): matching does not slow down with the
size of the config, so this config must decide as fast as the small one the `connectproxy`
target runs. The benchmark's client is placed where a walk over lists would cost the most: it
is the last client, bound to three policies of which only the last allows the target, and the
target's pattern is the last of that policy's. Every other name is made up and never asked for.

`LargeConfig` is plain data, so the same config can be written as YAML for the proxy (`yaml`)
and built as the package's dataclasses for the micro-benchmark of `decide()` (bench/decide.py).
Only the standard library is used, as everywhere in the driver.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from .settings import TARGET_HOST

POLICIES = 100
PATTERNS_PER_POLICY = 100  # 10,000 in all
CLIENTS = 1000  # by source network, the benchmark's own client last
USERS = 1000
BENCH_CLIENT = "bench"
BENCH_NETWORK = "127.0.0.0/8"
# The benchmark client's policy, the last defined: bound to one policy like the small config's
# client, so the two differ in the size of the config only (a client bound to k policies costs up
# to k index lookups, whatever their size).
BENCH_POLICIES = ("p099",)
# The target's pattern: `.azure-devices.net` covers TARGET_HOST (bench.azure-devices.net).
TARGET_PATTERN = "." + TARGET_HOST.split(".", 1)[1]


@dataclass(frozen=True)
class PolicySpec:
    name: str
    ports: tuple[int, ...]
    domains: tuple[str, ...]


@dataclass(frozen=True)
class IdentitySpec:
    """A client (by `networks`) or a user (with `password_hash`)."""

    name: str
    networks: tuple[str, ...]
    policies: tuple[str, ...]


@dataclass(frozen=True)
class LargeConfig:
    policies: tuple[PolicySpec, ...]
    clients: tuple[IdentitySpec, ...]
    users: tuple[IdentitySpec, ...]

    @property
    def pattern_count(self) -> int:
        return sum(len(p.domains) for p in self.policies)


def _patterns(index: int) -> tuple[str, ...]:
    """A policy's patterns: all three kinds, and names that share text with each other but not
    a label boundary (`a7-3.example` and `xa7-3.example`), as real allowlists do."""
    out: list[str] = []
    for i in range(PATTERNS_PER_POLICY):
        kind = i % 3
        stem = f"p{index:03d}-{i:03d}"
        if kind == 0:
            out.append(f".{stem}.devices.example")
        elif kind == 1:
            out.append(f"*.{stem}.blob.example")
        else:
            out.append(f"x{stem}.update.example")
    return tuple(out)


def generate(ports: tuple[int, ...]) -> LargeConfig:
    """The config, with every policy holding `ports` (443 and the origin's, as the small config
    does). Deterministic: two runs benchmark the same config."""
    policies = []
    for index in range(POLICIES):
        domains = _patterns(index)
        if f"p{index:03d}" == BENCH_POLICIES[-1]:
            domains = (*domains[:-1], TARGET_PATTERN)
        policies.append(PolicySpec(f"p{index:03d}", ports, domains))
    clients = []
    for index in range(CLIENTS - 1):
        # 10.X.Y.0/24 networks, none holding 127.0.0.1; one to three policies each.
        network = f"10.{index // 250}.{index % 250}.0/24"
        bound = tuple(f"p{(index + k) % POLICIES:03d}" for k in range(1 + index % 3))
        clients.append(IdentitySpec(f"site-{index:04d}", (network,), bound))
    clients.append(IdentitySpec(BENCH_CLIENT, (BENCH_NETWORK,), BENCH_POLICIES))
    users = [
        IdentitySpec(f"user-{index:04d}", (), (f"p{index % POLICIES:03d}",))
        for index in range(USERS)
    ]
    return LargeConfig(tuple(policies), tuple(clients), tuple(users))


def _quoted(items: tuple[str, ...] | tuple[int, ...]) -> str:
    return "[" + ", ".join(f'"{i}"' if isinstance(i, str) else str(i) for i in items) + "]"


def yaml(config: LargeConfig, password_hash: str) -> str:
    """The `policies`, `clients` and `users` keys as YAML, to take the place of the small
    config's `clients` (`splice`). Every user shares one password hash: the load never sends
    credentials, the users are there for the size of the config."""
    lines = ["policies:"]
    for policy in config.policies:
        lines.append(f"  {policy.name}:")
        lines.append(f"    ports: {_quoted(policy.ports)}")
        lines.append(f"    domains: {_quoted(policy.domains)}")
    lines.append("clients:")
    for client in config.clients:
        lines.append(f"  - name: {client.name}")
        lines.append(f"    networks: {_quoted(client.networks)}")
        lines.append(f"    policies: {_quoted(client.policies)}")
    lines.append("users:")
    for user in config.users:
        lines.append(f"  - name: {user.name}")
        lines.append(f'    password_hash: "{password_hash}"')
        lines.append(f"    policies: {_quoted(user.policies)}")
    return "\n".join(lines) + "\n"


def password_hash(password: str = "bench") -> str:
    """A valid `scrypt$...` hash as `connectproxy hash-password` writes it, made with the standard
    library (the driver does not import connectproxy); a fixed salt keeps the config the same
    from run to run."""
    salt = b"cpbench-large-cf"
    digest = hashlib.scrypt(password.encode(), salt=salt, n=16384, r=8, p=1, dklen=32)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii").rstrip("=")

    return f"scrypt$n=16384,r=8,p=1${b64(salt)}${b64(digest)}"


# The `clients` key of templates/connectproxy.yaml, which the large config replaces.
SMALL_CLIENTS = 'clients:\n  - name: bench\n    networks: ["127.0.0.0/8"]\n'


def splice(small: str, large: str) -> str:
    """The small config with its `clients` key replaced by the large config's keys: everything
    else (listener, allow, hosts, limits, log) stays the same, so the two differ in size only."""
    if small.count(SMALL_CLIENTS) != 1:
        raise ValueError("templates/connectproxy.yaml no longer has the clients key this expects")
    return small.replace(SMALL_CLIENTS, large)
