"""The image built from the repository's Dockerfile, run for real (SPEC section 10, container).

Both builds the Dockerfile offers (compiled, and plain Python through the declared build
argument) are built and run the way the Dockerfile's header tells users to: read-only root
filesystem, the config mounted from the host, port 3128 published (here on 127.0.0.1 only).
The TLS origin runs inside the container on its loopback, so the tunnel goes host → published
port → proxy → 127.0.0.1 in the container, with a TLS handshake verified end to end.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy import peer
from tests.deploy.conftest import ORIGIN_NAME, ORIGIN_PORT, SITE_CONFIG, start_origin
from tests.deploy.podman import Podman
from tests.deploy.util import free_port, wait_for

pytestmark = pytest.mark.deploy


@dataclass
class Running:
    podman: Podman
    cid: str
    port: int
    build: str
    ca: Path

    @property
    def proxy(self) -> str:
        return f"127.0.0.1:{self.port}"

    def tunnel(self) -> ssl.SSLSocket:
        return peer.tls_tunnel(
            self.proxy, f"{ORIGIN_NAME}:{ORIGIN_PORT}", str(self.ca), ORIGIN_NAME
        )


def _start(podman: Podman, image: str, build: str, peer_dir: Path, config_dir: Path) -> Running:
    port = free_port()
    cid = podman.run(
        image,
        "--read-only",
        "-p",
        f"127.0.0.1:{port}:3128",
        "-v",
        f"{config_dir}:/etc/connectproxy:ro",
        "-v",
        f"{peer_dir}:/peer:ro",
    )
    start_origin(podman, cid)
    running = Running(podman, cid, port, build, peer_dir / "ca.pem")

    def tunnel_works() -> bool:
        try:
            with running.tunnel() as conn:
                peer.echo_once(conn, b"ready?")
            return True
        except OSError:
            return False

    wait_for(tunnel_works, 30, f"a tunnel through the {build} container")
    return running


@pytest.fixture(scope="module", params=["compiled", "pure"])
def container(
    request: pytest.FixtureRequest,
    podman: Podman,
    peer_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Running]:
    build = str(request.param)
    image = request.getfixturevalue("product_image" if build == "compiled" else "pure_image")
    config_dir = tmp_path_factory.mktemp(f"config-{build}")
    (config_dir / "connectproxy.yaml").write_text(SITE_CONFIG)
    (config_dir / "connectproxy.yaml").chmod(0o644)
    config_dir.chmod(0o755)
    running = _start(podman, image, build, peer_dir, config_dir)
    try:
        yield running
    finally:
        podman.remove_container(running.cid)


def test_the_build_argument_selects_the_build(container: Running) -> None:
    version = container.podman.exec(container.cid, "connectproxy", "--version").stdout
    expected = "yes" if container.build == "compiled" else "no"
    assert f"(compiled: {expected})" in version


def test_runs_as_uid_10001_on_a_read_only_root(container: Running) -> None:
    status = container.podman.exec(container.cid, "cat", "/proc/1/status").stdout
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == ["10001"] * 4
    assert container.podman.inspect(container.cid, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    # Even root cannot write to the image's filesystem; only the usual tmpfs mounts are writable.
    denied = container.podman.exec(
        container.cid, "touch", "/usr/local/written", user="root", check=False
    )
    assert denied.returncode != 0
    assert "Read-only file system" in denied.stderr


def test_health_check_reports_healthy(container: Running) -> None:
    """The image's own HEALTHCHECK (GET /healthz inside the container) passes."""
    result = container.podman.cmd("healthcheck", "run", container.cid, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    healthz = container.podman.exec(
        container.cid, "python3", "/peer/peer.py", "get", "http://127.0.0.1:9128/healthz"
    )
    assert healthz.stdout.strip() == "200"


def test_tunnel_to_a_loopback_tls_origin(container: Running) -> None:
    with container.tunnel() as conn:
        assert conn.version() in ("TLSv1.2", "TLSv1.3")
        peer.echo_once(conn, b"x" * 100_000)


def test_the_mounted_config_is_the_one_in_force(container: Running) -> None:
    """Port 443 is what the embedded default allows; the mounted file allows only 8443."""
    sock, status = peer.connect_through(container.proxy, "download.microsoft.com:443")
    sock.close()
    assert status == 403
    check = container.podman.exec(container.cid, "connectproxy", "check-config")
    assert "/etc/connectproxy/connectproxy.yaml" in check.stdout + check.stderr


def test_sigterm_drains_then_exits_0(container: Running) -> None:
    """Runs last in the module: it stops the container."""
    held = container.tunnel()
    peer.echo_once(held, b"before SIGTERM")
    container.podman.cmd("kill", "--signal", "TERM", container.cid)
    try:

        def not_ready() -> bool:
            got = container.podman.exec(
                container.cid,
                "python3",
                "/peer/peer.py",
                "get",
                "http://127.0.0.1:9128/readyz",
                check=False,
            )
            return got.stdout.strip() == "503"

        wait_for(not_ready, 10, "/readyz to answer 503 while draining")

        # No new tunnel while draining: the listener is closed.
        def refused() -> bool:
            try:
                sock, _ = peer.connect_through(
                    container.proxy, f"{ORIGIN_NAME}:{ORIGIN_PORT}", timeout=2
                )
                sock.close()
                return False
            except OSError:
                return True

        wait_for(refused, 10, "new connections to be refused while draining")
        # The open tunnel goes on working while the container drains.
        time.sleep(1)
        peer.echo_once(held, b"while draining")
        assert container.podman.inspect(container.cid, "{{.State.Running}}") == "true"
    finally:
        held.close()
    # Its last tunnel closed, the proxy exits long before shutdown_grace (20 s) is up.
    started = time.monotonic()
    status = container.podman.cmd("wait", container.cid, timeout=30).stdout.strip()
    assert status == "0"
    assert time.monotonic() - started < 10
    output = container.podman.cmd("logs", container.cid)
    logs = output.stdout + output.stderr
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    draining = [e for e in events if e.get("event") == "draining"]
    assert draining and draining[0]["open_tunnels"] >= 1, logs
    assert any(e.get("event") == "stopped" for e in events), logs
