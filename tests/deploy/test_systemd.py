"""The repository's systemd unit under a real systemd (SPEC sections 7 and 10).

systemd runs as PID 1 of a privileged container (--privileged, or systemd silently skips the
mount sandbox), with the unit and sysusers file from systemd/ as they are, and the program from
the project's image at /usr/local/bin/connectproxy where the unit expects it. The tests run in
file order on one container: readiness, reload, a tunnel, the sandbox, the watchdog, stop.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy import peer
from tests.deploy.conftest import ORIGIN_NAME, ORIGIN_PORT, SITE_CONFIG, start_origin
from tests.deploy.podman import Podman
from tests.deploy.util import free_port, record, wait_for

pytestmark = pytest.mark.deploy

CONFIG = "/etc/connectproxy/connectproxy.yaml"
# The site config a reload switches to: the origin (in the container, on its loopback) becomes
# reachable, which the default the image starts with refuses.
TUNNEL_CONFIG = SITE_CONFIG


@dataclass
class Machine:
    podman: Podman
    cid: str
    port: int
    ca: Path

    def sh(self, script: str, check: bool = True) -> str:
        return self.podman.exec(self.cid, "sh", "-c", script, check=check).stdout.strip()

    def show(self, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show connectproxy -p {','.join(props)}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])

    def tunnel(self) -> ssl.SSLSocket:
        return peer.tls_tunnel(
            f"127.0.0.1:{self.port}", f"{ORIGIN_NAME}:{ORIGIN_PORT}", str(self.ca), ORIGIN_NAME
        )

    def status_of(self, target: str) -> int:
        sock, status = peer.connect_through(f"127.0.0.1:{self.port}", target)
        sock.close()
        return status

    def get(self, path: str) -> str:
        return self.sh(f"python3 /peer/peer.py get http://127.0.0.1:9128{path}", check=False)


@pytest.fixture(scope="module")
def machine(systemd_image: str, podman: Podman, peer_dir: Path) -> Iterator[Machine]:
    port = free_port()
    cid = podman.run(
        systemd_image,
        "--systemd=always",
        "--privileged",
        "-p",
        f"127.0.0.1:{port}:3128",
        "-v",
        f"{peer_dir}:/peer:ro",
    )
    box = Machine(podman, cid, port, peer_dir / "ca.pem")
    try:
        wait_for(
            lambda: box.sh("systemctl is-system-running", check=False) in ("running", "degraded"),
            60,
            "systemd to finish booting",
        )
        start_origin(podman, cid)
        yield box
    finally:
        journal = podman.exec(cid, "journalctl", "-u", "connectproxy", "--no-pager", check=False)
        print(journal.stdout[-6000:])
        podman.remove_container(cid)


def test_active_only_after_ready(machine: Machine) -> None:
    state = machine.show("Type", "ActiveState", "SubState", "StatusText", "NRestarts")
    assert state["Type"] == "notify"
    assert state["ActiveState"] == "active", state
    # The status line is one the proxy sent over the notify socket along with READY=1.
    assert state["StatusText"].startswith("serving on"), state
    assert machine.status_of("download.microsoft.com:80") == 403  # serving the default config
    # A start that never gets to READY=1 never becomes active: with port 3128 taken, the proxy
    # cannot bind and exits; a Type=simple unit would have been "active" in between.
    entered = machine.show("ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"]
    machine.sh("systemctl stop connectproxy")
    machine.podman.cmd(
        "exec",
        "-d",
        machine.cid,
        "sh",
        "-c",
        "echo $$ > /run/blocker.pid; exec python3 -c 'import socket, time; "
        's = socket.create_server(("0.0.0.0", 3128)); time.sleep(120)\'',
    )
    probe = "import socket; socket.create_connection(('127.0.0.1', 3128), 1)"
    wait_for(
        lambda: (
            machine.podman.exec(machine.cid, "python3", "-c", probe, check=False).returncode == 0
        ),
        10,
        "another process to hold port 3128",
    )
    started = machine.podman.exec(machine.cid, "systemctl", "start", "connectproxy", check=False)
    assert started.returncode != 0
    failed = machine.show("ActiveState", "ActiveEnterTimestampMonotonic")
    assert failed["ActiveState"] != "active", failed
    assert failed["ActiveEnterTimestampMonotonic"] == entered, failed  # not active since
    machine.sh("systemctl stop connectproxy && kill $(cat /run/blocker.pid)")
    machine.sh("systemctl reset-failed connectproxy", check=False)
    machine.sh("systemctl start connectproxy")
    assert machine.show("ActiveState")["ActiveState"] == "active"


def test_reload_applies_a_changed_config(machine: Machine) -> None:
    pid = machine.main_pid()
    assert machine.status_of(f"{ORIGIN_NAME}:{ORIGIN_PORT}") == 403
    machine.podman.cmd(
        "exec", "-i", machine.cid, "sh", "-c", f"cat > {CONFIG}", input=TUNNEL_CONFIG
    )
    machine.sh("systemctl reload connectproxy")
    assert machine.main_pid() == pid  # re-read in place, not restarted
    wait_for(
        lambda: machine.status_of(f"{ORIGIN_NAME}:{ORIGIN_PORT}") == 200,
        10,
        "the reloaded config to allow the origin",
    )
    # A broken file fails the reload visibly and the running config stays.
    machine.sh(f"cp {CONFIG} /root/good.yaml && echo 'listen: [[[' >> {CONFIG}")
    broken = machine.podman.exec(machine.cid, "systemctl", "reload", "connectproxy", check=False)
    assert broken.returncode != 0
    assert machine.show("ActiveState")["ActiveState"] == "active"
    machine.sh(f"cp /root/good.yaml {CONFIG}")


def test_tunnel_through_the_service(machine: Machine) -> None:
    with machine.tunnel() as conn:
        assert conn.version() in ("TLSv1.2", "TLSv1.3")
        peer.echo_once(conn, b"y" * 50_000)


def test_protect_system_strict_holds(machine: Machine) -> None:
    """Inside the service's own mount namespace, as its user: nothing outside its directories
    is writable, not even by root; the logs directory is."""
    pid = machine.main_pid()
    mounts = machine.sh(f"cat /proc/{pid}/mountinfo")
    root_mount = next(line for line in mounts.splitlines() if line.split()[4] == "/")
    assert re.search(r"\bro\b", root_mount.split()[5]), root_mount
    enter = f"nsenter --target {pid} --mount"
    as_service = f"{enter} --setuid 10001 --setgid 10001"
    for path in ("/usr/local/bin/x", "/etc/connectproxy/x", "/var/lib/x", "/opt/x", "/root/x"):
        denied = machine.podman.exec(machine.cid, "sh", "-c", f"{enter} touch {path}", check=False)
        assert denied.returncode != 0, path
    assert machine.sh(f"{as_service} touch /var/log/connectproxy/written && echo ok") == "ok"
    # /tmp is the service's own (PrivateTmp=yes): what it writes there is not the host's /tmp.
    machine.sh(f"{as_service} touch /tmp/private-marker")
    assert machine.sh("test -e /tmp/private-marker && echo shared || echo private") == "private"


def test_systemd_analyze_security(machine: Machine) -> None:
    out = machine.sh("systemd-analyze security connectproxy --no-pager")
    match = re.search(r"Overall exposure level for connectproxy.service: ([0-9.]+) (\w+)", out)
    assert match, out[-2000:]
    score = float(match.group(1))
    record("systemd-analyze security exposure", f"{score} {match.group(2)}")
    assert score <= 2.0, out[-3000:]
    assert machine.sh("systemd-analyze verify connectproxy.service 2>&1 || true") == ""


def test_a_stopped_loop_is_killed_by_the_watchdog_and_restarted(machine: Machine) -> None:
    """WatchdogSec is 30 s in the unit; a drop-in shortens it so the test waits seconds, not a
    minute. Nothing else differs: the proxy pings at half the interval it is given."""
    machine.sh(
        "mkdir -p /run/systemd/system/connectproxy.service.d && printf '[Service]\\n"
        "WatchdogSec=4\\n' > /run/systemd/system/connectproxy.service.d/watchdog.conf"
        " && systemctl daemon-reload && systemctl restart connectproxy"
    )
    assert machine.show("WatchdogUSec")["WatchdogUSec"] == "4s"
    time.sleep(6)  # a healthy proxy outlives the interval
    before = machine.show("MainPID", "NRestarts")
    assert machine.show("ActiveState")["ActiveState"] == "active"
    machine.sh(f"kill -STOP {before['MainPID']}")
    stopped_at = time.monotonic()

    def restarted() -> bool:
        now = machine.show("MainPID", "NRestarts", "ActiveState")
        return (
            now["NRestarts"] != before["NRestarts"]
            and now["MainPID"] not in ("0", before["MainPID"])
            and now["ActiveState"] == "active"
        )

    wait_for(restarted, 40, "the watchdog to kill the stopped proxy and systemd to restart it")
    record(
        "systemd watchdog: stopped loop to restarted service (s)",
        f"{time.monotonic() - stopped_at:.1f}",
    )
    journal = machine.sh("journalctl -u connectproxy --no-pager")
    assert "Watchdog timeout" in journal, journal[-3000:]
    machine.sh(
        "rm -r /run/systemd/system/connectproxy.service.d && systemctl daemon-reload"
        " && systemctl restart connectproxy"
    )


def test_stop_drains(machine: Machine) -> None:
    held = machine.tunnel()
    try:
        peer.echo_once(held, b"before stop")
        machine.sh("systemctl stop --no-block connectproxy")
        wait_for(
            lambda: machine.show("ActiveState")["ActiveState"] == "deactivating",
            10,
            "the service to start draining",
        )
        assert machine.get("/readyz") == "503"
        time.sleep(1)
        peer.echo_once(held, b"while draining")  # the open tunnel goes on
        assert machine.show("ActiveState")["ActiveState"] == "deactivating"
    finally:
        held.close()
    # The last tunnel closed, the proxy exits cleanly long before shutdown_grace is up.
    wait_for(
        lambda: machine.show("ActiveState")["ActiveState"] == "inactive",
        10,
        "the service to stop once its tunnel closed",
    )
    final = machine.show("Result", "ExecMainStatus")
    assert final["Result"] == "success" and final["ExecMainStatus"] == "0", final
    journal = machine.sh("journalctl -u connectproxy -o cat --no-pager")
    events = [json.loads(line) for line in journal.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "draining" and e.get("open_tunnels", 0) >= 1 for e in events)
