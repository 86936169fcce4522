"""Tests for the ClientHello reader and JA4 (wire/tlshello.py).

Three kinds of hellos: captured live from real clients on loopback (Python `ssl`, `openssl
s_client`, curl), published captures of browsers and other clients from FoxIO's JA4 repository
with FoxIO's own JA4 output for them (the seeds in fuzz/corpus/tlshello/), and hellos built by hand
(tests/unit/wire/hellos.py) for what no client here sends: GREASE everywhere, ECH, odd ALPN values,
broken lengths, the SSLv2-compatible hello.
"""

from __future__ import annotations

import hashlib
import pickle
import ssl
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectproxy.wire.tlshello import (
    ClientHello,
    ClientHelloError,
    NeedMore,
    is_grease,
    ja4,
    parse_client_hello,
)
from tests.support import REPO_ROOT
from tests.unit.wire import hellos
from tests.unit.wire.hellos import (
    alpn,
    capture,
    curl_client,
    ech_outer,
    extension,
    hello,
    hello_message,
    openssl_client,
    python_client,
    records,
    reframe,
    sigalgs,
    sni,
    versions,
)

SEEDS = REPO_ROOT / "fuzz" / "corpus" / "tlshello"
GREASE: tuple[int, ...] = (0x0A0A, 0x1A1A, 0x2A2A, 0x3A3A, 0x4A4A, 0x5A5A, 0x6A6A, 0x7A7A)
GREASE += (0x8A8A, 0x9A9A, 0xAAAA, 0xBABA, 0xCACA, 0xDADA, 0xEAEA, 0xFAFA)


def parse(data: bytes) -> ClientHello:
    result = parse_client_hello(data)
    assert isinstance(result, ClientHello), result
    return result


def refusal(data: bytes) -> str:
    with pytest.raises(ClientHelloError) as caught:
        parse_client_hello(data)
    assert caught.value.cause == "not TLS"
    return caught.value.reason


# --- an independent JA4, from the raw string the specification prints -----------------------------


def reference_ja4(
    version: int,
    server_name: bool,
    ciphers: Sequence[int],
    extensions: Sequence[int],
    alpn_first: bytes | None,
    signatures: Sequence[int],
) -> str:
    """JA4 from the fields, via JA4_r (JA4.md, "Raw Output"): a second reading of the spec."""
    codes = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}
    ciphers = [c for c in ciphers if c not in GREASE]
    extensions = [e for e in extensions if e not in GREASE]

    def alnum(byte: int) -> bool:
        return 0x30 <= byte <= 0x39 or 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A

    if not alpn_first:
        alpn_code = "00"
    elif alnum(alpn_first[0]) and alnum(alpn_first[-1]):
        alpn_code = chr(alpn_first[0]) + chr(alpn_first[-1])
    else:
        alpn_code = alpn_first.hex()[0] + alpn_first.hex()[-1]
    a = "t" + codes.get(version, "00") + ("d" if server_name else "i")
    a += f"{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}{alpn_code}"
    b = ",".join(f"{c:04x}" for c in sorted(ciphers))
    c = ",".join(f"{e:04x}" for e in sorted(extensions) if e not in (0, 16))
    if signatures and c:
        c += "_" + ",".join(f"{s:04x}" for s in signatures if s not in GREASE)
    return ja4_from_raw(f"{a}_{b}_{c}")


def ja4_from_raw(raw: str) -> str:
    a, b, c = raw.split("_", 2)

    def digest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "0" * 12

    return f"{a}_{digest(b)}_{digest(c)}"


def reference_of(h: ClientHello) -> str:
    return reference_ja4(
        h.version,
        h.server_name is not None,
        h.cipher_suites,
        h.extensions,
        h.alpn[0] if h.alpn else None,
        h.signature_algorithms,
    )


