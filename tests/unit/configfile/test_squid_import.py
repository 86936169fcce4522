"""squid.conf reading and translation (SPEC section 9).

Each file of the corpus in tests/data/squid/ is translated, fed through the real config loader
(`configfile.config_from_mapping`), and checked field by field, together with the warnings that
say how the result differs from Squid. The reader is tested on its own for Squid's line rules.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
from ipaddress import ip_address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectproxy.config.frozen import replace
from connectproxy.config.model import DEFAULT_DENY_NETWORKS, Config, Listener
from connectproxy.configfile.errors import ConfigError
from connectproxy.configfile.load import config_from_mapping, parse_config
from connectproxy.configfile.squid.access import DEFENDER_ALLOWLIST
from connectproxy.configfile.squid.parse import Directive, SquidConfError, read_squid_conf
from connectproxy.configfile.squid.report import SquidImportError
from connectproxy.configfile.squid.translate import Translation, translate, translate_file
from connectproxy.policy.decide import Credentials, Source, decide
from connectproxy.wire.http import Target, parse_target
from tests.support import DATA as SUPPORT_DATA

DATA = SUPPORT_DATA / "squid"
STOCK = Path("/etc/squid/squid.conf")
INSERT_MARKER = "# INSERT YOUR OWN RULE(S) HERE TO ALLOW ACCESS FROM YOUR CLIENTS\n"
SENSOR1_LINES = "acl sensor1 src 10.100.100.1\nhttp_access allow sensor1\n"

CORPUS = sorted(p.name for p in DATA.glob("*.conf"))


# --- helpers ----------------------------------------------------------------------------------


def load(translation: Translation, path: Path) -> Config:
    """The Config the proxy would run with, through the same validator as a YAML file."""
    return config_from_mapping(translation.mapping, str(path), path.parent)


def imported(path: Path) -> tuple[Translation, Config]:
    """The translation of a squid.conf and the Config it loads as."""
    translation = translate_file(path)
    return translation, load(translation, path)


def translated(name: str) -> tuple[Translation, Config]:
    return imported(DATA / name)


def warnings_at(translation: Translation, file: Path | str, line: int) -> list[str]:
    prefix = f"{file}:{line}: "
    return [w[len(prefix) :] for w in translation.warnings if w.startswith(prefix)]


def assert_warning(translation: Translation, file: Path | str, line: int, *fragments: str) -> None:
    """Some warning at FILE:LINE contains every fragment."""
    found = warnings_at(translation, file, line)
    assert any(all(f in w for f in fragments) for w in found), (fragments, translation.warnings)


def client_networks(config: Config) -> dict[str, list[str]]:
    return {c.name: [str(n) for n in c.networks] for c in config.clients}


def domains(config: Config) -> list[str]:
    return [p.text for p in config.allow.domains]


def is_ipv4_mapped(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return (
        isinstance(network, ipaddress.IPv6Network)
        and network.network_address.ipv4_mapped is not None
    )


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def translate_text(tmp_path: Path, text: str) -> Translation:
    return translate_file(write(tmp_path, "squid.conf", text))


DEFENDER = list(DEFENDER_ALLOWLIST)
LOCALHOST = ["127.0.0.1/32", "::1/128"]


# --- the whole corpus -------------------------------------------------------------------------


@pytest.mark.parametrize("name", CORPUS)
def test_every_corpus_file_loads_and_its_yaml_reparses_to_the_same_config(name: str) -> None:
    path = DATA / name
    translation, config = imported(path)
    text = translation.to_yaml()
    reparsed = parse_config(text, str(path), path.parent)
    # Only the loader's own warnings differ: the YAML ones carry line numbers.
    assert replace(reparsed, warnings=()) == replace(config, warnings=())
    assert text.startswith(f"# connectproxy configuration translated from {path}\n")
    for warning in translation.warnings:
        assert re.match(r"^\S+:\d+: \S", warning), warning
        assert f"#   {warning}\n" in text


# --- the two configs printed in the Defender for IoT guides -----------------------------------


def test_azure_proxy_guide_config() -> None:
    translation, config = translated("azure-proxy.conf")
    file = DATA / "azure-proxy.conf"
    assert config.listen == (Listener("::", 3128),)
    assert config.allow.ports == frozenset({443})
    assert domains(config) == [
        ".azure-devices.net",
        ".blob.core.windows.net",
        ".servicebus.windows.net",
        ".download.microsoft.com",
    ]
    # `http_access allow allowed_http_sites` names no src acl: Squid lets anyone through it.
    # Addresses both lines admit form their own client; both lines allow the same (the line
    # without dstdomain is limited to the other's), so they share the policy default.
    assert client_networks(config) == {"any": ["0.0.0.0/0", "::/0"], "localhost": LOCALHOST}
    assert [(c.name, c.policies) for c in config.clients] == [
        ("localhost", ("default",)),
        ("any", ("default",)),
    ]
    assert list(config.policies) == ["default"]
    assert config.users == () and config.htpasswd_file is None and config.upstream is None
    assert config.timeouts == Config().timeouts and config.metrics == Config().metrics
    assert_warning(translation, file, 11, "no src acl", "ANY source address", "'any'")
    assert_warning(
        translation, file, 11, "comes before `http_access deny CONNECT !SSL_ports`", "ANY port"
    )
    assert_warning(translation, file, 18, "allow localhost", "limits it to the dstdomain acls")
    assert not warnings_at(translation, file, 3)  # `http_port 3128`: every address, as Squid
    assert not warnings_at(translation, file, 5)  # `cache deny all` is accepted silently
    assert len(translation.warnings) == 4


def chaining_checks(translation: Translation, config: Config, file: Path) -> None:
    """What the chaining guide's config (Debian's stock file + sensor1) must translate to."""
    assert config.listen == (Listener("::", 3128),)
    assert client_networks(config) == {"sensor1": ["10.100.100.1/32"], "localhost": LOCALHOST}
    assert config.allow.ports == frozenset({443})
    assert domains(config) == DEFENDER
    assert config.users == () and config.htpasswd_file is None and config.upstream is None
    assert config.timeouts == Config().timeouts and config.metrics == Config().metrics
    assert config.destinations == Config().destinations
    text = file.read_text()
    sensor_line = text.splitlines().index("http_access allow sensor1") + 1
    assert_warning(translation, file, sensor_line, "Defender for IoT allowlist")
    assert_warning(translation, file, sensor_line, "plain-HTTP")
    localnet_line = next(
        n for n, line in enumerate(text.splitlines(), 1) if line.startswith("acl localnet src")
    )
    assert_warning(translation, file, localnet_line, "acl localnet is not used", "not admitted")


def test_chaining_guide_config() -> None:
    translation, config = translated("chaining.conf")
    chaining_checks(translation, config, DATA / "chaining.conf")
    assert_warning(translation, DATA / "chaining.conf", 54, "refresh_pattern ignored", ":57")


def test_chaining_guide_on_this_machines_stock_squid_conf(tmp_path: Path) -> None:
    """The guide's steps on the real stock file when Squid is installed, else on the excerpt."""
    stock = STOCK if STOCK.exists() else DATA / "debian-stock-excerpt.conf"
    text = stock.read_text()
    assert INSERT_MARKER in text
    chaining = write(
        tmp_path,
        "squid.conf",
        text.replace(INSERT_MARKER, INSERT_MARKER + "#\n" + SENSOR1_LINES, 1),
    )
    translation = translate_file(chaining)
    chaining_checks(translation, load(translation, chaining), chaining)


