"""The YAML configuration: the shipped files, the full SPEC example, and every kind of mistake.

Each error test checks what the operator sees: the key path, the line, and a hint how to fix it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import textwrap
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectproxy.config.frozen import replace
from connectproxy.config.model import (
    DEFAULT_DENY_NETWORKS,
    Config,
    Destinations,
    Limits,
    Listener,
    Log,
    Metrics,
    Timeouts,
)
from connectproxy.configfile import load as configfile
from connectproxy.configfile.document import TOP_KEYS
from connectproxy.configfile.errors import ConfigError
from connectproxy.configfile.load import (
    EMBEDDED_SOURCE,
    config_from_mapping,
    load_config,
    load_default,
    parse_config,
)
from connectproxy.configfile.summary import summarize
from connectproxy.configfile.upstream import PROXY_KEYS
from connectproxy.credentials.passwords import hash_password
from tests.support import REPO_ROOT

REPO = REPO_ROOT
EXAMPLES = sorted((REPO / "config" / "examples").glob("*.yaml"))
# One real hash for the whole module: hashing is slow on purpose.
HASH = hash_password("correct horse battery staple")


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def load(text: str, base_dir: Path = REPO) -> Config:
    return parse_config(textwrap.dedent(text), "test.yaml", base_dir)


def fails(text: str, base_dir: Path = REPO) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text, base_dir)
    return info.value


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_text("placeholder\n")


# --- the shipped configuration ----------------------------------------------------------------


def test_embedded_default_is_spec_3_1() -> None:
    config = load_default()
    assert config.source == EMBEDDED_SOURCE
    assert config.listen == (Listener("::", 3128),)
    assert config.allow.ports == frozenset({443})
    assert [(p.text, p.kind, p.domain) for p in config.allow.domains] == [
        (".azure-devices.net", "suffix", "azure-devices.net"),
        (".blob.core.windows.net", "suffix", "blob.core.windows.net"),
        (".servicebus.windows.net", "suffix", "servicebus.windows.net"),
        ("download.microsoft.com", "exact", "download.microsoft.com"),
    ]
    assert config.allow.networks == ()
    assert config.allow.mode == "enforce"
    assert [(c.name, c.networks, c.tls_names) for c in config.clients] == [
        ("localhost", (net("127.0.0.0/8"), net("::1/128")), ()),
        (
            "localnet",
            tuple(
                net(n)
                for n in (
                    "10.0.0.0/8",
                    "172.16.0.0/12",
                    "192.168.0.0/16",
                    "100.64.0.0/10",
                    "fc00::/7",
                    "fe80::/10",
                )
            ),
            (),
        ),
    ]
    assert config.users == ()
    assert config.htpasswd_file is None
    assert config.upstream is None
    assert config.metrics == Metrics("127.0.0.1", 9128)
    # Everything else is the model default, spelled out in the file for the reader.
    assert config.destinations == Destinations()
    assert config.timeouts == Timeouts()
    assert config.limits == Limits()
    assert config.log == Log()
    assert config.warnings == ()


def test_shipped_config_file_is_the_embedded_default() -> None:
    packaged = resources.files("connectproxy.config").joinpath("default.yaml").read_bytes()
    assert (REPO / "config" / "connectproxy.yaml").read_bytes() == packaged


def test_load_config_without_path_uses_etc_file_or_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc_file = tmp_path / "connectproxy.yaml"
    monkeypatch.setattr(configfile, "DEFAULT_CONFIG_PATH", etc_file)
    assert load_config(None).source == EMBEDDED_SOURCE
    etc_file.write_text('listen: "127.0.0.1:3999"\n')
    config = load_config(None)
    assert config.source == str(etc_file)
    assert config.listen == (Listener("127.0.0.1", 3999),)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads_without_warnings(path: Path) -> None:
    config = load_config(path)
    assert config.warnings == ()
    assert config.clients


def test_example_details() -> None:
    examples = {path.name: load_config(path) for path in EXAMPLES}
    assert {"site-proxy.yaml", "private-link.yaml", "report-mode.yaml"} <= set(examples)
    site = examples["site-proxy.yaml"]
    assert [user.name for user in site.users] == ["sensor-mobile-1"]
    assert site.users[0].networks == (net("10.100.50.0/24"),)
    assert site.clients[1].networks == (net("10.100.200.15/32"),)
    private = examples["private-link.yaml"]
    assert private.destinations.deny_networks == DEFAULT_DENY_NETWORKS
    assert private.destinations.lookup_host("contoso-ot-events.servicebus.windows.net") == (
        ipaddress.ip_address("10.20.1.6"),
        ipaddress.ip_address("10.20.2.6"),
    )
    assert examples["report-mode.yaml"].allow.mode == "report"


# --- the full example of SPEC section 3 -------------------------------------------------------

SPEC_EXAMPLE = """\
listen:
  - "0.0.0.0:3128"
  - address: "[::]:3129"
    proxy_protocol: v2
    tls:
      cert_file: server.pem
      key_file: server.key
      client_ca_file: sensors-ca.pem
      require_client_cert: false

