"""The access line is written out by hand for speed; it must stay exactly the JSON a JSON encoder
would produce from the same fields, whatever the strings hold."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from typing import Any

import pytest

from connectproxy.observe.logs import AccessRecord, access_json
from connectproxy.policy.tlsguard import HelloSeen

AWKWARD = [
    "",
    "plain",
    'quote " and backslash \\',
    "control \x00\x01\x1f\x7f and \t\r\n",
    "non-ASCII é 中文 \u2028 \U0001f600",
    "lone surrogate \ud800",
    "</script>",
]


def expected(rec: AccessRecord, report_mode: bool, ts: str, tls_guard: bool = False) -> str:
    fields: dict[str, Any] = {
        "ts": ts,
        "client_addr": rec.client_addr,
        "client_port": rec.client_port,
        "client": rec.client,
        "user": rec.user,
        "target": rec.target,
        "outcome": rec.outcome,
        "status": rec.status,
        "upstream": rec.upstream,
        "server_addr": rec.server_addr,
        "bytes_client_to_server": rec.bytes_client_to_server,
        "bytes_server_to_client": rec.bytes_server_to_client,
        "duration_s": rec.duration_s,
        "connect_s": rec.connect_s,
        "error": rec.error,
        "policy": rec.policy,
    }
    if report_mode:
        fields["would_deny"] = bool(rec.would_deny)
    if tls_guard:
        seen = rec.hello or HelloSeen()
        fields |= {
            "sni": seen.sni,
            "tls_version": seen.tls_version,
            "alpn": seen.alpn,
            "ja4": seen.ja4,
        }
    fields["event"] = "access"
    return json.dumps(fields, separators=(",", ":"))


BASE = AccessRecord(start=1.5, client_addr="10.0.0.1", client_port=40000)
FULL = AccessRecord(
    start=1795393648.192173,
    client_addr="2001:db8::1",
    client_port=65535,
    client="sensors",
    user="svc",
    target="hub.azure-devices.net:443",
    outcome="established",
    status=200,
    upstream="http://10.1.1.1:3128",
    server_addr="[2001:db8::2]:443",
    bytes_client_to_server=12345678901234,
    bytes_server_to_client=0,
    duration_s=0.000123,
    connect_s=1e-06,
    error="connection reset",
    policy="iot-hub",
    would_deny=True,
    listener="0.0.0.0:3128",
)


SEEN = HelloSeen(
    "hub.azure-devices.net", "1.3", "h2,http/1.1", "t13d1516h2_8daaf6152771_e5627efa2ab1"
)


@pytest.mark.parametrize("tls_guard", [False, True])
@pytest.mark.parametrize("report_mode", [False, True])
@pytest.mark.parametrize(
    "rec",
    [
        BASE,
        FULL,
        replace(FULL, would_deny=None),
        replace(FULL, hello=SEEN),
        replace(FULL, hello=HelloSeen()),
        replace(BASE, hello=HelloSeen(tls_version="1.2")),
    ],
)
def test_line_is_the_json_encoding_of_the_fields(
    rec: AccessRecord, report_mode: bool, tls_guard: bool
) -> None:
    ts = "2026-11-23T00:00:00.123Z"
    line = access_json(rec, report_mode, ts, tls_guard)
    assert line == expected(rec, report_mode, ts, tls_guard)
    assert json.loads(line)["event"] == "access"


def test_any_string_in_any_text_field_is_escaped_as_json_would() -> None:
    rng = random.Random(7)
    text_fields = (
        "client_addr",
        "client",
        "user",
        "target",
        "outcome",
        "upstream",
        "error",
        "policy",
    )
    for _ in range(500):
        changes = {name: rng.choice(AWKWARD) for name in text_fields}
        changes["server_addr"] = rng.choice([None, *AWKWARD])
        hello = HelloSeen(*(rng.choice([None, *AWKWARD]) for _ in range(4)))
        rec = replace(FULL, hello=hello, **changes)  # type: ignore[arg-type]
        line = access_json(rec, True, "ts", tls_guard=True)
        assert line == expected(rec, True, "ts", tls_guard=True)
        assert "\n" not in line  # one record, one line