# The worked example of JA4.md: its ciphers, extensions in the order sent, and signature algorithms.
SPEC_CIPHERS: tuple[int, ...] = (
    0x1301,
    0x1302,
    0x1303,
    0xC02B,
    0xC02F,
    0xC02C,
    0xC030,
    0xCCA9,
    0xCCA8,
    0xC013,
)
SPEC_CIPHERS += (0xC014, 0x009C, 0x009D, 0x002F, 0x0035)
SPEC_EXTENSIONS: tuple[int, ...] = (
    0x001B,
    0x0000,
    0x0033,
    0x0010,
    0x4469,
    0x0017,
    0x002D,
    0x000D,
    0x0005,
    0x0023,
)
SPEC_EXTENSIONS += (0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015)
SPEC_SIGNATURES = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
SPEC_JA4 = "t13d1516h2_8daaf6152771_e5627efa2ab1"
SPEC_JA4_R = (
    "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_"
    "0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_"
    "0403,0804,0401,0503,0805,0501,0806,0601"
)


def spec_hello(alpn_values: Sequence[bytes] = (b"h2", b"http/1.1"), grease: bool = False) -> bytes:
    """A hello with the example's fields; extensions the reader looks into get real contents."""
    contents = {
        0x0000: sni(b"example.com"),
        0x0010: alpn(*alpn_values),
        0x000D: sigalgs(*SPEC_SIGNATURES),
        0x002B: versions(*((0x3A3A,) if grease else ()), 0x0304, 0x0303),
    }
    exts = [contents.get(kind, extension(kind, b"")) for kind in SPEC_EXTENSIONS]
    ciphers = list(SPEC_CIPHERS)
    if grease:
        ciphers.insert(0, 0x5A5A)
        exts.insert(0, extension(0x0A0A, b""))
        exts.append(extension(0xFAFA, b"\x00"))
    return hello(ciphers, exts)


def test_the_specification_example() -> None:
    assert ja4_from_raw(SPEC_JA4_R) == SPEC_JA4
    assert ja4_from_raw(
        "x_y_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01"
    )[-12:] == ("6d807ffa2a79")  # JA4.md: the extension hash without signature algorithms
    h = parse(spec_hello())
    assert h.cipher_suites == SPEC_CIPHERS
    assert h.extensions == SPEC_EXTENSIONS
    assert h.signature_algorithms == SPEC_SIGNATURES
    assert ja4(h) == SPEC_JA4 == reference_of(h)


def test_grease_is_left_out_of_ja4_wherever_it_is() -> None:
    h = parse(spec_hello(grease=True))
    assert h.cipher_suites[0] == 0x5A5A and h.extensions[0] == 0x0A0A
    assert h.supported_versions == (0x3A3A, 0x0304, 0x0303)
    assert h.version == 0x0304
    assert ja4(h) == SPEC_JA4
    assert all(is_grease(v) for v in GREASE)
    assert not any(is_grease(v) for v in (0x0A0B, 0x0B0A, 0x1A2A, 0x0000, 0xFFFF, 0x0304))


@pytest.mark.parametrize(
    ("first", "code"),
    [
        # The table of JA4.md, "ALPN Extension Value", then the usual values.
        (b"\xab", "ab"),
        (b"\x20", "20"),
        (b"\xab\xcd", "ad"),
        (b"\x20\x61", "21"),
        (b"\x30\xab", "3b"),
        (b"\x61\x20", "60"),
        (b"\x30\x31\xab\xcd", "3d"),
        (b"\x30\xab\xcd\x31", "01"),
        (b"h2", "h2"),
        (b"http/1.1", "h1"),
        (b"h3", "h3"),
        (b"z", "zz"),
        (b"_", "5f"),
    ],
)
def test_alpn_code(first: bytes, code: str) -> None:
    h = parse(spec_hello((first, b"http/1.1")))
    assert ja4(h) == f"t13d1516{code}_8daaf6152771_e5627efa2ab1" == reference_of(h)


def test_no_alpn_no_sni_no_signature_algorithms() -> None:
    h = parse(hello([0x1301], [versions(0x0304)]))
    assert h.server_name is None and h.alpn == ()
    assert (
        ja4(h)
        == "t13i010100_"
        + hashlib.sha256(b"1301").hexdigest()[:12]
        + "_"
        + (hashlib.sha256(b"002b").hexdigest()[:12])
    )