@pytest.mark.parametrize(
    "path",
    [
        DATA / "debian-stock-excerpt.conf",
        STOCK if STOCK.exists() else DATA / "debian-stock-excerpt.conf",
    ],
)
def test_debian_stock_config_admits_localhost_only(path: Path) -> None:
    translation, config = imported(path)
    assert client_networks(config) == {"localhost": LOCALHOST}
    assert config.allow.ports == frozenset({443})
    assert domains(config) == DEFENDER
    assert any("Defender for IoT allowlist" in w for w in translation.warnings)
    assert any("acl localnet is not used" in w for w in translation.warnings)
    # Safe_ports' 1025-65535 and the manager lines change nothing for CONNECT on 443.
    assert not any("Safe_ports" in w or "manager" in w for w in translation.warnings)


def test_localnet_allowed_as_in_squids_own_default() -> None:
    translation, config = translated("localnet-allowed.conf")
    nets = client_networks(config)
    assert list(nets) == ["localnet", "localhost"]
    localnet = [ipaddress.ip_network(n) for n in nets["localnet"]]
    # 0.0.0.1-0.255.255.255 is a range: summarised into CIDR blocks, without 0.0.0.0 itself.
    inside = ["0.0.0.1", "0.255.255.255", "10.1.2.3", "100.64.0.1", "172.31.0.1", "fe80::1"]
    for address in inside:
        assert any(ipaddress.ip_address(address) in n for n in localnet), address
    for address in ["0.0.0.0", "1.0.0.0", "100.128.0.1", "8.8.8.8", "2001:db8::1"]:
        assert not any(ipaddress.ip_address(address) in n for n in localnet), address
    assert not any("not used" in w for w in translation.warnings)


# --- the reader's features through the translator ---------------------------------------------


def test_peer_with_password_auth() -> None:
    translation, config = translated("peer.conf")
    file = DATA / "peer.conf"
    assert config.clients == ()
    assert config.htpasswd_file == (DATA / "passwords").absolute()
    assert config.upstream is not None
    (proxy,) = config.upstream.proxies
    assert (proxy.url, proxy.host, proxy.port) == (
        "http://proxy.corp.example:8080",
        "proxy.corp.example",
        8080,
    )
    assert (proxy.username, proxy.password) == ("ot-egress", "s3cret")
    assert config.upstream.direct_domains == ()
    assert domains(config) == DEFENDER
    assert config.allow.ports == frozenset({443})
    assert (config.timeouts.connect, config.timeouts.idle) == (30, 3600)
    assert_warning(translation, file, 5, "relative path 'passwords'")
    assert_warning(translation, file, 6, "realm", '"connectproxy"')
    assert_warning(translation, file, 7, "auth_param basic children ignored")
    assert_warning(translation, file, 19, "password is written inline")
    # `allow CONNECT ...`: no plain-HTTP difference; never_direct allow all: no chaining note.
    assert not any("plain-HTTP" in w or "never_direct" in w for w in translation.warnings)
    assert not any("s3cret" in w for w in translation.warnings)


def test_proxy_header_listener() -> None:
    translation, config = translated("proxy-header.conf")
    file = DATA / "proxy-header.conf"
    assert config.listen == (
        Listener("::", 3128, proxy_protocol="any"),
        Listener("127.0.0.1", 3129),
    )
    assert client_networks(config) == {"sensors": ["10.20.0.0/16"]}
    assert_warning(translation, file, 5, "proxy_protocol_access ignored", "load balancer")
    assert not warnings_at(translation, file, 4)  # an explicit address, translated as it is


def test_include_with_glob_in_sorted_order() -> None:
    translation, config = translated("include-main.conf")
    assert client_networks(config) == {"sensors": ["10.30.0.0/24"]}
    assert domains(config) == [".azure-devices.net", ".servicebus.windows.net"]
    assert config.allow.ports == frozenset({443})
    # Warnings name the included file and its own line numbers.
    assert_warning(translation, DATA / "conf.d" / "20-access.conf", 2, "plain-HTTP")
    assert not any("never_read" in w for w in translation.warnings)


