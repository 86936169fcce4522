"""The bytes we answer with: the 200 that starts a tunnel and the error responses that refuse.

Error responses carry a one-line reason and `Connection: close`, and the connection closes after
them (docs/configuration.md, "How the keys combine").
"""

from __future__ import annotations

from types import MappingProxyType

ESTABLISHED: bytes = b"HTTP/1.1 200 Connection established\r\n\r\n"
PROXY_AUTHENTICATE: tuple[tuple[str, str], ...] = (
    ("Proxy-Authenticate", 'Basic realm="connectproxy"'),
)
ALLOW_CONNECT: tuple[tuple[str, str], ...] = (("Allow", "CONNECT"),)

# The statuses this proxy answers with (docs/configuration.md, "How the keys combine"). Our own
# table rather than the standard library's `http.HTTPStatus`: its module name is shadowed by
# wire/http.py for a type checker run on that folder alone.
_PHRASES = MappingProxyType(
    {
        400: "Bad Request",
        403: "Forbidden",
        405: "Method Not Allowed",
        407: "Proxy Authentication Required",
        408: "Request Timeout",
        431: "Request Header Fields Too Large",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Timeout",
    }
)

# Header name characters (RFC 9110 token) and visible value characters: the request parser checks
# what a client sends with them, and error_response what we send.
TCHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
VCHARS = bytes(range(0x21, 0x7F))


def error_response(
    status: int, reason: str, extra_headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """The complete answer for a refused request; the connection is closed after it.

    The reason becomes a one-line ASCII body whatever it holds (it may carry text from an
    upstream), so it can neither break the framing nor inject headers. Extra headers come from
    our own code; an invalid one is a programming error and raises ValueError.
    """
    phrase = _PHRASES.get(status)
    if phrase is None:
        raise ValueError(f"no error response is defined for HTTP status {status}")
    line = "".join(char if char.isascii() and char.isprintable() else " " for char in reason)
    body = (" ".join(line.split()) + "\n").encode("ascii")
    head = [
        f"HTTP/1.1 {status} {phrase}",
        "Content-Type: text/plain",
        f"Content-Length: {len(body)}",
    ]
    for name, value in extra_headers:
        encoded_name, encoded_value = name.encode("ascii"), value.encode("ascii")
        if not encoded_name or encoded_name.translate(None, TCHARS):
            raise ValueError(f"invalid header name {name!r}")
        if encoded_value.translate(None, VCHARS + b" \t"):
            raise ValueError(f"invalid value for header {name!r}")
        head.append(f"{name}: {value}")
    head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body