def test_empty_lists_hash_to_zeros_and_counts_stop_at_99() -> None:
    # A TLS 1.0-era hello: no extensions at all, so the version is the legacy one.
    h = parse(hello(list(range(1, 121)), None, legacy_version=0x0301))
    assert h.extensions == () and h.version_text == "1.0"
    assert ja4(h).startswith("t10i990000_") and ja4(h).endswith("_000000000000")
    # Only SNI and ALPN: both are counted but left out of the hash, which then has nothing.
    h = parse(hello([0x002F], [sni(b"a.example"), alpn(b"h2")]))
    assert ja4(h).startswith("t12d0102h2_") and ja4(h).endswith("_000000000000")
    assert ja4(h) == reference_of(h)
    # Only GREASE in supported_versions: no version is known.
    h = parse(hello([0x1301], [versions(0x2A2A)]))
    assert h.version == 0 and h.version_text is None and ja4(h).startswith("t00i")


# --- FoxIO's published captures -------------------------------------------------------------------

# The ClientHello of one TCP stream of each pcap in github.com/FoxIO-LLC/ja4 (pcap/), one per
# distinct fingerprint, with the ja4 and tls_server_name of FoxIO's reference output for that stream
# (rust/ja4/src/snapshots/ja4__insta@<pcap>.snap). The seeds hold the hello's records only.
FOXIO = {
    # tls-sni.pcapng, Chrome: 192.168.1.168:50112 > 142.251.16.94:443 and others of the capture
    "foxio-tls-sni-50112": (
        "t13d1516h2_8daaf6152771_e5627efa2ab1",
        "clientservices.googleapis.com",
    ),
    "foxio-tls-sni-50122": (
        "t13d1516h1_8daaf6152771_e5627efa2ab1",
        "lp-push-server-452.lastpass.com",
    ),
    "foxio-tls-sni-50123": ("t13d151400_8daaf6152771_de4a06bb82e3", "mtalk.google.com"),
    "foxio-tls-sni-50153": ("t13d1517h1_8daaf6152771_6cdcb247c39b", "edge-chat.facebook.com"),
    # tls12.pcap, Firefox: 192.168.133.129:36372 > 34.117.237.239:443
    "foxio-tls12-36372": ("t13d1715h2_5b57614c22b0_3d5424432f57", "contile.services.mozilla.com"),
    # tls3.pcapng: 192.168.1.169:63250 > 54.190.49.36:443
    "foxio-tls3-63250": ("t13d1516h2_8daaf6152771_9b887d9acb53", "darksail.ai"),
    # tls-alpn-h2.pcap, over IPv6: [2001:4998:ef83:14:8000::100d]:64034 > [2606:4700::6811:d209]:443
    "foxio-tls-alpn-h2-64034": ("t12d4605h2_85626a9a5f7f_aaf95bb78ec9", "www.cloudflare.com"),
    # latest.pcapng: 172.16.225.48:52937 > 13.33.165.101:443
    "foxio-latest-52937": ("t12d190800_d83cc789557e_7af1ed941c26", "discovery.cem.cloud.us"),
    # https-connect.pcap: TLS inside an HTTP CONNECT tunnel, to an IP: 10.11.12.13:54723 > :8080
    "foxio-https-connect-54723": ("t12i860500_e18388e7f3a3_a1e935682795", None),
    # badcurveball.pcap: 172.130.128.76:55318 > 54.226.182.138:443
    "foxio-badcurveball-55318": ("t13d1615h2_46e7e9700bed_45f260be83e2", "bad.curveballtest.com"),
    # socks-https-example.pcap, TLS 1.0 without signature algorithms: 10.180.156.185:53554
    "foxio-socks-https-example-53554": ("t10d230100_6a57a6f57151_000000000000", "www.example.com"),
    # macos_tcp_flags.pcap: 172.16.5.16:61311 > 172.67.24.71:443
    "foxio-macos_tcp_flags-61311": ("t13d2613h2_2802a3db6c62_845d286b0d67", "venarisecurity.com"),
    # tls-non-ascii-alpn.pcapng: FoxIO's tools print t13d151699_... here, from their older rule
    # (a non-ASCII character becomes "9"). The specification now takes the hex spelling of the
    # value (0xBA 0xAD: "baad", so "bd"); FoxIO-LLC/ja4 issues #148 and #326 track moving the
    # Python and Rust tools to it. We follow the specification.
    "foxio-tls-non-ascii-alpn-50112": (
        "t13d1516bd_8daaf6152771_e5627efa2ab1",
        "clientservices.googleapis.com",
    ),
}


