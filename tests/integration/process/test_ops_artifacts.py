"""Tests for the operations artifacts of SPEC section 7: sd_notify, the systemd unit, the
Dockerfile, the cloud-init file and the HAProxy example.

The notifier is checked against a real unix datagram socket standing in for systemd. The files
are checked with the tools that will consume them where those run here (`systemd-analyze`,
`systemd-sysusers`, `haproxy -c`, connectproxy's own config loader, `sh -n`), and otherwise by
reading them for the promises the spec makes (the Dockerfile: no Docker daemon in CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from connectproxy.config.model import Limits, Timeouts
from connectproxy.configfile.load import load_config, parse_config
from connectproxy.observe.ops import OpsServer
from connectproxy.process.sdnotify import Notifier
from connectproxy.server.listening import connection_capacity
from tests.support import REPO_ROOT

ROOT = REPO_ROOT
UNIT = ROOT / "systemd" / "connectproxy.service"
SYSUSERS = ROOT / "systemd" / "connectproxy.sysusers"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CLOUD_INIT = ROOT / "config" / "cloud-init.yaml"
HAPROXY_CFG = ROOT / "config" / "haproxy.cfg"
BEHIND_HAPROXY = ROOT / "config" / "examples" / "behind-haproxy.yaml"

INSTALLED_BINARY = "/usr/local/bin/connectproxy"
CONFIG_PATH = "/etc/connectproxy/connectproxy.yaml"


def tool(name: str, package: str) -> str:
    """The path of a system tool the test needs; its absence is a setup error, not a skip."""
    path = shutil.which(name)
    assert path is not None, f"{name} is missing: apt-get install {package} (.ci/run does)"
    return path


# ---- sd_notify ---------------------------------------------------------------------------------


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a bound unix datagram socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2)

    def receive(self) -> str:
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        self.sock.setblocking(False)
        messages = []
        try:
            while True:
                messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return messages
        finally:
            self.sock.settimeout(2)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # A short folder of our own rather than tmp_path: a unix socket path must fit in 108 bytes,
    # and pytest's tmp_path grows with the test's name.
    with tempfile.TemporaryDirectory(prefix="sdn-", dir="/tmp") as folder:
        yield Path(folder)


@pytest.fixture
def systemd(socket_dir: Path) -> Iterator[tuple[FakeSystemd, str]]:
    path = str(socket_dir / "notify")
    fake = FakeSystemd(path)
    yield fake, path
    fake.sock.close()


def test_ready_stopping_watchdog_and_status_send_exact_datagrams(
    systemd: tuple[FakeSystemd, str],
) -> None:
    fake, path = systemd
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready()
    assert fake.receive() == "READY=1"
    notifier.ready("serving on 0.0.0.0:3128")
    assert fake.receive() == "READY=1\nSTATUS=serving on 0.0.0.0:3128"
    notifier.stopping()
    assert fake.receive() == "STOPPING=1"
    notifier.watchdog()
    assert fake.receive() == "WATCHDOG=1"
    notifier.status("draining 3 tunnels")
    assert fake.receive() == "STATUS=draining 3 tunnels"
    notifier.close()


def test_reloading_carries_the_monotonic_clock(systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = systemd
    notifier = Notifier({"NOTIFY_SOCKET": path})
    before = time.monotonic_ns() // 1000
    notifier.reloading()
    after = time.monotonic_ns() // 1000
    lines = fake.receive().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert len(lines) == 2
    notifier.close()


def test_a_newline_in_a_status_cannot_forge_another_assignment(
    systemd: tuple[FakeSystemd, str],
) -> None:
    fake, path = systemd
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.status("reload failed\nREADY=1")
    assert fake.receive() == "STATUS=reload failed READY=1"
    notifier.ready("a\r\nb")
    assert fake.receive() == "READY=1\nSTATUS=a b"
    notifier.close()


def test_abstract_socket_names() -> None:
    name = f"connectproxy-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("\0" + name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled
        notifier.ready()
        assert fake.receive() == "READY=1"
        notifier.close()
    finally:
        fake.sock.close()


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "30000000"}])
async def test_without_notify_socket_everything_is_a_no_op(env: dict[str, str]) -> None:
    notifier = Notifier(env)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("x")
    notifier.reloading()
    notifier.stopping()
    notifier.status("x")
    notifier.watchdog()
    await asyncio.wait_for(notifier.run_watchdog(), timeout=1)  # returns at once
    notifier.close()


@pytest.mark.parametrize("value", ["vsock:2:1234", "relative/path", "@", "/" + "x" * 200])
def test_an_unusable_notify_socket_disables_with_a_warning(value: str) -> None:
    with capture_logs() as logs:
        notifier = Notifier({"NOTIFY_SOCKET": value})
        notifier.ready()
    assert not notifier.enabled
    assert [entry["log_level"] for entry in logs] == ["warning"]
    assert logs[0]["notify_socket"] == value


def test_a_vanished_socket_is_swallowed_and_logged_once(socket_dir: Path) -> None:
    path = socket_dir / "notify"
    fake = FakeSystemd(str(path))
    fake.sock.close()
    path.unlink()
    with capture_logs() as logs:
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        notifier.ready()
        notifier.watchdog()
        notifier.reloading()
        notifier.stopping()
        notifier.close()
    assert len(logs) == 1
    assert logs[0]["log_level"] == "warning"
    assert logs[0]["notify_socket"] == str(path)
    assert logs[0]["error"]


def test_a_socket_that_comes_back_is_used_again(socket_dir: Path) -> None:
    """systemd re-creates its notify socket on daemon-reexec; we address it by name each time."""
    path = str(socket_dir / "notify")
    notifier = Notifier({"NOTIFY_SOCKET": path})
    with capture_logs():
        notifier.ready()  # nobody listening yet
    fake = FakeSystemd(path)
    try:
        notifier.watchdog()
        assert fake.receive() == "WATCHDOG=1"
    finally:
        fake.sock.close()
        notifier.close()


@pytest.mark.parametrize(
    ("extra", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_when_it_is_ours(
    systemd: tuple[FakeSystemd, str], extra: dict[str, str], interval: float | None
) -> None:
    _, path = systemd
    notifier = Notifier({"NOTIFY_SOCKET": path, **extra})
    assert notifier.watchdog_interval == interval
    notifier.close()


async def test_run_watchdog_pings_until_cancelled(systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = systemd
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})  # ping every 10 ms
    assert notifier.watchdog_interval == pytest.approx(0.01)
    task = asyncio.create_task(notifier.run_watchdog())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pings = fake.pending()
    assert len(pings) >= 3
    assert set(pings) == {"WATCHDOG=1"}
    notifier.close()


def test_after_close_nothing_is_sent(systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = systemd
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    notifier.close()
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready()
    notifier.stopping()
    notifier.close()  # twice is fine
    assert fake.pending() == []


# ---- the systemd unit --------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value assigned, in order (systemd allows repeating keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"continuation lines are not expected: {raw!r}"
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"assignment outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def test_unit_runs_the_proxy_as_a_notify_service() -> None:
    svc = service()
    assert svc["Type"] == ["notify"]
    assert svc["NotifyAccess"] == ["main"]
    assert svc["ExecStart"] == [f"{INSTALLED_BINARY} run --config {CONFIG_PATH}"]
    assert svc["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert svc["WatchdogSec"] == ["30"]
    assert svc["Restart"] == ["on-failure"]
    assert svc["RestartPreventExitStatus"] == ["2"]  # a config error; restarting cannot help
    assert int(svc["TimeoutStopSec"][0]) > Timeouts().shutdown_grace
    assert svc["User"] == svc["Group"] == ["connectproxy"]
    assert svc["DynamicUser"] == ["no"]
    assert svc["LogsDirectory"] == ["connectproxy"]
    # ConfigurationDirectory= would make /etc/connectproxy writable under ProtectSystem=strict.
    assert "ConfigurationDirectory" not in svc
    assert parse_unit(UNIT.read_text())["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_has_the_hardening_options() -> None:
    svc = service()
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert svc.get(key) == [value], f"{key}: {svc.get(key)} != [{value!r}]"
    assert svc["SystemCallFilter"][0] == "@system-service"
    # The process collector reads /proc/stat: ProcSubset=pid would drop the process metrics.
    assert "ProcSubset" not in svc


def test_unit_descriptor_limit_fits_the_default_connection_limit() -> None:
    limit = int(service()["LimitNOFILE"][0])
    assert connection_capacity(limit) >= Limits().max_connections


def unit_for_this_machine(folder: Path, text: str | None = None) -> Path:
    """The unit with its commands pointing at this virtualenv's console script.

    `systemd-analyze verify` insists that every Exec*= binary exists; /usr/local/bin/connectproxy
    does not here. It works offline (no systemd as PID 1 needed): it loads the file into a
    throw-away manager and reports parse errors, unknown keys and missing binaries.
    """
    script = Path(sys.executable).parent / "connectproxy"
    assert script.exists(), f"{script} is missing: run `pip install -e .` in the virtualenv"
    unit = folder / "connectproxy.service"
    unit.write_text((text or UNIT.read_text()).replace(INSTALLED_BINARY, str(script)))
    return unit


def systemd_analyze_verify(unit: Path) -> subprocess.CompletedProcess[str]:
    # --man=no: no man-db lookups for Documentation=; --generators=no: do not run the host's
    # unit generators. Neither is needed for the verdict, and both depend on the machine.
    return subprocess.run(
        [tool("systemd-analyze", "systemd"), "verify", "--man=no", "--generators=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def about_unit(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Lines that concern our unit (its messages start with its path or name)."""
    output = (result.stdout + result.stderr).splitlines()
    return [line for line in output if "connectproxy.service" in line]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = systemd_analyze_verify(unit_for_this_machine(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    # An unknown key or a bad value is only a warning (exit status 0), so read the output too.
    assert about_unit(result) == []


def test_systemd_analyze_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """Guards the test above: a typo must show up, or an empty output proves nothing."""
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict")
    result = systemd_analyze_verify(unit_for_this_machine(tmp_path, broken))
    assert any("ProtectSytem" in line for line in about_unit(result)), result.stderr


def test_unit_exposure_rating_is_ok(tmp_path: Path) -> None:
    # systemd's own hardening score, 0 (best) to 10; the threshold is in tenths.
    unit = unit_for_this_machine(tmp_path)
    result = subprocess.run(
        [
            tool("systemd-analyze", "systemd"),
            "security",
            "--offline=yes",
            "--threshold=20",
            "--no-pager",
            str(unit),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout[-400:] + result.stderr


def test_sysusers_creates_the_unit_user(tmp_path: Path) -> None:
    result = subprocess.run(
        [tool("systemd-sysusers", "systemd"), "--dry-run", f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    user = service()["User"][0]
    assert f"Creating user '{user}'" in output
    assert f"Creating group '{user}'" in output


# ---- the Dockerfile ----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        word, _, args = whole.partition(" ")
        instructions.append((word.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continuation line"
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            result.append([])
        assert result, "the Dockerfile must start with FROM"
        result[-1].append(instruction)
    return result


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def only(stage: list[tuple[str, str]], name: str) -> str:
    found = [args for word, args in stage if word == name]
    assert len(found) == 1, f"expected one {name} in the final stage, found {found}"
    return found[0]


def test_dockerfile_is_multi_stage_with_a_slim_final_image() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    builder, final = all_stages[0], all_stages[-1]
    assert re.fullmatch(r"python:3\.11-slim\S* AS builder", builder[0][1], re.IGNORECASE)
    assert re.fullmatch(r"python:3\.11-slim\S*", final[0][1])
    assert any("pip wheel" in args for word, args in builder if word == "RUN")
    # setup.py compiles the connection path while the wheel is built.
    assert any("gcc" in args for word, args in builder if word == "RUN")
    runs = " ".join(args for word, args in final if word == "RUN")
    assert not re.search(r"\b(gcc|g\+\+|clang|build-essential|make)\b", runs)
    assert "pip install" in runs and "--no-index" in runs  # only the builder's wheels


def test_dockerfile_runs_as_a_non_root_user_before_the_entrypoint() -> None:
    final = final_stage()
    words = [word for word, _ in final]
    user = only(final, "USER")
    name = user.split(":")[0]
    assert name not in ("root", "0"), user
    assert name == "10001"
    assert words.index("USER") < words.index("ENTRYPOINT")


def test_dockerfile_exposes_entrypoint_stopsignal() -> None:
    final = final_stage()
    assert set(only(final, "EXPOSE").split()) == {"3128", "9128"}
    assert only(final, "STOPSIGNAL") == "SIGTERM"
    assert json.loads(only(final, "ENTRYPOINT")) == ["connectproxy"]
    assert json.loads(only(final, "CMD")) == ["run"]


def healthcheck_command() -> list[str]:
    healthcheck = only(final_stage(), "HEALTHCHECK")
    _, marker, command = healthcheck.partition("CMD ")
    assert marker, healthcheck
    argv: list[str] = json.loads(command)
    return argv


def test_dockerfile_healthcheck_asks_healthz_with_python() -> None:
    argv = healthcheck_command()
    assert argv[:2] == ["python", "-c"]
    assert "http://127.0.0.1:9128/healthz" in argv[2]


async def run_healthcheck(port: int, env: dict[str, str] | None = None) -> int:
    """The HEALTHCHECK's own Python snippet, aimed at `port` instead of 9128."""
    code = healthcheck_command()[2].replace("127.0.0.1:9128", f"127.0.0.1:{port}")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), timeout=10)


async def test_dockerfile_healthcheck_passes_on_healthz_and_fails_without_it() -> None:
    ops = OpsServer("127.0.0.1", 0, CollectorRegistry(), ready=lambda: True)
    await ops.start()
    try:
        assert await run_healthcheck(ops.bound_port) == 0
        # A proxy variable in the container's environment must not divert the probe.
        assert await run_healthcheck(ops.bound_port, {"http_proxy": "http://127.0.0.1:9"}) == 0
    finally:
        await ops.close()
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    assert await run_healthcheck(closed_port) != 0


def test_dockerignore_keeps_the_image_clean() -> None:
    entries = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "tests"} <= entries


# ---- cloud-init and HAProxy --------------------------------------------------------------------


def cloud_init() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CLOUD_INIT.read_text())
    return data


def cloud_init_files() -> dict[str, dict[str, Any]]:
    return {entry["path"]: entry for entry in cloud_init()["write_files"]}


def test_cloud_init_is_a_cloud_config() -> None:
    assert CLOUD_INIT.read_text().startswith("#cloud-config\n")
    data = cloud_init()
    assert {"packages", "write_files", "runcmd"} <= data.keys()
    assert "python3-venv" in data["packages"]


def test_cloud_init_installs_the_repository_unit_and_user_verbatim() -> None:
    files = cloud_init_files()
    assert files["/etc/systemd/system/connectproxy.service"]["content"] == UNIT.read_text()
    assert files["/etc/sysusers.d/connectproxy.conf"]["content"] == SYSUSERS.read_text()


def test_cloud_init_config_is_valid_and_probe_reachable(tmp_path: Path) -> None:
    entry = cloud_init_files()[CONFIG_PATH]
    config = parse_config(entry["content"], CONFIG_PATH, tmp_path)
    assert config.warnings == ()
    assert [(listener.port, listener.proxy_protocol) for listener in config.listen] == [
        (3128, "off")
    ]
    # The load balancer's health probe comes from outside: /readyz must not be loopback-only.
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", 9128)


def test_cloud_init_script_installs_and_starts_the_service() -> None:
    commands = cloud_init()["runcmd"]
    assert len(commands) == 1 and isinstance(commands[0], str)
    script = commands[0]
    syntax = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    lines = [line.strip() for line in script.splitlines()]
    assert lines[0] == "set -eu"
    expected_in_order = [
        "systemd-sysusers /etc/sysusers.d/connectproxy.conf",
        "python3 -m venv /opt/connectproxy",
        # The unit's ExecStart= path must be where the script puts the console script.
        f"ln -sf /opt/connectproxy/bin/connectproxy {INSTALLED_BINARY}",
        f"connectproxy check-config --config {CONFIG_PATH}",
        "systemctl daemon-reload",
        "systemctl enable --now connectproxy.service",
    ]
    positions = [lines.index(command) for command in expected_in_order]
    assert positions == sorted(positions)
    assert any(line.startswith("/opt/connectproxy/bin/pip install") for line in lines)


@pytest.mark.haproxy
def test_haproxy_cfg_passes_haproxy_check() -> None:
    result = subprocess.run(
        [tool("haproxy", "haproxy"), "-c", "-f", str(HAPROXY_CFG)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[WARNING]" not in output and "[ALERT]" not in output, output


def haproxy_lines() -> list[list[str]]:
    return [
        shlex.split(line, comments=True)
        for line in HAPROXY_CFG.read_text().splitlines()
        if shlex.split(line, comments=True)
    ]


def haproxy_seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    assert match, value
    return int(match[1]) * units[match[2] or "ms"]


def test_haproxy_cfg_matches_the_behind_haproxy_example() -> None:
    lines = haproxy_lines()
    default_server = next(line for line in lines if line[0] == "default-server")
    # The file reads its addresses from the environment, "${NAME-default}": check the default.
    port_value = default_server[default_server.index("port") + 1]
    check_port = int(re.sub(r"^\$\{\w+-(.*)\}$", r"\1", port_value))
    assert {"check", "send-proxy-v2"} <= set(default_server)
    assert not any("shutdown-sessions" in line for line in lines)  # draining keeps tunnels
    assert ["option", "httpchk"] in lines
    send = next(line for line in lines if line[:2] == ["http-check", "send"])
    assert send[send.index("uri") + 1] == "/readyz"
    assert ["http-check", "expect", "status", "200"] in lines
    assert ["mode", "tcp"] in lines
    timeouts = {line[1]: haproxy_seconds(line[2]) for line in lines if line[0] == "timeout"}

    example = load_config(BEHIND_HAPROXY)
    assert example.warnings == ()
    assert example.listen and all(li.proxy_protocol == "v2" for li in example.listen)
    assert example.metrics.port == check_port
    assert example.metrics.host not in (None, "127.0.0.1", "::1")  # HAProxy must reach it
    # The proxy, not the balancer, ends idle tunnels.
    assert timeouts["client"] > example.timeouts.idle
    assert timeouts["server"] > example.timeouts.idle
