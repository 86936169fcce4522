"""Admission, destination and routing decisions (`connectproxy.policy.decide`, SPEC section 4
steps 4-6).

Configs are built from the model classes directly, so each test shows the whole policy it relies on;
a few go through `configfile.parse_config` to pin down that what an operator writes in YAML is what
the policy sees. The property test at the end compares `decide` with a matcher written here from
the pattern rules in SPEC section 3, working on labels rather than string suffixes.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectproxy.config.frozen import replace
from connectproxy.config.model import (
    Allow,
    Client,
    Config,
    Destinations,
    Upstream,
    UpstreamProxy,
    User,
)
from connectproxy.configfile.load import load_default, parse_config
from connectproxy.matching.domains import DomainPattern, parse_domain_pattern
from connectproxy.matching.netset import IPAddress, IPNetwork
from connectproxy.policy.decide import (
    Credentials,
    Decision,
    Source,
    admit,
    decide,
    destination_allowed,
    route_for,
    usable_addresses,
)
from connectproxy.wire.http import Target, parse_target

# A well-formed hash; the policy never verifies passwords (auth.py does), it only sees `valid`.
HASH = "scrypt$n=16384,r=8,p=1$Y29ubmVjdHByb3h5LXRzdA$bW0v8sEzbkJt2f3vx8U7TJLtJA8RWeMlM897XMNpViY"


def nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ip_network(c) for c in cidrs)


def addrs(*texts: str) -> list[IPAddress]:
    return [ip_address(t) for t in texts]


def patterns(*texts: str) -> tuple[DomainPattern, ...]:
    return tuple(parse_domain_pattern(t) for t in texts)


def target(authority: str) -> Target:
    return parse_target(authority)


def src(addr: str, *tls_names: str) -> Source:
    return Source(ip_address(addr), 40000, tls_names)


PROXY = UpstreamProxy(
    url="http://proxy.corp.example:8080", scheme="http", host="proxy.corp.example", port=8080
)

CONFIG = Config(
    allow=Allow(
        ports=frozenset({443}),
        domains=(
            parse_domain_pattern(".azure-devices.net"),
            parse_domain_pattern("*.blob.core.windows.net"),
            parse_domain_pattern("download.microsoft.com"),
        ),
        networks=nets("192.0.2.0/24", "2001:db8::/32"),
    ),
    clients=(
        Client("sensors", networks=nets("10.0.0.0/8", "fd00::/8")),
        Client("plant-b", tls_names=("sensor-7.plant-b", "sensor-8.plant-b")),
    ),
    users=(
        User("alice", HASH),
        User("bob", HASH, networks=nets("10.20.0.0/16", "2001:db8:20::/48")),
    ),
    htpasswd_file=Path("/nonexistent/htpasswd"),
)
REPORT = replace(CONFIG, allow=replace(CONFIG.allow, mode="report"))
ADMITTED = src("10.0.0.5")
OUTSIDE = src("203.0.113.9")
GOOD = target("sensor.azure-devices.net:443")


def assert_denied(decision: Decision, status: int, outcome: str) -> None:
    assert not decision.allowed
    assert (decision.status, decision.outcome) == (status, outcome)
    assert not decision.would_deny


def assert_allowed(decision: Decision) -> None:
    assert decision.allowed, decision.reason
    assert (decision.status, decision.outcome) == (200, "established")


# --- step 4: admission --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "addr", ["10.0.0.5", "10.255.255.255", "::ffff:10.0.0.5", "fd00::1", "fdff:ffff::1"]
)
def test_admitted_by_network(addr: str) -> None:
    decision = decide(GOOD, src(addr), None, CONFIG)
    assert_allowed(decision)
    assert decision.client == "sensors"
    assert decision.user is None
    assert "source address" in admit(src(addr), None, CONFIG).reason


@pytest.mark.parametrize("addr", ["11.0.0.1", "203.0.113.9", "::ffff:11.0.0.1", "fe80::1", "::1"])
def test_not_admitted_outside_networks(addr: str) -> None:
    decision = decide(GOOD, src(addr), None, CONFIG)
    assert_denied(decision, 407, "auth_required")
    assert decision.client is None


def test_ipv4_mapped_source_admitted_by_ipv4_network() -> None:
    decision = admit(src("::ffff:10.0.0.5"), None, CONFIG)
    assert decision.allowed and decision.client == "sensors"


def test_admitted_by_tls_name() -> None:
    decision = decide(GOOD, src("203.0.113.9", "sensor-7.plant-b"), None, CONFIG)
    assert_allowed(decision)
    assert decision.client == "plant-b"
    assert "certificate" in admit(src("203.0.113.9", "sensor-7.plant-b"), None, CONFIG).reason


def test_admitted_by_any_name_of_the_certificate() -> None:
    """Source.tls_names holds the subject CN and every DNS SAN; one match is enough."""
    names = ("plant-b-gateway", "other.example", "sensor-8.plant-b")
    decision = admit(src("203.0.113.9", *names), None, CONFIG)
    assert decision.allowed and decision.client == "plant-b"


@pytest.mark.parametrize(
    "names", [(), ("sensor-9.plant-b",), ("plant-b",), ("sensor-7.plant-b.evil",)]
)
def test_tls_names_must_match_exactly(names: tuple[str, ...]) -> None:
    decision = admit(src("203.0.113.9", *names), None, CONFIG)
    assert_denied(decision, 407, "auth_required")


@pytest.mark.parametrize("source", [OUTSIDE, ADMITTED, src("::1")])
def test_admitted_by_valid_credentials_from_anywhere(source: Source) -> None:
    decision = decide(GOOD, source, Credentials("alice", True), CONFIG)
    assert_allowed(decision)
    assert (decision.client, decision.user) == ("alice", "alice")
    assert "credentials" in admit(source, Credentials("alice", True), CONFIG).reason


def test_admitted_by_htpasswd_only_user() -> None:
    """A user only in htpasswd_file has no `users` entry and so no network restriction."""
    decision = decide(GOOD, OUTSIDE, Credentials("carol", True), CONFIG)
    assert_allowed(decision)
    assert (decision.client, decision.user) == ("carol", "carol")


@pytest.mark.parametrize(
    "addr", ["10.20.0.1", "10.20.255.254", "::ffff:10.20.1.1", "2001:db8:20::9"]
)
def test_user_networks_inside(addr: str) -> None:
    decision = decide(GOOD, src(addr), Credentials("bob", True), CONFIG)
    assert_allowed(decision)
    assert decision.user == "bob"


@pytest.mark.parametrize("addr", ["10.21.0.1", "203.0.113.9", "::ffff:10.21.0.1", "2001:db8:21::9"])
def test_user_networks_outside_is_auth_failed(addr: str) -> None:
    decision = decide(GOOD, src(addr), Credentials("bob", True), CONFIG)
    assert_denied(decision, 407, "auth_failed")
    assert decision.user == "bob"


def test_user_outside_its_networks_is_refused_even_from_a_client_network() -> None:
    """Credentials, once sent, decide alone: 10.0.0.5 is in the `sensors` client network, but bob
    may only connect from 10.20.0.0/16, so bob's restriction is not bypassed by the network."""
    decision = decide(GOOD, ADMITTED, Credentials("bob", True), CONFIG)
    assert_denied(decision, 407, "auth_failed")