@pytest.mark.parametrize("name", sorted(FOXIO))
def test_published_capture(name: str) -> None:
    expected_ja4, expected_name = FOXIO[name]
    data = (SEEDS / name).read_bytes()
    h = parse(data)
    assert h.length == len(data)
    assert h.server_name == expected_name
    assert ja4(h) == expected_ja4 == reference_of(h)


def test_a_go_client_hello() -> None:
    """Go's crypto/tls (Go 1.19, Debian's golang-go), captured once from a client dialling a
    local listener with ServerName "sensor.example.net" and NextProtos h2, http/1.1. Go orders
    and picks its suites and extensions itself, unlike the OpenSSL-based clients above; its
    fingerprint here is computed by the reference of this file too."""
    data = (SEEDS / "go-crypto-tls-sni").read_bytes()
    h = parse(data)
    assert h.length == len(data) == 284
    assert h.server_name == "sensor.example.net"
    assert h.alpn == (b"h2", b"http/1.1")
    assert h.version_text == "1.3" and h.supported_versions == (0x0304, 0x0303)
    assert ja4(h) == "t13d1910h2_9dc949149365_97f8aa674fd9" == reference_of(h)


def test_the_non_ascii_alpn_capture_differs_from_the_others_only_in_alpn() -> None:
    odd = parse((SEEDS / "foxio-tls-non-ascii-alpn-50112").read_bytes())
    usual = parse((SEEDS / "foxio-tls-sni-50112").read_bytes())
    assert odd.alpn == (b"\xba\xad", b"http/1.1") and usual.alpn == (b"h2", b"http/1.1")
    assert ja4(odd).replace("bd", "h2", 1) == ja4(usual)


def test_a_chromium_hello_with_a_post_quantum_key_share() -> None:
    """Chromium 156 (Debian 12), captured on loopback the way the live tests capture (the seed
    chromium-156): GREASE in suites, extensions and versions, an ECH GREASE extension, and an
    X25519MLKEM768 key share that makes the hello almost 2 KB."""
    data = (SEEDS / "chromium-156").read_bytes()
    h = parse(data)
    assert len(data) == h.length > 1900
    assert h.server_name == "sensor.example.net" and h.alpn == (b"h2", b"http/1.1")
    assert is_grease(h.cipher_suites[0]) and is_grease(h.extensions[0])
    assert is_grease(h.supported_versions[0]) and h.version_text == "1.3"
    assert h.ech and 0xFE0D in h.extensions
    assert ja4(h) == "t13d1517h2_8daaf6152771_cb7bf5808d99" == reference_of(h)
    key_share = data.index(b"\x00\x33", 5 + 4 + 2 + 32)  # the extension's type, then the group
    assert b"\x11\xec\x04\xc0" in data[key_share : key_share + 16]  # 1216 bytes


# --- real clients, captured live ------------------------------------------------------------------


@pytest.fixture(scope="module")
def live() -> dict[str, tuple[bytes, ssl.SSLContext | None]]:
    """One hello from each client set-up, captured once for the module."""
    py_sni, py_sni_ctx = python_client("sensor.example.net", ["h2", "http/1.1"])
    py_ip, py_ip_ctx = python_client("127.0.0.1")
    return {
        "python-sni": (capture(py_sni), py_sni_ctx),
        "python-ip": (capture(py_ip), py_ip_ctx),
        "openssl-tls12": (
            capture(
                openssl_client("-tls1_2", "-servername", "sensor.example.net", "-alpn", "http/1.1")
            ),
            None,
        ),
        "openssl-tls13": (
            capture(
                openssl_client(
                    "-tls1_3",
                    "-servername",
                    "sensor.example.net",
                    "-alpn",
                    "h2,http/1.1",
                    "-sigalgs",
                    "ECDSA+SHA256:rsa_pss_rsae_sha256",
                    "-ciphersuites",
                    "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256",
                )
            ),
            None,
        ),
        "curl-sni": (
            capture(
                curl_client(
                    "https://sensor.example.net/",
                    "--connect-to",
                    "sensor.example.net:443:127.0.0.1:{port}",
                )
            ),
            None,
        ),
        "curl-ip": (capture(curl_client("https://127.0.0.1:{port}/")), None),
    }


