"""`connectproxy doctor` (SPEC section 2) against real TLS origins and real upstream proxies on
loopback: every step that can fail (policy, dns, tcp, upstream, tls) is made to fail once, and
the happy paths are checked direct, through an HTTP upstream and through a TLS upstream.

Doctor runs in-process (its own parser from `add_doctor_parser`, so stdout is captured and the
test is quick); the upstreams are real `connectproxy run` processes.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from connectproxy.configfile.errors import ConfigError
from connectproxy.configfile.load import load_default
from connectproxy.process import doctor, doctor_cli
from tests.conftest import ProxyFactory
from tests.support import LOOPBACK_OK_DENY, HTTPSOrigin

SENSOR = "sensor.azure-devices.net"
UPDATES = "download.microsoft.com"


def doctor_config(port: int, **overrides: Any) -> dict[str, Any]:
    """The doctor's own config: the TLS origin's port allowed, names mapped to loopback, and
    loopback not denied (the default deny_networks would refuse 127.0.0.1 at step policy)."""
    config: dict[str, Any] = {
        "allow": {"ports": [443, port], "domains": [".azure-devices.net", UPDATES]},
        "destinations": {
            "hosts": {
                SENSOR: "127.0.0.1",
                UPDATES: "127.0.0.1",
                "other.azure-devices.net": "127.0.0.1",
            },
            "deny_networks": LOOPBACK_OK_DENY,
        },
    }
    config.update(overrides)
    return config


def write_config(tmp_path: Path, config: dict[str, Any], name: str = "doctor.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="connectproxy")
    sub = parser.add_subparsers(dest="command", required=True)
    doctor_cli.add_doctor_parser(sub)
    args = parser.parse_args(["doctor", *argv])
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def run_json(
    capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, list[dict[str, Any]], str]:
    code, out, err = run(capsys, "--json", *argv)
    return code, json.loads(out), err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def silent_listener() -> Iterator[int]:
    """Accepts TCP (the kernel completes the handshake) and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


@pytest.fixture(scope="module")
def other_ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("other-ca") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


# ---- reachable --------------------------------------------------------------------------------


def test_reachable_direct_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, https_origin: HTTPSOrigin, ca_file: Path
) -> None:
    config = write_config(tmp_path, doctor_config(https_origin.port))
    target = f"{SENSOR}:{https_origin.port}"
    code, out, err = run(capsys, "--config", str(config), "--ca-file", str(ca_file), target)
    assert code == 0, out + err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("TARGET"))
    row = next(line for line in lines if line.startswith(target))
    for column in ("RESULT", "VIA", "DNS", "CONNECT", "TLS", "TOTAL", "DETAIL"):
        assert column in header
    assert " ok " in row
    assert f"127.0.0.1:{https_origin.port}" in row
    assert "TLSv1." in row
    # The columns line up: every cell of the row starts under its header.
    assert row.index(" ok ") + 1 == header.index("RESULT")
    assert "all 1 targets reachable" in out
    assert str(ca_file) in out


def test_reachable_direct_json_with_timings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, https_origin: HTTPSOrigin, ca_file: Path
) -> None:
    config = write_config(tmp_path, doctor_config(https_origin.port))
    code, results, _ = run_json(
        capsys,
        "--config",
        str(config),
        "--ca-file",
        str(ca_file),
        f"{SENSOR}:{https_origin.port}",
        f"{UPDATES}:{https_origin.port}",
    )
    assert code == 0
    assert [r["target"] for r in results] == [
        f"{SENSOR}:{https_origin.port}",
        f"{UPDATES}:{https_origin.port}",
    ]
    for result in results:
        assert result["ok"] is True
        assert result["step"] is None and result["error"] is None
        assert result["route"] == "direct"
        assert result["address"] == f"127.0.0.1:{https_origin.port}"
        assert result["addresses"] == ["127.0.0.1"]
        assert result["upstream"] is None
        assert result["tls_version"].startswith("TLSv1.")
        parts = [result["dns_ms"], result["connect_ms"], result["tls_ms"]]
        assert all(isinstance(p, float) and p >= 0 for p in parts)
        assert result["total_ms"] >= sum(parts) - 0.01


def test_report_mode_lets_an_unlisted_host_through_with_a_note(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, https_origin: HTTPSOrigin, ca_file: Path
) -> None:
    config = doctor_config(https_origin.port)
    config["allow"].update(domains=[UPDATES], mode="report")
    path = write_config(tmp_path, config)
    code, [result], _ = run_json(
        capsys, "--config", str(path), "--ca-file", str(ca_file), f"{SENSOR}:{https_origin.port}"
    )
    assert code == 0
    assert result["ok"] is True
    assert "enforce mode would not" in result["note"]


