"""connectproxy as a drop-in for Squid (SPEC sections 2 and 9), through its command line only.

tests/unit/configfile/test_squid_import.py checks the translation function by function; this file
checks what an operator replacing Squid meets: `check-config --squid-conf`, `import-squid` and
`explain` on the two configs printed in the Defender for IoT guides, `run --squid-conf` serving
real CONNECTs, and, with a real Squid 5 started on the same file (its own http_port aside), that
both proxies answer the same requests alike wherever the two models agree, and differ only where
the translation said so, and only in the stricter direction.

Every allowed request must stay on loopback, and a squid.conf cannot carry connectproxy's
`destinations.hosts`, so a name such as iot.azure-devices.net could only be resolved by real DNS.
Two consequences, chosen on purpose:
- `run --squid-conf` on a guide config as printed (only its http_port moved to loopback) is
  checked on the answers given before any lookup: 403 for a host or port outside the allowlist,
  405 for plain HTTP, 407 for an unknown client.
- For 200s, the file run under both proxies gets a `cache_peer` parent plus `never_direct allow
  all` appended (tests/data/squid/parity/harness.conf.template): the parent is a recording
  stand-in upstream on loopback that accepts every CONNECT and echoes the tunnel's bytes. Both
  proxies then decide, tunnel what they allow through it (no DNS: the upstream resolves), and the
  stand-in tells which targets each one let out. That is a real end-to-end comparison, not just of
  the decision, and it is the chaining set-up (sensor → site proxy → corporate proxy) of the guides.
Clients other than 127.0.0.1 are other loopback addresses (127.0.0.2: Linux routes all of
127.0.0.0/8 to lo) or, for addresses such as the guide's sensor1 10.100.100.1, PROXY headers on a
listener with `require-proxy-header`.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import DATA as SUPPORT_DATA
from tests.support import ThreadedServer, free_port, free_ports, status_of

DATA = SUPPORT_DATA / "squid"
AZURE = DATA / "azure-proxy.conf"
CHAINING = DATA / "chaining.conf"
PARITY_DIR = DATA / "parity"
HARNESS = PARITY_DIR / "harness.conf.template"
VENDOR_CONFIGS = [AZURE, CHAINING]
SQUID = "/usr/sbin/squid"
# A squid.conf has no way to move connectproxy's metrics listener off its default.
METRICS_PORT = 9128


# ---- helpers: the command line -------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m connectproxy ARGS`; whatever the outcome, never a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "connectproxy", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def line_of(path: Path, text: str, prefix: bool = False) -> int:
    """The number of the first line of `path` that is `text` (or, with `prefix`, begins so)."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line == text or (prefix and line.startswith(text)):
            return number
    raise AssertionError(f"{path} has no line {text!r}")


def warning_lines(output: str) -> list[str]:
    """The warnings printed by check-config (stdout) or import-squid (stderr), prefix removed."""
    return [
        line[len("warning: ") :] for line in output.splitlines() if line.startswith("warning: ")
    ]


def policy_summary(check_config_stdout: str) -> list[str]:
    """check-config's summary of the effective policy: no "FILE: valid" head, no warnings."""
    lines = check_config_stdout.splitlines()
    assert lines[0].endswith(": valid"), lines[0]
    return [line for line in lines[1:] if not line.startswith("warning: ")]


def with_http_port(text: str, listen: str) -> str:
    """The config with its one http_port line replaced, every other line where it was."""
    rewritten, count = re.subn(r"(?m)^http_port\s.*$", f"http_port {listen}", text)
    assert count == 1, "the corpus files have exactly one http_port line"
    return rewritten


# ---- helpers: clients, the stand-in upstream, the two proxies ------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    head: bytes
    echoed: bool  # after a 200: bytes sent into the tunnel came back through it