def test_python_ssl_client(live: dict[str, tuple[bytes, ssl.SSLContext | None]]) -> None:
    data, ctx = live["python-sni"]
    assert ctx is not None
    h = parse(data)
    assert h.length == len(data)
    assert h.server_name == "sensor.example.net"
    assert h.alpn == (b"h2", b"http/1.1")
    assert h.version_text == "1.3" and h.supported_versions == (0x0304, 0x0303)
    # The suites the context offers, in its order; OpenSSL adds the renegotiation SCSV (0x00FF).
    offered = tuple(c["id"] & 0xFFFF for c in ctx.get_ciphers())
    assert h.cipher_suites == (*offered, 0x00FF)
    assert ja4(h) == reference_of(h)
    assert ja4(h).startswith(f"t13d{len(h.cipher_suites):02d}")


@pytest.mark.parametrize("client", ["python-ip", "curl-ip"])
def test_an_ip_literal_sends_no_server_name(
    live: dict[str, tuple[bytes, ssl.SSLContext | None]], client: str
) -> None:
    h = parse(live[client][0])
    assert h.server_name is None and 0x0000 not in h.extensions
    assert ja4(h)[3] == "i" and ja4(h) == reference_of(h)


def test_openssl_tls12_only(live: dict[str, tuple[bytes, ssl.SSLContext | None]]) -> None:
    h = parse(live["openssl-tls12"][0])
    assert h.server_name == "sensor.example.net" and h.alpn == (b"http/1.1",)
    assert 0x002B not in h.extensions and h.supported_versions == ()
    assert h.legacy_version == h.version == 0x0303 and h.version_text == "1.2"
    assert ja4(h).startswith("t12d") and ja4(h)[8:10] == "h1" and ja4(h) == reference_of(h)


def test_openssl_tls13_with_chosen_suites_and_signatures(
    live: dict[str, tuple[bytes, ssl.SSLContext | None]],
) -> None:
    h = parse(live["openssl-tls13"][0])
    assert h.server_name == "sensor.example.net" and h.alpn == (b"h2", b"http/1.1")
    assert h.supported_versions == (0x0304,) and h.version_text == "1.3"
    assert h.cipher_suites == (0x1301, 0x1303, 0x00FF)
    assert h.signature_algorithms == (0x0403, 0x0804)
    assert ja4(h).startswith("t13d03") and ja4(h) == reference_of(h)


def test_curl(live: dict[str, tuple[bytes, ssl.SSLContext | None]]) -> None:
    h = parse(live["curl-sni"][0])
    assert h.server_name == "sensor.example.net" and h.alpn == (b"h2", b"http/1.1")
    assert h.version_text == "1.3" and ja4(h) == reference_of(h)
    # The same client to an IP differs in the SNI marker and the extension count only.
    ip = ja4(parse(live["curl-ip"][0]))
    assert ip[:3] + ip[4:6] + ip[8:] == ja4(h)[:3] + ja4(h)[4:6] + ja4(h)[8:]
    assert int(ip[6:8]) == int(ja4(h)[6:8]) - 1


# --- delivery in pieces ---------------------------------------------------------------------------


def all_hellos(live: dict[str, tuple[bytes, ssl.SSLContext | None]]) -> list[bytes]:
    return [data for data, _ in live.values()] + [
        (SEEDS / name).read_bytes() for name in [*sorted(FOXIO), "chromium-156"]
    ]


def assert_needs_more_until_the_end(data: bytes) -> ClientHello:
    """Every strict prefix is NeedMore with a bound that is honest; the whole is the hello."""
    for cut in range(len(data)):
        result = parse_client_hello(data[:cut])
        assert isinstance(result, NeedMore), (cut, result)
        assert cut < result.needed <= len(data), (cut, result.needed, len(data))
    return parse(data)


def test_split_at_every_byte(live: dict[str, tuple[bytes, ssl.SSLContext | None]]) -> None:
    for data in all_hellos(live):
        whole = parse(data)
        assert assert_needs_more_until_the_end(data) == whole


def test_split_across_records_of_100_bytes(
    live: dict[str, tuple[bytes, ssl.SSLContext | None]],
) -> None:
    for data in all_hellos(live):
        whole = parse(data)
        framed = reframe(data, 100)
        assert len(framed) > len(data)
        again = assert_needs_more_until_the_end(framed)
        assert again.length == len(framed)
        assert ja4(again) == ja4(whole) and again.server_name == whole.server_name