def test_wrong_credentials_refused_even_from_admitted_network() -> None:
    decision = decide(GOOD, ADMITTED, Credentials("alice", False), CONFIG)
    assert_denied(decision, 407, "auth_failed")
    assert decision.user == "alice"
    assert decision.client is None


def test_wrong_credentials_refused_even_with_admitted_certificate() -> None:
    source = src("203.0.113.9", "sensor-7.plant-b")
    decision = decide(GOOD, source, Credentials("alice", False), CONFIG)
    assert_denied(decision, 407, "auth_failed")


def test_credentials_ignored_when_no_users_are_configured() -> None:
    """No `users` and no `htpasswd_file`: nothing checks credentials, so they neither admit nor
    refuse; the network decides, as in Squid when no proxy_auth acl is reached."""
    no_users = replace(CONFIG, users=(), htpasswd_file=None)
    assert not no_users.checks_credentials
    for credentials in (Credentials("alice", False), Credentials("alice", True)):
        decision = decide(GOOD, ADMITTED, credentials, no_users)
        assert decision.allowed
        assert decision.user is None
        assert_denied(decide(GOOD, OUTSIDE, credentials, no_users), 407, "auth_required")
    with_file = replace(no_users, htpasswd_file=Path("/nonexistent/htpasswd"))
    assert with_file.checks_credentials
    assert_denied(
        decide(GOOD, ADMITTED, Credentials("alice", False), with_file), 407, "auth_failed"
    )