def test_continuations() -> None:
    translation, config = translated("continuations.conf")
    assert config.listen == (Listener("::", 3128),)
    assert client_networks(config) == {"sensors": ["10.40.0.1/32", "10.40.0.2/31"]}
    assert domains(config) == [".azure-devices.net", "download.microsoft.com"]
    file = DATA / "continuations.conf"
    assert_warning(translation, file, 13, "allow sensors sites", "plain-HTTP")  # first line
    assert_warning(translation, file, 16, "realm")


def test_acl_values_from_files() -> None:
    translation, config = translated("acl-file.conf")
    assert client_networks(config) == {"sensors": ["10.50.0.10/31", "10.50.1.0/24"]}
    assert domains(config) == [
        ".azure-devices.net",
        ".blob.core.windows.net",
        "download.microsoft.com",
    ]
    assert len(translation.warnings) == 1  # the plain-HTTP note


# --- one corpus file per kind of difference ---------------------------------------------------


def test_ignored_directives_grouped_by_name() -> None:
    translation, config = translated("ignored-directives.conf")
    file = DATA / "ignored-directives.conf"
    assert_warning(translation, file, 3, "directive visible_hostname ignored")
    assert_warning(translation, file, 4, "directive cache_mem ignored", "no cache")
    assert_warning(translation, file, 5, "directive refresh_pattern ignored", f"also at {file}:6")
    assert not warnings_at(translation, file, 6)
    assert_warning(translation, file, 7, "directive pinger_enable ignored")
    assert_warning(translation, file, 8, "`cache` ignored")
    assert_warning(translation, file, 9, "no `http_access deny CONNECT !SSL_ports`", "ANY port")
    assert client_networks(config) == {"localhost": LOCALHOST}


def test_unsupported_acl_types() -> None:
    translation, config = translated("unsupported-acl.conf")
    file = DATA / "unsupported-acl.conf"
    assert_warning(translation, file, 5, "type time is not supported")
    assert_warning(translation, file, 6, "type url_regex is not supported")
    assert_warning(translation, file, 9, "NOT enforced", "bad_urls")
    assert_warning(translation, file, 10, "line ignored", "office_hours", "stricter")
    assert client_networks(config) == {"sensors": ["10.60.0.0/24"]}


def test_deny_lines_are_subtracted() -> None:
    translation, config = translated("deny-rules.conf")
    file = DATA / "deny-rules.conf"
    (localnet,) = config.clients
    inside = [
        ipaddress.ip_address(a) for a in ("10.0.0.1", "10.0.65.255", "10.0.67.0", "10.255.0.1")
    ]
    outside = [ipaddress.ip_address(a) for a in ("10.0.66.0", "10.0.66.255", "11.0.0.1")]
    assert all(any(a in n for n in localnet.networks) for a in inside)
    assert not any(a in n for a in outside for n in localnet.networks)
    # `deny quarantine` is exact: no warning. `deny sensor9 storage` is applied to everyone.
    assert not warnings_at(translation, file, 12)
    assert_warning(translation, file, 13, "refuses only requests matching all its acls", "stricter")
    # Line 15 loses .blob.core.windows.net through line 13's stricter deny, warned there only.
    assert not any("blob" in w for w in warnings_at(translation, file, 15))
    # `deny !sites` limits the hosts, so the Defender allowlist is not used.
    assert domains(config) == [".azure-devices.net", "download.microsoft.com"]


def test_exceptions_inside_an_allowed_domain() -> None:
    translation, config = translated("deny-domains.conf")
    file = DATA / "deny-domains.conf"
    # No policy can refuse evil.azure-devices.net inside .azure-devices.net: the stricter side
    # is the domain itself only. download.microsoft.com is refused exactly, so not warned.
    assert domains(config) == ["azure-devices.net"]
    assert client_networks(config) == {"localnet": ["192.168.0.0/16"]}
    assert_warning(
        translation, file, 11, "evil.azure-devices.net", "only azure-devices.net itself", "stricter"
    )
    assert not any("download.microsoft.com" in w for w in warnings_at(translation, file, 11))


def test_implicit_final_allow() -> None:
    translation, config = translated("implicit-allow.conf")
    file = DATA / "implicit-allow.conf"
    (client,) = config.clients
    assert client.name == "any"
    assert ipaddress.ip_network("::/0") in client.networks
    addresses = [ipaddress.ip_address(a) for a in ("10.65.255.255", "10.67.0.0", "192.0.2.1")]
    assert all(any(a in n for n in client.networks) for a in addresses)
    assert not any(ipaddress.ip_address("10.66.1.1") in n for n in client.networks)
    assert_warning(translation, file, 6, "implicit final", "the last http_access line is a deny")
    assert_warning(translation, file, 6, "ANY source address")


def test_each_client_keeps_its_own_sites() -> None:
    translation, config = translated("per-client-sites.conf")
    file = DATA / "per-client-sites.conf"
    # Each allow line is a policy bound to its own clients: nobody reaches the other's sites.
    assert domains(config) == [".azure-devices.net"]
    assert [p.text for p in config.policies["line-10"].domains] == ["download.microsoft.com"]
    assert [(c.name, c.policies) for c in config.clients] == [
        ("plant_a", ("default",)),
        ("plant_b", ("line-10",)),
    ]
    assert not any("now also reaches" in w for w in translation.warnings)
    assert not any("wider" in w for w in warnings_at(translation, file, 9))


def test_named_users_and_source_limits_are_reported() -> None:
    translation, config = translated("auth-users.conf")
    file = DATA / "auth-users.conf"
    # Users of htpasswd_file are admitted from any address: a line limited to some sources
    # admits nobody rather than more than Squid did.
    assert config.clients == ()
    assert config.htpasswd_file is None
    assert_warning(translation, file, 9, "only from plant", "nobody is admitted")