def test_a_post_quantum_sized_hello_across_records() -> None:
    """A 1.2 KB key share, as X25519MLKEM768 makes, then cut into 1 KB records."""
    key_share = extension(0x0033, hellos.vec(2, hellos.u16(0x11EC) + hellos.vec(2, bytes(1216))))
    message = hello_message([0x1301], [sni(b"sensor.example.net"), key_share, versions(0x0304)])
    assert len(message) > 1300
    h = assert_needs_more_until_the_end(records(message, 1024))
    assert h.server_name == "sensor.example.net" and h.extensions == (0x0000, 0x0033, 0x002B)


def test_bytes_after_the_hello_are_not_part_of_it() -> None:
    data = spec_hello()
    h = parse(data + b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x10" + bytes(16))
    assert h.length == len(data)


def test_needed_bound_lets_the_guard_refuse_a_huge_hello_early() -> None:
    message = hello_message([0x1301], [extension(0x0015, bytes(60000)), sni(b"a.example")])
    data = records(message)
    result = parse_client_hello(data[:9])
    assert isinstance(result, NeedMore) and result.needed >= len(message) + 5
    assert parse(data).server_name == "a.example"


# --- ECH ------------------------------------------------------------------------------------------


def test_ech_gives_the_outer_name() -> None:
    """The outer hello names the public server; the name the client wants is encrypted inside."""
    data = hello(
        [0x1301, 0x1302],
        [sni(b"public.example.net"), alpn(b"h2"), versions(0x0304), ech_outer(), sigalgs(0x0403)],
    )
    h = parse(data)
    assert h.ech and h.server_name == "public.example.net"
    assert ja4(h) == reference_of(h)
    assert not parse(spec_hello()).ech


# --- refusals -------------------------------------------------------------------------------------


def test_sslv2_compatible_hello_is_refused() -> None:
    # RFC 5246 E.2: length with the high bit set, type 1, version 3.1, then the three lengths.
    body = b"\x01\x03\x01" + b"\x00\x03" + b"\x00\x00" + b"\x00\x10" + b"\x00\x00\x2f"
    body += bytes(16)
    assert refusal(bytes([0x80 | (len(body) >> 8), len(body) & 0xFF]) + body) == (
        "SSLv2-compatible hello"
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "not a TLS handshake record"),
        (b"CONNECT", "not a TLS handshake record"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not a TLS handshake record"),
        (b"\x17\x03\x03\x00\x10", "not a TLS handshake record"),  # application data
        (b"\x15\x03\x01\x00\x02\x02\x28", "not a TLS handshake record"),  # an alert
        (b"\x16\x03\x00\x00\x40", "record version is not TLS 1.0-1.3"),  # SSL 3.0
        (b"\x16\x03\x05", "record version is not TLS 1.0-1.3"),
        (b"\x16\x02", "record version is not TLS 1.0-1.3"),
        (b"\x16\xfe\xfd", "record version is not TLS 1.0-1.3"),  # DTLS 1.2
        (b"\x16\x03\x01\x00\x00", "empty handshake record"),
        (b"\x16\x03\x01\x40\x01", "record longer than 2^14 bytes"),
        (b"\x16\x03\x01\x00\x04\x02", "handshake message is not a ClientHello"),  # ServerHello
        (b"\x16\x03\x01\x00\x04\x01\x03\x00\x00", "ClientHello longer than its fields allow"),
        (b"\x16\x03\x01\x00\x08\x01\x00\x00\x02", "ClientHello does not end its record"),
        (b"\x80\x2e\x01", "SSLv2-compatible hello"),
        (b"\x80\x2e\x02", "not a TLS handshake record"),
    ],
)
def test_not_tls(data: bytes, reason: str) -> None:
    assert refusal(data) == reason


def test_the_error_pickles_and_prints_its_reason() -> None:
    error = ClientHelloError("empty handshake record")
    again = pickle.loads(pickle.dumps(error))
    assert (again.reason, again.cause, str(again)) == (error.reason, "not TLS", error.reason)


def test_a_record_of_another_type_between_fragments() -> None:
    framed = reframe(spec_hello(), 100)
    assert refusal(framed[:105] + b"\x15\x03\x03\x00\x02\x02\x28" + framed[105:]) == (
        "not a TLS handshake record"
    )


