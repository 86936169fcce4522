"""Named policies in the YAML file (SPEC section 3.2): what they mean, every mistake an operator
can make with them (key path, line, how to fix it), the warnings, and what `check-config` prints.
"""

from __future__ import annotations

import textwrap
from ipaddress import ip_network
from pathlib import Path

import pytest

from connectproxy.config.model import DEFAULT_POLICY, Config, Policy
from connectproxy.configfile import summary
from connectproxy.configfile.errors import ConfigError
from connectproxy.configfile.load import load_default, parse_config
from connectproxy.configfile.summary import summarize
from connectproxy.credentials.passwords import hash_password
from connectproxy.matching.domains import covers, parse_domain_pattern
from tests.support import REPO_ROOT

HASH = hash_password("correct horse battery staple")


def load(text: str) -> Config:
    return parse_config(textwrap.dedent(text), "test.yaml", REPO_ROOT)


def fails(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text)
    return info.value


TWO_POLICIES = f"""\
    allow:
      domains: [".azure-devices.net"]
    policies:
      iot-hub:
        domains: [".azure-devices.net", ".servicebus.windows.net"]
      updates:
        ports: [443, 8443]
        domains: ["download.microsoft.com"]
        mode: report
    clients:
      - name: sensors
        networks: ["10.100.0.0/24"]
        policies: [iot-hub, updates]
      - name: plain
        networks: ["10.101.0.0/24"]
    users:
      - name: jump
        password_hash: "{HASH}"
        policies: [updates]
    """


# --- meaning ----------------------------------------------------------------------------------


def test_policies_are_read_with_their_bindings_in_order() -> None:
    config = load(TWO_POLICIES)
    assert list(config.policies) == [DEFAULT_POLICY, "iot-hub", "updates"]
    iot = config.policies["iot-hub"]
    assert iot.ports == frozenset({443})
    assert [p.text for p in iot.domains] == [".azure-devices.net", ".servicebus.windows.net"]
    updates = config.policies["updates"]
    assert updates.ports == frozenset({443, 8443})
    assert updates.mode == "report"
    assert config.report_mode
    sensors, plain = config.clients
    assert sensors.policies == ("iot-hub", "updates")
    assert plain.policies == (DEFAULT_POLICY,)  # no key: [default]
    assert config.users[0].policies == ("updates",)
    assert config.warnings == ()


def test_omitted_keys_take_the_built_in_defaults_never_another_policys() -> None:
    config = load(
        """\
        allow:
          ports: [8443]
          networks: ["192.0.2.0/24"]
          mode: report
        policies:
          bare:
            domains: [a.example]
        clients:
          - name: c
            networks: [10.0.0.1]
            policies: [bare, default]
        """
    )
    bare = config.policies["bare"]
    assert bare == Policy(name="bare", domains=(parse_domain_pattern("a.example"),))
    assert (bare.ports, bare.networks, bare.mode, bare.tls) == (
        frozenset({443}),
        (),
        "enforce",
        "off",
    )


def test_a_policy_with_every_key_commented_out_is_all_defaults() -> None:
    config = load(
        """\
        policies:
          empty:
        clients:
          - name: c
            networks: [10.0.0.1]
            policies: [empty]
        """
    )
    assert config.policies["empty"] == Policy(name="empty")


def test_tls_off_is_accepted_quoted_or_not_under_allow_and_policies() -> None:
    config = load(
        """\
        allow:
          domains: [a.example]
          tls: off
        policies:
          p:
            domains: [b.example]
            tls: "off"
        clients:
          - name: c
            networks: [10.0.0.1]
            policies: [p, default]
        """
    )
    assert config.allow.tls == "off" and config.policies["p"].tls == "off"


def test_configs_without_policies_mean_what_they_meant() -> None:
    """The shipped files are compared with their expected meaning in test_config.py; here, that
    nobody in them is bound to anything but default and no policy beside it exists."""
    for config in (load_default(), load((REPO_ROOT / "config" / "connectproxy.yaml").read_text())):
        assert list(config.policies) == [DEFAULT_POLICY]
        assert config.policies[DEFAULT_POLICY] is config.allow
        assert all(c.policies == (DEFAULT_POLICY,) for c in config.clients)
    for path in sorted((REPO_ROOT / "config" / "examples").glob("*.yaml")):
        config = parse_config(path.read_text(), str(path), path.parent)
        assert all(c.policies == (DEFAULT_POLICY,) for c in config.clients)
        assert all(u.policies == (DEFAULT_POLICY,) for u in config.users)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["allow", "policies.p"])