def ask(
    port: int,
    target: str,
    source: str = "127.0.0.1",
    proxy_header: bytes = b"",
    method: str = "CONNECT",
    headers: str = "",
) -> Answer:
    """One request from `source` (a loopback address to bind, or the address a PROXY header
    claims); after a 200 a few bytes go through the tunnel and must come back."""
    with socket.socket() as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        request = f"{method} {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n"
        sock.sendall(proxy_header + request.encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = sock.recv(1)
            if not byte:
                break
            head += byte
        status = status_of(head)
        echoed = False
        if status == 200:
            sock.sendall(b"ping")
            back = b""
            while len(back) < 4 and (data := sock.recv(4 - len(back))):
                back += data
            echoed = back == b"ping"
        return Answer(status, head, echoed)


def proxy_v1(source: str, port: int) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 40000 {port}\r\n".encode()


class _UpstreamHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        server: StandInUpstream = self.server  # type: ignore[assignment]
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 16384:
                data = sock.recv(4096)
                if not data:
                    return
                head += data
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method != "CONNECT":
                sock.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            with server.lock:
                server.targets.append(target)
                server.heads.append(head)
            sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            sock.sendall(head.split(b"\r\n\r\n", 1)[1])
            while data := sock.recv(65536):
                sock.sendall(data)
        except (OSError, ValueError):
            pass


class StandInUpstream(ThreadedServer):
    """The parent proxy both proxies chain to: records each CONNECT (target and request head),
    answers 200, and echoes the tunnel's bytes (it is the far end; it connects nowhere)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.targets: list[str] = []
        self.heads: list[bytes] = []
        super().__init__(_UpstreamHandler)

    def take_targets(self) -> list[str]:
        with self.lock:
            taken, self.targets = self.targets, []
        return taken


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM to our PID, SIGKILL if it has not gone within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class DropIn:
    """`connectproxy run --squid-conf FILE` as a real process. Its access log goes to stdout
    (the translation leaves log.access_log at "-"), its own log to stderr."""

    conf: Path
    logs: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def stdout_path(self) -> Path:
        return self.logs / f"{self.conf.stem}.stdout"

    @property
    def stderr_path(self) -> Path:
        return self.logs / f"{self.conf.stem}.stderr"

    def start(self, timeout: float = 15.0) -> DropIn:
        """Ready once it logs "started" (it is listening then). Another connectproxy on this
        machine may hold the metrics port for a moment: that start is retried until `timeout`."""
        deadline = time.monotonic() + timeout
        args = [sys.executable, "-m", "connectproxy", "run", "--squid-conf", str(self.conf)]
        while True:
            with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
                self.proc = subprocess.Popen(args, stdout=out, stderr=err)
            while self.proc.poll() is None and time.monotonic() < deadline:
                if any(event.get("event") == "started" for event in self.log_events()):
                    return self
                time.sleep(0.05)
            stop_process(self.proc, 5)
            stderr = self.stderr_path.read_text(errors="replace")
            metrics_busy = f"{METRICS_PORT}): address already in use" in stderr
            if not metrics_busy or time.monotonic() >= deadline:
                raise RuntimeError(f"connectproxy did not start on {self.conf}: {stderr}")
            time.sleep(0.5)

    def stop(self) -> int:
        return 0 if self.proc is None else stop_process(self.proc, 15)

    def log_events(self) -> list[dict[str, Any]]:
        return _json_lines(self.stderr_path)

    def config_warnings(self) -> list[str]:
        return [e["detail"] for e in self.log_events() if e.get("event") == "config warning"]

    def access_records(self) -> list[dict[str, Any]]:
        """Complete once the process has stopped (the log is flushed on exit)."""
        return [r for r in _json_lines(self.stdout_path) if r.get("event") == "access"]

    def __enter__(self) -> DropIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line still being written
    return records


@dataclass
class RealSquid:
    """Squid 5 in the foreground (`squid -N -f CONF`) on `port`; stopped by PID."""

    conf: Path
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout: float = 15.0) -> RealSquid:
        output = self.conf.with_suffix(".out")
        with output.open("wb") as out:
            self.proc = subprocess.Popen(
                [SQUID, "-N", "-f", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                stop_process(self.proc, 5)
                log = self.conf.parent / "cache.log"
                details = output.read_text(errors="replace")
                if log.exists():
                    details += log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"squid did not start: {details}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5)

    def __enter__(self) -> RealSquid:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class SideBySide:
    """A squid.conf written twice, for Squid and for connectproxy, differing only in http_port,
    with the harness (stand-in parent, Squid's housekeeping) appended to both."""

    squid_conf: Path
    dropin_conf: Path
    squid_port: int
    dropin_port: int


@pytest.fixture()
def rundir() -> Iterator[Path]:
    """Not under pytest's tmp_path: Squid started as root works as the user `proxy`, which must
    reach this folder to write its logs."""
    path = Path(tempfile.mkdtemp(prefix="connectproxy-dropin-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def upstream() -> Iterator[StandInUpstream]:
    with StandInUpstream() as server:
        yield server


def side_by_side(
    source: Path,
    rundir: Path,
    upstream: StandInUpstream,
    listen_options: str = "",
    beside: tuple[Path, ...] = (),
) -> SideBySide:
    """Write the two configs into `rundir`, with copies of the `beside` files they name."""
    for path in beside:
        shutil.copyfile(path, rundir / path.name)
        (rundir / path.name).chmod(0o644)
    harness = (
        HARNESS.read_text()
        .replace("@UPSTREAM_PORT@", str(upstream.port))
        .replace("@RUNDIR@", str(rundir))
    )
    text = source.read_text()
    squid_port, dropin_port = free_ports(2)
    squid_conf = rundir / f"squid-{source.stem}.conf"
    dropin_conf = rundir / f"connectproxy-{source.stem}.conf"
    for path, port in ((squid_conf, squid_port), (dropin_conf, dropin_port)):
        listen = f"127.0.0.1:{port} {listen_options}".strip()
        path.write_text(with_http_port(text, listen) + "\n" + harness)
        path.chmod(0o644)
    squid_lines = squid_conf.read_text().splitlines()
    dropin_lines = dropin_conf.read_text().splitlines()
    differing = [(a, b) for a, b in zip(squid_lines, dropin_lines, strict=True) if a != b]
    assert [a.split()[0] for a, _ in differing] == ["http_port"]
    return SideBySide(squid_conf, dropin_conf, squid_port, dropin_port)


# ---- 1. check-config, import-squid and explain on the guides' configs ---------------------------


def key_warnings(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    """(line, fragments) of the differences from Squid an operator must be told about."""
    if path == AZURE:
        sites = line_of(AZURE, "http_access allow allowed_http_sites")
        return [
            (sites, ("no src acl", "ANY source address", "client 'any'", "0.0.0.0/0")),
            (
                sites,
                (
                    "comes before `http_access deny CONNECT !SSL_ports`",
                    "Squid tunnels to ANY port",
                    "connectproxy allows only ports 443",
                ),
            ),
            (line_of(AZURE, "http_access allow localhost"), ("limits it to the dstdomain acls",)),
        ]
    sensor1 = line_of(CHAINING, "http_access allow sensor1")
    return [
        (
            sensor1,
            (
                "Squid lets this line reach any host",
                "Defender for IoT allowlist",
                ".azure-devices.net",
            ),
        ),
        (line_of(CHAINING, "http_access allow localhost"), ("reach any host",)),
        (
            line_of(CHAINING, "acl localnet src", prefix=True),
            ("acl localnet is not used", "not admitted"),
        ),
    ]


def assert_key_warnings(path: Path, warnings: list[str]) -> None:
    for line, fragments in key_warnings(path):
        at_line = [w for w in warnings if w.startswith(f"{path}:{line}: ")]
        assert any(all(f in w for f in fragments) for w in at_line), (line, fragments, warnings)


@pytest.mark.parametrize("path", VENDOR_CONFIGS, ids=lambda p: p.stem)
def test_check_config_on_a_guide_config(path: Path) -> None:
    result = cli("check-config", "--squid-conf", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"{path}: valid\n")
    assert_key_warnings(path, warning_lines(result.stdout))
    summary = policy_summary(result.stdout)
    assert f"source: {path}" in summary
    assert "allow.ports: 443" in summary


@pytest.mark.parametrize("path", VENDOR_CONFIGS, ids=lambda p: p.stem)
def test_import_squid_yaml_is_accepted_and_means_the_same(path: Path, tmp_path: Path) -> None:
    """Three places tell the operator the same differences (the YAML's comments, import-squid's
    stderr, check-config --squid-conf), and the YAML, kept as the new config, is the policy
    `--squid-conf` runs: same summary except for the source line."""
    imported = cli("import-squid", str(path))
    assert imported.returncode == 0, imported.stderr
    yaml_text = imported.stdout
    assert yaml_text.startswith(f"# connectproxy configuration translated from {path}\n")
    stderr_lines = imported.stderr.splitlines()
    assert stderr_lines and all(line.startswith("warning: ") for line in stderr_lines)
    warnings = warning_lines(imported.stderr)
    assert_key_warnings(path, warnings)
    commented = [line[len("#   ") :] for line in yaml_text.splitlines() if line.startswith("#   ")]
    assert commented == warnings

    kept = tmp_path / "connectproxy.yaml"
    kept.write_text(yaml_text)
    from_yaml = cli("check-config", "--config", str(kept))
    assert from_yaml.returncode == 0, from_yaml.stderr
    assert warning_lines(from_yaml.stdout) == []  # the differences are comments now
    from_squid = cli("check-config", "--squid-conf", str(path))
    assert warning_lines(from_squid.stdout) == warnings

    yaml_summary = policy_summary(from_yaml.stdout)
    squid_summary = policy_summary(from_squid.stdout)
    assert yaml_summary[0] == f"source: {kept}"
    assert squid_summary[0] == f"source: {path}"
    assert yaml_summary[1:] == squid_summary[1:]


@pytest.fixture(scope="module")
def imported_yaml(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    """Each guide config as an operator keeps it: `import-squid FILE > connectproxy.yaml`."""
    folder = tmp_path_factory.mktemp("imported")
    kept = {}
    for path in VENDOR_CONFIGS:
        result = cli("import-squid", str(path))
        assert result.returncode == 0, result.stderr
        kept[path] = folder / f"{path.stem}.yaml"
        kept[path].write_text(result.stdout)
    return kept


# (config, --source, target, exit status, what the answer must say)
EXPLAINED = [
    # The Azure guide: `http_access allow allowed_http_sites` has no src acl, so in Squid, and
    # in the translation (client `any`), every source reaches the sites; no source gets a 407.
    (
        AZURE,
        "10.100.100.1",
        "iot.azure-devices.net:443",
        0,
        "allow: host matches .azure-devices.net by policy default (client any)",
    ),
    (AZURE, "10.100.100.1", "example.com:443", 1, "deny: 403"),
    (AZURE, "10.100.100.1", "iot.azure-devices.net:80", 1, "deny: 403"),
    (AZURE, "10.100.100.1", "iot.azure-devices.net:8883", 1, "deny: 403"),
    (AZURE, "203.0.113.9", "download.microsoft.com:443", 0, "(client any)"),
    (AZURE, "203.0.113.9", "x.download.microsoft.com:443", 0, "(client any)"),
    (AZURE, "10.100.100.1", "198.51.100.7:443", 1, "deny: 403"),
    (AZURE, "127.0.0.1", "example.com:443", 1, "deny: 403"),
    # The chaining guide: sensor1 and localhost are admitted, to the Defender for IoT allowlist.
    (CHAINING, "10.100.100.1", "iot.azure-devices.net:443", 0, "(client sensor1)"),
    (CHAINING, "10.100.100.1", "x.blob.core.windows.net:443", 0, "(client sensor1)"),
    (CHAINING, "10.100.100.1", "download.microsoft.com:443", 0, "(client sensor1)"),
    (CHAINING, "10.100.100.1", "x.download.microsoft.com:443", 1, "deny: 403"),
    (CHAINING, "10.100.100.1", "example.com:443", 1, "deny: 403"),
    (CHAINING, "10.100.100.1", "iot.azure-devices.net:80", 1, "deny: 403"),
    (CHAINING, "127.0.0.1", "x.servicebus.windows.net:443", 0, "(client localhost)"),
    (CHAINING, "10.1.2.3", "iot.azure-devices.net:443", 1, "deny: 407"),  # localnet: unused
    (CHAINING, "203.0.113.9", "iot.azure-devices.net:443", 1, "deny: 407"),
]


@pytest.mark.parametrize(
    ("path", "source", "target", "status", "says"),
    EXPLAINED,
    ids=[f"{p.stem}-{s}-{t}" for p, s, t, _, _ in EXPLAINED],
)
def test_explain_on_the_imported_yaml(
    imported_yaml: dict[Path, Path], path: Path, source: str, target: str, status: int, says: str
) -> None:
    result = cli("explain", "--config", str(imported_yaml[path]), "--source", source, target)
    assert result.returncode == status, result.stdout + result.stderr
    assert says in result.stdout, result.stdout
    if status == 0:
        # Nothing names a hosts map in a squid.conf: the name is left to DNS at connect time.
        assert "route: direct; addresses come from DNS" in result.stdout


UNTRANSLATABLE = [
    ("missing.conf", None, "cannot read the file"),
    ("undefined-acl.conf", "http_access allow nosuch\n", "acl 'nosuch', which is not defined"),
    (
        "intercept.conf",
        "http_port 3129 intercept\nacl all src all\nhttp_access allow all\n",
        "no http_port can be translated",
    ),
    (
        "conditional.conf",
        "if ${process_number} = 1\nhttp_port 3128\nendif\n",
        "if/else/endif) cannot be translated",
    ),
    ("bad-port.conf", "http_port 70000\n", "must be a number from 1 to 65535"),
]


@pytest.mark.parametrize(
    ("name", "text", "message"), UNTRANSLATABLE, ids=[n for n, _, _ in UNTRANSLATABLE]
)
def test_untranslatable_squid_conf_is_exit_2_with_one_clear_line(
    tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    imported = cli("import-squid", str(path))
    assert imported.returncode == 2
    assert imported.stdout == ""
    assert imported.stderr.startswith(f"connectproxy: {path}")
    assert message in imported.stderr and imported.stderr.count("\n") == 1, imported.stderr
    for command in ("check-config", "run"):
        result = cli(command, "--squid-conf", str(path))
        assert result.returncode == 2, (command, result.stderr)
        assert result.stdout == ""
        assert result.stderr.startswith("connectproxy: config error: ")
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_import_squid_of_a_folder_is_exit_2(tmp_path: Path) -> None:
    result = cli("import-squid", str(tmp_path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("connectproxy: ") and str(tmp_path) in result.stderr


# ---- 2. run --squid-conf on the guides' configs as printed --------------------------------------


def test_run_on_the_azure_guide_config(tmp_path: Path) -> None:
    """Only http_port moves to a free loopback port. Without DNS no allowed name can be tunnelled
    here (see the module docstring; the side-by-side tests below complete 200s), so this checks
    every answer given before a lookup, from a source that is not localhost: Squid's rule
    without a src acl admits it (client `any`), and the allowlist still applies."""
    port = free_port()
    conf = tmp_path / "squid.conf"
    conf.write_text(with_http_port(AZURE.read_text(), f"127.0.0.1:{port}"))
    proxy = DropIn(conf, tmp_path)
    with proxy:
        other_host = ask(port, "example.com:443", source="127.0.0.2")
        other_port = ask(port, "iot.azure-devices.net:8883", source="127.0.0.2")
        plain_port = ask(port, "iot.azure-devices.net:80", source="127.0.0.2")
        ip_literal = ask(port, "198.51.100.7:443", source="127.0.0.2")
        plain_http = ask(port, "http://iot.azure-devices.net/", source="127.0.0.2", method="GET")
        from_localhost = ask(port, "example.com:443")
    assert proxy.stop() == 0
    assert [other_host.status, other_port.status, plain_port.status, ip_literal.status] == [403] * 4
    assert plain_http.status == 405 and b"\r\nAllow: CONNECT\r\n" in plain_http.head
    assert from_localhost.status == 403
    warnings = proxy.config_warnings()
    sites = line_of(AZURE, "http_access allow allowed_http_sites")
    for fragment in ("ANY source address", "Squid tunnels to ANY port", "plain-HTTP requests"):
        assert any(w.startswith(f"{conf}:{sites}: ") and fragment in w for w in warnings), fragment
    records = proxy.access_records()
    assert [(r["target"], r["status"], r["client"]) for r in records] == [
        ("example.com:443", 403, "any"),
        ("iot.azure-devices.net:8883", 403, "any"),
        ("iot.azure-devices.net:80", 403, "any"),
        ("198.51.100.7:443", 403, "any"),
        (None, 405, None),
        # localhost is admitted by both allow lines: its own client, bound to both policies.
        ("example.com:443", 403, "localhost"),
    ]
    assert {r["outcome"] for r in records} == {"forbidden", "method_not_allowed"}
    assert all(r["client_addr"] == "127.0.0.2" for r in records[:5])


def test_run_on_the_chaining_guide_config(tmp_path: Path) -> None:
    """Debian's stock squid.conf plus sensor1, http_port moved to loopback: localhost is a
    client (to the Defender for IoT allowlist only), any other source gets a 407."""
    port = free_port()
    conf = tmp_path / "squid.conf"
    conf.write_text(with_http_port(CHAINING.read_text(), f"127.0.0.1:{port}"))
    proxy = DropIn(conf, tmp_path)
    with proxy:
        any_host = ask(port, "example.com:443")
        bad_port = ask(port, "iot.azure-devices.net:80")
        stranger = ask(port, "iot.azure-devices.net:443", source="127.0.0.2")
    assert proxy.stop() == 0
    assert any_host.status == 403 and bad_port.status == 403
    assert stranger.status == 407
    assert b'\r\nProxy-Authenticate: Basic realm="connectproxy"\r\n' in stranger.head
    sensor1 = line_of(CHAINING, "http_access allow sensor1")
    assert any(
        w.startswith(f"{conf}:{sensor1}: ") and "Defender for IoT allowlist" in w
        for w in proxy.config_warnings()
    )
    records = proxy.access_records()
    assert [(r["status"], r["client"], r["outcome"]) for r in records] == [
        (403, "localhost", "forbidden"),
        (403, "localhost", "forbidden"),
        (407, None, "auth_required"),
    ]


# ---- 3. side by side with a real Squid ----------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A request and the status each proxy must answer: 200 means tunnelled end to end."""

    target: str
    squid: int
    dropin: int
    source: str = "127.0.0.1"
    headers: str = ""

    @property
    def forwarded(self) -> str:
        """The target as both proxies pass it on: lowercased, without a trailing dot."""
        host, port = self.target.rsplit(":", 1)
        return f"{host.lower().removesuffix('.')}:{port}"


def basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Proxy-Authorization: Basic {token}\r\n"


SENSOR2 = basic("sensor2", "sensor2 password")
TECHNICIAN = basic("technician", "technician password")

# Where a request is refused, Squid and connectproxy mostly say the same; the exception is a
# client nobody admits: Squid's `deny all` answers 403, connectproxy asks for credentials with
# 407 (SPEC step 4). Both refuse, which is what parity means here.
PARITY_PROBES = {
    "parity.conf": [
        Probe("iot.azure-devices.net:443", 200, 200),
        Probe("azure-devices.net:443", 200, 200),  # `.domain` includes the domain itself
        Probe("a.b.azure-devices.net:443", 200, 200),
        Probe("IoT.Azure-Devices.NET:443", 200, 200),  # names compare case-insensitively
        Probe("iot.azure-devices.net.:443", 200, 200),  # one trailing dot: the same name
        Probe("example.com:443", 403, 403),
        Probe("notazure-devices.net:443", 403, 403),  # a suffix only at a label boundary
        Probe("azure-devices.net.example.com:443", 403, 403),
        Probe("iot.azure-devices.net:80", 403, 403),  # deny CONNECT !SSL_ports
        Probe("iot.azure-devices.net:8883", 403, 403),
        Probe("127.0.0.1:443", 403, 403),  # IP literals match no dstdomain
        Probe("[::1]:443", 403, 403),
        Probe("iot.azure-devices.net:443", 403, 407, source="127.0.0.2"),  # not a sensor
    ],
    "passwords.conf": [
        Probe("iot.azure-devices.net:443", 200, 200, headers=SENSOR2),
        Probe("download.microsoft.com:443", 200, 200, headers=TECHNICIAN),
        Probe("iot.azure-devices.net:443", 407, 407),  # no credentials
        Probe("iot.azure-devices.net:443", 407, 407, headers=basic("sensor2", "wrong")),
        Probe("iot.azure-devices.net:443", 407, 407, headers=basic("nobody", "sensor2 password")),
        Probe("example.com:443", 403, 403, headers=SENSOR2),
        Probe("x.download.microsoft.com:443", 403, 403, headers=SENSOR2),  # exact name only
        Probe("iot.azure-devices.net:8443", 403, 403, headers=SENSOR2),
    ],
}
# Squid's own directives in harness.conf.template: connectproxy ignores each, with a warning.
SQUID_ONLY = [
    "pid_filename",
    "cache_log",
    "access_log",
    "coredump_dir",
    "netdb_filename",
    "pinger_enable",
    "dns_nameservers",
    "proxy_protocol_access",
    "shutdown_lifetime",
]


@pytest.mark.squid
@pytest.mark.parametrize("name", sorted(PARITY_PROBES))
def test_same_answers_as_a_real_squid_where_the_models_agree(
    rundir: Path, upstream: StandInUpstream, name: str
) -> None:
    """The files in tests/data/squid/parity/ are policies both models express exactly: the
    translation reports no difference in policy but plain HTTP (not sent here). Squid and
    connectproxy run on the same file, http_port aside, and get the same requests: each is
    tunnelled by both (200, bytes echoed through the shared parent) or refused by both, the
    parent sees the same targets from each, and neither passes the client's credentials on."""
    probes = PARITY_PROBES[name]
    files = side_by_side(PARITY_DIR / name, rundir, upstream, beside=(PARITY_DIR / "passwd",))
    squid = RealSquid(files.squid_conf, files.squid_port)
    dropin = DropIn(files.dropin_conf, rundir)
    with squid, dropin:
        from_squid = [ask(files.squid_port, p.target, p.source, headers=p.headers) for p in probes]
        squid_forwarded = upstream.take_targets()
        from_dropin = [
            ask(files.dropin_port, p.target, p.source, headers=p.headers) for p in probes
        ]
        dropin_forwarded = upstream.take_targets()
    assert dropin.stop() == 0

    for probe, by_squid, by_dropin in zip(probes, from_squid, from_dropin, strict=True):
        seen = (probe, by_squid.status, by_dropin.status)
        assert (by_squid.status, by_dropin.status) == (probe.squid, probe.dropin), seen
        assert (probe.squid == 200) == (probe.dropin == 200), "a parity probe must agree"
        assert by_squid.echoed == by_dropin.echoed == (probe.squid == 200), seen
    allowed = [p.forwarded for p in probes if p.squid == 200]
    assert squid_forwarded == dropin_forwarded == allowed
    assert not any(b"proxy-authorization" in head.lower() for head in upstream.heads)

    warnings = dropin.config_warnings()
    policy_warnings = [w for w in warnings if "http_access" in w]
    assert len(policy_warnings) == 1 and "plain-HTTP" in policy_warnings[0], policy_warnings
    for directive in SQUID_ONLY:
        assert any(f"directive {directive} ignored" in w for w in warnings), directive


# Values Squid never matches: with a trailing dot (see the file's comment).
TRAILING_DOT_VALUES = ("download.microsoft.com.", ".blob.core.windows.net.")
TRAILING_DOT_PROBES = [
    Probe("iot.azure-devices.net:443", 200, 200),
    Probe("download.microsoft.com:443", 403, 403),
    Probe("download.microsoft.com.:443", 403, 403),
    Probe("x.blob.core.windows.net:443", 403, 403),
]


@pytest.mark.squid
def test_dstdomain_values_with_a_trailing_dot_are_not_widened_silently(
    rundir: Path, upstream: StandInUpstream
) -> None:
    """SPEC section 9: the translation may be stricter than Squid, and every difference is
    warned about. Squid 5.7 never matches a dstdomain value written with a trailing dot, so
    the hosts it names are refused there; connectproxy must refuse them too, or say at startup,
    naming each such value, that it lets them through."""
    source = PARITY_DIR / "trailing-dot.conf"
    files = side_by_side(source, rundir, upstream)
    with RealSquid(files.squid_conf, files.squid_port), DropIn(files.dropin_conf, rundir) as dropin:
        from_squid = [ask(files.squid_port, p.target) for p in TRAILING_DOT_PROBES]
        from_dropin = [ask(files.dropin_port, p.target) for p in TRAILING_DOT_PROBES]
    assert dropin.stop() == 0
    assert [a.status for a in from_squid] == [p.squid for p in TRAILING_DOT_PROBES]
    widened = [
        (probe.target, by_dropin.status)
        for probe, by_squid, by_dropin in zip(
            TRAILING_DOT_PROBES, from_squid, from_dropin, strict=True
        )
        if by_squid.status != 200 and by_dropin.status == 200
    ]
    acl_line = line_of(source, "acl sites dstdomain", prefix=True)
    at_acl_line = [
        w for w in dropin.config_warnings() if w.startswith(f"{files.dropin_conf}:{acl_line}: ")
    ]
    unannounced = [v for v in TRAILING_DOT_VALUES if not any(v in w for w in at_acl_line)]
    assert not (widened and unannounced), (
        f"connectproxy tunnels {widened}, which Squid refuses, and no warning names "
        f"{unannounced}; warnings at the acl line: {at_acl_line}"
    )


# (source, target, Squid allows, connectproxy allows, the warning that announced a difference)
Row = tuple[str, str, bool, bool, str | None]

AZURE_SIDE_BY_SIDE: list[Row] = [
    ("127.0.0.2", "iot.azure-devices.net:443", True, True, None),  # any source, as in Squid
    ("127.0.0.2", "x.blob.core.windows.net:443", True, True, None),
    ("127.0.0.2", "download.microsoft.com:443", True, True, None),
    ("127.0.0.2", "example.com:443", False, False, None),
    ("127.0.0.2", "iot.azure-devices.net:8883", True, False, "Squid tunnels to ANY port"),
    ("127.0.0.2", "iot.azure-devices.net:80", True, False, "Squid tunnels to ANY port"),
    ("127.0.0.1", "example.com:443", True, False, "limits it to the dstdomain acls"),
    ("127.0.0.1", "example.com:8443", False, False, None),
]

CHAINING_SIDE_BY_SIDE: list[Row] = [
    ("10.100.100.1", "iot.azure-devices.net:443", True, True, None),
    ("10.100.100.1", "download.microsoft.com:443", True, True, None),
    ("10.100.100.1", "example.com:443", True, False, "Defender for IoT allowlist"),
    ("10.100.100.1", "iot.azure-devices.net:80", False, False, None),  # deny CONNECT !SSL_ports
    ("10.100.100.1", "iot.azure-devices.net:8883", False, False, None),
    ("127.0.0.1", "x.servicebus.windows.net:443", True, True, None),
    ("127.0.0.1", "example.com:443", True, False, "reach any host"),
    ("10.1.2.3", "iot.azure-devices.net:443", False, False, None),  # localnet is not used
    ("203.0.113.9", "iot.azure-devices.net:443", False, False, None),
]


@pytest.mark.squid
@pytest.mark.parametrize(
    ("path", "rows", "proxy_protocol"),
    [(AZURE, AZURE_SIDE_BY_SIDE, False), (CHAINING, CHAINING_SIDE_BY_SIDE, True)],
    ids=["azure-proxy", "chaining"],
)
def test_a_guide_config_beside_a_real_squid(
    rundir: Path, upstream: StandInUpstream, path: Path, rows: list[Row], proxy_protocol: bool
) -> None:
    """A guide config under Squid and under connectproxy, the harness appended to both: they
    agree wherever the models do, and every request they answer differently is one the
    translation warned about, at startup, and always in the stricter direction. The chaining
    config's sources come in PROXY headers (`require-proxy-header` on its http_port), which is
    how sensor1's 10.100.100.1 reaches both proxies from a test on loopback."""
    files = side_by_side(path, rundir, upstream, "require-proxy-header" if proxy_protocol else "")
    squid = RealSquid(files.squid_conf, files.squid_port)
    dropin = DropIn(files.dropin_conf, rundir)

    def send(port: int, source: str, target: str) -> Answer:
        if proxy_protocol:
            return ask(port, target, proxy_header=proxy_v1(source, port))
        return ask(port, target, source=source)

    with squid, dropin:
        from_squid = [send(files.squid_port, s, t) for s, t, *_ in rows]
        squid_forwarded = upstream.take_targets()
        from_dropin = [send(files.dropin_port, s, t) for s, t, *_ in rows]
        dropin_forwarded = upstream.take_targets()
    assert dropin.stop() == 0

    warnings = dropin.config_warnings()
    for (source, target, squid_allows, dropin_allows, because), by_squid, by_dropin in zip(
        rows, from_squid, from_dropin, strict=True
    ):
        seen = (source, target, by_squid.status, by_dropin.status)
        assert by_squid.status == (200 if squid_allows else 403), seen
        assert by_squid.echoed == squid_allows, seen
        assert (by_dropin.status == 200) == by_dropin.echoed == dropin_allows, seen
        assert 400 <= by_dropin.status < 500 or dropin_allows, seen
        if squid_allows != dropin_allows:
            assert squid_allows and because is not None, seen  # never wider than Squid
            assert any(because in w for w in warnings), (because, warnings)
    assert squid_forwarded == [t for _, t, allowed, _, _ in rows if allowed]
    assert dropin_forwarded == [t for _, t, _, allowed, _ in rows if allowed]
