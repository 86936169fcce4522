"""`reload.close_denied`'s question, without sockets: would a new config still let an open
tunnel open, given what it was admitted on?"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from connectproxy.config.model import Client, Config, Policy, User
from connectproxy.matching.domains import parse_domain_pattern
from connectproxy.policy.decide import Credentials, Source
from connectproxy.server.tunnels import Admission
from connectproxy.wire.http import parse_target

HASH_A = "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43
HASH_B = "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA$" + "B" * 43
TARGET = parse_target("hub.example.com:443")
PLC = Source(ipaddress.ip_address("10.0.0.7"), 40000)
OTHER = Source(ipaddress.ip_address("192.0.2.9"), 40000)


def config(domains: tuple[str, ...] = (".example.com",), **kw: object) -> Config:
    allow = Policy(domains=tuple(parse_domain_pattern(d) for d in domains))
    kw.setdefault("clients", (Client("plc", networks=(ipaddress.ip_network("10.0.0.0/24"),)),))
    return Config(allow=allow, **kw)  # type: ignore[arg-type]


def test_a_client_tunnel_follows_its_policy() -> None:
    admission = Admission(TARGET, PLC, None, config())
    assert admission.allowed_by(config())
    assert not admission.allowed_by(config(domains=("other.example.org",)))
    assert not admission.allowed_by(config(clients=()))  # the client is gone


def test_a_user_tunnel_ends_when_the_user_goes_or_its_password_changes() -> None:
    alice = Credentials("alice", valid=True)
    before = config(users=(User("alice", HASH_A),))
    admission = Admission(TARGET, OTHER, alice, before)
    assert admission.allowed_by(before)
    assert not admission.allowed_by(config(users=(User("alice", HASH_B),)))
    assert not admission.allowed_by(config(users=(User("bob", HASH_A),)))
    # With an htpasswd file the name could be one of its users, but not with the removed
    # entry's password.
    assert not admission.allowed_by(config(htpasswd_file=Path("/etc/htpasswd")))
    narrowed = User("alice", HASH_A, networks=(ipaddress.ip_network("10.9.0.0/16"),))
    assert not admission.allowed_by(config(users=(narrowed,)))


def test_an_htpasswd_user_stays_while_the_file_is_configured() -> None:
    bob = Credentials("bob", valid=True)
    before = config(htpasswd_file=Path("/etc/htpasswd"))
    admission = Admission(TARGET, OTHER, bob, before)
    assert admission.password_hash is None
    assert admission.allowed_by(before)
    assert not admission.allowed_by(config(users=(User("alice", HASH_A),)))


def test_with_nothing_to_check_credentials_against_the_network_decides() -> None:
    alice = Credentials("alice", valid=True)
    admission = Admission(TARGET, PLC, alice, config(users=(User("alice", HASH_A),)))
    assert admission.allowed_by(config())  # no users, no htpasswd: plc's network admits it
    from_elsewhere = Admission(TARGET, OTHER, alice, config(users=(User("alice", HASH_A),)))
    assert not from_elsewhere.allowed_by(config())