@pytest.mark.parametrize("mode", ["off", "observe", "require", "verify_sni"])
def test_every_tls_mode_loads_and_turns_the_log_fields_on(where: str, mode: str) -> None:
    if where == "allow":
        text = f"allow:\n  domains: [a.example]\n  tls: {mode}\n"
    else:
        text = f"policies:\n  p:\n    domains: [a.example]\n    tls: {mode}\n"
    config = load(text)
    policy = config.allow if where == "allow" else config.policies["p"]
    assert policy.tls == mode
    assert config.tls_guard == (mode != "off")


def test_an_unknown_tls_mode_lists_the_modes() -> None:
    error = fails("allow:\n  tls: sni\n")
    assert str(error) == (
        "test.yaml:2: allow.tls: must be one of off | observe | require | verify_sni, not 'sni'"
    )


def test_default_may_not_be_redefined_under_policies() -> None:
    error = fails("policies:\n  other: {}\n  default:\n    ports: [443]\n")
    assert (error.key_path, error.line) == ("policies.default", 3)
    assert error.message.startswith("`default` is the `allow` section; ")


@pytest.mark.parametrize("name", ["has space", "a/b", "x" * 65, "naïve", "a,b", "'", "1: 2"])
def test_policy_names_are_a_safe_character_set(name: str) -> None:
    error = fails(f'policies:\n  "{name}":\n    domains: [a.example]\n')
    assert (error.key_path, error.line) == (f"policies.{name}", 2)
    assert error.message.endswith(
        "is not a policy name: use 1 to 64 letters, digits, '.', '_' or '-'"
    )


def test_a_policy_name_of_64_safe_characters_is_accepted() -> None:
    name = "A-z_0." + "x" * 58
    config = load(
        f"policies:\n  {name}:\n    domains: [a.example]\n"
        f"clients:\n  - name: c\n    networks: [10.0.0.1]\n    policies: [{name}]\n"
    )
    assert name in config.policies


def test_an_unknown_policy_name_names_its_key_path_and_suggests() -> None:
    text = TWO_POLICIES.replace(
        "        policies: [iot-hub, updates]\n", "        policies: [iot-hub, iothub]\n"
    )
    error = fails(text)
    assert str(error) == (
        "test.yaml:13: clients[0].policies[1]: no policy is named 'iothub'; did you mean "
        "'iot-hub'? defined policies: default, iot-hub, updates (default is the allow section)"
    )


def test_an_unknown_name_is_found_when_policies_come_after_the_identities() -> None:
    error = fails(
        f"""\
        users:
          - name: u
            password_hash: "{HASH}"
            policies: [nowhere]
        policies:
          p:
            domains: [a.example]
        """
    )
    assert (error.key_path, error.line) == ("users[0].policies[0]", 4)
    assert "defined policies: default, p" in error.message


def test_a_binding_to_a_policy_defined_later_in_the_file_is_fine() -> None:
    config = load(
        "clients:\n  - name: c\n    networks: [10.0.0.1]\n    policies: [later]\n"
        "policies:\n  later:\n    domains: [a.example]\n"
    )
    assert config.clients[0].policies == ("later",)


def test_an_empty_binding_is_an_error_that_says_why() -> None:
    error = fails("clients:\n  - name: c\n    networks: [10.0.0.1]\n    policies: []\n")
    assert str(error) == (
        "test.yaml:4: clients[0].policies: an empty list binds to no policy, so every request "
        "would get 403; name at least one policy, or leave the key out for [default]"
    )


def test_a_name_listed_twice_is_an_error() -> None:
    error = fails("clients:\n  - name: c\n    networks: [10.0.0.1]\n    policies: [a, a]\n")
    assert (error.key_path, error.message) == (
        "clients[0].policies[1]",
        "policy 'a' is listed twice; keep one",
    )


