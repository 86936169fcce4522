#!/usr/bin/env python3
"""Micro-benchmark of `decide()`: the small config against the large one (cpbench/largeconfig.py).

The rate scenario (`run.py --proxies connectproxy,connectproxy-large --scenario rate`) is the
figure that counts; this one isolates the decision, where the size of a config could show, and
runs in seconds without starting a proxy. Run it with the interpreter connectproxy is installed
in, compiled or not:

    .venv/bin/python bench/decide.py

Both configs are built from the package's dataclasses the way the loader builds them, the
benchmark's client deciding for the benchmark's target, as in the rate scenario: the large
config's client is its last, bound to the last policy, whose last pattern allows the target.
"built in" is the model alone (parsing the patterns and networks, building the indexes), not
reading YAML.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time

from cpbench.largeconfig import LargeConfig, generate, password_hash
from cpbench.settings import DENIED_HOST, TARGET_HOST

from connectproxy.config.model import Allow, Client, Config, Policy, User
from connectproxy.matching.domains import parse_domain_pattern
from connectproxy.policy.decide import Source, decide
from connectproxy.wire.http import Target, parse_target

PORTS = (443, 18443)  # 443 and an origin's port, as the benchmark's config has


def small() -> Config:
    """templates/connectproxy.yaml as the model: one policy, one pattern, one client."""
    return Config(
        allow=Allow(ports=frozenset(PORTS), domains=(parse_domain_pattern(".azure-devices.net"),)),
        clients=(Client("bench", networks=(ipaddress.ip_network("127.0.0.0/8"),)),),
    )


def large(spec: LargeConfig, digest: str) -> Config:
    """The same, grown: the spec's policies, clients and users (sharing one password hash)."""
    return Config(
        allow=small().allow,
        policies={
            p.name: Policy(
                name=p.name,
                ports=frozenset(p.ports),
                domains=tuple(parse_domain_pattern(d) for d in p.domains),
            )
            for p in spec.policies
        },
        clients=tuple(
            Client(
                c.name,
                networks=tuple(ipaddress.ip_network(n) for n in c.networks),
                policies=c.policies,
            )
            for c in spec.clients
        ),
        users=tuple(User(u.name, digest, policies=u.policies) for u in spec.users),
    )


def per_call(target: Target, source: Source, config: Config, calls: int, repeats: int) -> float:
    """The best of `repeats` runs of `calls` decisions, in microseconds per call: the least
    disturbed by the other work of a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(calls):
            decide(target, source, None, config)
        best = min(best, time.perf_counter() - began)
    return best / calls * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()

    spec = generate(PORTS)
    digest = password_hash()
    began = time.perf_counter()
    big = large(spec, digest)
    built_ms = (time.perf_counter() - began) * 1000
    source = Source(ipaddress.ip_address("127.0.0.1"), 40000)
    print(
        f"large config: {spec.pattern_count:,} domain patterns in {len(spec.policies)} policies, "
        f"{len(spec.clients):,} clients, {len(spec.users):,} users; built in {built_ms:.0f} ms"
    )
    print(f"{'decide()':<34} {'small':>10} {'large':>10} {'large/small':>12}")
    for label, authority in (
        ("allowed target", f"{TARGET_HOST}:443"),
        ("denied domain", f"{DENIED_HOST}:443"),
        ("denied port", f"{TARGET_HOST}:8443"),
    ):
        target = parse_target(authority)
        figures = []
        for config in (small(), big):
            decision = decide(target, source, None, config)
            assert decision.allowed == (label == "allowed target"), decision
            figures.append(per_call(target, source, config, a.calls, a.repeats))
        print(
            f"{label + ' (us/call)':<34} {figures[0]:>10.2f} {figures[1]:>10.2f} "
            f"{figures[1] / figures[0]:>12.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
