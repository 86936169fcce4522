"""Real peers for integration tests: origin servers on loopback and the proxy as a real process.

Origins run in threads of the test process (started and stopped by the fixture that made them);
the proxy runs as `python -m connectproxy run`, started by PID and stopped by SIGTERM to that PID.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LOOPBACK_OK_DENY = ["0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4"]  # default minus 127/8, ::1


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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


class OriginServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.tls = tls
        self.connections = 0
        self.results: list[str] = []
        self.stop_waiting = threading.Event()
        super().__init__((host, 0), _OriginHandler)
        self.port = int(self.server_address[1])
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, addr

    def __enter__(self) -> OriginServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_waiting.set()
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class HTTPSOrigin(socketserver.ThreadingTCPServer):
    """A TLS origin that answers any GET with a fixed body; curl's target in tests."""

    daemon_threads = True
    allow_reuse_address = True
    body = b"hello from the origin\n"

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.tls = tls
        super().__init__(("127.0.0.1", 0), _HTTPSHandler)
        self.port = int(self.server_address[1])
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> HTTPSOrigin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class _HTTPSHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: HTTPSOrigin = self.server  # type: ignore[assignment]
        try:
            with server.tls.wrap_socket(self.request, server_side=True) as tls:
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

    def __post_init__(self) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
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
