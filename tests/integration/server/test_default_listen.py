"""Listening on every IPv4 and IPv6 address (SPEC section 3.1), as Squid does: one dual-stack
"[::]:3128" socket, and on a host without IPv6 the IPv4 addresses alone, with one warning.

A host without IPv6 is made real for one proxy process: a seccomp filter, installed in the child
before it starts, makes socket(AF_INET6, ...) fail with EAFNOSUPPORT, which is what a kernel
without IPv6 (built so, or booted with ipv6.disable=1) answers. The unit tests drive the same
fallback through `open_listener`'s socket seam.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import signal
import socket
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from connectproxy.config.model import Listener
from connectproxy.configfile.load import load_default
from connectproxy.server.listening import NO_IPV6, open_listener
from tests.conftest import ProxyFactory
from tests.support import REPO_ROOT, ProxyProcess, free_port, read_head, status_of, wait_until

REPO = REPO_ROOT
EMBEDDED = REPO / "src" / "connectproxy" / "config" / "default.yaml"


def no_ipv6_socket(family: int, kind: int) -> socket.socket:
    """socket.socket on a host without IPv6."""
    if family == socket.AF_INET6:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
    return socket.socket(family, kind)


def accepted_peer(listening: socket.socket, family: int, connect_to: str) -> str:
    port = listening.getsockname()[1]
    listening.setblocking(True)
    listening.settimeout(5)
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect((connect_to, port))
        accepted, peer = listening.accept()
        accepted.close()
    return str(peer[0])


def test_dual_stack_listener_takes_ipv4_and_ipv6_clients() -> None:
    listener = Listener("::", 0)
    sock, no_ipv6 = open_listener(listener, (listener,), reuse_port=False)
    with sock:
        assert no_ipv6 is None
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert accepted_peer(sock, socket.AF_INET, "127.0.0.1") == "::ffff:127.0.0.1"
        assert accepted_peer(sock, socket.AF_INET6, "::1") == "::1"


def test_without_ipv6_a_dual_stack_listener_falls_back_to_ipv4() -> None:
    listener = Listener("::", 0, proxy_protocol="v2")
    sock, no_ipv6 = open_listener(
        listener, (listener,), reuse_port=False, new_socket=no_ipv6_socket
    )
    with sock:
        assert no_ipv6 is not None and no_ipv6.errno in NO_IPV6
        assert sock.family == socket.AF_INET
        assert sock.getsockname()[0] == "0.0.0.0"
        assert accepted_peer(sock, socket.AF_INET, "127.0.0.1") == "127.0.0.1"


@pytest.mark.parametrize(
    "listeners",
    [
        pytest.param((Listener("::1", 0),), id="an IPv6 address"),
        pytest.param((Listener("::", 3128), Listener("0.0.0.0", 3128)), id="[::] beside 0.0.0.0"),
    ],
)
def test_without_ipv6_other_ipv6_listeners_fail(listeners: tuple[Listener, ...]) -> None:
    """Only "[::]:P" alone on its port means every address. An IPv6 address, or [::] whose
    IPv4 side another listener has, cannot be served without IPv6: starting fails as before."""
    with pytest.raises(OSError) as failed:
        open_listener(listeners[0], listeners, reuse_port=False, new_socket=no_ipv6_socket)
    assert failed.value.errno == errno.EAFNOSUPPORT


# ---- a proxy process on a host without IPv6 -----------------------------------------------------

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000
SCMP_CMP_EQ = 4


class _ArgCmp(ctypes.Structure):
    """libseccomp's struct scmp_arg_cmp."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    lib = ctypes.CDLL(name)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def without_ipv6() -> Callable[[], None]:
    """A preexec function: from here on, this process and what it runs get EAFNOSUPPORT for
    every IPv6 socket. libseccomp is loaded now, in the test process, so the child only calls."""
    lib = _libseccomp()
    socket_call = lib.seccomp_syscall_resolve_name(b"socket")
    assert socket_call >= 0

    def install() -> None:
        ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        rule = _ArgCmp(0, SCMP_CMP_EQ, socket.AF_INET6, 0)
        action = SCMP_ACT_ERRNO | errno.EAFNOSUPPORT
        if lib.seccomp_rule_add_array(ctx, action, socket_call, 1, ctypes.byref(rule)) != 0:
            raise OSError("seccomp_rule_add_array failed")
        if lib.seccomp_load(ctx) != 0:
            raise OSError("seccomp_load failed")
        lib.seccomp_release(ctx)

    return install


