"""Podman from the tests: build images and run containers, and remove every one of them again.

Each image and container a test run creates is recorded here and removed at the end of the run
by its name or ID, never by a pattern, so other work on the same machine is left alone.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Building the image runs pip and apt inside it; on a 2-core machine the compiled build takes
# minutes, so the ceiling is generous. Each run and exec is short.
BUILD_TIMEOUT = 900
RUN_TIMEOUT = 300


class PodmanError(RuntimeError):
    """A podman command failed; the message carries its output for the test report."""


def _check(proc: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if proc.returncode != 0:
        raise PodmanError(
            f"{what} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


@dataclass
class Podman:
    """The podman command line, with a record of what this test run made."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    images: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def available() -> bool:
        return shutil.which("podman") is not None

    def cmd(
        self, *args: str, check: bool = True, timeout: float = RUN_TIMEOUT, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["podman", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        return _check(proc, f"podman {' '.join(args[:3])}") if check else proc

    def image_exists(self, name: str) -> bool:
        return self.cmd("image", "exists", name, check=False).returncode == 0

    def name(self, what: str) -> str:
        return f"localhost/connectproxy-test-{what}:{self.run_id}"

    def build(
        self,
        what: str,
        context: Path,
        containerfile: Path | None = None,
        build_args: dict[str, str] | None = None,
    ) -> str:
        """Build an image (docker format, so HEALTHCHECK is kept); return its name.

        --layers=false commits only the final image, so no intermediate images are left
        behind once the named one is removed."""
        tag = self.name(what)
        args = ["build", "--format", "docker", "--layers=false", "-t", tag]
        for key, value in (build_args or {}).items():
            args += ["--build-arg", f"{key}={value}"]
        if containerfile is not None:
            args += ["-f", str(containerfile)]
        started = time.monotonic()
        self.images.append(tag)
        self.cmd(*args, str(context), timeout=BUILD_TIMEOUT)
        self.timings[f"image {what}"] = time.monotonic() - started
        return tag

    def import_rootfs(self, what: str, rootfs: Path) -> str:
        tag = self.name(what)
        started = time.monotonic()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        self.images.append(tag)
        proc = subprocess.run(
            ["podman", "import", "-", tag],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        _check(proc, "podman import")
        self.timings[f"import {what}"] = time.monotonic() - started
        return tag

    def run(self, image: str, *options: str, command: Sequence[str] = ()) -> str:
        """Start a container in the background; return its ID."""
        proc = self.cmd("run", "-d", *options, image, *command)
        cid = proc.stdout.strip().splitlines()[-1]
        self.containers.append(cid)
        return cid

    def exec(
        self, cid: str, *command: str, check: bool = True, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        options = ["--user", user] if user else []
        return self.cmd("exec", *options, cid, *command, check=check)

    def inspect(self, cid: str, template: str) -> str:
        return self.cmd("inspect", "--format", template, cid).stdout.strip()

    def remove_container(self, cid: str) -> None:
        self.cmd("rm", "-f", "-t", "0", cid, check=False)
        if cid in self.containers:
            self.containers.remove(cid)

    def cleanup(self) -> None:
        for cid in reversed(self.containers):
            self.cmd("rm", "-f", "-t", "0", cid, check=False)
        self.containers.clear()
        for image in reversed(self.images):
            self.cmd("rmi", "-f", image, check=False)
        self.images.clear()