# ---- each failing step ------------------------------------------------------------------------


def test_dead_target_fails_at_tcp(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    port = closed_port()
    config = write_config(tmp_path, doctor_config(port))
    code, [result], _ = run_json(capsys, "--config", str(config), f"{SENSOR}:{port}")
    assert code == 1
    assert result["ok"] is False
    assert result["step"] == "tcp"
    # Whom to call depends on refused vs unreachable vs filtered: the message must say which.
    assert "refused" in result["error"].lower(), result["error"]
    assert result["dns_ms"] is not None and result["connect_ms"] is None
    assert result["addresses"] == ["127.0.0.1"] and result["address"] is None


def test_dead_target_in_the_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    port = closed_port()
    config = write_config(tmp_path, doctor_config(port))
    code, out, _ = run(capsys, "--config", str(config), f"{SENSOR}:{port}")
    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith(f"{SENSOR}:{port}"))
    assert "FAILED" in row and "tcp: " in row
    assert "0 of 1 targets reachable" in out


def test_untrusted_certificate_fails_at_tls(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    https_origin: HTTPSOrigin,
    other_ca_file: Path,
) -> None:
    config = write_config(tmp_path, doctor_config(https_origin.port))
    target = f"{SENSOR}:{https_origin.port}"
    for trust in (["--ca-file", str(other_ca_file)], []):  # a wrong CA, then the system store
        code, [result], _ = run_json(capsys, "--config", str(config), *trust, target)
        assert code == 1
        assert result["step"] == "tls"
        assert "certificate rejected" in result["error"]
        assert result["connect_ms"] is not None and result["tls_ms"] is None


def test_certificate_for_another_name_fails_at_tls(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, https_origin: HTTPSOrigin, ca_file: Path
) -> None:
    """SNI and verification use the target's name: a certificate the CA signed, but for other
    names, is refused."""
    config = write_config(tmp_path, doctor_config(https_origin.port))
    code, [result], _ = run_json(
        capsys,
        "--config",
        str(config),
        "--ca-file",
        str(ca_file),
        f"other.azure-devices.net:{https_origin.port}",
    )
    assert code == 1
    assert result["step"] == "tls"
    assert "other.azure-devices.net" in result["error"]


def test_silent_server_times_out_at_tls(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, silent_listener: int
) -> None:
    config = write_config(tmp_path, doctor_config(silent_listener))
    code, [result], _ = run_json(
        capsys, "--config", str(config), "--timeout", "0.5", f"{SENSOR}:{silent_listener}"
    )
    assert code == 1
    assert result["step"] == "tls"
    assert "0.5 s" in result["error"]
    assert 400 < result["total_ms"] < 3000


def test_unresolvable_name_fails_at_dns(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write_config(tmp_path, doctor_config(443))
    code, [result], _ = run_json(capsys, "--config", str(config), "no-such-host.invalid.")
    assert code == 1
    assert result["target"] == "no-such-host.invalid:443"
    # Not on the allowlist: the policy answers first, before any lookup.
    assert result["step"] == "policy"
    config = write_config(tmp_path, doctor_config(443, allow={"domains": [".invalid"]}))
    code, [result], _ = run_json(capsys, "--config", str(config), "no-such-host.invalid")
    assert code == 1
    assert result["step"] == "dns"
    assert "no-such-host.invalid" in result["error"]


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("evil.example.com", "not allowed"),
        (f"{SENSOR}:22", "port 22"),
        ("127.0.0.1", "no networks of policy default"),
        ("::1", "no networks of policy default"),
    ],
)
def test_denied_target_fails_at_policy(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target: str, words: str
) -> None:
    config = write_config(tmp_path, doctor_config(443))
    code, [result], _ = run_json(capsys, "--config", str(config), target)
    assert code == 1
    assert result["step"] == "policy"
    assert words in result["error"]
    assert result["dns_ms"] is None and result["address"] is None


def test_address_in_deny_networks_fails_at_policy(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, https_origin: HTTPSOrigin, ca_file: Path
) -> None:
    """The proxy's default deny_networks refuse loopback, whatever the hosts map says."""
    config = doctor_config(https_origin.port)
    del config["destinations"]["deny_networks"]
    path = write_config(tmp_path, config)
    code, [result], _ = run_json(
        capsys, "--config", str(path), "--ca-file", str(ca_file), f"{SENSOR}:{https_origin.port}"
    )
    assert code == 1
    assert result["step"] == "policy"
    assert "127.0.0.1" in result["error"] and "deny_networks" in result["error"]


# ---- through upstream proxies -----------------------------------------------------------------