@pytest.mark.parametrize(
    ("extensions", "reason"),
    [
        ([sni(b"a.example"), sni(b"b.example")], "duplicate extension"),
        ([extension(0x0A0A, b""), extension(0x0A0A, b"")], "duplicate extension"),
        ([sni(b"a.example", b"b.example")], "more than one server_name host name"),
        ([sni(b"caf\xc3\xa9.example")], "server_name is not printable ASCII"),
        ([sni(b"a.example\x00.b.example")], "server_name is not printable ASCII"),
        ([sni(b"a.example b.example")], "server_name is not printable ASCII"),
        ([sni(b"a.example", name_type=1)], "server_name without a host name"),
        ([extension(0x0000, b"")], "malformed ClientHello: server_name"),
        ([extension(0x0000, b"\x00\x05\x00\x00\x01a")], "malformed ClientHello: server_name"),
        ([extension(0x0010, b"\x00\x04\x02h2")], "malformed ClientHello: ALPN"),
        ([extension(0x0010, b"\x00\x03\x00h2")], "malformed ClientHello: ALPN"),
        (
            [extension(0x000D, b"\x00\x03\x04\x03\x08")],
            "malformed ClientHello: signature_algorithms",
        ),
        ([extension(0x002B, b"\x03\x03\x04\x03")], "malformed ClientHello: supported_versions"),
        ([extension(0x002B, b"\x00")], "malformed ClientHello: supported_versions"),
    ],
)
def test_malformed_extensions(extensions: list[bytes], reason: str) -> None:
    assert refusal(hello([0x1301], extensions)) == reason


def test_malformed_fields() -> None:
    message = bytearray(hello_message([0x1301], [sni(b"a.example")]))
    short = b"\x01" + hellos.vec(3, bytes(message[4:40]))  # a length that ends inside the random
    assert refusal(records(short)) == "malformed ClientHello: ClientHello"
    bad_version = bytes(message[:4]) + b"\x02\x00" + bytes(message[6:])
    assert refusal(records(bad_version)) == "ClientHello version is not SSL 3.0 or TLS"
    long_session = hello_message([0x1301], None, session_id=bytes(33))
    assert refusal(records(long_session)) == "malformed ClientHello: session id"
    assert refusal(hello([], None)) == "malformed ClientHello: cipher suites"
    odd = bytearray(hello_message([0x1301], None))
    odd[4 + 2 + 32 + 1 + 32 + 1] = 3  # the cipher suites' length, made odd
    assert "malformed" in refusal(records(bytes(odd)))
    trailing = hello_message([0x1301], [sni(b"a.example")])
    trailing = b"\x01" + hellos.vec(3, trailing[4:] + b"\x00")
    assert refusal(records(trailing)) == "malformed ClientHello: ClientHello"


# --- properties -----------------------------------------------------------------------------------


def outcome(data: bytes) -> ClientHello | NeedMore | str:
    try:
        return parse_client_hello(data)
    except ClientHelloError as error:
        assert error.cause == "not TLS"
        return "error"


SEED_HELLOS = [path.read_bytes() for path in sorted(SEEDS.iterdir())]


def consistent(data: bytes) -> None:
    """Whatever a prefix answers, more bytes never change a verdict, only NeedMore."""
    whole = outcome(data)
    for cut in sorted({0, 1, 5, 9, len(data) // 2, len(data) - 1}):
        if 0 <= cut <= len(data):
            part = outcome(data[:cut])
            if isinstance(part, NeedMore):
                assert part.needed > cut
                if isinstance(whole, ClientHello):
                    assert part.needed <= whole.length
            else:
                assert part == whole, (cut, part, whole)


@given(st.binary(max_size=600))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_random_bytes(data: bytes) -> None:
    consistent(data)
    consistent(b"\x16\x03\x01" + data)


@given(
    st.sampled_from(SEED_HELLOS),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
    st.integers(0, 2000),
)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_mutations_of_real_hellos(seed: bytes, changes: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for at, value in changes:
        data[at % len(data)] = value
    consistent(bytes(data))
    consistent(bytes(data[: cut % (len(data) + 1)]))
    result = outcome(bytes(data))
    if isinstance(result, ClientHello):
        assert ja4(result) == reference_of(result)
