"""The command line (SPEC section 2): exit statuses, what is printed, and no traceback for mistakes.

Commands run in-process through `cli.main` so each test is quick and its output is captured; two
tests run `python -m connectproxy` as a real process to prove the entry point and the exit status
the operator's shell sees.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

import connectproxy
from connectproxy.configfile import load as configfile
from connectproxy.credentials.passwords import verify_password
from connectproxy.process.cli import main
from connectproxy.server import server

# A well-formed hash (of "secret"); explain never checks passwords, `--user` counts as valid.
HASH = "scrypt$n=16384,r=8,p=1$Y29ubmVjdHByb3h5LXRzdA$bW0v8sEzbkJt2f3vx8U7TJLtJA8RWeMlM897XMNpViY"

VALID = f"""\
clients:
  - name: lab
    networks: ["192.168.0.0/16"]
users:
  - name: sensor2
    password_hash: "{HASH}"
    networks: ["10.20.0.0/16"]
allow:
  domains: [".azure-devices.net", "download.microsoft.com"]
  networks: ["192.0.2.0/24", "127.0.0.0/8"]
destinations:
  hosts:
    myhub.azure-devices.net: "10.1.2.4"
    loop.azure-devices.net: "127.0.0.1"
    mixed.azure-devices.net: ["169.254.169.254", "10.1.2.5", "::1", "fd00::5"]
"""

UPSTREAM = """\
clients: [{name: lab, networks: ["192.168.0.0/16"]}]
allow:
  domains: [".azure-devices.net", ".corp.example"]
upstream:
  proxies:
    - url: "http://proxy.corp.example:8080"
    - url: "http://backup.corp.example:3128"
  direct_domains: [".corp.example"]
destinations:
  hosts:
    wiki.corp.example: "10.9.9.9"
"""

REPORT = """\
clients: [{name: lab, networks: ["192.168.0.0/16"]}]
allow: {domains: [".azure-devices.net"], mode: report}
"""

INVALID = """\
allow:
  ports: [443]
  domians: [".azure-devices.net"]
"""

PLAINTEXT = """\
clients: [{name: lab, networks: ["192.168.0.0/16"]}]
users:
  - name: sensor2
    password_hash: hunter2
"""


@pytest.fixture(autouse=True)
def no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the /etc default at a missing file, so the embedded default is what these tests see
    whatever the machine running them has installed."""
    missing = tmp_path / "etc" / "connectproxy.yaml"
    monkeypatch.setattr(configfile, "DEFAULT_CONFIG_PATH", missing)
    return missing


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def explain(
    capsys: pytest.CaptureFixture[str], *args: str, config: str | None = None
) -> tuple[int, str, str]:
    argv = ["explain", *args] if config is None else ["explain", "--config", config, *args]
    return run(argv, capsys)


# --- check-config -------------------------------------------------------------------------------


def test_check_config_embedded_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["check-config"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "<embedded default>: valid"
    assert (
        "listen: [::]:3128 (every IPv4 and IPv6 address, one dual-stack socket; "
        "IPv4 only if the host has no IPv6)"
    ) in lines
    assert "allow.ports: 443" in lines
    assert (
        "allow.domains: .azure-devices.net, .blob.core.windows.net, .servicebus.windows.net, "
        "download.microsoft.com"
    ) in lines
    assert any(line.startswith("client localhost: networks 127.0.0.0/8, ::1") for line in lines)
    assert any(line.startswith("client localnet: networks 10.0.0.0/8") for line in lines)
    assert "metrics: http://127.0.0.1:9128/metrics" in lines
    assert err == ""


def test_check_config_uses_system_file_when_present(
    tmp_path: Path, no_system_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_system_config.parent.mkdir()
    no_system_config.write_text(VALID, encoding="utf-8")
    code, out, _ = run(["check-config"], capsys)
    assert code == 0
    assert out.splitlines()[0] == f"{no_system_config}: valid"


def test_check_config_valid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "proxy.yaml", VALID)
    code, out, err = run(["check-config", "--config", path], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{path}: valid"
    assert f"source: {path}" in lines
    assert "allow.domains: .azure-devices.net, download.microsoft.com" in lines
    assert "client lab: networks 192.168.0.0/16" in lines
    assert "user sensor2: Basic password, from 10.20.0.0/16" in lines
    # the hosts entry pointing at loopback is valid but warned about
    assert any(line.startswith("warning:") and "loop.azure-devices.net" in line for line in lines)
    # the summary never shows a password hash
    assert "scrypt$" not in out


def test_check_config_upstream_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check-config", "--config", write(tmp_path, "u.yaml", UPSTREAM)], capsys)
    assert code == 0
    assert "upstream proxy: http://proxy.corp.example:8080" in out.splitlines()


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        (INVALID, 3, "allow.domians"),
        (PLAINTEXT, 4, "users[0].password_hash"),
        ("allow:\n  ports: [443\n", None, None),
    ],
)
def test_check_config_invalid_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    line: int | None,
    key: str | None,
) -> None:
    path = write(tmp_path, "bad.yaml", text)
    code, out, err = run(["check-config", "--config", path], capsys)
    assert code == 2
    assert out == ""
    assert path in err
    if line is not None:
        assert f"{path}:{line}:" in err
    if key is not None:
        assert key in err
    assert "Traceback" not in err
    assert "hunter2" not in err
    assert len(err.strip().splitlines()) == 1


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "nope.yaml")
    code, _, err = run(["check-config", "--config", path], capsys)
    assert code == 2
    assert path in err and "cannot read" in err


