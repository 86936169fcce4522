"""Upstream chaining (SPEC section 6) against real peers: Squid requiring Basic auth, a second
connectproxy, and small recording upstreams that show the exact bytes we send and let us script
every way an upstream can fail.

The external servers (Squid here, HAProxy in test_proxy_protocol_live.py) run in the foreground
and are stopped by their PID. Whether they listen is read from /proc/net/tcp rather than probed
with a connection: a probe would reach their logs, or through HAProxy the proxy's, as a client.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shutil
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import trustme
import yaml

from connectproxy.process.cli import main
from tests.conftest import ProxyFactory
from tests.support import (
    LOOPBACK_OK_DENY,
    PASSWORD,
    PASSWORD_HASH,
    SENSOR,
    ExternalServer,
    HTTPSOrigin,
    OriginServer,
    ProxyProcess,
    ThreadedServer,
    basic,
    curl,
    free_port,
    metric,
    open_tunnel_with_early_data,
    read_exactly,
    request,
    tls_proxy,
    write_leaf,
)

SQUID = "/usr/sbin/squid"
BASIC_NCSA_AUTH = "/usr/lib/squid/basic_ncsa_auth"
UPSTREAM_USER = "ot-egress"
UPSTREAM_PASSWORD = "upstream secret 42"
OK_REPLY = b"HTTP/1.1 200 OK\r\n\r\n"


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- a recording stand-in upstream -------------------------------------------------------------

Behaviour = Literal["answer", "close", "silent"]


class _RecordingHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: RecordingUpstream = self.server  # type: ignore[assignment]
        sock: socket.socket = self.request
        with server.lock:
            server.connections += 1
        if server.behaviour == "close":
            return  # socketserver closes the connection as soon as we return
        if server.behaviour == "silent":
            server.release.wait(30)
            return
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                data += chunk
            end = data.index(b"\r\n\r\n") + 4
            with server.lock:
                server.heads.append(data[:end])
            sock.sendall(server.reply)  # one write: head and any tunnel bytes together
            if not server.reply.startswith(b"HTTP/1.1 2"):
                return
            if data[end:]:
                sock.sendall(data[end:])
            while chunk := sock.recv(65536):
                sock.sendall(chunk)
        except OSError:
            pass


class RecordingUpstream(ThreadedServer):
    """An upstream proxy that keeps every request head it receives.

    "answer" reads a head, writes `reply` in a single send, and after a 2xx echoes the tunnel;
    "close" accepts and closes at once (a broken upstream); "silent" accepts and never answers
    (a hung one). `connections` counts accepted connections, which shows whether we tried it."""

    def __init__(
        self,
        reply: bytes = OK_REPLY,
        behaviour: Behaviour = "answer",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.reply = reply
        self.behaviour = behaviour
        self.tls = tls
        self.heads: list[bytes] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        super().__init__(_RecordingHandler, tls=tls)
        self.url = f"http://127.0.0.1:{self.port}"

    def stopping(self) -> None:
        self.release.set()


def chain_config(*proxies: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A proxy whose tunnels go through `proxies`. No `destinations.hosts` and the default
    deny_networks: the upstream resolves, and its own loopback address is trusted."""
    config: dict[str, Any] = {
        "allow": {"ports": [443], "domains": [".azure-devices.net", "download.microsoft.com"]},
        "clients": [{"name": "local", "networks": ["127.0.0.0/8"]}],
        "upstream": {"proxies": list(proxies)},
        "timeouts": {"connect": 2},
    }
    config.update(overrides)
    return config


def body_words(response: bytes) -> list[bytes]:
    """The words of an error answer's one-line body (a status there is a word of its own, not
    the digits of some port)."""
    return response.split(b"\r\n\r\n", 1)[1].split()


def upstream_failures(proxy: ProxyProcess, url: str) -> float:
    return metric(proxy.metrics_text(), "connectproxy_upstream_failures_total", upstream=url)