def upstream_proxy_config(port: int) -> dict[str, Any]:
    """What the upstream connectproxy allows: our origin, reached by its own hosts map."""
    return {
        "allow": {"ports": [port], "domains": [".azure-devices.net"]},
        "clients": [{"name": "site-proxy", "networks": ["127.0.0.0/8"]}],
        "destinations": {"hosts": {SENSOR: "127.0.0.1"}, "deny_networks": LOOPBACK_OK_DENY},
    }


def chained_config(port: int, *urls: str, **proxy_extra: Any) -> dict[str, Any]:
    """The doctor's config for a chained site: the default deny_networks (loopback refused) is
    kept on purpose, since the upstream resolves and connects, not us."""
    config = doctor_config(port)
    del config["destinations"]
    config["upstream"] = {"proxies": [{"url": url, **proxy_extra} for url in urls]}
    return config


def test_reachable_through_an_upstream(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    make_proxy: ProxyFactory,
    https_origin: HTTPSOrigin,
    ca_file: Path,
) -> None:
    upstream = make_proxy(upstream_proxy_config(https_origin.port))
    dead = f"http://127.0.0.1:{closed_port()}"
    name = f"http://127.0.0.1:{upstream.port}"
    config = write_config(tmp_path, chained_config(https_origin.port, dead, name))
    target = f"{SENSOR}:{https_origin.port}"
    code, [result], _ = run_json(capsys, "--config", str(config), "--ca-file", str(ca_file), target)
    assert code == 0, result
    assert result["route"] == "upstream"
    assert result["upstream"] == name  # failover skipped the dead one
    assert result["address"] == f"127.0.0.1:{upstream.port}"
    assert result["dns_ms"] is None  # the upstream resolves
    assert result["connect_ms"] is not None and result["tls_ms"] is not None
    [record] = upstream.access_records(expect=1)
    assert record["target"] == target and record["outcome"] == "established"

    code, out, _ = run(capsys, "--config", str(config), "--ca-file", str(ca_file), target)
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith(target))
    assert name in row


def test_upstream_refusal_fails_at_upstream(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    make_proxy: ProxyFactory,
    https_origin: HTTPSOrigin,
    ca_file: Path,
) -> None:
    upstream_config = upstream_proxy_config(https_origin.port)
    upstream_config["allow"]["domains"] = [UPDATES]  # our sensor host is not on its allowlist
    upstream = make_proxy(upstream_config)
    name = f"http://127.0.0.1:{upstream.port}"
    config = write_config(tmp_path, chained_config(https_origin.port, name))
    code, [result], _ = run_json(
        capsys, "--config", str(config), "--ca-file", str(ca_file), f"{SENSOR}:{https_origin.port}"
    )
    assert code == 1
    assert result["step"] == "upstream"
    assert "403" in result["error"] and name in result["error"]


