"""ClientHellos for the tests of wire/tlshello.py: captured live from real clients, or hand-built.

Captures: a listening socket on 127.0.0.1 accepts one connection from a real TLS client (Python's
`ssl`, `openssl s_client`, curl) and records the bytes it sends until its first handshake message
is complete; then the socket is closed and the client gives up. When the hello is complete is
decided by `first_flight_length` below, a few lines of record framing written from RFC 8446 5.1
apart from the parser under test.

Hand-built hellos follow RFC 8446 4.1.2 field by field, so a test can put exactly the values it
needs (GREASE, ECH, odd ALPN values, broken lengths) where a real client never would.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

SERVER_NAME = 0x0000
SIGNATURE_ALGORITHMS = 0x000D
ALPN = 0x0010
SUPPORTED_VERSIONS = 0x002B
ECH = 0xFE0D


# --- capturing what a real client sends ---------------------------------------------------------


def first_flight_length(data: bytes) -> int | None:
    """How many bytes the records carrying the first handshake message take, once all arrived."""
    pos = 0
    message = b""
    while len(data) >= pos + 5:
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if len(data) < pos + 5 + length:
            return None
        message += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(message) >= 4 and len(message) >= 4 + int.from_bytes(message[1:4], "big"):
            return pos
    return None


def capture(start_client: Callable[[int], Callable[[], None]], timeout: float = 10.0) -> bytes:
    """Run a client against a listener on 127.0.0.1 and return its ClientHello records.

    `start_client(port)` starts the client and returns how to stop it, called once the hello is
    recorded and the connection closed (which makes every client here give up on its own).
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(timeout)
        stop = start_client(listener.getsockname()[1])
        try:
            conn, _ = listener.accept()
            with conn:
                data = b""
                deadline = time.monotonic() + timeout
                while (end := first_flight_length(data)) is None:
                    conn.settimeout(max(deadline - time.monotonic(), 0.01))
                    chunk = conn.recv(65536)
                    if not chunk:
                        raise AssertionError(f"client closed after {len(data)} bytes")
                    data += chunk
                return data[:end]
        finally:
            stop()
    finally:
        listener.close()


def python_client(
    server_hostname: str | None, alpn: Sequence[str] = ()
) -> tuple[Callable[[int], Callable[[], None]], ssl.SSLContext]:
    """A Python `ssl` client; also returns its context, to compare the offer with the hello."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))

    def start(port: int) -> Callable[[], None]:
        def handshake() -> None:
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                    ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
                ):
                    tls.do_handshake()
            except (OSError, ssl.SSLError):
                pass  # the listener hangs up after the hello: the expected end

        thread = threading.Thread(target=handshake, daemon=True)
        thread.start()
        return lambda: thread.join(10)

    return start, ctx


def process_client(argv: Callable[[int], list[str]]) -> Callable[[int], Callable[[], None]]:
    """A client program given the listener's port; stopped by its own PID if it lingers."""

    def start(port: int) -> Callable[[], None]:
        proc = subprocess.Popen(
            argv(port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def stop() -> None:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        return stop

    return start


def openssl_client(*options: str) -> Callable[[int], Callable[[], None]]:
    return process_client(
        lambda port: ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *options]
    )


def curl_client(url: str, *options: str) -> Callable[[int], Callable[[], None]]:
    """curl; `{port}` in the URL or an option is replaced by the listener's port."""
    return process_client(
        lambda port: [
            "curl",
            "--silent",
            "--output",
            "/dev/null",
            "--max-time",
            "10",
            *(option.replace("{port}", str(port)) for option in options),
            url.replace("{port}", str(port)),
        ]
    )


# --- building hellos by hand --------------------------------------------------------------------


def u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def vec(length_bytes: int, body: bytes) -> bytes:
    return len(body).to_bytes(length_bytes, "big") + body


def extension(kind: int, body: bytes) -> bytes:
    return u16(kind) + vec(2, body)


def sni(*names: bytes, name_type: int = 0) -> bytes:
    return extension(SERVER_NAME, vec(2, b"".join(bytes([name_type]) + vec(2, n) for n in names)))


def alpn(*protocols: bytes) -> bytes:
    return extension(ALPN, vec(2, b"".join(vec(1, p) for p in protocols)))


def sigalgs(*schemes: int) -> bytes:
    return extension(SIGNATURE_ALGORITHMS, vec(2, b"".join(u16(s) for s in schemes)))


def versions(*offered: int) -> bytes:
    return extension(SUPPORTED_VERSIONS, vec(1, b"".join(u16(v) for v in offered)))


def ech_outer(payload_length: int = 200) -> bytes:
    """An outer encrypted_client_hello (draft-ietf-tls-esni 5): type 0, HPKE suite, config id,
    a 32-byte enc and the encrypted inner hello (random-looking here)."""
    body = b"\x00" + u16(0x0001) + u16(0x0001) + b"\x2a"
    body += vec(2, bytes(range(32))) + vec(2, bytes(i % 251 for i in range(payload_length)))
    return extension(ECH, body)


def hello_message(
    ciphers: Sequence[int],
    extensions: Sequence[bytes] | None,
    legacy_version: int = 0x0303,
    session_id: bytes = b"\x11" * 32,
) -> bytes:
    """A ClientHello handshake message (type 1, 3-byte length); None leaves out the extensions."""
    body = u16(legacy_version) + bytes(range(32)) + vec(1, session_id)
    body += vec(2, b"".join(u16(c) for c in ciphers)) + vec(1, b"\x00")
    if extensions is not None:
        body += vec(2, b"".join(extensions))
    return b"\x01" + vec(3, body)


def records(message: bytes, size: int = 1 << 14, version: int = 0x0301) -> bytes:
    """`message` in handshake records of at most `size` bytes each."""
    return b"".join(
        b"\x16" + u16(version) + vec(2, message[i : i + size]) for i in range(0, len(message), size)
    )


def reframe(hello: bytes, size: int) -> bytes:
    """A captured hello's handshake message, cut into records of `size` bytes."""
    end = first_flight_length(hello)
    assert end == len(hello)
    message = b""
    pos = 0
    while pos < len(hello):
        length = int.from_bytes(hello[pos + 3 : pos + 5], "big")
        message += hello[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return records(message, size, int.from_bytes(hello[1:3], "big"))


def hello(
    ciphers: Sequence[int], extensions: Sequence[bytes] | None, legacy_version: int = 0x0303
) -> bytes:
    return records(hello_message(ciphers, extensions, legacy_version))
