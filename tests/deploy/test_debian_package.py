"""The Debian package, installed with apt into a clean Debian under systemd (SPEC section 10).

`make deb` builds it with Debian's tools (dpkg-buildpackage, debhelper). A second build under
a higher version (the plain-Python build, which also tells the two apart after the upgrade)
is the upgrade. The host is a clean Debian with systemd as PID 1 and no Python at all: apt
fetches what the package depends on, as on a real host. The tests run in file order on one
container: install, upgrade, remove, purge.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO, DebBuild, changelog_version
from tests.deploy.podman import Podman
from tests.deploy.util import record, wait_for

pytestmark = pytest.mark.deploy

CONFIG = "/etc/connectproxy/connectproxy.yaml"
PYTHON = "/opt/connectproxy/bin/python"  # the package's own interpreter runs the test peer


@dataclass
class Packages:
    first: Path
    upgrade: Path
    first_version: str
    upgrade_version: str


@pytest.fixture(scope="module")
def packages(deb_builds: dict[str, DebBuild]) -> Packages:
    first = deb_builds["first"].wait()
    upgrade = deb_builds["upgrade"].wait()
    for deb in (first, upgrade):
        deb.chmod(0o644)
        deb.parent.chmod(0o755)
    version = changelog_version()
    return Packages(first, upgrade, version, f"{version}+upgrade1")


@dataclass
class Host:
    podman: Podman
    cid: str

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.podman.exec(
            self.cid,
            "sh",
            "-c",
            f"export DEBIAN_FRONTEND=noninteractive; {script}",
            check=check,
        )

    def out(self, script: str) -> str:
        return self.sh(script).stdout.strip()

    def show(self, *props: str) -> dict[str, str]:
        text = self.out(f"systemctl show connectproxy -p {','.join(props)}")
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def apt_install(self, deb: Path, folder: str) -> None:
        # Exactly what the README tells an operator to type, from the folder holding the file.
        done = self.sh(f"cd {folder} && apt install -y ./{shlex.quote(deb.name)} </dev/null")
        assert "connectproxy" in done.stdout

    def peer(self, *args: str) -> str:
        return self.out(f"{PYTHON} /peer/peer.py {' '.join(shlex.quote(a) for a in args)}")


@pytest.fixture(scope="module")
def host(
    debian_systemd_image: str, podman: Podman, packages: Packages, peer_dir: Path
) -> Iterator[Host]:
    cid = podman.run(
        debian_systemd_image,
        "--systemd=always",
        "--privileged",
        "-v",
        f"{packages.first.parent}:/debs/first:ro",
        "-v",
        f"{packages.upgrade.parent}:/debs/upgrade:ro",
        "-v",
        f"{peer_dir}:/peer:ro",
    )
    box = Host(podman, cid)
    try:
        wait_for(
            lambda: (
                box.sh("systemctl is-system-running", check=False).stdout.strip()
                in ("running", "degraded")
            ),
            60,
            "systemd to finish booting",
        )
        yield box
    finally:
        journal = podman.exec(cid, "journalctl", "-u", "connectproxy", "--no-pager", check=False)
        print(journal.stdout[-4000:])
        podman.remove_container(cid)


def test_apt_install_leaves_the_service_enabled_and_serving(host: Host, packages: Packages) -> None:
    assert host.sh("command -v python3", check=False).returncode != 0  # a clean host
    started = time.monotonic()
    host.apt_install(packages.first, "/debs/first")
    record(
        "apt install ./connectproxy_….deb on a clean Debian (s)",
        f"{time.monotonic() - started:.1f}",
    )
    assert host.out("systemctl is-enabled connectproxy") == "enabled"
    state = host.show("ActiveState", "MainPID", "ExecStart", "User")
    assert state["ActiveState"] == "active", state
    assert (
        "/usr/bin/connectproxy run --config /etc/connectproxy/connectproxy.yaml"
        in (state["ExecStart"])
    )
    # On PATH, from the package's virtualenv.
    assert host.out("command -v connectproxy") == "/usr/bin/connectproxy"
    assert host.out("readlink -f /usr/bin/connectproxy") == "/opt/connectproxy/bin/connectproxy"
    assert "(compiled: yes)" in host.out("connectproxy --version")
    # The system user from the sysusers file, running the service.
    user = host.out("getent passwd connectproxy").split(":")
    assert int(user[2]) < 1000 and user[6].endswith("nologin"), user
    assert host.out(f"ps -o user= -p {state['MainPID']}") == "connectproxy"
    # The commented default config, as a conffile, is what it serves.
    assert CONFIG in host.out("dpkg-query -W -f='${Conffiles}' connectproxy")
    shipped = hashlib.sha256((REPO / "config" / "connectproxy.yaml").read_bytes()).hexdigest()
    assert host.out(f"sha256sum {CONFIG}").split()[0] == shipped
    assert host.peer("get", "http://127.0.0.1:9128/healthz") == "200"
    assert host.peer("get", "http://127.0.0.1:9128/readyz") == "200"
    # The default policy: port 443 to the Defender for IoT domains only.
    assert host.peer("status", "--proxy", "127.0.0.1:3128", "--target", "example.com:80") == "403"
    assert host.peer("status", "--proxy", "127.0.0.1:3128", "--target", "example.com:443") == "403"


def test_an_edited_config_survives_an_upgrade(host: Host, packages: Packages) -> None:
    host.sh(f"sed -i 's/shutdown_grace: 30/shutdown_grace: 25/' {CONFIG}")
    host.sh(f"echo '# edited on this host' >> {CONFIG}")
    before = host.show("MainPID")["MainPID"]
    host.apt_install(packages.upgrade, "/debs/upgrade")
    assert host.out("dpkg-query -W -f='${Version}' connectproxy") == packages.upgrade_version
    config = host.out(f"cat {CONFIG}")
    assert "shutdown_grace: 25" in config and "# edited on this host" in config
    assert not host.sh("ls /etc/connectproxy/*.dpkg-*", check=False).stdout.strip()
    # The service was restarted on the new build and reads the edited file.
    wait_for(lambda: host.show("ActiveState")["ActiveState"] == "active", 20, "active again")
    assert host.show("MainPID")["MainPID"] != before
    assert "(compiled: no)" in host.out("connectproxy --version")
    assert "shutdown_grace 25s" in host.out(f"connectproxy check-config --config {CONFIG}")
    assert host.peer("get", "http://127.0.0.1:9128/healthz") == "200"


def test_apt_remove_stops_the_service_and_keeps_the_config(host: Host) -> None:
    host.sh("apt-get remove -y connectproxy </dev/null")
    assert host.sh("systemctl is-active connectproxy", check=False).stdout.strip() != "active"
    probe = "import socket; socket.create_connection(('127.0.0.1', 3128), 2)"
    assert host.sh(f'python3.11 -c "{probe}"', check=False).returncode != 0  # nothing listens
    assert (
        host.sh(
            "test -e /opt/connectproxy || test -e /usr/bin/connectproxy", check=False
        ).returncode
        != 0
    )
    assert "# edited on this host" in host.out(f"cat {CONFIG}")
    assert host.out("dpkg-query -W -f='${db:Status-Abbrev}' connectproxy").startswith("rc")


def test_apt_purge_removes_the_config(host: Host) -> None:
    host.sh("apt-get purge -y connectproxy </dev/null")
    assert host.sh("test -e /etc/connectproxy", check=False).returncode != 0
    assert host.sh("test -e /var/log/connectproxy", check=False).returncode != 0
    assert host.sh("dpkg-query -W connectproxy", check=False).returncode != 0