# --- explain ------------------------------------------------------------------------------------


def test_explain_allow(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(capsys, "--source", "10.1.1.1", "hub.azure-devices.net:443")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "allow: host matches .azure-devices.net by policy default (client localnet)"
    assert lines[1].startswith("route: direct")
    assert "DNS" in lines[1]


def test_explain_mapped_source(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(capsys, "--source", "::ffff:127.0.0.1", "download.microsoft.com:443")
    assert code == 0
    assert "(client localhost)" in out


@pytest.mark.parametrize(
    ("source", "authority", "expect"),
    [
        (
            "10.1.1.1",
            "hub.azure-devices.net:80",
            "deny: 403 port 80 not allowed by policy default (client localnet)",
        ),
        ("10.1.1.1", "evil.com:443", "deny: 403 destination not allowed"),
        ("10.1.1.1", "sensor.azure-devices.net.evil.com:443", "deny: 403 destination not allowed"),
        ("10.1.1.1", "1.2.3.4:443", "deny: 403 destination not allowed"),
        ("8.8.8.8", "hub.azure-devices.net:443", "deny: 407 proxy authentication required"),
        ("8.8.8.8", "evil.com:80", "deny: 407"),
    ],
)
def test_explain_deny(
    capsys: pytest.CaptureFixture[str], source: str, authority: str, expect: str
) -> None:
    code, out, _ = explain(capsys, "--source", source, authority)
    assert code == 1
    assert out.startswith(expect), out


def test_explain_user_counts_as_authenticated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, "p.yaml", VALID)
    code, out, err = explain(
        capsys,
        "--source",
        "10.20.3.4",
        "--user",
        "sensor2",
        "hub.azure-devices.net:443",
        config=config,
    )
    assert code == 0
    assert "(client sensor2)" in out
    assert err == ""


def test_explain_user_is_ignored_without_users(capsys: pytest.CaptureFixture[str]) -> None:
    """The embedded default has no users and no htpasswd_file: the proxy ignores credentials
    there, so `--user` changes nothing, and explain says so."""
    code, out, err = explain(
        capsys, "--source", "8.8.8.8", "--user", "sensor2", "hub.azure-devices.net:443"
    )
    assert code == 1
    assert out.startswith("deny: 407 proxy authentication required")
    assert "ignores credentials" in err


def test_explain_user_networks_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, "p.yaml", VALID)
    args = ("--user", "sensor2", "myhub.azure-devices.net:443")
    code, out, _ = explain(capsys, "--source", "10.20.3.4", *args, config=config)
    assert code == 0
    assert "(client sensor2)" in out
    code, out, _ = explain(capsys, "--source", "10.30.3.4", *args, config=config)
    assert code == 1
    assert out.startswith("deny: 407")


def test_explain_hosts_map_is_consulted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, "p.yaml", VALID)
    code, out, _ = explain(
        capsys, "--source", "192.168.1.1", "MyHub.Azure-Devices.Net.:443", config=config
    )
    assert code == 0
    assert out.splitlines()[-1] == "route: direct to 10.1.2.4"