@pytest.mark.parametrize(
    ("text", "path", "start"),
    [
        ("policies: [a]\n", "policies", "must be a mapping"),
        ("policies:\n  a: [443]\n", "policies.a", "must be a mapping"),
        ("policies:\n  a:\n    prts: [1]\n", "policies.a.prts", "unknown key 'prts'; did you"),
        ("policies:\n  a:\n    ports: [0]\n", "policies.a.ports[0]", "must be"),
        ("policies:\n  a:\n    domains: ['*x.a']\n", "policies.a.domains[0]", "'*x.a' is not"),
        ("policies:\n  a:\n    mode: audit\n", "policies.a.mode", "must be one of enforce"),
        (
            "clients:\n  - name: c\n    networks: [10.0.0.1]\n    policies: iot\n",
            "clients[0].policies",
            "must be a list",
        ),
        (
            "clients:\n  - name: c\n    networks: [10.0.0.1]\n    policies: [1]\n",
            "clients[0].policies[0]",
            "must be a string",
        ),
    ],
)
def test_policy_values_are_checked_like_allow(text: str, path: str, start: str) -> None:
    error = fails(text)
    assert error.key_path == path
    assert error.message.startswith(start), error.message


# --- warnings ---------------------------------------------------------------------------------


def test_an_unused_policy_is_warned_about_with_its_place() -> None:
    assert load(TWO_POLICIES).warnings == ()
    text = TWO_POLICIES.replace(
        "    clients:\n",
        "      spare:\n        domains: [spare.example]\n    clients:\n",
    )
    config = load(text)
    assert config.warnings == (
        "test.yaml:10: policies.spare: no client or user is bound to this policy, so it allows "
        "nothing; name it in a client's or user's policies, or remove it",
    )


def test_htpasswd_users_count_as_bound_to_default(tmp_path: Path) -> None:
    (tmp_path / "htpasswd").write_text("")
    text = (
        "allow:\n  domains: [a.example]\npolicies:\n  p:\n    domains: [b.example]\n"
        "clients:\n  - name: c\n    networks: [10.0.0.1]\n    policies: [p]\n"
    )
    unused = load(text).warnings
    assert unused == (
        "test.yaml:1: allow: no client or user is bound to the default policy (every one names "
        "its policies), so allow is never consulted",
    )
    with_htpasswd = parse_config(text + "htpasswd_file: htpasswd\n", "test.yaml", tmp_path)
    assert with_htpasswd.warnings == ()


# --- htpasswd users bound to policies ---------------------------------------------------------

FILED_USERS = """\
    allow:
      domains: [download.microsoft.com]
    policies:
      iot:
        domains: [".azure-devices.net"]
    clients: []
    users:
      - name: alice
        policies: [iot]
        networks: ["10.9.0.0/16"]
      - name: ghost
        policies: [iot]
      - name: local
        password_hash: "{hash}"
    htpasswd_file: htpasswd
    """


def test_a_user_without_hash_binds_an_htpasswd_user(tmp_path: Path) -> None:
    """The file may come after `users`; a name it lacks is warned about, not refused, since the
    file is read again when it changes. Users only in the file keep [default]."""
    line = "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="
    (tmp_path / "htpasswd").write_text(f"alice:{line}\nbob:{line}\n")
    text = textwrap.dedent(FILED_USERS.format(hash=HASH))
    config = parse_config(text, "test.yaml", tmp_path)
    alice, ghost, local = config.users
    assert (alice.name, alice.password_hash, alice.policies) == ("alice", None, ("iot",))
    assert alice.networks == (ip_network("10.9.0.0/16"),)
    assert ghost.password_hash is None and local.password_hash == HASH
    assert config.htpasswd_file == tmp_path / "htpasswd"
    assert config.warnings == (
        f"test.yaml:11: users[1]: user 'ghost' has no password_hash and "
        f"'{tmp_path / 'htpasswd'}' has no line for it, so it cannot log in until one is added "
        "(the file is read again when it changes)",
    )
    lines = summarize(config)
    assert "user alice: Basic password from htpasswd_file, from 10.9.0.0/16; policies iot" in lines
    assert "user local: Basic password, from any address; policies default" in lines
    assert (
        "allow (policy default) bound to: clients (none); users local, "
        "(htpasswd_file users without a users entry)" in lines
    )


def test_a_user_without_hash_needs_an_htpasswd_file() -> None:
    text = FILED_USERS.format(hash=HASH).replace("    htpasswd_file: htpasswd\n", "")
    error = fails(text)
    assert (error.key_path, error.line) == ("users[0]", 8)
    assert "user 'alice' has no password_hash and there is no htpasswd_file" in error.message