def test_unknown_user_with_invalid_credentials() -> None:
    decision = decide(GOOD, OUTSIDE, Credentials("mallory", False), CONFIG)
    assert_denied(decision, 407, "auth_failed")


def test_nothing_is_auth_required() -> None:
    decision = decide(GOOD, OUTSIDE, None, CONFIG)
    assert_denied(decision, 407, "auth_required")
    assert decision.user is None


def test_no_clients_no_users_refuses_everyone() -> None:
    config = Config(allow=CONFIG.allow)
    assert_denied(decide(GOOD, src("127.0.0.1"), None, config), 407, "auth_required")


def test_first_matching_client_names_the_decision() -> None:
    config = replace(
        CONFIG,
        clients=(Client("narrow", networks=nets("10.0.0.5")), *CONFIG.clients),
    )
    assert admit(ADMITTED, None, config).client == "narrow"
    assert admit(src("10.0.0.6"), None, config).client == "sensors"


# --- step 5: destination ------------------------------------------------------------------------


@pytest.mark.parametrize("port", [80, 22, 8443, 444, 1, 65535])
def test_port_not_allowed_is_403(port: int) -> None:
    decision = decide(target(f"sensor.azure-devices.net:{port}"), ADMITTED, None, CONFIG)
    assert_denied(decision, 403, "forbidden")
    assert str(port) in decision.reason
    assert decision.client == "sensors"


def test_port_not_allowed_is_403_even_in_report_mode() -> None:
    for authority in ("sensor.azure-devices.net:80", "evil.example:80", "192.0.2.1:22"):
        decision = decide(target(authority), ADMITTED, None, REPORT)
        assert_denied(decision, 403, "forbidden")


def test_several_ports() -> None:
    config = replace(CONFIG, allow=replace(CONFIG.allow, ports=frozenset({443, 8883})))
    assert_allowed(decide(target("hub.azure-devices.net:8883"), ADMITTED, None, config))
    assert_denied(
        decide(target("hub.azure-devices.net:80"), ADMITTED, None, config), 403, "forbidden"
    )


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        # ".azure-devices.net": the domain and every subdomain
        ("azure-devices.net", True),
        ("sensor.azure-devices.net", True),
        ("a.b.c.azure-devices.net", True),
        # "*.blob.core.windows.net": subdomains only
        ("mystore.blob.core.windows.net", True),
        ("a.b.blob.core.windows.net", True),
        ("blob.core.windows.net", False),
        ("core.windows.net", False),
        # "download.microsoft.com": exactly that host
        ("download.microsoft.com", True),
        ("www.download.microsoft.com", False),
        ("microsoft.com", False),
        ("download.microsoft.com.evil.example", False),
    ],
)
def test_pattern_kinds(host: str, allowed: bool) -> None:
    decision = decide(target(f"{host}:443"), ADMITTED, None, CONFIG)
    assert decision.allowed is allowed, decision.reason
    if not allowed:
        assert_denied(decision, 403, "forbidden")


@pytest.mark.parametrize(
    "host",
    [
        "sensor.azure-devices.net.evil.com",
        "azure-devices.net.evil.com",
        "evilazure-devices.net",
        "evil-azure-devices.net",
        "azure-devices.network",
        "zure-devices.net",
        "mystore.blob.core.windows.net.evil.com",
        "evilblob.core.windows.net",
        "xblob.core.windows.net",
        "downloadmicrosoft.com",
        "download-microsoft.com",
        "xdownload.microsoft.com",
        "evil.com",
    ],
)
def test_lookalikes_are_refused(host: str) -> None:
    decision = decide(target(f"{host}:443"), ADMITTED, None, CONFIG)
    assert_denied(decision, 403, "forbidden")
    assert "not allowed" in decision.reason


@pytest.mark.parametrize(
    "authority",
    [
        "azure-devices.net.:443",
        "AZURE-DEVICES.NET:443",
        "Sensor.Azure-Devices.Net.:443",
        "DOWNLOAD.microsoft.COM.:443",
        "MyStore.Blob.Core.Windows.Net:443",
    ],
)
def test_case_and_trailing_dot_are_normalised(authority: str) -> None:
    assert_allowed(decide(target(authority), ADMITTED, None, CONFIG))


