"""The training image run as SageMaker runs it: `docker run IMAGE train` with
/opt/ml/input/config/{hyperparameters,resourceconfig,inputdataconfig}.json and the channel mounted
read-only, on one host and on two (algo-1, algo-2 on a user-defined network, gloo across both);
the model directory it writes is served as-is by the serving image; a bad hyperparameter and a
host cut off mid-job end with /opt/ml/output/failure and a non-zero exit, never a hang."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from containers import (
    REPO_ROOT,
    Container,
    ImageBuilder,
    docker,
    model_mount,
    post,
    unique,
)

TINY = {
    "iterations": "12",
    "batch_size": "2",
    "samples": "2",
    "log_every": "2",
    "threads": "1",
}
TRAIN_LINE = re.compile(r"\[train\] it=(\d+)/\d+ .*images/s=([0-9.]+)")


@pytest.fixture(scope="module")
def train_image(images: ImageBuilder) -> str:
    return images.get("train")


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shapes data set in the layout the `train` channel reads (images/, annotations.json)."""
    out = tmp_path_factory.mktemp("shapes-train")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "maskexport.shapes",
            str(out),
            "--count",
            "8",
            "--seed",
            "4242",
        ],
        cwd=REPO_ROOT / "model-export",
        check=True,
        capture_output=True,
    )
    return out


@dataclass
class Host:
    """One training container's /opt/ml, laid out on the host as SageMaker lays it out."""

    root: Path
    name: str
    container: str

    def mounts(self, channel: Path) -> list[str]:
        return [
            "-v", f"{self.root / 'input/config'}:/opt/ml/input/config:ro",
            "-v", f"{channel}:/opt/ml/input/data/train:ro",
            "-v", f"{self.root / 'model'}:/opt/ml/model",
            "-v", f"{self.root / 'output'}:/opt/ml/output",
        ]  # fmt: skip

    def logs(self) -> str:
        r = docker("logs", self.container, check=False)
        return r.stdout + r.stderr

    def exit_code(self, timeout: float) -> int:
        return int(docker("wait", self.container, timeout=timeout).stdout)

    def failure(self) -> str:
        path = self.root / "output/failure"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Host]]:
    """Containers (and a network) made by a test, removed after it."""
    made: list[Host] = []
    yield made
    for h in made:
        docker("rm", "-f", "-v", h.container, check=False)