def test_lines_naming_users_bind_those_users_to_their_own_policies() -> None:
    """`proxy_auth alice` lines become policies bound to users entries without password_hash:
    each user reaches what its own lines allow and nothing else, and the file's other users
    reach nothing, as in Squid."""
    translation, config = translated("auth-named.conf")
    file = DATA / "auth-named.conf"
    assert config.htpasswd_file == DATA / "passwords"
    assert [(u.name, u.password_hash, u.policies) for u in config.users] == [
        ("alice", None, ("line-11",)),
        ("bob", None, ("line-12",)),
        ("sensor2", None, ("line-12",)),
    ]
    assert [p.text for p in config.policies["line-11"].domains] == [".azure-devices.net"]
    assert [p.text for p in config.policies["line-12"].domains] == ["download.microsoft.com"]
    assert config.allow.domains == ()  # the file's other users: nothing
    assert_warning(translation, file, 4, "every proxy_auth allow line names its users")
    hub = parse_target("a.azure-devices.net:443")
    updates = parse_target("download.microsoft.com:443")
    anywhere = Source(ip_address("192.0.2.1"), 0)

    def allowed(user: str, target: Target) -> bool:
        return decide(target, anywhere, Credentials(user, True), config).allowed

    assert allowed("alice", hub) and not allowed("alice", updates)
    assert allowed("sensor2", updates) and not allowed("sensor2", hub)
    assert not allowed("someone-else", hub) and not allowed("someone-else", updates)


def test_a_named_user_also_gets_the_lines_admitting_any_user(tmp_path: Path) -> None:
    conf = (
        (DATA / "auth-named.conf")
        .read_text()
        .replace("acl vendor proxy_auth sensor2 bob", "acl vendor proxy_auth REQUIRED")
    )
    shutil.copy(DATA / "passwords", tmp_path / "passwords")
    (tmp_path / "required.conf").write_text(conf)
    translation = translate_file(tmp_path / "required.conf")
    config = load(translation, tmp_path / "required.conf")
    assert [(u.name, u.policies) for u in config.users] == [("alice", ("line-11", "default"))]
    assert [p.text for p in config.allow.domains] == ["download.microsoft.com"]


def test_deny_not_authenticated_makes_later_lines_need_a_password() -> None:
    translation, config = translated("auth-deny.conf")
    assert config.clients == ()
    assert config.htpasswd_file is None
    file = DATA / "auth-deny.conf"
    assert_warning(translation, file, 9, "only from localnet", "nobody is admitted", "stricter")


def test_unusable_auth_helper_admits_nobody_by_password() -> None:
    translation, config = translated("auth-helper.conf")
    file = DATA / "auth-helper.conf"
    assert config.htpasswd_file is None
    # `allow authenticated` comes first: Squid answers 407 to localhost without a password
    # there, so `allow localhost` never admits anyone, here as in Squid.
    assert client_networks(config) == {}
    assert_warning(translation, file, 10, "asks a client without a password", "auth-helper.conf:9")
    assert_warning(translation, file, 4, "only basic_ncsa_auth FILE")
    assert_warning(translation, file, 5, "auth_param digest ignored")
    assert_warning(translation, file, 9, "nobody is admitted by password", "stricter")


def test_a_password_asked_for_some_hosts_leaves_the_others_to_later_lines(
    tmp_path: Path,
) -> None:
    """`allow updates admins` asks for a password only on requests to `updates`: the sensors'
    own line below it keeps its hosts, exactly, and the administrators keep theirs."""
    shutil.copy(DATA / "passwords", tmp_path / "passwords")
    path = tmp_path / "auth-for-some-sites.conf"
    shutil.copy(DATA / "auth-for-some-sites.conf", path)
    translation, config = imported(path)
    sensor = Source(ip_address("10.1.2.3"), 0)
    hub, updates = (
        parse_target("x.azure-devices.net:443"),
        parse_target("download.microsoft.com:443"),
    )
    assert decide(hub, sensor, None, config).allowed
    assert not decide(updates, sensor, None, config).allowed
    assert decide(updates, sensor, Credentials("alice", True), config).allowed
    assert not any("asks a client" in w for w in warnings_at(translation, path, 13))
    # A sensor that sends a password is admitted as that user (credentials decide alone), where
    # Squid would still let it through its own line: stricter, and said on that line.
    assert not decide(hub, sensor, Credentials("alice", True), config).allowed
    assert_warning(translation, path, 13, "sends a password", "stricter than Squid")


def test_a_password_asked_for_the_same_hosts_is_taken_away_and_warned(tmp_path: Path) -> None:
    """The same config with `allow azure admins` first: Squid answers the sensors 407 for the
    IoT Hub, so their line lets nothing through without a password."""
    shutil.copy(DATA / "passwords", tmp_path / "passwords")
    text = (DATA / "auth-for-some-sites.conf").read_text()
    path = write(tmp_path, "squid.conf", text.replace("allow updates admins", "allow azure admins"))
    translation, config = imported(path)
    sensor = Source(ip_address("10.1.2.3"), 0)
    assert not decide(parse_target("x.azure-devices.net:443"), sensor, None, config).allowed
    assert_warning(
        translation,
        path,
        13,
        "asks a client without a password",
        "squid.conf:12",
        "every request this line allows",
    )
    # And the line says what becomes of a sensor that answers with a password.
    assert_warning(translation, path, 13, "then sends a password", "stricter than Squid")


def test_a_password_asked_of_some_sources_for_some_hosts_is_stricter_and_warned(
    tmp_path: Path,
) -> None:
    """`allow plant updates admins` asks only the plant for a password, only for `updates`: a
    line for sensors inside and outside the plant cannot keep both exactly, so it loses
    `updates` for all of them (stricter than Squid, warned)."""
    shutil.copy(DATA / "passwords", tmp_path / "passwords")
    text = (DATA / "auth-for-some-sites.conf").read_text()
    text = text.replace(
        "acl sensors src 10.1.0.0/16", "acl sensors src 10.1.0.0/16\nacl plant src 10.1.0.0/24"
    )
    text = text.replace(
        "acl azure dstdomain .azure-devices.net",
        "acl azure dstdomain .azure-devices.net download.microsoft.com",
    )
    path = write(
        tmp_path, "squid.conf", text.replace("allow updates admins", "allow plant updates admins")
    )
    translation, config = imported(path)
    outside_plant = Source(ip_address("10.1.9.9"), 0)
    assert decide(parse_target("x.azure-devices.net:443"), outside_plant, None, config).allowed
    assert not decide(
        parse_target("download.microsoft.com:443"), outside_plant, None, config
    ).allowed
    assert_warning(translation, path, 14, "hosts download.microsoft.com", "stricter than Squid")


