"""The two ends of a tunnel, as one standard-library script that runs anywhere Python does.

The deployment tests need a TLS origin and a client next to a proxy that runs in a container, a
systemd container or a package install, where the test suite's own helpers (and its
dependencies) are not installed. So this file imports nothing but the standard library: the
tests import it on the host and copy or mount it into containers, and run it there as
`python3 peer.py origin ...` or `python3 peer.py tunnel ...`.

    origin  a TLS echo server on 127.0.0.1: it answers every byte it receives, until EOF
    tunnel  CONNECT through a proxy, complete a verified TLS handshake with the origin through
            it, check an echo, optionally hold the tunnel open and echo again later; prints one
            JSON line with the outcome and exits 0 only if every step worked
    status  send one CONNECT and print the proxy's status code (for refusals)
    get     GET a URL on the metrics listener and print the status code
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request


def split_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def connect_through(proxy: str, target: str, timeout: float = 10.0) -> tuple[socket.socket, int]:
    """Open a connection to the proxy and ask for a tunnel; return the socket and the status."""
    host, port = split_hostport(proxy)
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"proxy closed the connection after {head!r}")
            head += chunk
        status = int(head.split(b" ", 2)[1])
    except BaseException:
        sock.close()
        raise
    return sock, status


def echo_once(conn: ssl.SSLSocket | socket.socket, payload: bytes) -> None:
    conn.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError(f"echo ended after {len(got)} of {len(payload)} bytes")
        got += chunk
    if got != payload:
        raise ValueError("echo differs from what was sent")


def tls_tunnel(proxy: str, target: str, ca_file: str, server_name: str) -> ssl.SSLSocket:
    """A tunnel with a verified TLS session to the origin inside it."""
    sock, status = connect_through(proxy, target)
    if status != 200:
        sock.close()
        raise ConnectionError(f"proxy answered {status}")
    ctx = ssl.create_default_context(cafile=ca_file)
    return ctx.wrap_socket(sock, server_hostname=server_name)


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn: socket.socket = self.request
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass


class EchoServer(socketserver.ThreadingTCPServer):
    """An echo server on loopback, plain or (with a context) TLS."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext | None = None) -> None:
        super().__init__(address, _EchoHandler)
        self.tls = tls

    def get_request(self) -> tuple[socket.socket, object]:
        conn, addr = super().get_request()
        if self.tls is not None:
            conn.settimeout(10)
            conn = self.tls.wrap_socket(conn, server_side=True)
            conn.settimeout(None)
        return conn, addr

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gives up mid-handshake is expected in these tests; stay quiet."""

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> EchoServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def cmd_origin(args: argparse.Namespace) -> int:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    server = EchoServer((args.host, args.port), ctx)
    print(f"ready {server.port}", flush=True)
    server.serve_forever()
    return 0


def cmd_tunnel(args: argparse.Namespace) -> int:
    result: dict[str, object] = {"proxy": args.proxy, "target": args.target}
    try:
        conn = tls_tunnel(args.proxy, args.target, args.ca, args.server_name)
        with conn:
            result["tls"] = conn.version()
            echo_once(conn, b"first " + os.urandom(16).hex().encode())
            if args.hold:
                print(json.dumps({"holding": True}), flush=True)
                time.sleep(args.hold)
                echo_once(conn, b"after holding " + os.urandom(16).hex().encode())
        result["ok"] = True
    except (OSError, ValueError) as exc:
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


def cmd_status(args: argparse.Namespace) -> int:
    sock, status = connect_through(args.proxy, args.target)
    sock.close()
    print(status)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(args.url, timeout=5) as response:
            print(response.status)
    except urllib.error.HTTPError as exc:
        print(exc.code)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="peer.py")
    sub = parser.add_subparsers(dest="command", required=True)
    origin = sub.add_parser("origin")
    origin.add_argument("--host", default="127.0.0.1")
    origin.add_argument("--port", type=int, default=0)
    origin.add_argument("--cert", required=True)
    origin.add_argument("--key", required=True)
    origin.set_defaults(run=cmd_origin)
    tunnel = sub.add_parser("tunnel")
    tunnel.add_argument("--proxy", required=True)
    tunnel.add_argument("--target", required=True)
    tunnel.add_argument("--ca", required=True)
    tunnel.add_argument("--server-name", default="origin.test")
    tunnel.add_argument("--hold", type=float, default=0.0)
    tunnel.set_defaults(run=cmd_tunnel)
    status = sub.add_parser("status")
    status.add_argument("--proxy", required=True)
    status.add_argument("--target", required=True)
    status.set_defaults(run=cmd_status)
    get = sub.add_parser("get")
    get.add_argument("url")
    get.set_defaults(run=cmd_get)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