def embedded_default(port: int, metrics_port: int) -> dict[str, Any]:
    """The shipped default as it is, on ports of the test's own."""
    config: dict[str, Any] = yaml.safe_load(EMBEDDED.read_text())
    assert config["listen"] == ["[::]:3128"]
    config["listen"] = [f"[::]:{port}"]
    config["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
    return config


def log_events(proxy: ProxyProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proxy.stderr().splitlines() if line.startswith("{")]


def ipv6_warnings(proxy: ProxyProcess) -> list[dict[str, Any]]:
    """Warnings about IPv6 (others, such as max_connections clamped to a low open-file limit,
    depend on the machine)."""
    return [e for e in log_events(proxy) if e["level"] == "warning" and "IPv6" in str(e)]


def refused_destination(family: int, connect_to: str, port: int) -> bytes:
    """A CONNECT the default refuses for its destination, once it has admitted the client."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect((connect_to, port))
        sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        return read_head(sock)


def test_default_on_a_host_without_ipv6_serves_ipv4_with_one_warning(
    make_proxy: ProxyFactory,
) -> None:
    proxy = make_proxy({}, start=False)
    proxy.config = embedded_default(free_port("::"), proxy.metrics_port)
    proxy.config["log"] = {"access_log": str(proxy.workdir / "access.log")}
    port = int(proxy.config["listen"][0].rsplit(":", 1)[1])
    proxy.write_config()
    proxy.preexec = without_ipv6()
    proxy.start()

    assert status_of(refused_destination(socket.AF_INET, "127.0.0.1", port)) == 403
    with pytest.raises(ConnectionRefusedError):  # nothing listens on IPv6
        refused_destination(socket.AF_INET6, "::1", port)
    proxy.signal(signal.SIGHUP)  # a reload keeps the socket: no second attempt, no second warning
    wait_until(lambda: any(e["event"] == "config reloaded" for e in log_events(proxy)))
    assert status_of(refused_destination(socket.AF_INET, "127.0.0.1", port)) == 403

    warnings = ipv6_warnings(proxy)
    assert len(warnings) == 1, warnings
    [warning] = warnings
    assert warning["event"] == "no IPv6 on this host: listening on IPv4 addresses only"
    assert (warning["address"], warning["listening_on"]) == (f"[::]:{port}", f"0.0.0.0:{port}")
    [record, _] = proxy.access_records(expect=2)
    assert (record["client_addr"], record["client"]) == ("127.0.0.1", "localhost")


def test_default_serves_every_client_family_on_one_dual_stack_socket(
    make_proxy: ProxyFactory,
) -> None:
    proxy = make_proxy({}, start=False)
    proxy.config = embedded_default(free_port("::"), proxy.metrics_port)
    proxy.config["log"] = {"access_log": str(proxy.workdir / "access.log")}
    port = int(proxy.config["listen"][0].rsplit(":", 1)[1])
    proxy.write_config()
    proxy.start()

    clients = [
        (socket.AF_INET, "127.0.0.1"),
        (socket.AF_INET6, "::1"),
        (socket.AF_INET6, "::ffff:127.0.0.1"),
    ]
    for family, connect_to in clients:
        answer = refused_destination(family, connect_to, port)
        assert status_of(answer) == 403, answer
    records = proxy.access_records(expect=3)
    seen = [(r["client_addr"], r["client"], r["outcome"]) for r in records]
    assert seen == [
        ("127.0.0.1", "localhost", "forbidden"),
        ("::1", "localhost", "forbidden"),
        ("127.0.0.1", "localhost", "forbidden"),
    ]
    assert not ipv6_warnings(proxy)


def test_the_embedded_default_and_the_shipped_file_listen_on_every_address() -> None:
    assert load_default().listen == (Listener("::", 3128),)
    shipped = yaml.safe_load((REPO / "config" / "connectproxy.yaml").read_text())
    assert shipped["listen"] == ["[::]:3128"]