def test_patterns_written_in_upper_case_or_with_a_dot_match() -> None:
    config = replace(
        CONFIG, allow=replace(CONFIG.allow, domains=patterns(".Azure-Devices.NET.", "*.X.Example"))
    )
    assert_allowed(decide(target("hub.azure-devices.net:443"), ADMITTED, None, config))
    assert_allowed(decide(target("a.x.example:443"), ADMITTED, None, config))
    assert not decide(target("x.example:443"), ADMITTED, None, config).allowed


def test_empty_allowlist_refuses_every_host() -> None:
    config = replace(CONFIG, allow=Allow())
    assert_denied(decide(GOOD, ADMITTED, None, config), 403, "forbidden")


@pytest.mark.parametrize(
    ("authority", "allowed"),
    [
        ("192.0.2.1:443", True),
        ("192.0.2.255:443", True),
        ("192.0.3.1:443", False),
        ("10.0.0.1:443", False),
        ("[2001:db8::1]:443", True),
        ("[2001:db8:ffff::1]:443", True),
        ("[2001:db9::1]:443", False),
        ("[::1]:443", False),
        # IPv4-mapped literals are judged as the IPv4 address they carry
        ("[::ffff:192.0.2.7]:443", True),
        ("[::ffff:192.0.3.7]:443", False),
        ("[::ffff:127.0.0.1]:443", False),
    ],
)
def test_ip_literal_against_allow_networks(authority: str, allowed: bool) -> None:
    decision = decide(target(authority), ADMITTED, None, CONFIG)
    assert decision.allowed is allowed, decision.reason
    if not allowed:
        assert_denied(decision, 403, "forbidden")


def test_ip_literal_never_matches_domain_patterns() -> None:
    config = replace(CONFIG, allow=replace(CONFIG.allow, networks=()))
    for authority in ("192.0.2.1:443", "[2001:db8::1]:443", "[::ffff:192.0.2.1]:443"):
        decision = decide(target(authority), ADMITTED, None, config)
        assert_denied(decision, 403, "forbidden")
        assert "no networks of policy default" in decision.reason


def test_ipv4_mapped_allow_network_from_yaml_matches_ipv4_literals() -> None:
    """An operator writing ::ffff:192.0.2.0/120 means 192.0.2.0/24, in either spelling."""
    config = parse_config(
        'clients: [{name: all, networks: ["0.0.0.0/0"]}]\n'
        'allow: {networks: ["::ffff:192.0.2.0/120"]}\n',
        "test.yaml",
        Path("/tmp"),
    )
    assert_allowed(decide(target("192.0.2.9:443"), ADMITTED, None, config))
    assert_allowed(decide(target("[::ffff:192.0.2.9]:443"), ADMITTED, None, config))
    assert not decide(target("192.0.3.9:443"), ADMITTED, None, config).allowed


def test_destination_allowed_reasons() -> None:
    assert destination_allowed(GOOD, CONFIG) == (True, "host matches .azure-devices.net")
    assert destination_allowed(target("192.0.2.1:443"), CONFIG)[0]
    ok, why = destination_allowed(target("evil.com:443"), CONFIG)
    assert not ok and why == "host in no domains of policy default"


# --- report mode --------------------------------------------------------------------------------


@pytest.mark.parametrize("authority", ["evil.com:443", "blob.core.windows.net:443", "10.9.9.9:443"])
def test_report_mode_lets_admitted_clients_through_with_would_deny(authority: str) -> None:
    decision = decide(target(authority), ADMITTED, None, REPORT)
    assert_allowed(decision)
    assert decision.would_deny
    assert "report mode" in decision.reason
    assert decision.client == "sensors"


def test_report_mode_allowed_destination_has_no_would_deny() -> None:
    decision = decide(GOOD, ADMITTED, None, REPORT)
    assert_allowed(decision)
    assert not decision.would_deny


def test_enforce_mode_refuses_what_report_mode_flags() -> None:
    decision = decide(target("evil.com:443"), ADMITTED, None, CONFIG)
    assert_denied(decision, 403, "forbidden")


def test_report_mode_does_not_change_admission() -> None:
    assert_denied(decide(target("evil.com:443"), OUTSIDE, None, REPORT), 407, "auth_required")
    bad = Credentials("alice", False)
    assert_denied(decide(target("evil.com:443"), ADMITTED, bad, REPORT), 407, "auth_failed")