def test_admits_nothing_fires_only_for_a_policy_someone_is_bound_to() -> None:
    # `allow` is empty on purpose: every client names its own policy.
    config = load(
        "policies:\n  p:\n    domains: [a.example]\n  q:\n    ports: []\n"
        "clients:\n  - name: c\n    networks: [10.0.0.1]\n    policies: [p]\n"
    )
    assert config.warnings == (
        "test.yaml:4: policies.q: no client or user is bound to this policy, so it allows "
        "nothing; name it in a client's or user's policies, or remove it",
    )
    config = load(
        "policies:\n  q:\n    ports: []\n"
        "clients:\n  - name: c\n    networks: [10.0.0.1]\n    policies: [q]\n"
    )
    assert config.warnings == (
        "test.yaml:2: policies.q: admits no destination (no ports, or mode enforce with no "
        "domains and no networks): it lets nothing through for the clients and users bound to it",
    )
    config = load("clients:\n  - name: c\n    networks: [10.0.0.1]\n")
    assert config.warnings == (
        "test.yaml: allow admits no destination: every request will get 403",
    )


# --- check-config -----------------------------------------------------------------------------


def test_summary_prints_each_policy_and_who_is_bound_to_it() -> None:
    lines = summarize(load(TWO_POLICIES))
    start = lines.index("allow.tls: off")
    end = lines.index("htpasswd_file: (none)")
    assert lines[start:end] == [
        "allow.tls: off",
        "allow (policy default) bound to: clients plain; users (none)",
        "policies.iot-hub.mode: enforce",
        "policies.iot-hub.ports: 443",
        "policies.iot-hub.domains: .azure-devices.net, .servicebus.windows.net",
        "policies.iot-hub.networks: (none)",
        "policies.iot-hub.tls: off",
        "policies.iot-hub bound to: clients sensors; users (none)",
        "policies.updates.mode: report (destinations outside the allowlist are let through and "
        "logged as would_deny)",
        "policies.updates.ports: 443, 8443",
        "policies.updates.domains: download.microsoft.com",
        "policies.updates.networks: (none)",
        "policies.updates.tls: off",
        "policies.updates bound to: clients sensors; users jump",
        "client sensors: networks 10.100.0.0/24; policies iot-hub, updates",
        "client plain: networks 10.101.0.0/24; policies default",
        "user jump: Basic password, from any address; policies updates",
    ]


def test_summary_without_named_policies_prints_no_policy_lines() -> None:
    lines = summarize(load_default())
    assert not any("policies" in line or line.startswith("allow.tls") for line in lines)


def test_summary_notes_a_policy_that_adds_nothing_for_an_identity() -> None:
    config = load(
        """\
        policies:
          wide:
            domains: [".example.com", "b.example"]
            networks: ["192.0.2.0/24"]
          narrow:
            domains: ["a.example.com", "*.x.example.com"]
            networks: ["192.0.2.8/29"]
          other-port:
            ports: [8443]
            domains: ["a.example.com"]
          reported:
            domains: ["a.example.com"]
            mode: report
        clients:
          - name: c
            networks: [10.0.0.1]
            policies: [wide, narrow, other-port, reported]
          - name: d
            networks: [10.0.0.2]
            policies: [narrow, wide]
          - name: e
            networks: [10.0.0.3]
            policies: [reported, narrow]
        """
    )
    notes = [line for line in summarize(config) if line.startswith("note:")]
    # other-port holds a port wide does not; an enforce policy is not covered by a report one,
    # nor a report one by an enforce one.
    assert notes == [
        "note: policy narrow adds nothing for client c: policy wide already allows all of it",
        "note: policy narrow adds nothing for client d: policy wide already allows all of it",
    ]


def test_two_equal_policies_flag_only_the_later() -> None:
    config = load(
        "policies:\n  a:\n    domains: [x.example]\n  b:\n    domains: [x.example]\n"
        "clients:\n  - name: c\n    networks: [10.0.0.1]\n    policies: [a, b]\n"
    )
    notes = [line for line in summarize(config) if line.startswith("note:")]
    assert notes == ["note: policy b adds nothing for client c: policy a already allows all of it"]


def test_the_summarys_pattern_walk_agrees_with_pattern_containment() -> None:
    """check-config walks parent domains instead of comparing every pair of patterns; for a
    single outer pattern both must give the same answer."""
    texts = [
        f"{prefix}{domain}"
        for prefix in ("", ".", "*.")
        for domain in ("example.com", "a.example.com", "b.a.example.com", "xexample.com", "com")
    ]
    patterns = [parse_domain_pattern(text) for text in texts]
    for outer in patterns:
        for inner in patterns:
            kinds = {outer.domain: {outer.kind}}
            assert summary._pattern_covered(kinds, inner) == covers(outer, inner), (outer, inner)