# ---- a real Squid requiring Basic auth ---------------------------------------------------------


@dataclass
class Squid:
    port: int
    workdir: Path
    server: ExternalServer = field(repr=False)

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    def access_line(self, target: str, timeout: float = 5.0) -> str:
        """Squid's access.log line for a CONNECT to `target` (written when the tunnel ends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.access_log.exists():
                for line in self.access_log.read_text().splitlines():
                    if f" CONNECT {target} " in line:
                        return line
            time.sleep(0.05)
        raise AssertionError(f"no Squid access line for {target}: {self.server.output()}")


def squid_conf(workdir: Path, port: int) -> str:
    """Squid 5 for the tests: our upstream user only, tunnels to any unprivileged port (the
    origins' ports are ephemeral), names from its own hosts file, no cache, no pinger."""
    return f"""
http_port 127.0.0.1:{port}
pid_filename {workdir}/squid.pid
access_log stdio:{workdir}/access.log
cache_log {workdir}/cache.log
cache_store_log none
coredump_dir {workdir}
netdb_filename none
pinger_enable off
cache deny all
hosts_file {workdir}/hosts
shutdown_lifetime 0 seconds
auth_param basic program {BASIC_NCSA_AUTH} {workdir}/passwd
auth_param basic realm upstream-test
acl authenticated proxy_auth REQUIRED
acl SSL_ports port 1024-65535
acl CONNECT method CONNECT
http_access deny CONNECT !SSL_ports
http_access allow authenticated
http_access deny all
"""


@pytest.fixture(scope="module")
def squid() -> Iterator[Squid]:
    # Not under pytest's tmp_path: Squid started as root works as the user `proxy`, which must
    # be able to reach the folder for its logs and its helper's password file.
    workdir = Path(tempfile.mkdtemp(prefix="connectproxy-squid-"))
    server: ExternalServer | None = None
    try:
        workdir.chmod(0o777)
        passwd = workdir / "passwd"
        subprocess.run(
            ["htpasswd", "-b", "-c", "-m", str(passwd), UPSTREAM_USER, UPSTREAM_PASSWORD],
            check=True,
            capture_output=True,
        )
        passwd.chmod(0o644)
        (workdir / "hosts").write_text(f"127.0.0.1 {SENSOR}\n")
        port = free_port()
        conf = workdir / "squid.conf"
        conf.write_text(squid_conf(workdir, port))
        server = ExternalServer([SQUID, "-N", "-f", str(conf)], (port,), workdir / "squid.out")
        server.start()
        yield Squid(port, workdir, server)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def squid_client_config(squid: Squid, password_file: Path) -> dict[str, Any]:
    """Clients log in to us as `sensor2`; we log in to Squid as UPSTREAM_USER."""
    upstream = {
        "url": f"http://127.0.0.1:{squid.port}",
        "username": UPSTREAM_USER,
        "password_file": str(password_file),
    }
    return chain_config(
        upstream,
        allow={"ports": [443, 8443], "domains": [".azure-devices.net"]},
        clients=[],
        users=[{"name": "sensor2", "password_hash": PASSWORD_HASH}],
    )


@pytest.mark.squid
def test_squid_upstream_sees_our_user_not_the_clients(
    squid: Squid,
    make_proxy: ProxyFactory,
    https_origin: HTTPSOrigin,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    password_file = tmp_path / "upstream.pass"
    password_file.write_text(UPSTREAM_PASSWORD + "\n")  # one trailing newline is stripped
    config = squid_client_config(squid, password_file)
    config["allow"]["ports"] = [443, https_origin.port]
    proxy = make_proxy(config)
    target = f"{SENSOR}:{https_origin.port}"
    result = curl(
        "-x",
        f"http://127.0.0.1:{proxy.port}",
        "--proxy-user",
        f"sensor2:{PASSWORD}",
        "--cacert",
        str(ca_file),
        f"https://{target}/",
    )
    assert result.returncode == 0, result.stderr + proxy.stderr()
    assert result.stdout == "hello from the origin\n"

    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "established"
    assert record["upstream"] == f"http://127.0.0.1:{squid.port}"
    assert record["server_addr"] == f"127.0.0.1:{squid.port}"
    assert (record["user"], record["client"]) == ("sensor2", "sensor2")

    # Squid's native line: time elapsed client code/status bytes method url user hierarchy type
    fields = squid.access_line(target).split()
    assert fields[3] == "TCP_TUNNEL/200"
    assert fields[7] == UPSTREAM_USER
    assert "sensor2" not in squid.access_log.read_text()


@pytest.mark.squid
def test_squid_refusing_our_credentials_is_502_naming_its_status(
    squid: Squid, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    password_file = tmp_path / "upstream.pass"
    password_file.write_text("not the upstream password\n")
    proxy = make_proxy(squid_client_config(squid, password_file))
    status, data = request(proxy.port, f"{SENSOR}:8443", basic("sensor2", PASSWORD))
    assert status == 502
    assert b"407" in body_words(data)
    assert b"Proxy-Authenticate" not in data  # Squid's challenge is for us, not for the client
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "upstream_refused"
    assert f"127.0.0.1:{squid.port}" in record["error"]


# ---- two connectproxy instances chained ---------------------------------------------------------


def test_two_instances_chained_only_the_last_resolves(
    make_proxy: ProxyFactory, ca: trustme.CA, ca_file: Path
) -> None:
    """A knows no address for the name (a `.test` name is never in DNS): only B's
    destinations.hosts maps it, so the tunnel works only if A leaves resolving to B."""
    name = "origin.b-only.test"
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(ctx)
    with HTTPSOrigin(ctx) as origin:
        allow = {"ports": [origin.port], "domains": [".b-only.test"]}
        b = make_proxy(
            {
                "allow": allow,
                "clients": [{"name": "proxy-a", "networks": ["127.0.0.1/32"]}],
                "destinations": {"hosts": {name: "127.0.0.1"}, "deny_networks": LOOPBACK_OK_DENY},
            }
        )
        a = make_proxy(chain_config({"url": f"http://127.0.0.1:{b.port}"}, allow=allow))
        result = curl(
            "-x",
            f"http://127.0.0.1:{a.port}",
            "--cacert",
            str(ca_file),
            f"https://{name}:{origin.port}/",
        )
        assert result.returncode == 0, result.stderr + a.stderr() + b.stderr()
        assert result.stdout == "hello from the origin\n"

    [a_record] = a.access_records(expect=1)
    assert a_record["outcome"] == "established"
    assert a_record["upstream"] == f"http://127.0.0.1:{b.port}"
    assert a_record["server_addr"] == f"127.0.0.1:{b.port}"
    [b_record] = b.access_records(expect=1)
    assert b_record["outcome"] == "established"
    assert b_record["client"] == "proxy-a"
    assert b_record["target"] == f"{name}:{origin.port}"
    assert b_record["server_addr"] == f"127.0.0.1:{origin.port}"
    assert b_record["upstream"] is None


# ---- the exact bytes on the wire ---------------------------------------------------------------


def test_connect_head_carries_our_credentials_only(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    password_file = tmp_path / "upstream.pass"
    password_file.write_text(UPSTREAM_PASSWORD + "\n")
    reply = OK_REPLY + b"bytes-from-upstream"
    with RecordingUpstream(reply) as upstream:
        proxy = make_proxy(
            chain_config(
                {
                    "url": upstream.url,
                    "username": UPSTREAM_USER,
                    "password_file": str(password_file),
                },
                clients=[],
                users=[{"name": "sensor2", "password_hash": PASSWORD_HASH}],
            )
        )
        sock = open_tunnel_with_early_data(
            proxy.port, f"{SENSOR}:443", extra=b"early", headers=basic("sensor2", PASSWORD)
        )
        # The bytes that came with the upstream's head reach the client first, then the echo of
        # what the client sent before it saw our 200.
        assert read_exactly(sock, 24) == b"bytes-from-upstreamearly"
        sock.sendall(b"ping")
        assert read_exactly(sock, 4) == b"ping"
        sock.close()

    ours = base64.b64encode(f"{UPSTREAM_USER}:{UPSTREAM_PASSWORD}".encode()).decode()
    assert upstream.heads == [
        f"CONNECT {SENSOR}:443 HTTP/1.1\r\nHost: {SENSOR}:443\r\n"
        f"Proxy-Authorization: Basic {ours}\r\n\r\n".encode()
    ]
    [record] = proxy.access_records(expect=1)
    assert record["upstream"] == upstream.url
    assert record["bytes_client_to_server"] == len(b"early") + len(b"ping")


def test_tunnel_bytes_from_the_upstream_head_are_counted(
    make_proxy: ProxyFactory,
) -> None:
    """Bytes the upstream sent with its 200 are tunnel bytes from the server: they belong in
    bytes_server_to_client like every other byte the client received from the tunnel."""
    with RecordingUpstream(OK_REPLY + b"bytes-from-upstream") as upstream:
        proxy = make_proxy(chain_config({"url": upstream.url}))
        sock = open_tunnel_with_early_data(proxy.port, f"{SENSOR}:443")
        assert read_exactly(sock, 19) == b"bytes-from-upstream"
        sock.sendall(b"ping")
        assert read_exactly(sock, 4) == b"ping"
        sock.close()
    [record] = proxy.access_records(expect=1)
    assert record["bytes_server_to_client"] == len(b"bytes-from-upstream") + len(b"ping")


def test_connect_head_without_upstream_credentials(make_proxy: ProxyFactory) -> None:
    """No username configured: no Proxy-Authorization at all, even when the client sent one."""
    with RecordingUpstream() as upstream:
        proxy = make_proxy(
            chain_config(
                {"url": upstream.url},
                clients=[],
                users=[{"name": "sensor2", "password_hash": PASSWORD_HASH}],
            )
        )
        sock = open_tunnel_with_early_data(
            proxy.port, f"{SENSOR}:443", headers=basic("sensor2", PASSWORD)
        )
        sock.close()
    assert upstream.heads == [
        f"CONNECT {SENSOR}:443 HTTP/1.1\r\nHost: {SENSOR}:443\r\n\r\n".encode()
    ]


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
        b'Proxy-Authenticate: Basic realm="corp"\r\nContent-Length: 0\r\n\r\n',
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_upstream_refusal_is_502_naming_its_status(make_proxy: ProxyFactory, reply: bytes) -> None:
    upstream_status = reply.split()[1]
    with RecordingUpstream(reply) as upstream, RecordingUpstream() as second:
        # An answer is not a connection failure: the next upstream is not tried.
        proxy = make_proxy(chain_config({"url": upstream.url}, {"url": second.url}))
        status, data = request(proxy.port, f"{SENSOR}:443")
        assert status == 502
        assert upstream_status in body_words(data)
        assert b"Proxy-Authenticate" not in data
        assert second.connections == 0
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "upstream_refused"
    assert record["status"] == 502
    assert upstream_failures(proxy, upstream.url) == 0


@pytest.mark.parametrize(
    "reply",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 \xb2\xb2\xb2 OK\r\n\r\n",  # digits to str.isdigit, not to HTTP
        b"HTTP/1.1 2000 OK\r\n\r\n",
    ],
)
def test_garbled_upstream_answer_fails_over(make_proxy: ProxyFactory, reply: bytes) -> None:
    with RecordingUpstream(reply) as garbled, RecordingUpstream() as good:
        proxy = make_proxy(chain_config({"url": garbled.url}, {"url": good.url}))
        status, _ = request(proxy.port, f"{SENSOR}:443")
        assert status == 200
        assert garbled.connections == 1
        assert len(good.heads) == 1
    [record] = proxy.access_records(expect=1)
    assert record["upstream"] == good.url


# ---- failover, timeouts, cool-down, round robin, direct domains --------------------------------


def test_failover_past_a_dead_upstream(make_proxy: ProxyFactory) -> None:
    dead = closed_port()
    with RecordingUpstream() as good:
        proxy = make_proxy(chain_config({"url": f"http://127.0.0.1:{dead}"}, {"url": good.url}))
        status, _ = request(proxy.port, f"{SENSOR}:443")
        assert status == 200
        assert len(good.heads) == 1
    [record] = proxy.access_records(expect=1)
    assert record["upstream"] == good.url
    assert upstream_failures(proxy, f"http://127.0.0.1:{dead}") == 1
    assert upstream_failures(proxy, good.url) == 0


def test_every_upstream_dead_is_502(make_proxy: ProxyFactory) -> None:
    dead = [closed_port(), closed_port()]
    proxy = make_proxy(chain_config(*({"url": f"http://127.0.0.1:{p}"} for p in dead)))
    status, data = request(proxy.port, f"{SENSOR}:443")
    assert status == 502
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "connect_failed"
    for port in dead:
        assert upstream_failures(proxy, f"http://127.0.0.1:{port}") == 1
        assert f"127.0.0.1:{port}".encode() in data


def test_hung_upstream_times_out_to_the_next(make_proxy: ProxyFactory) -> None:
    with RecordingUpstream(behaviour="silent") as hung, RecordingUpstream() as good:
        proxy = make_proxy(
            chain_config({"url": hung.url}, {"url": good.url}, timeouts={"connect": 1})
        )
        began = time.monotonic()
        status, _ = request(proxy.port, f"{SENSOR}:443")
        assert status == 200
        assert 0.9 < time.monotonic() - began < 4
        assert hung.connections == 1 and len(good.heads) == 1
    [record] = proxy.access_records(expect=1)
    assert record["upstream"] == good.url


def test_only_a_hung_upstream_is_504(make_proxy: ProxyFactory) -> None:
    with RecordingUpstream(behaviour="silent") as hung:
        proxy = make_proxy(chain_config({"url": hung.url}, timeouts={"connect": 1}))
        began = time.monotonic()
        status, _ = request(proxy.port, f"{SENSOR}:443")
        assert status == 504
        assert 0.9 < time.monotonic() - began < 4
    [record] = proxy.access_records(expect=1)
    assert record["outcome"] == "connect_timeout"
    assert upstream_failures(proxy, hung.url) == 1


def test_failed_upstream_cools_down(make_proxy: ProxyFactory) -> None:
    """After a failure the broken upstream goes to the back of the line: the next requests go
    straight to the healthy one without trying it again."""
    with RecordingUpstream(behaviour="close") as broken, RecordingUpstream() as good:
        proxy = make_proxy(chain_config({"url": broken.url}, {"url": good.url}))
        for _ in range(3):
            assert request(proxy.port, f"{SENSOR}:443")[0] == 200
        assert broken.connections == 1
        assert len(good.heads) == 3
    assert [r["upstream"] for r in proxy.access_records(expect=3)] == [good.url] * 3
    assert upstream_failures(proxy, broken.url) == 1


def test_cooling_upstreams_are_still_tried_when_nothing_else_works(
    make_proxy: ProxyFactory,
) -> None:
    """Both failed once and are cooling down; the next request tries them again rather than
    refusing without a connection attempt."""
    with (
        RecordingUpstream(behaviour="close") as first,
        RecordingUpstream(behaviour="close") as second,
    ):
        proxy = make_proxy(chain_config({"url": first.url}, {"url": second.url}))
        assert request(proxy.port, f"{SENSOR}:443")[0] == 502
        assert request(proxy.port, f"{SENSOR}:443")[0] == 502
        assert (first.connections, second.connections) == (2, 2)


def test_round_robin_alternates(make_proxy: ProxyFactory) -> None:
    with RecordingUpstream() as one, RecordingUpstream() as two:
        upstream = {"proxies": [{"url": one.url}, {"url": two.url}], "strategy": "round_robin"}
        proxy = make_proxy(chain_config(upstream=upstream))
        used = []
        for _ in range(4):
            before = len(one.heads)
            assert request(proxy.port, f"{SENSOR}:443")[0] == 200
            # The upstream records the head before it answers, so this is settled by now.
            used.append(one.url if len(one.heads) > before else two.url)
        assert used == [one.url, two.url] * 2
        assert len(one.heads) == len(two.heads) == 2
    records = proxy.access_records(expect=4)
    assert sorted(r["upstream"] for r in records) == sorted(used)


def test_direct_domains_bypass_the_upstream(make_proxy: ProxyFactory, origin: OriginServer) -> None:
    with RecordingUpstream() as upstream:
        config = chain_config(
            upstream={
                "proxies": [{"url": upstream.url}],
                "direct_domains": ["download.microsoft.com"],
            },
            allow={
                "ports": [443, origin.port],
                "domains": [".azure-devices.net", "download.microsoft.com"],
            },
            destinations={
                "hosts": {"download.microsoft.com": "127.0.0.1"},
                "deny_networks": LOOPBACK_OK_DENY,
            },
        )
        proxy = make_proxy(config)
        sock = open_tunnel_with_early_data(
            proxy.port, f"download.microsoft.com:{origin.port}", extra=b"E"
        )
        assert sock.recv(1) == b"E"
        sock.close()
        assert upstream.connections == 0
        assert request(proxy.port, f"{SENSOR}:{origin.port}")[0] == 200
        assert len(upstream.heads) == 1
    records = {r["target"]: r for r in proxy.access_records(expect=2)}
    direct = records[f"download.microsoft.com:{origin.port}"]
    chained = records[f"{SENSOR}:{origin.port}"]
    assert direct["upstream"] is None
    assert direct["server_addr"] == f"127.0.0.1:{origin.port}"
    assert chained["upstream"] == upstream.url


# ---- an https:// upstream that requires a client certificate ------------------------------------


def behind_chain_config(origin_port: int, **overrides: Any) -> dict[str, Any]:
    """The last proxy of a chain: it resolves SENSOR from its hosts map and reaches loopback."""
    config: dict[str, Any] = {
        "allow": {"ports": [origin_port], "domains": [".azure-devices.net"]},
        "clients": [{"name": "local", "networks": ["127.0.0.0/8"]}],
        "destinations": {"hosts": {SENSOR: "127.0.0.1"}, "deny_networks": LOOPBACK_OK_DENY},
    }
    config.update(overrides)
    return config


def test_https_upstream_with_client_certificate(
    make_proxy: ProxyFactory,
    origin: OriginServer,
    ca: trustme.CA,
    ca_file: Path,
    tmp_path: Path,
    server_cert: tuple[Path, Path],
) -> None:
    client_cert, client_key = write_leaf(ca, tmp_path, "a-client", "proxy-a.plant")
    # Idle timeouts end the tunnel: the close is not what this test is about (see the next one).
    quick = {"idle": 1, "shutdown_grace": 1}
    b = tls_proxy(
        make_proxy,
        behind_chain_config(
            origin.port,
            clients=[{"name": "site-a", "tls_names": ["proxy-a.plant"]}],
            timeouts=quick,
        ),
        server_cert,
        client_ca=ca_file,
        require_client_cert=True,
    )
    upstream = {"url": f"https://127.0.0.1:{b.port}", "ca_file": str(ca_file)}
    allow = {"ports": [origin.port], "domains": [".azure-devices.net"]}
    with_cert = make_proxy(
        chain_config(
            {**upstream, "cert_file": str(client_cert), "key_file": str(client_key)},
            allow=allow,
            timeouts=quick,
        )
    )
    without_cert = make_proxy(chain_config(upstream, allow=allow))

    sock = open_tunnel_with_early_data(with_cert.port, f"{SENSOR}:{origin.port}", extra=b"Ehello")
    assert read_exactly(sock, 6) == b"Ehello"
    sock.close()
    status, _ = request(without_cert.port, f"{SENSOR}:{origin.port}")
    assert status == 502

    [record] = with_cert.access_records(expect=1)
    assert record["upstream"] == f"https://127.0.0.1:{b.port}"
    assert record["bytes_server_to_client"] == 6
    [refused] = without_cert.access_records(expect=1)
    assert refused["outcome"] == "connect_failed"
    b_records = {r["outcome"]: r for r in b.access_records(expect=2)}
    assert b_records["established"]["client"] == "site-a"
    assert "TLS" in b_records["bad_request"]["error"]


def test_tunnel_through_https_upstream_passes_on_eof(
    make_proxy: ProxyFactory, origin: OriginServer, ca_file: Path, server_cert: tuple[Path, Path]
) -> None:
    """SPEC section 5 through an https:// upstream: the client's EOF must reach the origin, and
    the origin's answer and EOF must come back. Without it a tunnel whose two ends have both
    finished stays open until timeouts.idle (900 s by default), on both proxies."""
    quick = {"shutdown_grace": 1}
    b = tls_proxy(make_proxy, behind_chain_config(origin.port, timeouts=quick), server_cert)
    a = make_proxy(
        chain_config(
            {"url": f"https://127.0.0.1:{b.port}", "ca_file": str(ca_file)},
            allow={"ports": [origin.port], "domains": [".azure-devices.net"]},
            timeouts=quick,
        )
    )
    payload = b"H" + b"x" * 1000
    sock = open_tunnel_with_early_data(a.port, f"{SENSOR}:{origin.port}", extra=payload)
    sock.shutdown(socket.SHUT_WR)  # the origin answers only once it has seen our EOF
    sock.settimeout(3)
    answer = b""
    with contextlib.suppress(TimeoutError):
        while chunk := sock.recv(100):
            answer += chunk
    sock.close()
    assert answer == hashlib.sha256(payload[1:]).hexdigest().encode()


def test_https_upstream_with_an_untrusted_certificate_fails(
    make_proxy: ProxyFactory, tmp_path: Path, ca_file: Path
) -> None:
    """The upstream's certificate is checked against ca_file: another CA's certificate fails."""
    other = trustme.CA()
    cert, key = write_leaf(other, tmp_path, "impostor", "127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    with RecordingUpstream(tls=ctx) as impostor:
        proxy = make_proxy(
            chain_config({"url": f"https://127.0.0.1:{impostor.port}", "ca_file": str(ca_file)})
        )
        status, data = request(proxy.port, f"{SENSOR}:443")
        assert status == 502, data
        assert impostor.heads == []


# ---- explain -----------------------------------------------------------------------------------


def test_explain_names_the_upstreams(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = chain_config(
        upstream={
            "proxies": [{"url": "http://127.0.0.1:3129"}, {"url": "https://[::1]:8443"}],
            "direct_domains": ["download.microsoft.com"],
        },
        destinations={"hosts": {"download.microsoft.com": "192.0.2.7"}},
    )
    path = tmp_path / "connectproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    base = ["explain", "--config", str(path), "--source", "127.0.0.1"]

    assert main([*base, f"{SENSOR}:443"]) == 0
    out = capsys.readouterr().out
    assert "route: upstream" in out
    assert "failover: http://127.0.0.1:3129, https://[::1]:8443" in out

    assert main([*base, "download.microsoft.com:443"]) == 0
    assert "route: direct to 192.0.2.7" in capsys.readouterr().out

    assert main([*base, "evil.example:443"]) == 1
    assert "route" not in capsys.readouterr().out