def test_a_deny_whose_sources_hold_for_the_whole_allow_line_is_exact(tmp_path: Path) -> None:
    """`deny sensors updates` names two kinds of acl, but for `allow sensors sites` the source
    always matches, so only the hosts decide: taking `updates` away is exactly Squid's answer."""
    path = write(
        tmp_path,
        "squid.conf",
        "acl sensors src 10.1.0.0/16\n"
        "acl updates dstdomain download.microsoft.com\n"
        "acl sites dstdomain .azure-devices.net download.microsoft.com\n"
        "http_access deny sensors updates\n"
        "http_access allow sensors sites\n"
        "http_access deny all\n",
    )
    translation, config = imported(path)
    assert domains(config) == [".azure-devices.net"]
    assert not warnings_at(translation, path, 4)
    assert not any("stricter" in w for w in warnings_at(translation, path, 5))


def test_a_src_acl_named_like_a_user_gives_a_client_of_another_name(tmp_path: Path) -> None:
    """Squid keeps acl names and user names apart; connectproxy's clients and users share one
    namespace, so the client takes the next free name instead of making a config that does not
    load."""
    shutil.copy(DATA / "passwords", tmp_path / "passwords")
    path = write(
        tmp_path,
        "squid.conf",
        "auth_param basic program /usr/lib/squid/basic_ncsa_auth passwords\n"
        "acl alice src 10.1.0.0/16\n"
        "acl admins proxy_auth alice\n"
        "acl azure dstdomain .azure-devices.net\n"
        "acl updates dstdomain download.microsoft.com\n"
        "http_access allow alice azure\n"
        "http_access allow admins updates\n"
        "http_access deny all\n",
    )
    _, config = imported(path)
    assert [c.name for c in config.clients] == ["alice-2"]
    assert [u.name for u in config.users] == ["alice"]
    sensor = Source(ip_address("10.1.2.3"), 0)
    assert decide(parse_target("x.azure-devices.net:443"), sensor, None, config).client == "alice-2"


def test_a_deny_with_an_exception_leaves_the_excepted_hosts_to_a_later_line(
    tmp_path: Path,
) -> None:
    """`deny sensors azure !hub` refuses the Azure hosts but the hub's; for `allow sensors
    azure` that leaves exactly the hub (it used to leave nothing, and the line was lost)."""
    path = write(
        tmp_path,
        "squid.conf",
        "acl sensors src 10.1.0.0/16\n"
        "acl azure dstdomain .azure-devices.net .servicebus.windows.net\n"
        "acl hub dstdomain plant-hub.azure-devices.net\n"
        "http_access deny sensors azure !hub\n"
        "http_access allow sensors azure\n"
        "http_access deny all\n",
    )
    translation, config = imported(path)
    assert domains(config) == ["plant-hub.azure-devices.net"]
    sensor = Source(ip_address("10.1.2.3"), 0)
    assert decide(parse_target("plant-hub.azure-devices.net:443"), sensor, None, config).allowed
    assert not decide(parse_target("other.azure-devices.net:443"), sensor, None, config).allowed
    assert not decide(parse_target("x.servicebus.windows.net:443"), sensor, None, config).allowed
    assert not any("stricter" in w for w in warnings_at(translation, path, 5))


def test_a_deny_covering_the_whole_allow_line_leaves_nothing_and_says_so(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "squid.conf",
        "acl sensors src 10.1.0.0/16\n"
        "acl plant src 10.1.2.0/24\n"
        "acl sites dstdomain .azure-devices.net\n"
        "http_access deny sensors sites\n"
        "http_access allow plant sites\n"
        "http_access deny all\n",
    )
    translation = translate_file(path)
    assert translation.mapping["clients"] == []
    assert_warning(translation, path, 5, "squid.conf:4", "refuses every request this line allows")


def test_destination_acls_become_deny_networks() -> None:
    translation, config = translated("destinations.conf")
    extra = ipaddress.ip_network("10.10.0.0/16")
    # The defaults are written out (setting the key replaces them), in their plain forms:
    # IPv4-mapped addresses are checked as IPv4 anyway.
    plain = [n for n in DEFAULT_DENY_NETWORKS if not is_ipv4_mapped(n)]
    assert config.destinations.deny_networks == (*plain, extra)
    # deny to_localhost is already covered; deny ot_core has no allow line above it: exact.
    assert not any("deny_networks" in w for w in translation.warnings)


def test_ports_small_ranges_listed_large_ones_narrowed() -> None:
    translation, config = translated("ports.conf")
    file = DATA / "ports.conf"
    # sensors keep their MQTT ports, localhost its port 443: each line its own policy.
    assert config.allow.ports == frozenset({5671, 5672, 8883})
    assert config.policies["line-9"].ports == frozenset({443})
    assert_warning(translation, file, 9, "Squid allows 64512 ports here", "only 443")
    assert not any("now also reaches" in w for w in translation.warnings)


def test_several_listeners() -> None:
    translation, config = translated("listeners.conf")
    file = DATA / "listeners.conf"
    assert config.listen == (
        Listener("::", 3128),
        Listener("10.0.0.1", 3129),
        Listener("::1", 3131),
    )
    assert_warning(translation, file, 3, "options ignored: name=internal tcpkeepalive=60,30,3")
    assert_warning(translation, file, 4, "intercept mode", "not translated")
    assert not warnings_at(translation, file, 5)


