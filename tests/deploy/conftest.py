"""Fixtures of the deployment tests: images built once per run, TLS material, the figures.

Building images is the expensive part (a Debian base by debootstrap, the python:3.11-slim
stand-in, the project's image in both builds, a systemd image): each is a session fixture, so
every test of a run reuses it, and all of them are removed when the run ends.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.deploy.podman import Podman
from tests.deploy.util import FIGURES, record

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"
# The name the project's Dockerfile builds FROM. No registry is reachable here, so the run
# provides a stand-in made from Debian's packages under this name
# (images/python-slim.Containerfile).
PYTHON_SLIM = "docker.io/library/python:3.11-slim"
ORIGIN_NAME = "origin.test"
ORIGIN_PORT = 8443  # where the origin listens inside a container, on its loopback
# A site's own config: the origin's name mapped to the container's loopback (which the default
# deny list refuses, hence the shorter one), the host's connections arriving through the port
# publishing from the container network.
SITE_CONFIG = f"""\
listen: ["0.0.0.0:3128"]
allow:
  ports: [{ORIGIN_PORT}]
  domains: ["{ORIGIN_NAME}"]
clients:
  - name: host
    networks: ["10.0.0.0/8", "127.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
destinations:
  deny_networks: ["0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4"]
  hosts:
    {ORIGIN_NAME}: "127.0.0.1"
timeouts:
  shutdown_grace: 20
"""
DEB_TESTS = "test_debian_package.py"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "deploy: deployment tests (tests/deploy/), run by `make test-deploy`, not `make test`",
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("deployment figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine, so debootstrap reaches what apt reaches."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for block in path.read_text().split("\n\n"):
            if re.search(r"^Suites:.*\b(bookworm|trixie)\b(?!-)", block, re.M) and (
                match := re.search(r"^URIs:\s*(\S+)", block, re.M)
            ):
                return match.group(1)
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        for line in sources.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    return "http://deb.debian.org/debian"


def host_codename() -> str:
    """The host's Debian release: the package built here needs the same Python in the
    container it is installed into."""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    return "bookworm"


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    tool = Podman()
    assert tool.available(), "podman is not installed: .ci/run installs it"
    try:
        yield tool
    finally:
        tool.cleanup()
        for name, seconds in tool.timings.items():
            record(f"{name} (s)", f"{seconds:.1f}")


@dataclass
class DebBuild:
    """`make deb` running in the background, in a build folder of its own."""

    label: str
    out: Path
    process: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)
    finished: float = 0.0

    @classmethod
    def start(cls, label: str, folder: Path, version: str | None, pure: bool) -> DebBuild:
        folder.mkdir(parents=True)
        out = folder / "out"
        command = [
            "make",
            "-C",
            str(REPO),
            "deb",
            f"DEB_OUT={out}",
            f"DEB_BUILD={folder / 'build'}",
        ]
        if version:
            command.append(f"DEB_VERSION={version}")
        env = dict(os.environ)
        env.pop("CONNECTPROXY_PURE_PYTHON", None)
        if pure:
            env["CONNECTPROXY_PURE_PYTHON"] = "1"
        log = folder / "make-deb.log"
        with open(log, "wb") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        build = cls(label, out, process, log)
        threading.Thread(target=build._watch, daemon=True).start()
        return build

    def _watch(self) -> None:
        self.process.wait()
        self.finished = time.monotonic()

    def wait(self) -> Path:
        code = self.process.wait(timeout=1500)
        assert code == 0, f"make deb failed:\n{self.log.read_text()[-6000:]}"
        while not self.finished:
            time.sleep(0.05)
        record(f"make deb, {self.label} (s)", f"{self.finished - self.started:.1f}")
        (deb,) = self.out.glob("connectproxy_*.deb")
        return deb

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def changelog_version() -> str:
    return subprocess.run(
        ["dpkg-parsechangelog", "-l", str(REPO / "debian" / "changelog"), "-S", "Version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture(scope="session")
def deb_builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, DebBuild]]:
    """Both packages the Debian test installs, built while the images are: the first in the
    default (compiled) build, the upgrade under a higher version in the plain-Python build,
    which also tells the two apart once installed. Each compile keeps one core busy."""
    base = tmp_path_factory.mktemp("debs")
    version = changelog_version()
    builds = {
        "first": DebBuild.start("compiled", base / "first", None, pure=False),
        "upgrade": DebBuild.start(
            "plain Python, higher version", base / "upgrade", f"{version}+upgrade1", pure=True
        ),
    }
    try:
        yield builds
    finally:
        for build in builds.values():
            build.stop()


@pytest.fixture(scope="session")
def base_image(
    podman: Podman, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> str:
    """A minimal Debian as an image: debootstrap into a folder, then `podman import`."""
    if any(Path(str(item.fspath)).name == DEB_TESTS for item in request.session.items):
        request.getfixturevalue("deb_builds")  # start the package builds alongside
    rootfs = tmp_path_factory.mktemp("rootfs") / "debian"
    started = time.monotonic()
    subprocess.run(
        ["debootstrap", "--variant=minbase", host_codename(), str(rootfs), debian_mirror()],
        check=True,
        capture_output=True,
        timeout=600,
    )
    podman.timings["debootstrap"] = time.monotonic() - started
    try:
        return podman.import_rootfs("debian", rootfs)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


@pytest.fixture(scope="session")
def python_slim(
    podman: Podman, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The python:3.11-slim stand-in, tagged with the name the Dockerfile uses for this run."""
    if podman.image_exists(PYTHON_SLIM):
        # The machine has an image of that name already (the real one, or a stand-in another
        # run still uses): build on it and leave it as it is.
        yield PYTHON_SLIM
        return
    context = tmp_path_factory.mktemp("python-slim")
    certs = context / "certs"
    certs.mkdir()
    for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(crt, certs / crt.name)
    shutil.copy(IMAGES / "python-slim.Containerfile", context / "Containerfile")
    image = podman.build("python-slim", context, build_args={"BASE": base_image})
    podman.cmd("tag", image, PYTHON_SLIM)
    try:
        yield image
    finally:
        podman.cmd("untag", image, PYTHON_SLIM, check=False)


def _product(podman: Podman, python_slim: str, pure: bool) -> str:
    build_args = {"CONNECTPROXY_PURE_PYTHON": "1"} if pure else {}
    return podman.build("pure" if pure else "compiled", REPO, build_args=build_args)


@pytest.fixture(scope="session")
def product_image(podman: Podman, python_slim: str) -> str:
    """The project's Dockerfile, unchanged, in its default (compiled) build."""
    return _product(podman, python_slim, pure=False)


@pytest.fixture(scope="session")
def pure_image(podman: Podman, python_slim: str) -> str:
    """The same Dockerfile with --build-arg CONNECTPROXY_PURE_PYTHON=1."""
    return _product(podman, python_slim, pure=True)


@pytest.fixture(scope="session")
def systemd_image(
    podman: Podman, product_image: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The product image with systemd as PID 1 and the repository's unit and sysusers file."""
    context = tmp_path_factory.mktemp("systemd-image")
    shutil.copy(IMAGES / "systemd.Containerfile", context / "Containerfile")
    shutil.copy(REPO / "systemd" / "connectproxy.service", context)
    shutil.copy(REPO / "systemd" / "connectproxy.sysusers", context)
    shutil.copy(REPO / "config" / "connectproxy.yaml", context)
    return podman.build("systemd", context, build_args={"IMAGE": product_image})


@pytest.fixture(scope="session")
def debian_systemd_image(
    podman: Podman, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A clean Debian with systemd as PID 1 and nothing of connectproxy: the host a package
    is installed on."""
    context = tmp_path_factory.mktemp("debian-systemd")
    shutil.copy(IMAGES / "debian-systemd.Containerfile", context / "Containerfile")
    return podman.build("debian-systemd", context, build_args={"BASE": base_image})


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def peer_dir(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a container needs for a tunnel test, mounted read-only at /peer: peer.py, the CA
    and the origin's certificate. Readable by anyone, since the proxy's uid is 10001."""
    folder = tmp_path_factory.mktemp("peer")
    shutil.copy(HERE / "peer.py", folder / "peer.py")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    leaf = ca.issue_cert(ORIGIN_NAME)
    leaf.private_key_pem.write_to_path(str(folder / "origin.key"))
    leaf.cert_chain_pems[0].write_to_path(str(folder / "origin.pem"))
    for path in folder.iterdir():
        path.chmod(0o644)
    folder.chmod(0o755)
    return folder


def start_origin(podman: Any, cid: str) -> None:
    """The TLS origin (peer.py) on the container's loopback, ORIGIN_PORT, with the test CA's
    certificate for ORIGIN_NAME mounted at /peer."""
    podman.cmd(
        "exec",
        "-d",
        cid,
        "python3",
        "/peer/peer.py",
        "origin",
        "--port",
        str(ORIGIN_PORT),
        "--cert",
        "/peer/origin.pem",
        "--key",
        "/peer/origin.key",
    )