def test_unreachable_upstream_fails_at_upstream(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    name = f"http://127.0.0.1:{closed_port()}"
    config = write_config(tmp_path, chained_config(443, name))
    code, [result], _ = run_json(capsys, "--config", str(config), SENSOR)
    assert code == 1
    assert result["step"] == "upstream"
    assert name in result["error"]


def test_direct_domains_bypass_the_upstream(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, https_origin: HTTPSOrigin, ca_file: Path
) -> None:
    config = chained_config(https_origin.port, f"http://127.0.0.1:{closed_port()}")
    config["upstream"]["direct_domains"] = [UPDATES]
    config["destinations"] = {"hosts": {UPDATES: "127.0.0.1"}, "deny_networks": LOOPBACK_OK_DENY}
    path = write_config(tmp_path, config)
    code, [result], _ = run_json(
        capsys, "--config", str(path), "--ca-file", str(ca_file), f"{UPDATES}:{https_origin.port}"
    )
    assert code == 0, result
    assert result["route"] == "direct" and result["upstream"] is None


def test_reachable_through_a_tls_upstream(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    make_proxy: ProxyFactory,
    https_origin: HTTPSOrigin,
    ca: trustme.CA,
    ca_file: Path,
) -> None:
    """TLS to the destination inside TLS to an `https://` upstream."""
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "upstream.pem", tmp_path / "upstream.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    upstream = make_proxy(upstream_proxy_config(https_origin.port), start=False)
    upstream.config["listen"] = [
        {
            "address": f"127.0.0.1:{upstream.port}",
            "tls": {"cert_file": str(cert_file), "key_file": str(key_file)},
        }
    ]
    upstream.write_config()
    upstream.start()
    name = f"https://127.0.0.1:{upstream.port}"
    config = write_config(tmp_path, chained_config(https_origin.port, name, ca_file=str(ca_file)))
    code, [result], _ = run_json(
        capsys, "--config", str(config), "--ca-file", str(ca_file), f"{SENSOR}:{https_origin.port}"
    )
    assert code == 0, result
    assert result["upstream"] == name
    assert result["tls_version"].startswith("TLSv1.")


# ---- default targets and user mistakes ---------------------------------------------------------


def test_default_targets_are_the_exact_domains_on_443(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No network I/O: the hosts map points at loopback and the default deny_networks refuses it."""
    config = {
        "allow": {
            "domains": [".azure-devices.net", "*.blob.core.windows.net", UPDATES, "a.example.org"]
        },
        "destinations": {"hosts": {UPDATES: "127.0.0.1", "a.example.org": "127.0.0.2"}},
    }
    path = write_config(tmp_path, config)
    code, results, err = run_json(capsys, "--config", str(path))
    assert code == 1
    assert [r["target"] for r in results] == [f"{UPDATES}:443", "a.example.org:443"]
    assert all(r["step"] == "policy" for r in results)
    assert ".azure-devices.net" in err and "*.blob.core.windows.net" in err
    code, out, _ = run(capsys, "--config", str(path))
    assert code == 1
    assert "not tested: .azure-devices.net, *.blob.core.windows.net" in out


def test_default_targets_function() -> None:
    config = load_default()
    targets, patterns = doctor.default_targets(config)
    exact = [p.domain for p in config.allow.domains if p.kind == "exact"]
    assert [t.host for t in targets] == exact
    assert all(t.port == 443 for t in targets)
    assert len(patterns) + len(exact) == len(config.allow.domains)


def test_no_exact_domain_and_no_target_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_config(tmp_path, {"allow": {"domains": [".azure-devices.net"]}})
    code, out, err = run(capsys, "--config", str(path))
    assert code == 2
    assert ".azure-devices.net" in err and "TARGET" in err
    assert out == ""


@pytest.mark.parametrize(
    ("text", "authority"),
    [
        ("host.example", "host.example:443"),
        ("HOST.Example.:8443", "host.example:8443"),
        ("192.0.2.1", "192.0.2.1:443"),
        ("2001:db8::1", "[2001:db8::1]:443"),
        ("[2001:db8::1]", "[2001:db8::1]:443"),
        ("[2001:db8::1]:8443", "[2001:db8::1]:8443"),
    ],
)
def test_target_spellings(text: str, authority: str) -> None:
    assert doctor.parse_doctor_target(text).authority == authority


@pytest.mark.parametrize("text", ["bad target", "host:", "host:0443", "user@host", "a_b.example"])
def test_invalid_target_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str
) -> None:
    path = write_config(tmp_path, doctor_config(443))
    code, out, err = run(capsys, "--config", str(path), text)
    assert code == 2
    assert err.startswith("connectproxy: doctor: invalid target") and "Traceback" not in err
    assert out == ""


def test_missing_ca_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_config(tmp_path, doctor_config(443))
    code, _, err = run(capsys, "--config", str(path), "--ca-file", str(tmp_path / "nope.pem"))
    assert code == 2
    assert "nope.pem" in err
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    code, _, err = run(capsys, "--config", str(path), "--ca-file", str(garbage))
    assert code == 2
    assert "garbage.pem" in err


def test_bad_config_raises_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("allow:\n  domians: [x]\n")
    with pytest.raises(ConfigError, match="domians"):
        run(capsys, "--config", str(path))


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan"])
def test_bad_timeout_is_rejected_by_the_parser(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        run(capsys, "--timeout", value, "host.example")
    assert exc.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_wired_into_the_command_line(tmp_path: Path) -> None:
    """The real entry point: exit statuses as the operator's shell sees them, no traceback."""
    port = closed_port()
    path = write_config(tmp_path, doctor_config(port))
    base = [sys.executable, "-m", "connectproxy", "doctor"]
    dead = subprocess.run(
        [*base, "--config", str(path), "--json", f"{SENSOR}:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert dead.returncode == 1, dead.stderr
    assert json.loads(dead.stdout)[0]["step"] == "tcp"
    broken = tmp_path / "broken.yaml"
    broken.write_text("allow: [\n")
    bad = subprocess.run(
        [*base, "--config", str(broken)], capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2
    assert "broken.yaml" in bad.stderr and "Traceback" not in bad.stderr


def test_the_command_line_loads_doctor_without_prometheus_client() -> None:
    """`run --workers N` sets PROMETHEUS_MULTIPROC_DIR before prometheus-client is first imported
    (it picks its value storage then); the CLI imports doctor at start, so doctor must not."""
    check = "import sys, connectproxy.process.cli; sys.exit('prometheus_client' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], timeout=30).returncode == 0