def test_ssl_bump_is_not_translated(tmp_path: Path) -> None:
    translation = translate_text(tmp_path, "http_port 3128 ssl-bump\nhttp_access allow localhost\n")
    assert translation.mapping["listen"] == ["[::]:3128"]
    assert_warning(translation, tmp_path / "squid.conf", 1, "ssl-bump ignored")


def test_parents_round_robin_and_what_cannot_chain() -> None:
    translation, config = translated("peers.conf")
    file = DATA / "peers.conf"
    assert config.upstream is not None
    assert [p.url for p in config.upstream.proxies] == [
        "http://proxy-a.corp.example:3128",
        "https://proxy-b.corp.example:3129",
    ]
    assert all(p.username is None and p.password is None for p in config.upstream.proxies)
    assert config.upstream.strategy == "round_robin"
    assert_warning(translation, file, 4, "no `never_direct allow all`")
    assert_warning(translation, file, 5, "login=PASSTHRU ignored")
    assert_warning(translation, file, 6, "type sibling ignored")


def test_no_http_access_lines_admit_nobody() -> None:
    translation, config = translated("no-rules.conf")
    assert config.clients == () and config.users == () and config.htpasswd_file is None
    assert_warning(translation, DATA / "no-rules.conf", 2, "no http_access lines")


def test_timeouts() -> None:
    _, config = translated("timeouts.conf")
    assert (config.timeouts.connect, config.timeouts.idle) == (45, 120)
    assert config.timeouts.handshake == Config().timeouts.handshake


# --- smaller cases, written on the fly ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("45", 45),
        ("30 seconds", 30),
        ("1 second", 1),
        ("2 minutes", 120),
        ("1.5 hours", 5400),
        ("1 day", 86400),
        ("500 milliseconds", 0.5),
    ],
)
def test_squid_time_units(tmp_path: Path, value: str, seconds: float) -> None:
    translation = translate_text(tmp_path, f"connect_timeout {value}\nread_timeout {value}\n")
    assert translation.mapping["timeouts"] == {"connect": seconds, "idle": seconds}
    bare = " " not in value  # Squid 5 refuses a number without a unit; older releases did not
    assert any("no time unit: taken as seconds" in w for w in translation.warnings) == bare


def test_no_http_port_listens_on_3128(tmp_path: Path) -> None:
    translation = translate_text(tmp_path, "http_access allow localhost\n")
    assert translation.mapping["listen"] == ["[::]:3128"]
    assert not any("IPv6" in w for w in translation.warnings)  # as Squid: no difference


def test_source_value_forms(tmp_path: Path) -> None:
    translation = translate_text(
        tmp_path,
        "acl a src 192.0.2.0/255.255.255.0 198.51.100.7/24 203.0.113.10-203.0.113.13\n"
        "acl a src 10.0.0.0-10.0.3.255/24 sensor.plant.example 2001:db8::/64\n"
        "http_access allow a\n",
    )
    (client,) = translation.mapping["clients"]
    assert client["networks"] == [
        "10.0.0.0/22",
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.10/31",
        "203.0.113.12/31",
        "2001:db8::/64",
    ]
    assert_warning(translation, tmp_path / "squid.conf", 2, "'sensor.plant.example' skipped")


def test_dstdomain_values(tmp_path: Path) -> None:
    translation = translate_text(
        tmp_path,
        "acl s dstdomain -n .Example.COM exact.example.org. 192.0.2.1 *.wild.example bad_name\n"
        "http_access allow s\n",
    )
    file = tmp_path / "squid.conf"
    # Squid never matches a value with a trailing dot: skipped, not silently widened.
    assert translation.mapping["allow"]["domains"] == [".example.com"]
    assert_warning(translation, file, 1, "'exact.example.org.' skipped", "never matches")
    assert_warning(translation, file, 1, "'192.0.2.1' skipped", "IP-address targets")
    assert_warning(translation, file, 1, "'*.wild.example' skipped", "no wildcards")
    assert_warning(translation, file, 1, "'bad_name' skipped")


def test_two_src_acls_on_one_line_intersect(tmp_path: Path) -> None:
    translation = translate_text(
        tmp_path,
        "acl plant src 10.1.0.0/16\nacl sensors src 10.1.2.0/24 10.9.0.0/16\n"
        "acl not_this src 10.1.2.128/25\nhttp_access allow plant sensors !not_this\n",
    )
    assert translation.mapping["clients"] == [
        {"name": "plant-sensors-not-not_this", "networks": ["10.1.2.0/25"]}
    ]


def test_lines_that_never_match_connect_are_dropped(tmp_path: Path) -> None:
    translation = translate_text(
        tmp_path,
        "acl sensors src 10.1.0.0/16\nacl get method GET\n"
        "http_access allow sensors get\nhttp_access allow sensors !CONNECT\n"
        "http_access allow sensors !all\nhttp_access allow localhost manager\n"
        "http_access deny all\n",
    )
    assert translation.mapping["clients"] == []


def test_allow_all_admits_everyone_and_ends_the_list(tmp_path: Path) -> None:
    translation = translate_text(
        tmp_path, "acl x src 10.0.0.0/8\nhttp_access allow all\nhttp_access allow x\n"
    )
    assert translation.mapping["clients"] == [{"name": "any", "networks": ["0.0.0.0/0", "::/0"]}]
    assert_warning(translation, tmp_path / "squid.conf", 3, "never reached", "allow all")


def test_sensor_lines_appended_after_deny_all_are_pointed_at(tmp_path: Path) -> None:
    text = (DATA / "debian-stock-excerpt.conf").read_text() + SENSOR1_LINES
    translation = translate_text(tmp_path, text)
    assert translation.mapping["clients"] == [
        {"name": "localhost", "networks": ["127.0.0.1", "::1"]}
    ]
    line = len(text.splitlines())
    assert_warning(translation, tmp_path / "squid.conf", line, "never reached", "deny all")


