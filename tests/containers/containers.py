"""Docker helpers for the container tests: build the project's images, run and watch containers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGES = REPO_ROOT / "docker/base-images/build.sh"
MODEL_DIR = REPO_ROOT / "models/shapes"
# Stand-ins each Dockerfile needs (docker/base-images/build.sh names).
BASES = {
    "cpu": ["python", "rust"],
    "gpu": ["python", "rust", "cuda"],
    "train": ["python"],
}
LEGACY = {**os.environ, "DOCKER_BUILDKIT": "0"}


def docker(
    *args: str, check: bool = True, timeout: float = 600, **kw: object
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
        **kw,
    )


def docker_problem() -> str | None:
    """None when a Docker engine answers, else why not."""
    if shutil.which("docker") is None:
        return "the docker client is not installed"
    try:
        r = docker(
            "version", "--format", "{{.Server.Version}}", check=False, timeout=30
        )
    except subprocess.TimeoutExpired:
        return "`docker version` did not answer in 30 s"
    return (
        None
        if r.returncode == 0
        else (r.stderr.strip() or "the engine does not answer")
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class ImageBuilder:
    """Builds docker/Dockerfile.<flavor> once per session as maskserve-test:<flavor>."""

    built: dict[str, tuple[float, int]] = field(default_factory=dict)

    def build_args(self, flavor: str) -> list[str]:
        out = subprocess.run(
            ["bash", str(BASE_IMAGES), "--build-args", flavor],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return [a for arg in out for a in ("--build-arg", arg)]

    def get(self, flavor: str) -> str:
        tag = f"maskserve-test:{flavor}"
        if flavor in self.built:
            return tag
        start = time.monotonic()
        subprocess.run(
            ["bash", str(BASE_IMAGES), *BASES[flavor]], check=True, timeout=1800
        )
        r = subprocess.run(
            [
                "docker",
                "build",
                *self.build_args(flavor),
                "-f",
                f"docker/Dockerfile.{flavor}",
                "-t",
                tag,
                ".",
            ],
            cwd=REPO_ROOT,
            env=LEGACY,
            check=False,
            capture_output=True,
            text=True,
            timeout=2400,
        )
        if r.returncode != 0:
            raise AssertionError(
                f"docker build of Dockerfile.{flavor} failed:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
            )
        size = int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout)
        self.built[flavor] = (time.monotonic() - start, size)
        return tag

    def report(self) -> list[str]:
        return [
            f"maskserve-test:{flavor}: {size / 1e6:.0f} MB (built or checked in {secs:.0f} s)"
            for flavor, (secs, size) in self.built.items()
        ]


@dataclass
class Container:
    """A detached container, removed on close."""

    name: str
    port: int | None = None

    @classmethod
    def run(
        cls,
        image: str,
        *args: str,
        options: list[str] | None = None,
        port: int | None = 8080,
    ) -> Container:
        name = unique("maskserve-test")
        opts = list(options or [])
        if port is not None:
            opts += ["-p", f"127.0.0.1::{port}"]
        docker("run", "-d", "--name", name, *opts, image, *args)
        return cls(name, port)

    def host_port(self) -> int:
        out = docker("port", self.name, f"{self.port}/tcp").stdout.split()[0]
        return int(out.rsplit(":", 1)[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.host_port()}{path}"

    def state(self) -> dict:
        return json.loads(docker("inspect", "-f", "{{json .State}}", self.name).stdout)

    def logs(self) -> str:
        r = docker("logs", self.name, check=False)
        return r.stdout + r.stderr

    def wait_ready(self, timeout: float = 240) -> float:
        """Seconds until GET /ping answers 200; fails if the container exits or the window passes."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.state()["Running"]:
                raise AssertionError(
                    f"container exited before /ping answered:\n{self.logs()}"
                )
            try:
                with urllib.request.urlopen(self.url("/ping"), timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError, IndexError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"/ping did not answer within {timeout} s:\n{self.logs()}")

    def wait_exit(self, timeout: float) -> int:
        r = docker("wait", self.name, timeout=timeout)
        return int(r.stdout.strip())

    def exec(self, *cmd: str) -> str:
        return docker("exec", self.name, *cmd).stdout

    def close(self) -> None:
        docker("rm", "-f", "-v", self.name, check=False)


def post(
    url: str, body: bytes, content_type: str, timeout: float = 60, **headers: str
) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type, **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def samples() -> list[Path]:
    return sorted((MODEL_DIR / "samples").glob("*"))


def model_mount(path: Path = MODEL_DIR) -> list[str]:
    return ["-v", f"{path}:/opt/ml/model:ro"]