# --- decision order -----------------------------------------------------------------------------


def test_auth_failure_answers_before_a_bad_port() -> None:
    bad_port = target("evil.com:80")
    assert_denied(decide(bad_port, OUTSIDE, None, CONFIG), 407, "auth_required")
    assert_denied(decide(bad_port, ADMITTED, Credentials("x", False), CONFIG), 407, "auth_failed")
    assert_denied(
        decide(bad_port, src("10.99.0.1"), Credentials("bob", True), CONFIG), 407, "auth_failed"
    )


def test_bad_port_answers_before_a_bad_host() -> None:
    decision = decide(target("evil.com:80"), ADMITTED, None, CONFIG)
    assert_denied(decision, 403, "forbidden")
    assert "port 80" in decision.reason


def test_authenticated_refusal_carries_user() -> None:
    decision = decide(target("evil.com:443"), OUTSIDE, Credentials("alice", True), CONFIG)
    assert_denied(decision, 403, "forbidden")
    assert (decision.client, decision.user) == ("alice", "alice")


# --- routing ------------------------------------------------------------------------------------

UPSTREAM = replace(
    CONFIG,
    upstream=Upstream(
        proxies=(PROXY,), direct_domains=patterns(".corp.example", "download.microsoft.com")
    ),
)


@pytest.mark.parametrize(
    ("authority", "route"),
    [
        ("sensor.azure-devices.net:443", "upstream"),
        ("download.microsoft.com:443", "direct"),
        ("x.download.microsoft.com:443", "upstream"),
        ("corp.example:443", "direct"),
        ("git.corp.example:443", "direct"),
        ("corp.example.evil.com:443", "upstream"),
        ("192.0.2.1:443", "upstream"),
        ("[2001:db8::1]:443", "upstream"),
    ],
)
def test_route_for_with_upstream(authority: str, route: str) -> None:
    assert route_for(target(authority), UPSTREAM) == route


def test_route_for_without_upstream_is_direct() -> None:
    assert route_for(GOOD, CONFIG) == "direct"
    assert route_for(GOOD, replace(CONFIG, upstream=Upstream())) == "direct"


def test_decide_carries_the_route() -> None:
    assert decide(GOOD, ADMITTED, None, UPSTREAM).route == "upstream"
    assert decide(target("download.microsoft.com:443"), ADMITTED, None, UPSTREAM).route == "direct"
    assert decide(GOOD, ADMITTED, None, CONFIG).route == "direct"
    report = replace(UPSTREAM, allow=replace(UPSTREAM.allow, mode="report"))
    flagged = decide(target("evil.com:443"), ADMITTED, None, report)
    assert flagged.would_deny and flagged.route == "upstream"


def test_upstream_name_never_carries_credentials() -> None:
    """The name is what metrics labels and the access log use for an upstream."""
    secret = replace(PROXY, username="ot-egress", password="hunter2")
    assert secret.name == "http://proxy.corp.example:8080"
    v6 = UpstreamProxy(
        url="https://[2001:db8::8]:8443", scheme="https", host="2001:db8::8", port=8443
    )
    assert v6.name == "https://[2001:db8::8]:8443"


# --- step 6: resolved addresses -----------------------------------------------------------------

TEREDO_LOOPBACK = "2001:0:4136:e378:8000:63bf:80ff:fffe"  # Teredo, client 127.0.0.1


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1",
        "127.1.2.3",
        "::ffff:127.0.0.1",
        "64:ff9b::7f00:1",
        "2002:7f00:1::",
        TEREDO_LOOPBACK,
        "::1",
        "::",
        "fe80::1",
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "0.0.0.0",
        "224.0.0.251",
        "239.1.2.3",
        "ff02::fb",
        "240.0.0.1",
        "255.255.255.255",
    ],
)
def test_usable_addresses_drops_default_deny(addr: str) -> None:
    assert usable_addresses(addrs(addr), CONFIG) == []


@pytest.mark.parametrize(
    "addr", ["10.1.2.3", "172.16.0.1", "192.168.1.1", "fc00::1", "fd12:3456::1", "20.50.1.1"]
)
def test_usable_addresses_keeps_private_link_and_public(addr: str) -> None:
    assert usable_addresses(addrs(addr), CONFIG) == addrs(addr)