allow:
  ports: [443]
  domains:
    - ".azure-devices.net"
    - "*.blob.core.windows.net"
    - "download.microsoft.com"
  networks: []
  mode: enforce

clients:
  - name: sensor1
    networks: ["10.100.100.1", "10.100.0.0/24"]
  - name: plant-b
    tls_names: ["sensor-7.plant-b"]

users:
  - name: sensor2
    password_hash: "HASH"
    networks: ["10.20.0.0/16"]
htpasswd_file: htpasswd

upstream:
  proxies:
    - url: "http://proxy.corp.example:8080"
      username: ot-egress
      password_file: upstream.pass
    - url: "https://backup.corp.example:8443"
      ca_file: corp-ca.pem
      cert_file: client.pem
      key_file: client.key
  strategy: failover
  direct_domains: []

destinations:
  deny_networks: ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
                  "::/128", "::1/128", "fe80::/10", "ff00::/8"]
  hosts: {}

timeouts:
  handshake: 10
  connect: 10
  idle: 900
  shutdown_grace: 30

limits:
  max_connections: 10000
  max_connections_per_source: 256
  max_request_bytes: 8192

metrics:
  listen: "127.0.0.1:9128"

log:
  level: info
  format: json
  access_log: "-"
  access_format: json
"""


def test_full_spec_example_loads(tmp_path: Path) -> None:
    touch(tmp_path, "server.pem", "server.key", "sensors-ca.pem", "corp-ca.pem")
    touch(tmp_path, "client.pem", "client.key")
    sha = base64.b64encode(hashlib.sha1(b"pw").digest()).decode()
    (tmp_path / "htpasswd").write_text(f"sensor3:{{SHA}}{sha}\n")
    (tmp_path / "upstream.pass").write_text("s3cret\n")
    config = parse_config(SPEC_EXAMPLE.replace("HASH", HASH), "spec.yaml", tmp_path)

    assert config.warnings == ()
    plain, tls_listener = config.listen
    assert plain == Listener("0.0.0.0", 3128)
    assert (tls_listener.host, tls_listener.port, tls_listener.proxy_protocol) == ("::", 3129, "v2")
    assert tls_listener.address == "[::]:3129"
    assert tls_listener.tls is not None
    assert tls_listener.tls.cert_file == tmp_path / "server.pem"
    assert tls_listener.tls.client_ca_file == tmp_path / "sensors-ca.pem"
    assert tls_listener.tls.require_client_cert is False
    assert [p.kind for p in config.allow.domains] == ["suffix", "subdomains", "exact"]
    assert config.clients[0].networks == (net("10.100.100.1/32"), net("10.100.0.0/24"))
    assert config.clients[1].tls_names == ("sensor-7.plant-b",)
    assert config.users[0].password_hash == HASH
    assert config.htpasswd_file == tmp_path / "htpasswd"
    assert config.upstream is not None
    first, backup = config.upstream.proxies
    assert (first.scheme, first.host, first.port) == ("http", "proxy.corp.example", 8080)
    assert (first.username, first.password) == ("ot-egress", "s3cret")
    assert backup.name == "https://backup.corp.example:8443"
    assert (backup.ca_file, backup.cert_file, backup.key_file) == (
        tmp_path / "corp-ca.pem",
        tmp_path / "client.pem",
        tmp_path / "client.key",
    )
    assert config.upstream.strategy == "failover"
    assert len(config.destinations.deny_networks) == 9
    assert config.timeouts == Timeouts() and config.limits == Limits() and config.log == Log()
    assert config.metrics == Metrics("127.0.0.1", 9128)


def test_summary_shows_policy_but_never_a_secret(tmp_path: Path) -> None:
    touch(tmp_path, "server.pem", "server.key", "sensors-ca.pem", "corp-ca.pem")
    touch(tmp_path, "client.pem", "client.key")
    (tmp_path / "htpasswd").write_text("")
    (tmp_path / "upstream.pass").write_text("file-s3cret\n")
    text = SPEC_EXAMPLE.replace("HASH", HASH).replace(
        '"https://backup.corp.example:8443"',
        '"https://backup.corp.example:8443"\n      username: backup\n      password: inline-s3cret',
    )
    config = parse_config(text, "spec.yaml", tmp_path)
    summary = "\n".join(summarize(config))
    for secret in ("file-s3cret", "inline-s3cret", HASH, HASH.split("$")[-1]):
        assert secret not in summary
        assert all(secret not in warning for warning in config.warnings)
    for expected in (
        "[::]:3129",
        "PROXY protocol v2",
        "*.blob.core.windows.net",
        "client sensor1: networks 10.100.100.1/32, 10.100.0.0/24",
        "tls_names sensor-7.plant-b",
        "user sensor2",
        "10.20.0.0/16",
        "htpasswd",
        "http://proxy.corp.example:8080 (as user ot-egress)",
        "strategy failover",
        "127.0.0.0/8",
        "idle 900s",
        "max_request_bytes 8192",
        "http://127.0.0.1:9128/metrics",
        "level info",
    ):
        assert expected in summary
    # The inline password is accepted, with a warning that names the key, not the value.
    assert config.warnings == (
        "spec.yaml:39: upstream.proxies[1].password: the upstream password is written in the "
        "config file; prefer password_file (a file only the proxy's user can read)",
    )


# --- the benchmark's configuration ------------------------------------------------------------

# /work/shared/bench/templates/connectproxy.yaml with {port}=3128, {origin_port}=9000 and
# {hosts_ip}=127.0.0.1: copied here so the tests do not depend on the benchmark's folder.
BENCH_CONFIG = """\
listen: ["127.0.0.1:3128"]
allow:
  ports: [443, 9000]
  domains: [".azure-devices.net"]
