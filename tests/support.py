"""Real peers for integration tests: origin servers on loopback and the proxy as a real process.

Origins run in threads of the test process (started and stopped by the fixture that made them);
the proxy runs as `python -m connectproxy run`, started by PID and stopped by SIGTERM to that PID.
Every helper more than one test module needs lives here, so no test module imports another.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import trustme
import yaml
from prometheus_client.parser import text_string_to_metric_families

from connectproxy.credentials.passwords import hash_password

REPO_ROOT = Path(__file__).resolve().parent.parent  # the repository, whatever folder a test is in
DATA = REPO_ROOT / "tests" / "data"  # files the tests read: squid.conf samples, htpasswd files

LOOPBACK_OK_DENY = ["0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4"]  # default minus 127/8, ::1


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` different free ports: each is held while the next is chosen, since the kernel
    may hand out a just-released port again (a proxy once got its metrics port equal to its
    listener's that way, and refused its config)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(socket.socket(family, socket.SOCK_STREAM))
            s.bind((host, 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def pattern(n: int, seed: int = 0) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes in 64 KiB blocks, cheap enough for 100 MB."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048
    sent = 0
    i = 0
    while sent < n:
        chunk = block[i % 251 :] + block[: i % 251]
        chunk = chunk[: min(len(chunk), n - sent)]
        sent += len(chunk)
        i += 1
        yield chunk


class _OriginHandler(socketserver.BaseRequestHandler):
    """First byte picks the mode, like a tiny test protocol:

    E  echo every byte (the E included) until EOF, then close
    H  half-close test: read to EOF, then answer the sha256 of what arrived and close
    D  + 8-byte N: send N pattern bytes, then close
    S  + 8-byte N: read N bytes, answer their sha256
    R  reverse half-close: send "bye", shut down writing, read to EOF, record the sha256
    W  wait: read nothing, hold the connection (for backpressure tests) until told to stop
    """

    def handle(self) -> None:
        sock: socket.socket = self.request
        server: OriginServer = self.server  # type: ignore[assignment]
        server.connections += 1
        try:
            mode = sock.recv(1)
            if mode == b"E":
                sock.sendall(b"E")
                while data := sock.recv(65536):
                    sock.sendall(data)
            elif mode == b"H":
                h = hashlib.sha256()
                while data := sock.recv(65536):
                    h.update(data)
                sock.sendall(h.hexdigest().encode())
            elif mode == b"D":
                n = int.from_bytes(_recv_exact(sock, 8), "big")
                for chunk in pattern(n):
                    sock.sendall(chunk)
            elif mode == b"S":
                n = int.from_bytes(_recv_exact(sock, 8), "big")
                h = hashlib.sha256()
                got = 0
                while got < n and (data := sock.recv(min(1 << 20, n - got))):
                    h.update(data)
                    got += len(data)
                sock.sendall(h.hexdigest().encode())
            elif mode == b"R":
                sock.sendall(b"bye")
                sock.shutdown(socket.SHUT_WR)
                h = hashlib.sha256()
                while data := sock.recv(65536):
                    h.update(data)
                server.results.append(h.hexdigest())
            elif mode == b"W":
                server.stop_waiting.wait(30)
        except OSError:
            pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise ConnectionError("short read")
        buf += data
    return buf


class ThreadedServer(socketserver.ThreadingTCPServer):
    """The base of every test server: a thread per connection on a free loopback port, started by
    `with` and stopped (shutdown, close, join) when the block ends. Subclasses give the handler and
    the state it records; `stopping` runs first on exit, to release handlers that wait."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        handler: type[socketserver.BaseRequestHandler],
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.tls = tls
        super().__init__((host, 0), handler)
        self.port = int(self.server_address[1])
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def get_request(self) -> tuple[Any, Any]:
        """Accepted connections of a TLS server are wrapped; the handshake runs in the handler's
        thread, on its first read."""
        sock, addr = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def stopping(self) -> None:
        """Called before the shutdown; a server whose handlers may block releases them here."""

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping()
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class OriginServer(ThreadedServer):
    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.connections = 0
        self.results: list[str] = []
        self.stop_waiting = threading.Event()
        super().__init__(_OriginHandler, host, tls)

    def stopping(self) -> None:
        self.stop_waiting.set()


class HTTPSOrigin(ThreadedServer):
    """A TLS origin that answers any GET with a fixed body; curl's target in tests."""

    body = b"hello from the origin\n"

    def __init__(self, tls: ssl.SSLContext) -> None:
        super().__init__(_HTTPSHandler, tls=tls)