def test_squid3_definitions_of_built_in_acls(tmp_path: Path) -> None:
    translation = translate_text(
        tmp_path,
        "acl manager proto cache_object\nacl localhost src 127.0.0.1/32 ::1\n"
        "acl to_localhost dst 127.0.0.0/8 0.0.0.0/32 ::1\nacl all src all\n"
        "acl CONNECT method CONNECT\nhttp_access allow localhost manager\n"
        "http_access deny manager\nhttp_access deny to_localhost\nhttp_access allow localhost\n",
    )
    assert translation.mapping["clients"] == [
        {"name": "localhost", "networks": ["127.0.0.1", "::1"]}
    ]
    assert_warning(translation, tmp_path / "squid.conf", 1, "acl manager is built in")
    assert "destinations" not in translation.mapping


def test_allow_without_acls_is_skipped(tmp_path: Path) -> None:
    translation = translate_text(tmp_path, "http_access allow\nhttp_access allow localhost\n")
    assert_warning(translation, tmp_path / "squid.conf", 1, "without ACLs skipped")


def test_negated_dst_in_an_allow_line_is_refused_for_everyone(tmp_path: Path) -> None:
    translation = translate_text(
        tmp_path,
        "acl core dst 10.10.0.0/16\nacl lan src 10.0.0.0/8\n"
        "http_access allow lan !core\nhttp_access allow localhost\n",
    )
    assert translation.mapping["destinations"]["deny_networks"][-1] == "10.10.0.0/16"
    assert_warning(translation, tmp_path / "squid.conf", 3, "10.10.0.0/16", "for every client")


def test_relative_tls_files_of_a_parent_are_anchored(tmp_path: Path) -> None:
    translation = translate_text(
        tmp_path,
        "cache_peer up.example parent 8443 0 tls tls-cafile=ca.pem weight=2\n"
        "never_direct allow all\nhttp_access allow localhost\n",
    )
    (proxy,) = translation.mapping["upstream"]["proxies"]
    assert proxy == {
        "url": "https://up.example:8443",
        "ca_file": str((tmp_path / "ca.pem").absolute()),
    }
    assert_warning(translation, tmp_path / "squid.conf", 1, "options ignored: weight")


def test_never_direct_without_a_parent(tmp_path: Path) -> None:
    translation = translate_text(tmp_path, "never_direct allow all\nhttp_access allow localhost\n")
    assert "upstream" not in translation.mapping
    assert_warning(translation, tmp_path / "squid.conf", 1, "without a cache_peer parent")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http_access allow nosuchacl\n", "1: http_access uses acl 'nosuchacl'"),
        ("http_access permit all\n", "1: http_access must be followed by allow or deny"),
        ("acl x src 10.0.0.1\nacl x port 443\n", "2: acl x is already defined with type src"),
        ("acl onlyname\n", "1: acl needs a name and a type"),
        ("if ${process_number} = 1\nhttp_port 3128\nendif\n", "1: conditional configuration"),
        ("http_port proxy.example:3128\n", "1: http_port 'proxy.example:3128'"),
        ("http_port 99999\n", "1: http_port '99999'"),
        ("http_port 3128 intercept\n", "no http_port can be translated"),
        ("connect_timeout 5 parsecs\n", "1: connect_timeout: unknown time unit 'parsecs'"),
        ("read_timeout 0 seconds\n", "1: read_timeout must be a positive time"),
        ("read_timeout soon\n", "1: read_timeout: 'soon' is not a number"),
        ("cache_peer up.example parent\n", "1: cache_peer needs"),
        ("cache_peer up.example parent http 0\n", "1: cache_peer port 'http'"),
        ("auth_param basic\n", "1: auth_param needs a scheme and a parameter"),
    ],
)
def test_untranslatable_configs(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SquidImportError, match=re.escape(message)):
        translate_text(tmp_path, text)


def test_reader_errors_become_import_errors(tmp_path: Path) -> None:
    with pytest.raises(SquidImportError, match="cannot read the file"):
        translate_file(tmp_path / "missing.conf")


def test_translate_takes_directives_directly() -> None:
    directives = [
        Directive("acl", ("sensors", "src", "10.9.0.0/16"), "memory.conf", 1),
        Directive("http_access", ("allow", "sensors"), "memory.conf", 2),
    ]
    translation = translate(directives, "memory.conf")
    assert translation.mapping["clients"] == [{"name": "sensors", "networks": ["10.9.0.0/16"]}]
    assert all(w.startswith("memory.conf:2: ") for w in translation.warnings)


def test_config_error_for_a_translation_that_names_a_missing_file(tmp_path: Path) -> None:
    """translate_file does not require the password file to exist; the loader does."""
    path = write(
        tmp_path,
        "squid.conf",
        "auth_param basic program /usr/lib/squid/basic_ncsa_auth /nonexistent/passwd\n"
        "acl a proxy_auth REQUIRED\nhttp_access allow a\n",
    )
    translation = translate_file(path)
    assert translation.mapping["htpasswd_file"] == "/nonexistent/passwd"
    with pytest.raises(ConfigError, match="htpasswd_file"):
        load(translation, path)


@settings(max_examples=60, deadline=None)
@given(
    allowed=st.lists(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32)), min_size=1, max_size=4
    ),
    denied=st.lists(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32)), min_size=1, max_size=4
    ),
    probes=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20),
)
def test_a_src_deny_before_an_allow_is_exact(
    allowed: list[tuple[int, int]], denied: list[tuple[int, int]], probes: list[int]
) -> None:
    """`deny B` then `allow A` admits exactly the addresses in A and not in B, as Squid does."""

    def networks(pairs: list[tuple[int, int]]) -> list[ipaddress.IPv4Network]:
        return [ipaddress.IPv4Network((address, prefix), strict=False) for address, prefix in pairs]

    allow_nets, deny_nets = networks(allowed), networks(denied)
    directives = [
        Directive("acl", ("a", "src", *map(str, allow_nets)), "t.conf", 1),
        Directive("acl", ("b", "src", *map(str, deny_nets)), "t.conf", 2),
        Directive("http_access", ("deny", "b"), "t.conf", 3),
        Directive("http_access", ("allow", "a"), "t.conf", 4),
    ]
    clients = translate(directives, "t.conf").mapping["clients"]
    admitted = [ipaddress.ip_network(n) for c in clients for n in c["networks"]]
    extra_probes = [int(n.network_address) for n in allow_nets + deny_nets]
    for value in probes + extra_probes:
        address = ipaddress.IPv4Address(value)
        expected = any(address in n for n in allow_nets) and not any(
            address in n for n in deny_nets
        )
        assert any(address in n for n in admitted) == expected, address