def test_explain_hosts_map_drops_denied_addresses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, "p.yaml", VALID)
    code, out, _ = explain(
        capsys, "--source", "192.168.1.1", "mixed.azure-devices.net:443", config=config
    )
    assert code == 0
    assert out.splitlines()[-1] == "route: direct to 10.1.2.5, fd00::5"


def test_explain_hosts_map_all_denied(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, "p.yaml", VALID)
    code, out, _ = explain(
        capsys, "--source", "192.168.1.1", "loop.azure-devices.net:443", config=config
    )
    assert code == 1
    assert out.splitlines()[-1].startswith("deny: 403")
    assert "deny_networks" in out


@pytest.mark.parametrize(
    ("authority", "code", "last"),
    [
        ("192.0.2.5:443", 0, "route: direct to 192.0.2.5"),
        ("127.0.0.1:443", 1, "deny: 403 every address is in destinations.deny_networks"),
        ("[::ffff:127.0.0.1]:443", 1, "deny: 403 every address is in destinations.deny_networks"),
        ("198.51.100.1:443", 1, "deny: 403 destination not allowed"),
    ],
)
def test_explain_ip_literals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], authority: str, code: int, last: str
) -> None:
    config = write(tmp_path, "p.yaml", VALID)
    got, out, _ = explain(capsys, "--source", "192.168.1.1", authority, config=config)
    assert got == code
    assert out.splitlines()[-1].startswith(last), out


def test_explain_upstream_route(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, "u.yaml", UPSTREAM)
    code, out, _ = explain(
        capsys, "--source", "192.168.1.1", "hub.azure-devices.net:443", config=config
    )
    assert code == 0
    route = out.splitlines()[-1]
    assert route.startswith("route: upstream (failover: ")
    assert "http://proxy.corp.example:8080, http://backup.corp.example:3128" in route


def test_explain_direct_domain_bypasses_upstream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, "u.yaml", UPSTREAM)
    code, out, _ = explain(
        capsys, "--source", "192.168.1.1", "wiki.corp.example:443", config=config
    )
    assert code == 0
    assert out.splitlines()[-1] == "route: direct to 10.9.9.9"


def test_explain_report_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, "r.yaml", REPORT)
    code, out, _ = explain(capsys, "--source", "192.168.1.1", "evil.com:443", config=config)
    assert code == 0
    assert out.startswith("allow (report mode: enforce would deny)")
    code, out, _ = explain(capsys, "--source", "192.168.1.1", "evil.com:80", config=config)
    assert code == 1
    assert out.startswith("deny: 403 port 80")


@pytest.mark.parametrize(
    "authority",
    [
        "hub.azure-devices.net",
        "127.1:443",
        "hub.azure-devices.net:0443",
        "user@host:443",
        "a_b.com:443",
    ],
)
def test_explain_bad_target_is_a_400_deny(
    capsys: pytest.CaptureFixture[str], authority: str
) -> None:
    code, out, err = explain(capsys, "--source", "10.1.1.1", authority)
    assert code == 1
    assert out.startswith("deny: 400 ")
    assert err == ""


@pytest.mark.parametrize("source", ["nope", "10.0.0", "10.0.0.0/8", ""])
def test_explain_bad_source_is_usage_error(capsys: pytest.CaptureFixture[str], source: str) -> None:
    code, out, err = explain(capsys, "--source", source, "hub.azure-devices.net:443")
    assert code == 2
    assert out == ""
    assert "--source" in err
    assert "Traceback" not in err


def test_explain_config_error_is_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, "bad.yaml", INVALID)
    code, out, err = explain(
        capsys, "--source", "10.1.1.1", "hub.azure-devices.net:443", config=config
    )
    assert code == 2
    assert out == ""
    assert f"{config}:3:" in err and "allow.domians" in err


def test_explain_requires_source(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["explain", "hub.azure-devices.net:443"])
    assert exc.value.code == 2
    assert "--source" in capsys.readouterr().err


# --- hash-password ------------------------------------------------------------------------------


def hash_from_stdin(
    text: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    return run(["hash-password"], capsys)


@pytest.mark.parametrize(
    ("stdin", "password"),
    [
        ("s3cr3t\n", "s3cr3t"),
        ("s3cr3t", "s3cr3t"),
        ("s3cr3t\r\n", "s3cr3t"),
        ("two lines\n\n", "two lines\n"),
        (" spaced \n", " spaced "),
        ("pässwörd ✓\n", "pässwörd ✓"),
    ],
)
def test_hash_password_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str, password: str
) -> None:
    code, out, err = hash_from_stdin(stdin, monkeypatch, capsys)
    assert code == 0, err
    assert out.endswith("\n") and out.count("\n") == 1
    encoded = out.strip()
    assert encoded.startswith("scrypt$")
    assert verify_password(password, encoded)
    assert not verify_password(password + "x", encoded)
    assert password not in out