clients:
  - name: bench
    networks: ["127.0.0.0/8"]
destinations:
  hosts: {"bench.azure-devices.net": "127.0.0.1"}
  deny_networks: []
"""


def test_benchmark_template_loads() -> None:
    config = parse_config(BENCH_CONFIG, "bench.yaml", REPO)
    assert config.listen == (Listener("127.0.0.1", 3128),)
    assert config.allow.ports == frozenset({443, 9000})
    assert config.destinations.deny_networks == ()
    assert config.destinations.lookup_host("bench.azure-devices.net") == (
        ipaddress.ip_address("127.0.0.1"),
    )
    # Allowed, but an operator should hear that loopback is now reachable.
    assert config.warnings == (
        "bench.yaml:10: destinations.deny_networks: empty: tunnels may reach loopback, "
        "link-local and multicast addresses",
    )


def test_config_from_mapping_validates_the_same_without_lines() -> None:
    config = config_from_mapping(yaml.safe_load(BENCH_CONFIG), "squid.conf", REPO)
    from_yaml = parse_config(BENCH_CONFIG, "squid.conf", REPO)
    assert replace(config, warnings=()) == replace(from_yaml, warnings=())
    # The same warning, without a line to point at.
    assert config.warnings == (
        "squid.conf: destinations.deny_networks: empty: tunnels may reach loopback, "
        "link-local and multicast addresses",
    )
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"allow": {"ports": ["443"]}}, "squid.conf", REPO)
    error = info.value
    assert (error.file, error.key_path, error.line) == ("squid.conf", "allow.ports[0]", None)
    assert str(error) == "squid.conf: allow.ports[0]: must be a whole number, not a string"


# --- accepted forms ---------------------------------------------------------------------------


def test_empty_file_is_all_defaults_and_admits_nobody() -> None:
    for text in ("", "# only a comment\n", "---\n"):
        config = load(text)
        assert config.clients == () and config.users == ()
        assert config.allow.domains == ()
        assert config.listen == (Listener("::", 3128),)
        assert any("every request will get 407" in w for w in config.warnings)
        assert any("every request will get 403" in w for w in config.warnings)


@pytest.mark.parametrize("spelling", ["off", '"off"', "false", "v1", "v2", "any"])
def test_proxy_protocol_off_is_accepted_even_as_yaml_false(spelling: str) -> None:
    config = load(f'listen: [{{address: "0.0.0.0:3128", proxy_protocol: {spelling}}}]')
    expected = "off" if spelling in ("off", '"off"', "false") else spelling
    assert config.listen[0].proxy_protocol == expected


def test_listen_forms() -> None:
    assert load('listen: "[::1]:3128"').listen == (Listener("::1", 3128),)
    assert load("listen: 127.0.0.1:3128").listen == (Listener("127.0.0.1", 3128),)
    config = load('listen: ["0.0.0.0:3128", "[::]:3128", {address: "localhost:8080"}]')
    assert [listener.address for listener in config.listen] == [
        "0.0.0.0:3128",
        "[::]:3128",
        "localhost:8080",
    ]


def test_networks_accept_single_addresses_and_normalise_ipv4_mapped() -> None:
    config = load(
        """
        clients:
          - name: a
            networks: ["10.1.2.3", "::1", "::ffff:10.0.0.0/104", "::ffff:192.168.1.7"]
        """
    )
    assert config.clients[0].networks == (
        net("10.1.2.3/32"),
        net("::1/128"),
        net("10.0.0.0/8"),
        net("192.168.1.7/32"),
    )


def test_hosts_names_are_normalised_and_addresses_validated() -> None:
    config = load(
        """
        destinations:
          hosts:
            Hub.Azure-Devices.NET.: "10.0.0.4"
            store.blob.core.windows.net: ["10.0.0.5", "::ffff:10.0.0.6", "fd00::7"]
        """
    )
    assert config.destinations.hosts == (
        ("hub.azure-devices.net", (ipaddress.ip_address("10.0.0.4"),)),
        (
            "store.blob.core.windows.net",
            tuple(ipaddress.ip_address(a) for a in ("10.0.0.5", "10.0.0.6", "fd00::7")),
        ),
    )
    assert config.destinations.deny_networks == DEFAULT_DENY_NETWORKS


def test_hosts_entry_in_a_denied_network_is_warned_about() -> None:
    config = load('destinations:\n  hosts:\n    a.example.com: "127.0.0.1"\n')
    assert (
        'test.yaml:3: destinations.hosts["a.example.com"]: 127.0.0.1 is in deny_networks, '
        "so tunnels to a.example.com will be refused" in config.warnings
    )


def test_upstream_password_file_loses_exactly_one_trailing_newline(tmp_path: Path) -> None:
    for written, expected in (("pw\n", "pw"), ("pw\n\n", "pw\n"), ("pw\r\n", "pw"), ("pw", "pw")):
        (tmp_path / "pass").write_text(written, newline="")
        config = load(
            """
            upstream:
              proxies:
                - {url: "http://p.example:3128", username: u, password_file: pass}
            """,
            tmp_path,
        )
        assert config.upstream is not None
        assert config.upstream.proxies[0].password == expected


def test_null_means_default_except_metrics_listen() -> None:
    config = load("upstream:\nallow:\ntimeouts:\nlog:\n  level:\nmetrics:\n")
    assert config.upstream is None
    assert config.allow.ports == frozenset({443})
    assert config.log == Log()
    assert config.metrics == Metrics("127.0.0.1", 9128)
    disabled = load("metrics:\n  listen: null\n").metrics
    assert disabled == Metrics(None, None) and not disabled.enabled


def test_relative_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    (folder / "logs").mkdir(parents=True)
    touch(folder, "server.pem", "server.key")
    (folder / "proxy.yaml").write_text(
        'listen: [{address: "0.0.0.0:3128", tls: {cert_file: server.pem, key_file: server.key}}]\n'
        "log: {access_log: logs/access.log}\n"
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/proxy.yaml"))
    assert config.source == "etc/proxy.yaml"
    assert config.listen[0].tls is not None
    assert config.listen[0].tls.cert_file == folder / "server.pem"
    assert config.log.access_log == str(folder / "logs" / "access.log")


def test_anchors_and_merge_keys_work_and_explicit_keys_override() -> None:
    config = load(
        """
        clients:
          - &plant {name: plant-a, networks: ["10.1.0.0/16"]}
          - <<: *plant
            name: plant-b
        """
    )
    assert [(c.name, c.networks) for c in config.clients] == [
        ("plant-a", (net("10.1.0.0/16"),)),
        ("plant-b", (net("10.1.0.0/16"),)),
    ]


# --- errors: what the operator sees -----------------------------------------------------------

ERRORS = [
    pytest.param(
        "allow:\n  ports: [443]\n   domains: []\n", None, 3, "YAML syntax error", id="yaml-syntax"
    ),
    pytest.param(
        "allow:\n  ports: [443]\n  ports: [8443]\n",
        "allow.ports",
        3,
        "key written twice (first on line 2)",
        id="duplicate-key",
    ),
    pytest.param(
        "allow:\n  ports: [443]\nlog:\x00\n",
        None,
        3,
        "character U+0000 is not allowed in YAML",
        id="unprintable-character",
    ),
    pytest.param("- listen\n", None, 1, "must be a mapping", id="top-level-list"),
    pytest.param(
        "listen: 3128\n", "listen", 1, 'must be "host:port" such as', id="listen-bare-port"
    ),
    pytest.param("alow:\n  ports: [443]\n", "alow", 1, "did you mean 'allow'", id="unknown-top"),
    pytest.param(
        "allow:\n  ports: [443]\n  domain: []\n",
        "allow.domain",
        3,
        "did you mean 'domains'? valid keys here: ports, domains, networks, mode",
        id="unknown-in-allow",
    ),
    pytest.param(
        'listen:\n  - "0.0.0.0:3128"\n  - address: "[::]:3129"\n    tls:\n'
        "      cert_file: server.pem\n      keyfile: server.key\n",
        "listen[1].tls.keyfile",
        6,
        "did you mean 'key_file'",
        id="unknown-three-deep",
    ),
    pytest.param(
        'upstream:\n  proxies:\n    - url: "http://p.example:8080"\n      user: me\n',
        "upstream.proxies[0].user",
        4,
        "did you mean 'username'",
        id="unknown-in-upstream-proxy",
    ),
    pytest.param(
        "timeouts:\n  idle: '900'\n",
        "timeouts.idle",
        2,
        "must be a number of seconds, not a string",
        id="string-for-number",
    ),
    pytest.param(
        "limits:\n  max_connections: yes\n",
        "limits.max_connections",
        2,
        "must be a whole number, not true/false",
        id="bool-for-number",
    ),
    pytest.param(
        "timeouts:\n  connect: 0\n", "timeouts.connect", 2, "positive", id="zero-duration"
    ),
    pytest.param(
        "timeouts:\n  handshake: .inf\n", "timeouts.handshake", 2, "finite", id="infinite-duration"
    ),
    pytest.param(
        "limits:\n  max_request_bytes: 512\n",
        "limits.max_request_bytes",
        2,
        "must be from 1024 to 65536, not 512",
        id="request-bytes-too-small",
    ),
    pytest.param(
        "limits:\n  max_request_bytes: 100000\n",
        "limits.max_request_bytes",
        2,
        "from 1024 to 65536",
        id="request-bytes-too-big",
    ),
    pytest.param(
        "limits:\n  max_connections_per_source: 0\n",
        "limits.max_connections_per_source",
        2,
        "at least 1",
        id="limit-zero",
    ),
    pytest.param(
        "allow:\n  ports:\n    - 443\n    - 70000\n",
        "allow.ports[1]",
        4,
        "from 1 to 65535",
        id="port-out-of-range",
    ),
    pytest.param(
        "allow:\n  ports: 443\n",
        "allow.ports",
        2,
        "must be a list, not a number",
        id="port-not-list",
    ),
    pytest.param("listen: []\n", "listen", 1, "needs at least one listener", id="listen-empty"),
    pytest.param(
        "listen:\n  - proxy_protocol: v1\n",
        "listen[0].address",
        2,
        "is required",
        id="listen-without-address",
    ),
    pytest.param(
        'listen:\n  - "0.0.0.0:3128"\n  - "0.0.0.0:3128"\n',
        "listen[1]",
        3,
        "already listed at listen[0] (line 2)",
        id="listen-duplicate",
    ),
    pytest.param(
        'listen: "::1:3128"\n', "listen", 1, 'goes in brackets, as in "[::]:3128"', id="v6-brackets"
    ),
    pytest.param(
        'listen: "0.0.0.0:65536"\n', "listen", 1, "from 1 to 65535", id="listen-port-range"
    ),
    pytest.param(
        'listen: [{address: "0.0.0.0:3128", proxy_protocol: v3}]\n',
        "listen[0].proxy_protocol",
        1,
        "must be one of off | v1 | v2 | any, not 'v3'",
        id="proxy-protocol-unknown",
    ),
    pytest.param(
        'listen: [{address: "0.0.0.0:3128", proxy_protocol: on}]\n',
        "listen[0].proxy_protocol",
        1,
        "YAML reads unquoted yes/no/on/off as true/false",
        id="proxy-protocol-on",
    ),
    pytest.param(
        'listen:\n  - address: "0.0.0.0:3128"\n    tls:\n      key_file: x\n',
        "listen[0].tls.cert_file",
        3,
        "is required",
        id="tls-without-cert",
    ),
    pytest.param(
        'listen:\n  - address: "0.0.0.0:3128"\n    tls:\n      cert_file: missing.pem\n'
        "      key_file: missing.key\n",
        "listen[0].tls.cert_file",
        4,
        "missing.pem': No such file or directory",
        id="tls-file-missing",
    ),
    pytest.param(
        "allow:\n  domains:\n    - .azure-devices.net\n    - exa_mple.com\n",
        "allow.domains[1]",
        4,
        "'exa_mple.com' is not a domain pattern",
        id="bad-domain-pattern",
    ),
    pytest.param(
        "allow:\n  domains: ['*.*.example.com']\n",
        "allow.domains[0]",
        2,
        "a wildcard may only appear as a leading '*.'",
        id="bad-wildcard",
    ),
    pytest.param(
        'allow:\n  networks: ["10.0.0.1/8"]\n',
        "allow.networks[0]",
        2,
        'has host bits set; the network is "10.0.0.0/8"',
        id="network-host-bits",
    ),
    pytest.param(
        'allow:\n  networks: ["10.0.0.0/33"]\n',
        "allow.networks[0]",
        2,
        "is not an IP address or CIDR network",
        id="network-invalid",
    ),
    pytest.param(
        "allow:\n  mode: enforcing\n",
        "allow.mode",
        2,
        "did you mean 'enforce'?",
        id="mode-unknown",
    ),
    pytest.param(
        "clients:\n  - name: lonely\n",
        "clients[0]",
        2,
        "a client needs networks or tls_names",
        id="client-admits-nothing",
    ),
    pytest.param(
        "clients:\n  - networks: [10.0.0.0/8]\n",
        "clients[0].name",
        2,
        "is required",
        id="client-without-name",
    ),
    pytest.param(
        "clients:\n  - name: '-'\n    networks: [10.0.0.0/8]\n",
        "clients[0].name",
        2,
        "'-' is reserved",
        id="client-name-dash",
    ),
    pytest.param(
        "clients:\n  - name: sensor\n    networks: [10.0.0.0/8]\n"
        "users:\n  - name: sensor\n    password_hash: 'HASH'\n",
        "users[0].name",
        5,
        "'sensor' is already the name of clients[0].name (line 2)",
        id="name-not-unique",
    ),
    pytest.param(
        "users:\n  - name: 'a:b'\n    password_hash: 'HASH'\n",
        "users[0].name",
        2,
        "must not contain ':'",
        id="user-name-colon",
    ),
    pytest.param(
        "users:\n  - name: bob\n    password_hash: hunter2\n",
        "users[0].password_hash",
        3,
        "looks like a plaintext password, which is refused; run `connectproxy hash-password`",
        id="plaintext-password",
    ),
    pytest.param(
        "users:\n  - name: bob\n    password_hash: 'scrypt$n=16384'\n",
        "users[0].password_hash",
        3,
        "connectproxy hash-password",
        id="malformed-hash",
    ),
    pytest.param(
        "users:\n  - name: bob\n    networks: [10.0.0.0/8]\n",
        "users[0]",
        2,
        "user 'bob' has no password_hash and there is no htpasswd_file to hold its password: "
        "add password_hash",
        id="hash-missing-without-htpasswd",
    ),
    pytest.param(
        "htpasswd_file: nowhere/htpasswd\n",
        "htpasswd_file",
        1,
        "No such file or directory",
        id="htpasswd-missing",
    ),
    pytest.param(
        "upstream:\n  strategy: failover\n",
        "upstream.proxies",
        1,
        "is required",
        id="upstream-without-proxies",
    ),
    pytest.param(
        "upstream:\n  proxies: []\n",
        "upstream.proxies",
        2,
        "needs at least one proxy",
        id="upstream-empty-proxies",
    ),
    pytest.param(
        'upstream:\n  proxies:\n    - url: "http://me:s3cret@p.example:8080"\n',
        "upstream.proxies[0].url",
        3,
        "must not contain credentials; set username and password_file",
        id="upstream-userinfo",
    ),
    pytest.param(
        'upstream:\n  proxies:\n    - url: "http://p.example"\n',
        "upstream.proxies[0].url",
        3,
        'needs a port, as in "http://proxy.example:8080"',
        id="upstream-no-port",
    ),
    pytest.param(
        'upstream:\n  proxies:\n    - url: "http://p.example:8080/proxy"\n',
        "upstream.proxies[0].url",
        3,
        "must not have a path",
        id="upstream-path",
    ),
    pytest.param(
        'upstream:\n  proxies:\n    - url: "socks5://p.example:1080"\n',
        "upstream.proxies[0].url",
        3,
        "must start with http:// or https://",
        id="upstream-scheme",
    ),
    pytest.param(
        'upstream:\n  proxies:\n    - url: "http://p.example:8080"\n      username: u\n'
        "      password_file: missing.pass\n",
        "upstream.proxies[0].password_file",
        5,
        "No such file or directory",
        id="upstream-password-file-missing",
    ),
    pytest.param(
        'upstream:\n  proxies:\n    - url: "http://p.example:8080"\n      username: u\n'
        "      password: a\n      password_file: b\n",
        "upstream.proxies[0].password",
        5,
        "either password or password_file, not both",
        id="upstream-password-twice",
    ),
    pytest.param(
        'upstream:\n  proxies:\n    - url: "http://p.example:8080"\n      password: a\n',
        "upstream.proxies[0].username",
        3,
        "is required when a password is given",
        id="upstream-password-without-user",
    ),
    pytest.param(
        'upstream:\n  proxies:\n    - url: "https://p.example:8443"\n'
        "      cert_file: test_config.py\n",
        "upstream.proxies[0].cert_file",
        4,
        "cert_file and key_file go together",
        id="upstream-cert-without-key",
    ),
    pytest.param(
        'upstream:\n  proxies:\n    - url: "http://p.example:8080"\n'
        "      ca_file: test_config.py\n",
        "upstream.proxies[0].ca_file",
        4,
        "only applies to an https:// upstream",
        id="upstream-tls-file-on-http",
    ),
    pytest.param(
        'upstream:\n  proxies: [{url: "http://p.example:8080"}]\n  strategy: random\n',
        "upstream.strategy",
        3,
        "must be one of failover | round_robin",
        id="upstream-strategy",
    ),
    pytest.param(
        "upstream:\n  proxies: [{url: 'http://p.example:8080'}]\n  direct_domains: ['a b']\n",
        "upstream.direct_domains[0]",
        3,
        "is not a domain pattern",
        id="upstream-direct-domain",
    ),
    pytest.param(
        "destinations:\n  deny_networks: ['127.0.0.1/8']\n",
        "destinations.deny_networks[0]",
        2,
        '"127.0.0.0/8"',
        id="deny-network-host-bits",
    ),
    pytest.param(
        "destinations:\n  hosts:\n    a.example.com: 10.0.0.300\n",
        'destinations.hosts["a.example.com"]',
        3,
        "'10.0.0.300' is not an IP address",
        id="hosts-bad-address",
    ),
    pytest.param(
        "destinations:\n  hosts:\n    a.example.com: ['10.0.0.1', 5]\n",
        'destinations.hosts["a.example.com"][1]',
        3,
        "must be a string, not a number",
        id="hosts-address-not-string",
    ),
    pytest.param(
        "destinations:\n  hosts:\n    A.example.com: 10.0.0.1\n    a.example.com: 10.0.0.2\n",
        'destinations.hosts["a.example.com"]',
        4,
        "listed twice",
        id="hosts-duplicate-by-case",
    ),
    pytest.param(
        "destinations:\n  hosts:\n    bad_name.example: 10.0.0.1\n",
        'destinations.hosts["bad_name.example"]',
        3,
        "is not a host name",
        id="hosts-bad-name",
    ),
    pytest.param(
        "destinations:\n  hosts:\n    a.example.com: []\n",
        'destinations.hosts["a.example.com"]',
        3,
        "needs at least one IP address",
        id="hosts-empty",
    ),
    pytest.param(
        'listen: "127.0.0.1:9128"\n',
        "listen",
        1,
        "is also the default metrics address",
        id="listener-on-metrics-port",
    ),
    pytest.param(
        'listen: ["0.0.0.0:3128", "[::1]:9000"]\nmetrics:\n  listen: "[::1]:9000"\n',
        "metrics.listen",
        3,
        "[::1]:9000 is also a proxy listener",
        id="metrics-on-proxy-port",
    ),
    pytest.param(
        "metrics:\n  listen: 9128\n",
        "metrics.listen",
        2,
        'must be "host:port"',
        id="metrics-not-address",
    ),
    pytest.param(
        "log:\n  level: verbose\n",
        "log.level",
        2,
        "must be one of debug | info | warning | error",
        id="log-level",
    ),
    pytest.param(
        "log:\n  access_format: common\n",
        "log.access_format",
        2,
        "must be one of json | squid",
        id="access-format",
    ),
    pytest.param(
        "log:\n  access_log: no/such/folder/access.log\n",
        "log.access_log",
        2,
        "does not exist",
        id="access-log-folder",
    ),
]


@pytest.mark.parametrize(("text", "key_path", "line", "fragment"), ERRORS)
def test_error_names_key_path_and_line(
    text: str, key_path: str | None, line: int | None, fragment: str
) -> None:
    error = fails(text.replace("HASH", HASH), Path(__file__).parent)
    assert (error.file, error.key_path, error.line) == ("test.yaml", key_path, line)
    assert fragment in error.message
    location = "test.yaml" if line is None else f"test.yaml:{line}"
    assert str(error) == location + (f": {key_path}" if key_path else "") + f": {error.message}"


def test_require_client_cert_needs_a_client_ca(tmp_path: Path) -> None:
    touch(tmp_path, "server.pem", "server.key")
    error = fails(
        """
        listen:
          - address: "0.0.0.0:3128"
            tls:
              cert_file: server.pem
              key_file: server.key
              require_client_cert: true
        """,
        tmp_path,
    )
    assert (error.key_path, error.line) == ("listen[0].tls.require_client_cert", 7)
    assert "needs client_ca_file" in error.message


def test_secrets_are_never_repeated_in_errors() -> None:
    for text in (
        "users:\n  - {name: bob, password_hash: 'hunter2'}\n",
        "users:\n  - {name: bob, password_hash: 'scrypt$hunter2'}\n",
        "users:\n  - {name: bob, password_hash: 'pbkdf2-sha256$i=1$hunter2$hunter2'}\n",
        "upstream:\n  proxies: [{url: 'http://bob:hunter2@p.example:8080'}]\n",
        "upstream:\n  proxies: [{url: 'http://p.example:8080?pw=hunter2'}]\n",
    ):
        assert "hunter2" not in str(fails(text))


def test_load_config_reports_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file: No such file or directory"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "latin1.yaml")


def test_config_error_formats_whatever_is_known() -> None:
    assert str(ConfigError("f.yaml", "a.b", 3, "bad")) == "f.yaml:3: a.b: bad"
    assert str(ConfigError("f.yaml", None, 3, "bad")) == "f.yaml:3: bad"
    assert str(ConfigError("f.yaml", "a.b", None, "bad")) == "f.yaml: a.b: bad"
    assert str(ConfigError("f.yaml", None, None, "bad")) == "f.yaml: bad"


# --- no input raises anything but ConfigError -------------------------------------------------

_TOKENS = [
    *TOP_KEYS,
    *PROXY_KEYS,
    "ports", "domains", "networks", "mode", "name", "tls_names", "password_hash", "address",
    "proxy_protocol", "tls", "proxies", "hosts", "deny_networks", "level", "access_log",
    ": ", ":", " ", "  ", "\n", "\n  ", "\n    ", "- ", "[", "]", "{", "}", ", ", '"', "'",
    "443", "0", "-1", "1e9", ".inf", ".nan", "off", "yes", "null", "~", "true", "2024-01-01",
    "&a ", "*a", "<<: ", "!!str ", "!!set ", "!!binary ", "!!omap ", "? ", "|\n", ">\n", "\t",
    "#", "10.0.0.0/8", "10.0.0.1/8", "::ffff:1.2.3.4", "0.0.0.0:3128", "[::]:3129", "/", "..",
    ".azure-devices.net", "*.example.com", "http://u:p@h:1", "https://h:8443", "scrypt$",
    "\x00", "\u2028", "\ufeff", "é",
]  # fmt: skip
yamlish_text = st.lists(st.sampled_from(_TOKENS), max_size=40).map("".join) | st.text(max_size=80)

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_keys = st.sampled_from(_TOKENS[:60]) | st.text(max_size=6)
yamlish_data = st.recursive(
    _scalars | st.sampled_from(_TOKENS),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yamlish_text)
def test_any_text_either_loads_or_raises_config_error(text: str) -> None:
    try:
        parse_config(text, "fuzz.yaml", Path(__file__).parent)
    except ConfigError as error:
        assert str(error).startswith("fuzz.yaml")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(TOP_KEYS), yamlish_data, max_size=4))
def test_any_structure_either_loads_or_raises_config_error(data: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        config_from_mapping(data, "fuzz", Path(__file__).parent)
    with contextlib.suppress(ConfigError):
        parse_config(yaml.safe_dump(data), "fuzz.yaml", Path(__file__).parent)