# --- the reader ---------------------------------------------------------------------------------


def test_reader_comments_quotes_and_continuations(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "squid.conf",
        "  # a comment\n"
        "\n"
        "acl localnet src 10.0.0.0/8\t# trailing comment\n"
        'auth_param basic realm "Plant \\"B\\" proxy"   # comment\n'
        "acl x dstdomain a.example#not-a-comment\n"
        "http_access allow \\\n"
        "\n"
        "   # skipped inside a continuation\n"
        "    localnet\n"
        "refresh_pattern -i (/cgi-bin/|\\?) 0\t0%\t0\n"
        "http_port 3128 \\",
    )
    assert read_squid_conf(path) == [
        Directive("acl", ("localnet", "src", "10.0.0.0/8"), str(path), 3),
        Directive("auth_param", ("basic", "realm", 'Plant "B" proxy'), str(path), 4),
        Directive("acl", ("x", "dstdomain", "a.example#not-a-comment"), str(path), 5),
        Directive("http_access", ("allow", "localnet"), str(path), 6),
        Directive("refresh_pattern", ("-i", "(/cgi-bin/|\\?)", "0", "0%", "0"), str(path), 10),
        Directive("http_port", ("3128",), str(path), 11),
    ]
    assert read_squid_conf(path)[0].where == f"{path}:3"


def test_reader_joins_continuations_without_adding_a_space(tmp_path: Path) -> None:
    path = write(tmp_path, "squid.conf", "visible_hostname proxy\\\n   .example\n")
    assert read_squid_conf(path)[0].args == ("proxy.example",)


def test_reader_unterminated_quote(tmp_path: Path) -> None:
    path = write(tmp_path, "squid.conf", 'http_port 3128\nauth_param basic realm "Plant\n')
    with pytest.raises(SquidConfError, match=re.escape(f"{path}:2: a quoted value has no closing")):
        read_squid_conf(path)


def test_reader_acl_values_file_relative_to_the_including_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "etc/lists/sensors.txt", "# sensors\n10.0.0.1\n\n  10.0.0.2   # B\n")
    path = write(tmp_path, "etc/squid.conf", 'acl s src 10.9.9.9 "lists/sensors.txt" 10.0.0.3\n')
    monkeypatch.chdir(tmp_path)  # not the config's folder
    (directive,) = read_squid_conf(path)
    assert directive.args == ("s", "src", "10.9.9.9", "10.0.0.1", "10.0.0.2", "10.0.0.3")


def test_reader_missing_acl_values_file(tmp_path: Path) -> None:
    path = write(tmp_path, "squid.conf", 'acl s src "nowhere.txt"\n')
    with pytest.raises(
        SquidConfError, match=re.escape(f"{path}:1: cannot read the ACL values file")
    ):
        read_squid_conf(path)


def test_reader_include_glob_order_and_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "conf/d/b.conf", "visible_hostname b\n")
    write(tmp_path, "conf/d/a.conf", "visible_hostname a\ninclude ../extra.conf\n")
    write(tmp_path, "conf/extra.conf", "visible_hostname extra\n")
    write(tmp_path, "conf/d/ignored.txt", "visible_hostname ignored\n")
    main = write(
        tmp_path, "conf/main.conf", "visible_hostname main\ninclude d/*.conf\ncoredump_dir /x\n"
    )
    monkeypatch.chdir("/")
    directives = read_squid_conf(main)
    assert [d.args[0] for d in directives] == ["main", "a", "extra", "b", "/x"]
    assert directives[2].file == str(tmp_path / "conf/d/../extra.conf")
    assert directives[3].line == 1


def test_reader_include_matching_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "squid.conf", "http_port 3128\ninclude conf.d/*.conf\n")
    with pytest.raises(
        SquidConfError, match=re.escape(f"{path}:2: include conf.d/*.conf: no file")
    ):
        read_squid_conf(path)


def test_reader_include_loop(tmp_path: Path) -> None:
    write(tmp_path, "a.conf", "include b.conf\n")
    write(tmp_path, "b.conf", "http_port 3128\ninclude a.conf\n")
    with pytest.raises(
        SquidConfError, match=r"b\.conf:2: include loop: .*a\.conf -> .*b\.conf -> .*a\.conf"
    ):
        read_squid_conf(tmp_path / "a.conf")


def test_reader_include_depth_is_bounded(tmp_path: Path) -> None:
    for level in range(20):
        write(tmp_path, f"{level}.conf", f"include {level + 1}.conf\n")
    write(tmp_path, "20.conf", "http_port 3128\n")
    with pytest.raises(SquidConfError, match="nested more than 16 deep"):
        read_squid_conf(tmp_path / "0.conf")
    shutil.rmtree(tmp_path)
    for level in range(15):
        write(tmp_path, f"{level}.conf", f"include {level + 1}.conf\n")
    write(tmp_path, "15.conf", "http_port 3128\n")
    assert [d.name for d in read_squid_conf(tmp_path / "0.conf")] == ["http_port"]


def test_reader_include_without_a_name(tmp_path: Path) -> None:
    path = write(tmp_path, "squid.conf", "include\n")
    with pytest.raises(SquidConfError, match=re.escape(f"{path}:1: include needs")):
        read_squid_conf(path)