def test_hash_password_output_is_accepted_by_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = hash_from_stdin("s3cr3t\n", monkeypatch, capsys)
    text = f'users: [{{name: sensor2, password_hash: "{out.strip()}"}}]\n'
    code, _, err = run(["check-config", "--config", write(tmp_path, "h.yaml", text)], capsys)
    assert code == 0, err


@pytest.mark.parametrize("stdin", ["", "\n", "\r\n"])
def test_hash_password_empty_is_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str
) -> None:
    code, out, err = hash_from_stdin(stdin, monkeypatch, capsys)
    assert code == 2
    assert out == ""
    assert "empty" in err


# --- argument errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_config_and_squid_conf_are_exclusive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    config = write(tmp_path, "p.yaml", VALID)
    squid = write(tmp_path, "squid.conf", "http_port 3128\n")
    with pytest.raises(SystemExit) as exc:
        main([command, "--config", config, "--squid-conf", squid])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "not allowed with argument" in err


@pytest.mark.parametrize("argv", [["frobnicate"], [], ["check-config", "--bogus"]])
def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: connectproxy" in err
    assert "Traceback" not in err


# --- the real entry point -----------------------------------------------------------------------


def python_m(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connectproxy", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_python_m_check_config(tmp_path: Path) -> None:
    path = write(tmp_path, "proxy.yaml", VALID)
    result = python_m(tmp_path, "check-config", "--config", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: valid\n")


def test_python_m_config_error_has_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", PLAINTEXT)
    result = python_m(tmp_path, "check-config", "--config", path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{path}:4: users[0].password_hash:" in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr


def test_version_says_whether_the_connection_path_is_compiled() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "connectproxy", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    compiled = not server.__file__.endswith(".py")
    assert connectproxy.compiled() is compiled
    assert (
        out
        == f"connectproxy {connectproxy.__version__} (compiled: {'yes' if compiled else 'no'})\n"
    )


# --- the TLS guard in check-config and explain --------------------------------------------------

GUARDED = """\
clients:
  - name: lab
    networks: ["192.168.0.0/16"]
    policies: [default, updates]
allow:
  domains: [".azure-devices.net"]
  networks: ["192.0.2.0/24"]
  tls: verify_sni
policies:
  updates:
    domains: ["download.microsoft.com"]
    tls: observe
"""


def test_check_config_prints_each_policys_tls_guard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["check-config", "--config", write(tmp_path, "g.yaml", GUARDED)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert (
        "allow.tls: verify_sni (a tunnel must start with a TLS ClientHello naming the CONNECT "
        "host)" in lines
    )
    assert "policies.updates.tls: observe (the tunnel's ClientHello is logged, never refused)" in (
        lines
    )


def test_check_config_of_one_guarded_policy_prints_its_guard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = 'allow:\n  domains: [".azure-devices.net"]\n  tls: require\n'
    code, out, _ = run(["check-config", "--config", write(tmp_path, "r.yaml", text)], capsys)
    assert code == 0
    assert "allow.tls: require (a tunnel must start with a TLS ClientHello)" in out.splitlines()


def test_explain_says_what_the_guard_will_ask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, "g.yaml", GUARDED)
    code, out, _ = explain(
        capsys, "--source", "192.168.1.1", "Hub.azure-devices.net:443", config=config
    )
    assert code == 0
    assert out.splitlines()[1] == (
        "tls: verify_sni: the tunnel must start with a TLS ClientHello whose server_name is "
        "hub.azure-devices.net"
    )
    code, out, _ = explain(capsys, "--source", "192.168.1.1", "192.0.2.7:443", config=config)
    assert out.splitlines()[1] == (
        "tls: verify_sni: the tunnel must start with a TLS ClientHello without a server_name"
    )
    code, out, _ = explain(
        capsys, "--source", "192.168.1.1", "download.microsoft.com:443", config=config
    )
    assert out.splitlines()[1] == "tls: observe: the tunnel's ClientHello is logged, never refused"