def test_usable_addresses_keeps_order_and_drops_duplicates() -> None:
    answer = addrs(
        "10.1.2.4",
        "127.0.0.1",
        "2603:1000::1",
        "10.1.2.3",
        "169.254.169.254",
        "10.1.2.4",
        "::1",
        "2603:1000::1",
        "52.1.1.1",
    )
    assert usable_addresses(answer, CONFIG) == addrs(
        "10.1.2.4", "2603:1000::1", "10.1.2.3", "52.1.1.1"
    )


def test_usable_addresses_empty() -> None:
    assert usable_addresses([], CONFIG) == []


def test_usable_addresses_uses_the_configured_list() -> None:
    config = replace(CONFIG, destinations=Destinations(deny_networks=nets("10.0.0.0/8")))
    answer = addrs("127.0.0.1", "10.1.2.3", "64:ff9b::a01:203", "192.168.1.1")
    assert usable_addresses(answer, config) == addrs("127.0.0.1", "192.168.1.1")


def test_usable_addresses_from_yaml_defaults() -> None:
    config = parse_config("destinations: {hosts: {}}\n", "test.yaml", Path("/tmp"))
    answer = addrs("::ffff:127.0.0.1", "10.0.0.1", TEREDO_LOOPBACK, "fc00::1")
    assert usable_addresses(answer, config) == addrs("10.0.0.1", "fc00::1")


# --- configs written in YAML --------------------------------------------------------------------


def test_embedded_default_policy() -> None:
    config = load_default()
    for authority in (
        "hub.azure-devices.net:443",
        "azure-devices.net:443",
        "store.blob.core.windows.net:443",
        "ns.servicebus.windows.net:443",
        "download.microsoft.com:443",
    ):
        assert_allowed(decide(target(authority), src("10.1.1.1"), None, config))
    for authority in ("evil.com:443", "x.download.microsoft.com:443", "1.2.3.4:443"):
        assert_denied(decide(target(authority), src("10.1.1.1"), None, config), 403, "forbidden")
    assert_denied(
        decide(target("hub.azure-devices.net:80"), src("10.1.1.1"), None, config), 403, "forbidden"
    )
    for addr, client in [
        ("127.0.0.1", "localhost"),
        ("::1", "localhost"),
        ("::ffff:127.0.0.1", "localhost"),
        ("192.168.1.1", "localnet"),
        ("172.31.255.255", "localnet"),
        ("100.64.0.1", "localnet"),
        ("fd00::1", "localnet"),
        ("fe80::1", "localnet"),
    ]:
        assert admit(src(addr), None, config).client == client, addr
    assert_denied(decide(GOOD, src("8.8.8.8"), None, config), 407, "auth_required")
    assert_denied(decide(GOOD, src("2001:db8::1"), None, config), 407, "auth_required")


def test_yaml_users_and_mapped_client_networks() -> None:
    config = parse_config(
        f"""
clients:
  - name: mapped
    networks: ["::ffff:10.0.0.0/104"]
users:
  - name: sensor2
    password_hash: "{HASH}"
    networks: ["10.20.0.0/16"]
allow:
  domains: [".azure-devices.net"]
""",
        "test.yaml",
        Path("/tmp"),
    )
    for addr in ("10.0.0.5", "::ffff:10.0.0.5"):
        assert admit(src(addr), None, config).client == "mapped"
    assert_allowed(decide(GOOD, src("10.20.0.9"), Credentials("sensor2", True), config))
    assert_denied(
        decide(GOOD, src("10.30.0.9"), Credentials("sensor2", True), config), 407, "auth_failed"
    )
    assert_denied(
        decide(GOOD, src("10.0.0.5"), Credentials("sensor2", False), config), 407, "auth_failed"
    )


def test_yaml_report_mode_and_upstream(tmp_path: Path) -> None:
    config = parse_config(
        """
clients: [{name: lab, networks: ["192.168.0.0/16"]}]
allow: {domains: ["*.azure-devices.net"], mode: report}
upstream:
  proxies: [{url: "http://proxy.corp.example:8080"}]
  direct_domains: [".corp.example"]
""",
        "test.yaml",
        tmp_path,
    )
    flagged = decide(target("azure-devices.net:443"), src("192.168.1.1"), None, config)
    assert flagged.allowed and flagged.would_deny and flagged.route == "upstream"
    direct = decide(target("wiki.corp.example:443"), src("192.168.1.1"), None, config)
    assert direct.allowed and direct.would_deny and direct.route == "direct"