def start_hosts(
    image: str,
    channel: Path,
    tmp: Path,
    made: list[Host],
    count: int,
    hyperparameters: dict[str, str],
) -> tuple[list[Host], str]:
    network = unique("maskserve-train-net")
    docker("network", "create", network)
    names = [f"algo-{i + 1}" for i in range(count)]
    hosts = []
    for name in names:
        root = tmp / name
        config = root / "input/config"
        config.mkdir(parents=True)
        (root / "model").mkdir()
        (root / "output").mkdir()
        (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
        (config / "resourceconfig.json").write_text(
            json.dumps(
                {"current_host": name, "hosts": names, "network_interface_name": "eth0"}
            )
        )
        (config / "inputdataconfig.json").write_text(
            json.dumps(
                {
                    "train": {
                        "TrainingInputMode": "File",
                        "S3DistributionType": "FullyReplicated",
                    }
                }
            )
        )
        host = Host(root, name, unique(f"maskserve-{name}"))
        made.append(host)
        docker(
            "run", "-d", "--name", host.container, "--hostname", name, "--network", network,
            "--network-alias", name, "--cpus", "1", *host.mounts(channel), image, "train",
        )  # fmt: skip
        hosts.append(host)
    return hosts, network


def serve_and_predict(cpu_image: str, model: Path) -> list[dict]:
    c = Container.run(cpu_image, "serve", options=model_mount(model))
    try:
        c.wait_ready()
        image = next((model / "samples").glob("*"))
        status, body = post(c.url("/invocations"), image.read_bytes(), "image/png")
        assert status == 200, body
        return json.loads(body)["detections"]
    finally:
        c.close()


def test_image_refuses_serve_and_imports_its_package(train_image: str) -> None:
    r = docker("run", "--rm", train_image, "serve", check=False)
    assert r.returncode == 64 and "training image" in r.stderr
    r = docker(
        "run",
        "--rm",
        train_image,
        "python",
        "-c",
        "import maskexport, torch; print(torch.__version__)",
    )
    assert r.stdout.startswith("2.")


def test_two_hosts_train_together_and_one_writes_the_model(
    train_image: str,
    channel: Path,
    tmp_path: Path,
    cluster: list[Host],
    images: ImageBuilder,
) -> None:
    hosts, network = start_hosts(train_image, channel, tmp_path, cluster, 2, TINY)
    try:
        codes = [h.exit_code(timeout=600) for h in hosts]
        logs = [h.logs() for h in hosts]
        assert codes == [0, 0], "\n\n".join(logs)
    finally:
        docker("network", "rm", network, check=False)
    master, worker = hosts
    rates = [float(m.group(2)) for m in TRAIN_LINE.finditer(logs[0])]
    assert rates and all(r > 0 for r in rates), logs[0]
    print(f"two hosts: {len(rates)} log lines, last {rates[-1]:.2f} images/s")
    assert (master.root / "model/model.json").exists()
    assert not any((worker.root / "model").iterdir()), (
        "only one host writes /opt/ml/model"
    )
    assert not master.failure() and not worker.failure()
    detections = serve_and_predict(images.get("cpu"), master.root / "model")
    assert isinstance(detections, list)


def test_bad_hyperparameter_fails_fast_with_a_reason(
    train_image: str, channel: Path, tmp_path: Path, cluster: list[Host]
) -> None:
    (host,), network = start_hosts(
        train_image, channel, tmp_path, cluster, 1, {**TINY, "iterations": "many"}
    )
    try:
        start = time.monotonic()
        code = host.exit_code(timeout=120)
        took = time.monotonic() - start
    finally:
        docker("network", "rm", network, check=False)
    assert code != 0
    assert "iterations" in host.failure() and "many" in host.failure(), host.failure()
    assert took < 60, f"took {took:.0f} s to fail"


def test_host_cut_off_mid_job_fails_every_host(
    train_image: str, channel: Path, tmp_path: Path, cluster: list[Host]
) -> None:
    timeout_s = 20
    params = {
        **TINY,
        "iterations": "100000",
        "log_every": "1",
        "collective_timeout_s": str(timeout_s),
    }
    hosts, network = start_hosts(train_image, channel, tmp_path, cluster, 2, params)
    try:
        deadline = time.monotonic() + 300
        while len(TRAIN_LINE.findall(hosts[0].logs())) < 3:
            assert time.monotonic() < deadline, hosts[0].logs()
            assert all(
                docker(
                    "inspect", "-f", "{{.State.Running}}", h.container
                ).stdout.strip()
                == "true"
                for h in hosts
            ), hosts[0].logs() + hosts[1].logs()
            time.sleep(1)
        cut_at = time.monotonic()
        docker("network", "disconnect", network, hosts[1].container)
        codes = [h.exit_code(timeout=timeout_s * 6 + 120) for h in hosts]
        took = time.monotonic() - cut_at
    finally:
        for h in hosts:
            docker("rm", "-f", h.container, check=False)
        docker("network", "rm", network, check=False)
    print(
        f"both hosts ended {took:.0f} s after algo-2 was cut off (collective timeout {timeout_s} s)"
    )
    assert all(c != 0 for c in codes), codes
    for h in hosts:
        assert h.failure(), f"{h.name} wrote no /opt/ml/output/failure"
    assert not (hosts[0].root / "model/model.json").exists()


@pytest.mark.parametrize("count", [1, 2], ids=["one host", "two hosts"])
def test_docker_stop_ends_training_promptly(
    train_image: str, channel: Path, tmp_path: Path, cluster: list[Host], count: int
) -> None:
    """StopTrainingJob sends SIGTERM to PID 1: training stops at once (exit 143), well before the
    SIGKILL that follows the grace period."""
    params = {**TINY, "iterations": "100000", "log_every": "1"}
    hosts, network = start_hosts(train_image, channel, tmp_path, cluster, count, params)
    try:
        deadline = time.monotonic() + 300
        while len(TRAIN_LINE.findall(hosts[0].logs())) < 2:
            assert time.monotonic() < deadline, hosts[0].logs()
            time.sleep(1)
        start = time.monotonic()
        docker("stop", "-t", "60", *(h.container for h in hosts), timeout=120)
        took = time.monotonic() - start
        codes = [h.exit_code(timeout=30) for h in hosts]
    finally:
        docker("network", "rm", network, check=False)
    print(f"{count} host(s) stopped in {took:.1f} s, exit codes {codes}")
    assert codes[0] == 143, hosts[0].logs()[-3000:]
    assert took < 30
    assert not (hosts[0].root / "model/model.json").exists()