class _HTTPSHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: HTTPSOrigin = self.server  # type: ignore[assignment]
        try:
            with self.request as tls:  # wrapped by ThreadedServer.get_request
                head = b""
                while b"\r\n\r\n" not in head:
                    data = tls.recv(4096)
                    if not data:
                        return
                    head += data
                body = server.body
                tls.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(body), body)
                )
        except (OSError, ssl.SSLError):
            pass


@dataclass
class ProxyProcess:
    """connectproxy run as a real process on a config written to `workdir`."""

    config: dict[str, Any]
    workdir: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    # Runs in the child before the proxy starts: how a test narrows what the host offers it.
    preexec: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.port, self.metrics_port = free_ports(2)
        self.config.setdefault("listen", [f"127.0.0.1:{self.port}"])
        self.config.setdefault("metrics", {"listen": f"127.0.0.1:{self.metrics_port}"})
        log = self.config.setdefault("log", {})
        log.setdefault("access_log", str(self.workdir / "access.log"))
        log.setdefault("level", "debug")
        self.config_path = self.workdir / "connectproxy.yaml"
        self.write_config()
        self.stderr_path = self.workdir / "stderr.log"
        self.stdout_path = self.workdir / "stdout.log"

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        self.config_path.write_text(yaml.safe_dump(config or self.config))

    def start(self, wait: bool = True) -> ProxyProcess:
        args = [sys.executable, "-m", "connectproxy", "run", "--config", str(self.config_path)]
        self.proc = subprocess.Popen(
            args + self.extra_args,
            stdout=self.stdout_path.open("wb"),
            stderr=self.stderr_path.open("wb"),
            env=self.env,
            preexec_fn=self.preexec,
        )
        if wait:
            self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited {self.proc.returncode}: {self.stderr()}")
            try:
                with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=0.2) as s:
                    s.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
                    if b" 200 " in s.recv(100):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"proxy did not become ready: {self.stderr()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def access_records(
        self, expect: int | None = None, timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """The JSON access events; waits until `expect` are there (flushed each second)."""
        path = Path(self.config["log"]["access_log"])
        deadline = time.monotonic() + timeout
        records: list[dict[str, Any]] = []
        while True:
            if path.exists():
                lines = path.read_text().splitlines()
                records = [json.loads(line) for line in lines if line.strip()]
            if expect is None or len(records) >= expect or time.monotonic() > deadline:
                return records
            time.sleep(0.1)

    def metrics_text(self) -> str:
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.split(b"\r\n\r\n", 1)[1].decode()

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def connect_raw(port: int, head: bytes, timeout: float = 5.0) -> tuple[socket.socket, bytes]:
    """Send `head`, read the response head and for an error its body; returns the socket and
    the bytes read. A 200 head is read byte by byte so no tunnel byte is consumed with it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(head)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while not data.endswith(b"\r\n\r\n"):
            chunk = sock.recv(1)
            if not chunk:
                break
            data += chunk
        if status_of(data) not in (0, 200):
            while chunk := sock.recv(4096):
                data += chunk
    return sock, data


def status_of(response: bytes) -> int:
    try:
        return int(response.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def request(port: int, target: str, headers: str = "", extra: bytes = b"") -> tuple[int, bytes]:
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n".encode() + extra
    sock, data = connect_raw(port, head)
    sock.close()
    return status_of(data), data


# ---- configs and clients shared by the integration tests ----------------------------------------

SENSOR = "sensor.azure-devices.net"
PASSWORD = "correct horse battery staple"
PASSWORD_HASH = hash_password(PASSWORD)


def config_for(port: int, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "allow": {
            "ports": [443, port],
            "domains": [".azure-devices.net", "download.microsoft.com"],
        },
        "clients": [{"name": "local", "networks": ["127.0.0.0/8", "::1"]}],
        "destinations": {
            "hosts": {SENSOR: "127.0.0.1", "download.microsoft.com": "127.0.0.1"},
            "deny_networks": LOOPBACK_OK_DENY,
        },
    }
    config.update(overrides)
    return config


def basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Proxy-Authorization: Basic {token}\r\n"


def open_tunnel_with_early_data(
    port: int, target: str, extra: bytes = b"", headers: str = ""
) -> socket.socket:
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n".encode()
    sock, data = connect_raw(port, head + extra, timeout=10)
    assert status_of(data) == 200, data
    assert data.endswith(b"\r\n\r\n"), data  # nothing of the tunnel was read with the head
    return sock


CURL = shutil.which("curl")


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    assert CURL, "curl is installed by .ci/run"
    return subprocess.run([CURL, "-sS", "--max-time", "10", *args], capture_output=True, text=True)


# ---- scraping the metrics endpoint --------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def http_get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return status_of(data), data.split(b"\r\n\r\n", 1)[1]


def scrape(proxy: ProxyProcess) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(proxy.metrics_text()):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled child never created (nothing counted yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for_metric(
    proxy: ProxyProcess, name: str, expected: float, timeout: float = 5.0, **labels: str
) -> Samples:
    """Poll until the sample has the expected value (gauges move when a task ends, bytes every
    couple of seconds); returns the last scrape for further checks."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(proxy)
        if value(samples, name, **labels) == expected or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition; 0 when the series is absent."""
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---- tunnels from a chosen client address -------------------------------------------------------


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_head(sock: socket.socket) -> bytes:
    """The response head, byte by byte so nothing of a tunnel is consumed with it; for an
    error answer the body too, up to the proxy's close."""
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            return data
        data += chunk
    if status_of(data) != 200:
        with contextlib.suppress(OSError):  # a reset after the answer ends the body too
            while chunk := sock.recv(4096):
                data += chunk
    return data