# --- property: decide agrees with an independent matcher ----------------------------------------

_LABEL_POOL = ["a", "b", "x1", "net", "azure-devices", "blob", "c-d", "0a", "42"]
_label = st.one_of(
    st.sampled_from(_LABEL_POOL),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True),
)


def _numeric(label: str) -> bool:
    return label.isdigit() or (
        label.startswith("0x") and all(c in "0123456789abcdef" for c in label[2:])
    )


_host_labels = st.lists(_label, min_size=1, max_size=5).filter(lambda ls: not _numeric(ls[-1]))


def _reference_allows(host: str, pattern_texts: list[str]) -> bool:
    """SPEC 3 pattern rules, on label lists: `.d` = d or below, `*.d` = strictly below, `d` = d."""
    host_labels = host.lower().removesuffix(".").split(".")
    for text in pattern_texts:
        text = text.lower()
        if text.startswith("*."):
            want, strictly_below, exact = text[2:], True, False
        elif text.startswith("."):
            want, strictly_below, exact = text[1:], False, False
        else:
            want, strictly_below, exact = text, False, True
        labels = want.removesuffix(".").split(".")
        n = len(labels)
        if exact:
            if host_labels == labels:
                return True
        elif host_labels[-n:] == labels and len(host_labels) >= n + int(strictly_below):
            return True
    return False


def _recase(text: str, flips: list[bool]) -> str:
    return "".join(
        c.upper() if flip else c for c, flip in zip(text, flips + [False] * len(text), strict=False)
    )


@st.composite
def _case(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A host (random case, maybe a trailing dot) and patterns, many built from its own suffixes."""
    labels = draw(_host_labels)
    host = ".".join(labels)
    texts: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            k = draw(st.integers(1, len(labels)))
            domain = ".".join(labels[-k:])
        else:
            domain = ".".join(draw(_host_labels))
        prefix = draw(st.sampled_from(["", ".", "*."]))
        texts.append(prefix + domain + draw(st.sampled_from(["", "."])))
    host_text = _recase(host, draw(st.lists(st.booleans(), max_size=len(host))))
    if draw(st.booleans()):
        host_text += "."
    texts = [_recase(t, draw(st.lists(st.booleans(), max_size=len(t)))) for t in texts]
    return host_text, texts


@given(_case())
@settings(max_examples=400, deadline=None)
def test_decide_agrees_with_reference_matcher(case: tuple[str, list[str]]) -> None:
    host_text, texts = case
    allow = Allow(domains=tuple(parse_domain_pattern(t) for t in texts))
    config = Config(clients=(Client("all", networks=nets("0.0.0.0/0")),), allow=allow)
    decision = decide(parse_target(f"{host_text}:443"), ADMITTED, None, config)
    expected = _reference_allows(host_text, texts)
    assert decision.allowed is expected, (host_text, texts, decision.reason)
    report = replace(config, allow=replace(allow, mode="report"))
    flagged = decide(parse_target(f"{host_text}:443"), ADMITTED, None, report)
    assert flagged.allowed and flagged.would_deny is (not expected)


def test_reference_matcher_itself() -> None:
    """The oracle is checked on the cases SPEC section 3 spells out."""
    assert _reference_allows("azure-devices.net", [".azure-devices.net"])
    assert _reference_allows("a.azure-devices.net", [".azure-devices.net"])
    assert not _reference_allows("evilazure-devices.net", [".azure-devices.net"])
    assert not _reference_allows("blob.core.windows.net", ["*.blob.core.windows.net"])
    assert _reference_allows("x.blob.core.windows.net", ["*.blob.core.windows.net"])
    assert _reference_allows("download.microsoft.com.", ["download.microsoft.com"])
    assert not _reference_allows("a.download.microsoft.com", ["download.microsoft.com"])


def test_source_and_target_types() -> None:
    """explain and the server build these from parsed text; pin down what they carry."""
    assert isinstance(target("192.0.2.1:443").ip, IPv4Address)
    assert isinstance(target("[2001:db8::1]:443").ip, IPv6Address)
    assert target("Sensor.Azure-Devices.Net.:443").host == "sensor.azure-devices.net"
