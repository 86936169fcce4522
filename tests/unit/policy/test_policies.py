"""Per-client policies (SPEC section 3.2): the model and the destination step's decision table.

Configs are built from the model classes, so each test shows every policy it relies on. One rule
of section 3.2 per group of tests, in the spec's order: the model (defaults, `allow` as
`default`, bindings), then step 5 (first matching policy allows; else the first report-mode
policy holding the port lets through with would_deny; else 403 naming the policies tried).
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from connectproxy.config.frozen import replace
from connectproxy.config.model import (
    DEFAULT_POLICY,
    Allow,
    Client,
    Config,
    Policy,
    User,
)
from connectproxy.matching.domains import parse_domain_pattern
from connectproxy.matching.netset import IPNetwork
from connectproxy.policy.decide import (
    Credentials,
    Decision,
    Source,
    admit,
    decide,
    destination,
)
from connectproxy.wire.http import Target, parse_target

HASH = "scrypt$n=16384,r=8,p=1$Y29ubmVjdHByb3h5LXRzdA$bW0v8sEzbkJt2f3vx8U7TJLtJA8RWeMlM897XMNpViY"


def nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ip_network(c) for c in cidrs)


def policy(name: str, *domains: str, **fields: object) -> Policy:
    return Policy(
        name=name,
        domains=tuple(parse_domain_pattern(d) for d in domains),
        **fields,  # type: ignore[arg-type]
    )


def target(authority: str) -> Target:
    return parse_target(authority)


def src(addr: str, *tls_names: str) -> Source:
    return Source(ip_address(addr), 40000, tls_names)


DEFAULT = Allow(domains=(parse_domain_pattern("download.microsoft.com"),))
IOT_HUB = policy(
    "iot-hub", ".azure-devices.net", ".servicebus.windows.net", ports=frozenset({443, 8883})
)
UPDATES = policy("updates", "download.microsoft.com", "*.update.example", mode="report")
LAB = policy("lab", networks=nets("192.0.2.0/24", "2001:db8::/32"), ports=frozenset({443, 8443}))
ALERTS = policy("alerts", ".alerts.example", ports=frozenset({8443}), mode="report")

CONFIG = Config(
    allow=DEFAULT,
    policies={p.name: p for p in (IOT_HUB, UPDATES, LAB, ALERTS)},
    clients=(
        Client("sensors", networks=nets("10.100.0.0/24"), policies=("iot-hub", "updates")),
        Client("lab", networks=nets("10.200.0.0/16"), policies=("lab", "alerts")),
        Client("plant-b", tls_names=("sensor-7.plant-b",), policies=("iot-hub",)),
        Client("others", networks=nets("10.0.0.0/8")),  # names none: [default]
    ),
    users=(
        User("jump", HASH, policies=("updates",)),
        User("admin", HASH, networks=nets("10.50.0.0/16"), policies=("lab", "iot-hub")),
        User("plain", HASH),
        # Its password is in the htpasswd file; the entry binds its policies and networks.
        User("filed", None, networks=nets("10.60.0.0/16"), policies=("iot-hub",)),
    ),
    htpasswd_file=Path("/etc/connectproxy/htpasswd"),
)
SENSORS = src("10.100.0.7")
LAB_HOST = src("10.200.1.1")
OTHERS = src("10.1.2.3")


def allowed(decision: Decision, policy_name: str, would_deny: bool = False) -> None:
    assert decision.allowed, decision.reason
    assert (decision.status, decision.outcome) == (200, "established")
    assert decision.policy == policy_name
    assert decision.would_deny is would_deny


def refused(decision: Decision) -> str:
    assert not decision.allowed
    assert (decision.status, decision.outcome) == (403, "forbidden")
    assert decision.policy is None
    assert not decision.would_deny
    return decision.reason


# --- the model -----------------------------------------------------------------------------------


def test_a_policy_omitting_keys_takes_the_built_in_defaults() -> None:
    bare = Policy(name="bare")
    assert bare.ports == frozenset({443})
    assert (bare.domains, bare.networks, bare.mode, bare.tls) == ((), (), "enforce", "off")
    assert len(bare.domain_index) == 0


def test_allow_is_the_policy_default() -> None:
    assert list(CONFIG.policies) == ["default", "iot-hub", "updates", "lab", "alerts"]
    assert CONFIG.policies[DEFAULT_POLICY] is CONFIG.allow
    assert CONFIG.allow.name == "default"
    assert Config().policies["default"] == Policy()


def test_replacing_allow_replaces_the_default_policy() -> None:
    changed = replace(CONFIG, allow=replace(CONFIG.allow, mode="report"))
    assert changed.policies["default"].mode == "report"
    assert changed.policies["iot-hub"] is IOT_HUB
    assert changed.report_mode


def test_a_default_under_policies_is_the_allow_section() -> None:
    config = Config(allow=DEFAULT, policies={"default": policy("default", ".evil.example")})
    assert config.policies["default"] is DEFAULT


def test_a_policy_is_filed_under_its_own_name() -> None:
    with pytest.raises(ValueError, match="filed under the name"):
        Config(policies={"other": IOT_HUB})


def test_policies_cannot_be_changed_after_loading() -> None:
    with pytest.raises(TypeError):
        CONFIG.policies["x"] = IOT_HUB  # type: ignore[index]


def test_identities_name_default_unless_told() -> None:
    assert Client("c").policies == ("default",)
    assert User("u", HASH).policies == ("default",)


@pytest.mark.parametrize(
    ("clients", "users"),
    [
        ((Client("c", networks=nets("10.0.0.0/8"), policies=("nope",)),), ()),
        ((), (User("u", HASH, policies=("default", "nope")),)),
    ],
)
def test_a_binding_to_an_undefined_policy_cannot_be_built(
    clients: tuple[Client, ...], users: tuple[User, ...]
) -> None:
    with pytest.raises(ValueError, match="'nope', which is not defined"):
        Config(clients=clients, users=users)


def test_report_mode_is_known_per_config() -> None:
    assert CONFIG.report_mode  # updates and alerts
    assert not Config().report_mode
    assert not Config(policies={"iot-hub": IOT_HUB}).report_mode


# --- admission finds the identity's policies ----------------------------------------------------


@pytest.mark.parametrize(
    ("source", "credentials", "policies"),
    [
        (SENSORS, None, ("iot-hub", "updates")),
        (LAB_HOST, None, ("lab", "alerts")),
        (src("203.0.113.1", "sensor-7.plant-b"), None, ("iot-hub",)),
        (OTHERS, None, ("default",)),
        (OTHERS, Credentials("jump", True), ("updates",)),
        (src("10.50.0.1"), Credentials("admin", True), ("lab", "iot-hub")),
        (OTHERS, Credentials("plain", True), ("default",)),
        (OTHERS, Credentials("from-htpasswd", True), ("default",)),  # htpasswd: [default]
        (src("10.60.0.9"), Credentials("filed", True), ("iot-hub",)),  # htpasswd, bound
    ],
)
def test_admission_carries_the_identitys_policies(
    source: Source, credentials: Credentials | None, policies: tuple[str, ...]
) -> None:
    admitted = admit(source, credentials, CONFIG)
    assert admitted.allowed
    assert admitted.policies == policies
    assert admitted.policy is None  # no destination decided yet


def test_an_htpasswd_user_with_an_entry_gets_its_policies_and_networks() -> None:
    """A users entry without password_hash binds an htpasswd user like any other entry: its
    policies replace [default], and its networks limit where it may log in from."""
    hub = target("hub.azure-devices.net:443")
    allowed(decide(hub, src("10.60.0.9"), Credentials("filed", True), CONFIG), "iot-hub")
    plain = target("download.microsoft.com:443")  # in default, not in iot-hub
    assert decide(plain, src("10.60.0.9"), Credentials("filed", True), CONFIG).status == 403
    outside = decide(hub, OTHERS, Credentials("filed", True), CONFIG)
    assert (outside.status, outside.reason) == (407, "user not allowed from this address")
    assert decide(hub, src("10.60.0.9"), Credentials("filed", False), CONFIG).status == 407


def test_refused_admission_has_no_policy() -> None:
    decision = decide(target("hub.azure-devices.net:443"), src("203.0.113.1"), None, CONFIG)
    assert (decision.status, decision.policy, decision.policies) == (407, None, ())


# --- rule 1: the first policy holding the port and matching the target allows --------------------


@pytest.mark.parametrize(
    ("source", "authority", "policy_name"),
    [
        (SENSORS, "hub.azure-devices.net:443", "iot-hub"),
        (SENSORS, "hub.azure-devices.net:8883", "iot-hub"),  # a port only iot-hub holds
        (SENSORS, "ns.servicebus.windows.net:443", "iot-hub"),
        (SENSORS, "download.microsoft.com:443", "updates"),  # second policy, enforce match
        (SENSORS, "a.update.example:443", "updates"),
        (LAB_HOST, "192.0.2.9:443", "lab"),
        (LAB_HOST, "[2001:db8::9]:8443", "lab"),
        (LAB_HOST, "[::ffff:192.0.2.9]:443", "lab"),  # mapped form, same address
        (LAB_HOST, "x.alerts.example:8443", "alerts"),
        (OTHERS, "download.microsoft.com:443", "default"),
    ],
)
def test_the_first_matching_policy_allows(source: Source, authority: str, policy_name: str) -> None:
    decision = decide(target(authority), source, None, CONFIG)
    allowed(decision, policy_name)
    assert decision.policies == admit(source, None, CONFIG).policies


def test_the_listed_order_decides_between_two_matching_policies() -> None:
    first = policy("first", ".example.com")
    second = policy("second", "www.example.com")
    policies = {p.name: p for p in (first, second)}
    for order in (("first", "second"), ("second", "first")):
        config = Config(
            policies=policies, clients=(Client("c", networks=nets("10.0.0.0/8"), policies=order),)
        )
        decision = decide(target("www.example.com:443"), OTHERS, None, config)
        allowed(decision, order[0])


def test_a_policy_not_holding_the_port_does_not_allow_its_domains() -> None:
    # iot-hub holds 8883, updates does not: download.microsoft.com:8883 is nobody's.
    reason = refused(decide(target("download.microsoft.com:8883"), SENSORS, None, CONFIG))
    assert reason == "destination not allowed: host in no domains of policy iot-hub"


def test_a_matching_enforce_policy_wins_over_an_earlier_report_policy() -> None:
    config = Config(
        policies={p.name: p for p in (UPDATES, IOT_HUB)},
        clients=(Client("c", networks=nets("10.0.0.0/8"), policies=("updates", "iot-hub")),),
    )
    allowed(decide(target("hub.azure-devices.net:443"), OTHERS, None, config), "iot-hub")


def test_a_host_does_not_match_through_a_network_or_an_address_through_a_domain() -> None:
    plant_b = src("203.0.113.1", "sensor-7.plant-b")  # iot-hub alone: domains, no networks
    reason = refused(decide(target("192.0.2.9:443"), plant_b, None, CONFIG))
    assert reason == "destination not allowed: IP address in no networks of policy iot-hub"
    reason = refused(decide(target("lab.example:443"), LAB_HOST, None, CONFIG))  # lab: networks
    assert reason == "destination not allowed: host in no domains of policy lab"


# --- rule 2: otherwise the first report-mode policy holding the port lets it through -------------


def test_report_mode_of_a_later_policy_lets_through_with_would_deny() -> None:
    decision = decide(target("evil.example:443"), SENSORS, None, CONFIG)
    allowed(decision, "updates", would_deny=True)
    assert decision.reason == "host in no domains of policies iot-hub, updates (report mode)"


def test_report_mode_only_for_a_port_the_report_policy_holds() -> None:
    # alerts (report) holds 8443 only; lab (enforce) holds 443 and 8443.
    decision = decide(target("198.51.100.1:8443"), LAB_HOST, None, CONFIG)
    allowed(decision, "alerts", would_deny=True)
    reason = refused(decide(target("198.51.100.1:443"), LAB_HOST, None, CONFIG))
    assert reason == "destination not allowed: IP address in no networks of policy lab"


def test_the_first_report_policy_is_the_decisions_policy() -> None:
    also = policy("also", ".x.example", mode="report")
    config = Config(
        policies={p.name: p for p in (IOT_HUB, UPDATES, also)},
        clients=(
            Client("c", networks=nets("10.0.0.0/8"), policies=("iot-hub", "updates", "also")),
        ),
    )
    allowed(decide(target("evil.example:443"), OTHERS, None, config), "updates", would_deny=True)
    # A later policy's match still wins over an earlier report policy's pass.
    allowed(decide(target("a.x.example:443"), OTHERS, None, config), "also")


def test_report_mode_in_one_policy_does_not_open_another_identitys() -> None:
    # jump is bound to updates (report); plant-b only to iot-hub (enforce).
    jump = decide(target("evil.example:443"), OTHERS, Credentials("jump", True), CONFIG)
    allowed(jump, "updates", would_deny=True)
    plant_b = src("203.0.113.1", "sensor-7.plant-b")
    refused(decide(target("evil.example:443"), plant_b, None, CONFIG))


# --- rule 3: otherwise 403, naming the policies tried, never their contents ----------------------


def test_a_port_no_policy_holds_names_every_policy() -> None:
    reason = refused(decide(target("hub.azure-devices.net:80"), SENSORS, None, CONFIG))
    assert reason == "port 80 not allowed by policies iot-hub, updates"
    reason = refused(decide(target("download.microsoft.com:80"), OTHERS, None, CONFIG))
    assert reason == "port 80 not allowed by policy default"


def test_a_refused_host_names_the_policies_holding_the_port() -> None:
    plant_b = src("203.0.113.1", "sensor-7.plant-b")
    reason = refused(decide(target("evil.example:443"), plant_b, None, CONFIG))
    assert reason == "destination not allowed: host in no domains of policy iot-hub"


def test_a_refusal_never_lists_what_a_policy_allows() -> None:
    cases = [
        (SENSORS, "hub.azure-devices.net:80"),
        (src("203.0.113.1", "sensor-7.plant-b"), "evil.example:443"),
        (LAB_HOST, "198.51.100.1:443"),
        (OTHERS, "evil.example:443"),
    ]
    contents = ["azure-devices", "servicebus", "microsoft", "update.example", "192.0.2", "2001:"]
    for source, authority in cases:
        reason = refused(decide(target(authority), source, None, CONFIG))
        assert not any(text in reason for text in contents), reason


# --- the default policy and doctor's call --------------------------------------------------------


def test_a_config_without_policies_decides_as_before() -> None:
    config = Config(allow=DEFAULT, clients=(Client("c", networks=nets("10.0.0.0/8")),))
    allowed(decide(target("download.microsoft.com:443"), OTHERS, None, config), "default")
    reason = refused(decide(target("evil.example:443"), OTHERS, None, config))
    assert reason == "destination not allowed: host in no domains of policy default"
    report = replace(config, allow=replace(DEFAULT, mode="report"))
    allowed(decide(target("evil.example:443"), OTHERS, None, report), "default", would_deny=True)


def test_destination_without_an_identity_uses_the_default_policy() -> None:
    allowed(destination(target("download.microsoft.com:443"), CONFIG), "default")
    # Only iot-hub allows this host: doctor, with no identity, is refused it.
    refused(destination(target("hub.azure-devices.net:443"), CONFIG))


def test_a_decision_carries_client_user_and_route_with_its_policy() -> None:
    decision = decide(
        target("hub.azure-devices.net:443"), src("10.50.0.1"), Credentials("admin", True), CONFIG
    )
    allowed(decision, "iot-hub")
    assert (decision.client, decision.user, decision.route) == ("admin", "admin", "direct")
    assert "policy='iot-hub'" in repr(decision)


# --- admission through the config's indexes ------------------------------------------------------


def test_admission_picks_the_first_client_whatever_the_way_it_matches() -> None:
    config = Config(
        clients=(
            Client("wide", networks=nets("10.0.0.0/8")),
            Client("narrow", networks=nets("10.1.0.0/16")),
            Client("cert", tls_names=("dev-1",), networks=nets("10.2.0.0/16")),
            Client("cert-2", tls_names=("dev-1", "dev-2")),
        )
    )
    assert admit(src("10.1.0.1"), None, config).client == "wide"  # listed first
    by_cert = admit(src("203.0.113.1", "dev-1"), None, config)
    assert (by_cert.client, by_cert.reason) == ("cert", "admitted by client certificate")
    assert admit(src("203.0.113.1", "dev-2"), None, config).client == "cert-2"
    # A client listed before the one the certificate names admits by network.
    both = admit(src("10.2.0.1", "dev-1"), None, config)
    assert (both.client, both.reason) == ("wide", "admitted by source address")
    assert not admit(src("203.0.113.1", "dev-3"), None, config).allowed


def test_admission_with_a_thousand_clients_finds_each() -> None:
    clients = tuple(
        Client(f"site-{i}", networks=nets(f"10.{i // 250}.{i % 250}.0/24")) for i in range(1000)
    )
    config = Config(clients=(*clients, Client("last", networks=nets("127.0.0.0/8"))))
    assert admit(src("10.3.249.9"), None, config).client == "site-999"
    assert admit(src("10.0.0.1"), None, config).client == "site-0"
    assert admit(src("127.0.0.1"), None, config).client == "last"
    assert admit(src("::ffff:127.0.0.1"), None, config).client == "last"
    assert not admit(src("10.4.0.1"), None, config).allowed
