"""Users of an htpasswd file bound to their own policies (docs/configuration.md, "users"): a
`users` entry without password_hash takes the user's password from the file and gives it
policies. Over real sockets, with a file written by Apache's own `htpasswd` tool: two such users
each reach only their own policy's origin, a user with no entry keeps [default], and a wrong
password is refused whatever the entry says.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ProxyFactory
from tests.support import (
    LOOPBACK_OK_DENY,
    OriginServer,
    ProxyProcess,
    basic,
    connect_raw,
    echo_exchange,
    finish,
    status_of,
    wait_until,
)

IOT_HOST = "hub.iot.example"
UPDATES_HOST = "download.updates.example"
DEFAULT_HOST = "plain.default.example"
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}


def htpasswd_file(path: Path) -> Path:
    """Written by Apache's tool, in two of its formats: bcrypt (cheap cost) and MD5 (apr1)."""
    subprocess.run(
        ["htpasswd", "-c", "-b", "-B", "-C", "4", str(path), "alice", PASSWORDS["alice"]],
        check=True,
        capture_output=True,
    )
    for user in ("bob", "carol"):
        subprocess.run(
            ["htpasswd", "-b", "-m", str(path), user, PASSWORDS[user]],
            check=True,
            capture_output=True,
        )
    return path


@dataclass
class Site:
    proxy: ProxyProcess
    iot: OriginServer
    updates: OriginServer
    plain: OriginServer


@pytest.fixture()
def site(make_proxy: ProxyFactory, tmp_path: Path) -> Iterator[Site]:
    passwords = htpasswd_file(tmp_path / "htpasswd")
    with OriginServer() as iot, OriginServer() as updates, OriginServer() as plain:
        config: dict[str, Any] = {
            "allow": {"ports": [plain.port], "domains": [DEFAULT_HOST]},
            "policies": {
                "iot": {"ports": [iot.port], "domains": [".iot.example"]},
                "updates": {"ports": [updates.port], "domains": [UPDATES_HOST]},
            },
            # Nobody is admitted by address: every request here needs a password.
            "clients": [],
            "htpasswd_file": str(passwords),
            "users": [
                {"name": "alice", "policies": ["iot"]},
                {"name": "bob", "policies": ["updates"], "networks": ["127.0.0.0/8"]},
            ],
            "destinations": {
                "hosts": {h: "127.0.0.1" for h in (IOT_HOST, UPDATES_HOST, DEFAULT_HOST)},
                "deny_networks": LOOPBACK_OK_DENY,
            },
        }
        yield Site(make_proxy(config), iot, updates, plain)


def answer(site: Site, target: str, user: str, password: str) -> int:
    """The proxy's status for a CONNECT with these credentials; a tunnel is used and closed."""
    head = (f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{basic(user, password)}\r\n").encode()
    sock, response = connect_raw(site.proxy.port, head)
    with sock:
        status = status_of(response)
        if status == 200:
            echo_exchange(sock, b"E" + user.encode() * 50)
            finish(sock)
    return status


def test_each_htpasswd_user_reaches_only_its_own_policys_origin(site: Site) -> None:
    iot = f"{IOT_HOST}:{site.iot.port}"
    updates = f"{UPDATES_HOST}:{site.updates.port}"
    plain = f"{DEFAULT_HOST}:{site.plain.port}"
    assert answer(site, iot, "alice", PASSWORDS["alice"]) == 200
    assert answer(site, updates, "bob", PASSWORDS["bob"]) == 200
    assert answer(site, updates, "alice", PASSWORDS["alice"]) == 403
    assert answer(site, iot, "bob", PASSWORDS["bob"]) == 403
    # Bound to their own policies, neither has the default policy any more.
    assert answer(site, plain, "alice", PASSWORDS["alice"]) == 403
    assert answer(site, plain, "bob", PASSWORDS["bob"]) == 403
    # carol is only in the file: [default], as every htpasswd user before.
    assert answer(site, plain, "carol", PASSWORDS["carol"]) == 200
    assert answer(site, iot, "carol", PASSWORDS["carol"]) == 403
    assert site.iot.connections == 1
    assert site.updates.connections == 1
    assert site.plain.connections == 1

    records = site.proxy.access_records(expect=8)
    allowed = {(r["client"], r["policy"]) for r in records if r["status"] == 200}
    assert allowed == {("alice", "iot"), ("bob", "updates"), ("carol", "default")}


def test_the_file_holds_the_password_of_a_bound_user(site: Site) -> None:
    iot = f"{IOT_HOST}:{site.iot.port}"
    assert answer(site, iot, "alice", "wrong") == 407
    # Another user's password is not alice's.
    assert answer(site, iot, "alice", PASSWORDS["bob"]) == 407
    assert site.iot.connections == 0


def test_a_changed_file_is_read_again_for_bound_users(site: Site, tmp_path: Path) -> None:
    """The entry binds the name; the password is whatever the file says now."""
    iot = f"{IOT_HOST}:{site.iot.port}"
    assert answer(site, iot, "alice", PASSWORDS["alice"]) == 200
    subprocess.run(
        ["htpasswd", "-b", "-B", "-C", "4", str(tmp_path / "htpasswd"), "alice", "rotated"],
        check=True,
        capture_output=True,
    )
    wait_until(lambda: answer(site, iot, "alice", "rotated") == 200, what="the new password")
    assert answer(site, iot, "alice", PASSWORDS["alice"]) == 407
