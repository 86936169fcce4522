"""The TLS guard's decision table (SPEC 5.1): mode x target x what the client sent."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectproxy.config.model import TLSMode
from connectproxy.policy.tlsguard import (
    HELLO_LIMIT,
    REASONS,
    HelloSeen,
    Verdict,
    judge,
    seen_of,
)
from connectproxy.wire.tlshello import NeedMore, ja4, parse_client_hello
from tests.unit.wire.hellos import (
    alpn,
    ech_outer,
    extension,
    hello,
    hello_message,
    records,
    sigalgs,
    sni,
    versions,
)

HOST = "sensor.azure-devices.net"
GUARDS: tuple[TLSMode, ...] = ("observe", "require", "verify_sni")


def tls13(*names: bytes, protocols: tuple[bytes, ...] = (b"h2", b"http/1.1")) -> bytes:
    exts = [sni(*names)] if names else []
    exts += [alpn(*protocols)] if protocols else []
    exts += [versions(0x0304, 0x0303), sigalgs(0x0403, 0x0804)]
    return hello([0x1301, 0x1302, 0xC02B], exts)


def verdict(
    mode: TLSMode, data: bytes, host: str = HOST, ip: bool = False, ended: str | None = None
) -> Verdict:
    result = judge(mode, host, ip, data, ended)  # type: ignore[arg-type]
    assert isinstance(result, Verdict), result
    return result


def refusal(mode: TLSMode, data: bytes, **kw: object) -> tuple[str | None, str | None]:
    v = verdict(mode, data, **kw)  # type: ignore[arg-type]
    return v.reason, v.error


def test_the_matching_name_passes_every_mode_and_is_logged() -> None:
    data = tls13(HOST.encode())
    for mode in GUARDS:
        v = verdict(mode, data)
        assert not v.refused and v.error is None
        h = parse_client_hello(data)
        assert not isinstance(h, NeedMore)
        assert v.seen == HelloSeen(HOST, "1.3", "h2,http/1.1", ja4(h))


@pytest.mark.parametrize(
    "name",
    [b"SENSOR.Azure-Devices.NET", b"sensor.azure-devices.net."],
)
def test_server_name_is_normalised_as_the_connect_host_is(name: bytes) -> None:
    v = verdict("verify_sni", tls13(name))
    assert not v.refused
    assert v.seen.sni == name.decode()  # logged as sent


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        (b"other.host", "other.host"),
        (b"sensor.azure-devices.net.evil.example", "sensor.azure-devices.net.evil.example"),
        (b"azure-devices.net", "azure-devices.net"),
        (b"under_score.azure-devices.net", "under_score.azure-devices.net"),
        (b"sensor.azure-devices.net..", "sensor.azure-devices.net.."),
    ],
)
def test_another_name_is_a_mismatch_only_under_verify_sni(name: bytes, shown: str) -> None:
    data = tls13(name)
    assert refusal("verify_sni", data) == (
        "sni_mismatch",
        f"server_name {shown} does not match host {HOST}",
    )
    assert not verdict("require", data).refused
    assert not verdict("observe", data).refused


def test_a_huge_server_name_is_cut_in_the_message_and_the_log() -> None:
    name = b"a" * 60 + b"." + b"b" * 400
    v = verdict("verify_sni", tls13(name))
    assert v.reason == "sni_mismatch"
    assert v.error is not None and len(v.error) < 320 and "..." in v.error
    assert v.seen.sni is not None and v.seen.sni.endswith("...") and len(v.seen.sni) == 256


def test_no_server_name() -> None:
    data = tls13()
    assert refusal("verify_sni", data) == ("no_sni", "no server_name")
    assert not verdict("require", data).refused
    assert verdict("observe", data).seen.sni is None


@pytest.mark.parametrize("host", ["192.0.2.7", "2001:db8::1"])
def test_an_ip_literal_target_passes_only_without_a_server_name(host: str) -> None:
    assert not verdict("verify_sni", tls13(), host=host, ip=True).refused
    assert refusal("verify_sni", tls13(b"example.com"), host=host, ip=True) == (
        "sni_mismatch",
        f"server_name example.com does not match host {host}",
    )
    # A server_name spelling the address is still a server_name: RFC 6066 forbids literals.
    assert verdict("verify_sni", tls13(host.encode()), host=host, ip=True).refused


def test_ech_compares_the_outer_name() -> None:
    outer = hello([0x1301], [sni(b"public.example.net"), versions(0x0304), ech_outer()])
    assert refusal("verify_sni", outer)[0] == "sni_mismatch"
    assert not verdict("verify_sni", outer, host="public.example.net").refused


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"\x17\x03\x03\x00\x10" + bytes(16),  # application data before any hello
        b"\x16\x03\x05\x00\x10",  # a record version past TLS 1.3
        b"\x16\x02\x00\x00\x10",  # SSL 2.0
        # An SSLv2-compatible hello (RFC 5246 E.2): refused, it has no room for server_name.
        b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10" + bytes(21) + bytes(16),
    ],
)
def test_not_tls(data: bytes) -> None:
    assert refusal("require", data) == ("not_tls", "not TLS")
    assert refusal("verify_sni", data) == ("not_tls", "not TLS")
    observed = verdict("observe", data)
    assert not observed.refused and observed.seen == HelloSeen()


def test_every_record_version_from_tls_1_0_to_1_3_is_accepted() -> None:
    message = hello_message([0x1301], [sni(HOST.encode()), versions(0x0304)])
    for version in (0x0301, 0x0302, 0x0303, 0x0304):
        assert not verdict("verify_sni", records(message, version=version)).refused


def test_a_prefix_needs_more_then_ends_by_eof_timeout_or_the_limit() -> None:
    data = tls13(HOST.encode())
    for cut in (1, 5, 6, len(data) - 1):
        result = judge("verify_sni", HOST, False, data[:cut])
        assert isinstance(result, NeedMore) and result.needed > cut
    prefix = data[:40]
    assert refusal("require", prefix, ended="eof") == ("incomplete", "incomplete ClientHello")
    assert refusal("require", prefix, ended="timeout") == ("timeout", "timeout")
    assert refusal("require", b"", ended="timeout") == ("timeout", "timeout")
    assert refusal("require", b"", ended="eof") == ("incomplete", "incomplete ClientHello")
    assert not verdict("observe", prefix, ended="timeout").refused
    # Whatever was sent, a complete hello is judged even when the client then went quiet.
    assert not verdict("verify_sni", data, ended="timeout").refused


def test_a_hello_that_cannot_fit_in_64_kib_is_incomplete_at_once() -> None:
    # One 16 KiB record announcing a 100 KB handshake message: no need to wait for it.
    head = b"\x16\x03\x01\x40\x00" + b"\x01" + (100_000).to_bytes(3, "big")
    assert refusal("require", head) == ("incomplete", "incomplete ClientHello")
    # A valid prefix that reaches the limit without an end.
    ciphers = [0x1301 + i % 3 for i in range(20000)]
    message = hello_message(ciphers, [extension(0x0015, bytes(30000)), sni(b"a.example")])
    whole = records(message)
    assert len(whole) > HELLO_LIMIT and not verdict("require", whole).refused
    data = whole[:HELLO_LIMIT]
    assert refusal("require", data) == ("incomplete", "incomplete ClientHello")


def test_a_post_quantum_sized_hello_split_over_records() -> None:
    key_share = extension(0x0033, (1220).to_bytes(2, "big") + b"\x11\xec\x04\xc0" + bytes(1216))
    message = hello_message([0x1301], [sni(HOST.encode()), key_share, versions(0x0304)])
    data = records(message, 500)
    assert data.count(b"\x16\x03\x01") >= 3
    assert isinstance(judge("verify_sni", HOST, False, data[:-1]), NeedMore)
    assert not verdict("verify_sni", data).refused


def test_the_seen_fields() -> None:
    h = parse_client_hello(tls13(HOST.encode(), protocols=(b"\xba\xad", b"h2")))
    assert not isinstance(h, NeedMore)
    seen = seen_of(h)
    assert seen.alpn == "\\xba\\xad,h2" and seen.tls_version == "1.3"
    plain = parse_client_hello(hello([0x002F], None, legacy_version=0x0301))
    assert not isinstance(plain, NeedMore)
    assert seen_of(plain) == HelloSeen(None, "1.0", None, ja4(plain))


def test_reasons_are_the_metric_label_values() -> None:
    assert set(REASONS) == {"not_tls", "incomplete", "no_sni", "sni_mismatch", "timeout"}


# --- properties -------------------------------------------------------------------------------

SEED = tls13(HOST.encode())


def guard_loop(mode: TLSMode, data: bytes, read_size: int) -> Verdict | NeedMore:
    """What the flow does (server/connection.py, Flow._guard): judge the first read, then judge
    again only once the buffer holds what the last NeedMore asked for, or the limit."""
    needed = 1
    result: Verdict | NeedMore = NeedMore(1)
    for end in [*range(read_size, len(data), read_size), len(data)]:
        if end < needed and end < HELLO_LIMIT:
            continue
        result = judge(mode, HOST, False, data[:end])
        if isinstance(result, Verdict):
            return result
        needed = result.needed
    return result


def truncated_seed(cut: int, tail: bytes) -> bytes:
    return SEED[:cut] + tail


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=400)
    | st.builds(truncated_seed, st.integers(0, len(SEED)), st.binary(max_size=40)),
    st.integers(1, 64),
    st.sampled_from(["eof", "timeout"]),
)
def test_judging_only_when_enough_has_come_decides_as_judging_every_read(
    data: bytes, read_size: int, ended: str
) -> None:
    """Skipping the parses a NeedMore says are useless never changes the verdict (at most
    delays it to the end of the bytes), and judge answers every input in every mode."""

    def final(mode: TLSMode, result: Verdict | NeedMore) -> tuple[str | None, str | None]:
        if isinstance(result, NeedMore):  # the flow reads on, then judges at eof or timeout
            result = judge(mode, HOST, False, data, ended)  # type: ignore[arg-type]
        assert isinstance(result, Verdict)
        return result.reason, result.error

    for mode in GUARDS:
        whole = final(mode, judge(mode, HOST, False, data))
        assert final(mode, guard_loop(mode, data, read_size)) == whole
        if len(data) < 200:
            assert final(mode, guard_loop(mode, data, 1)) == whole


def test_the_ja4_cache_gives_each_hello_its_own_fingerprint() -> None:
    """Hellos that differ in anything JA4 reads get their own fingerprint from the cache, and
    a cache filled past its size still answers right."""
    variants = [
        tls13(HOST.encode()),
        tls13(HOST.encode(), protocols=(b"http/1.1",)),
        tls13(HOST.encode(), protocols=()),
        tls13(),
        hello([0x1301], [sni(HOST.encode()), versions(0x0304)]),
        hello([0x1302], [sni(HOST.encode()), versions(0x0304)]),
        hello([0x1301], [sni(HOST.encode()), versions(0x0303)]),
        hello([0x1301], [versions(0x0304), sni(HOST.encode())]),
    ]
    variants += [hello([0x1301, 0x1000 + i], [sni(HOST.encode())]) for i in range(300)]
    for _ in range(2):
        for data in variants:
            h = parse_client_hello(data)
            assert not isinstance(h, NeedMore)
            assert seen_of(h).ja4 == ja4(h)