def open_tunnel_from_source(
    port: int, target: str, headers: str = "", source: str = "127.0.0.1"
) -> socket.socket:
    sock = connect_from(source, port)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n".encode())
    head = read_head(sock)
    assert status_of(head) == 200, head
    return sock


def echo_exchange(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "tunnel closed early"
        got += chunk
    assert got == payload


def finish(sock: socket.socket) -> None:
    """Half-close and read to the end, so every byte the proxy copied has been counted."""
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass
    sock.close()


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.05)


class Streamer:
    """Keeps a tunnel busy from a background thread: a block out, its echo back, again."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rounds = 0
        self.error: BaseException | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        block = os.urandom(16384)
        try:
            while not self.stopped.is_set():
                echo_exchange(self.sock, block)
                self.rounds += 1
                time.sleep(0.005)
        except BaseException as exc:
            self.error = exc

    def wait_rounds(self, more: int) -> None:
        target = self.rounds + more
        wait_until(lambda: self.rounds >= target or self.error is not None, what="tunnel traffic")
        assert self.error is None, self.error

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        assert self.error is None, self.error


# ---- a process's resources, read from /proc ----------------------------------------------------


def socket_count(pid: int) -> int:
    """Open sockets of a process; pipes lent to tunnels come and go and are not counted."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
    return count


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# ---- external servers, stopped by PID ----------------------------------------------------------


def is_listening(port: int) -> bool:
    """Whether a socket listens on 127.0.0.1:`port`, read from /proc/net/tcp (state 0A)."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == "0A":
            return True
    return False


@dataclass
class ExternalServer:
    """A real server binary run in the foreground; its output goes to `log_path`."""

    args: list[str]
    ports: tuple[int, ...]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> ExternalServer:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not all(is_listening(port) for port in self.ports):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.args[0]} did not start: {self.output()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGTERM to our PID, SIGKILL if it has not gone within five seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# ---- TLS: certificates from the test CA and a proxy with a TLS listener -------------------------


def write_leaf(ca: trustme.CA, folder: Path, stem: str, *identities: str) -> tuple[Path, Path]:
    """A certificate (chain) and key signed by the test CA, as PEM files."""
    leaf = ca.issue_cert(*identities)
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    for i, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(str(cert_path), append=i > 0)
    leaf.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


def tls_proxy(
    make_proxy: Callable[..., ProxyProcess],
    config: dict[str, Any],
    cert: tuple[Path, Path],
    client_ca: Path | None = None,
    require_client_cert: bool = False,
    proxy_protocol: str = "off",
) -> ProxyProcess:
    """A running connectproxy whose one listener serves TLS (on its own `port`)."""
    proxy = make_proxy(config, start=False)
    tls: dict[str, Any] = {"cert_file": str(cert[0]), "key_file": str(cert[1])}
    if client_ca is not None:
        tls |= {"client_ca_file": str(client_ca), "require_client_cert": require_client_cert}
    listener = {"address": f"127.0.0.1:{proxy.port}", "tls": tls, "proxy_protocol": proxy_protocol}
    proxy.config["listen"] = [listener]
    proxy.write_config()
    return proxy.start()
