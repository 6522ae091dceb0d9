"""The CPU serving image run as SageMaker runs it: `docker run IMAGE serve`, the model directory
mounted read-only at /opt/ml/model, SAGEMAKER_BIND_TO_PORT, a clean `docker stop` under load, a CPU
and memory quota, a read-only root file system."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from containers import (
    MODEL_DIR,
    REPO_ROOT,
    Container,
    ImageBuilder,
    docker,
    get,
    model_mount,
    post,
    samples,
)

BIN = Path(os.environ.get("MASKSERVE_BIN", REPO_ROOT / "target/release/maskserve"))


@pytest.fixture(scope="module")
def cpu_image(images: ImageBuilder) -> str:
    return images.get("cpu")


def host_predictions(image: Path) -> list[dict]:
    """The same model run by the binary built on this machine (`maskserve predict`)."""
    if not BIN.exists():
        pytest.skip(f"{BIN} is not built")
    lib = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts/ort-lib.sh")],
        capture_output=True,
        text=True,
        check=True,
    )
    env = {**os.environ, "ORT_DYLIB_PATH": lib.stdout.strip()}
    out = subprocess.run(
        [str(BIN), "predict", "--model", str(MODEL_DIR), str(image)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout)["detections"]


def assert_same_detections(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert g["class_id"] == w["class_id"]
        assert abs(g["score"] - w["score"]) < 1e-5
        assert max(abs(a - b) for a, b in zip(g["box"], w["box"], strict=True)) < 1e-3
        assert g["mask"] == w["mask"]


def test_serve_as_sagemaker_does(cpu_image: str) -> None:
    """Read-only model mount, SAGEMAKER_BIND_TO_PORT, /ping in the start-up window, the same
    detections as the binary built on the host."""
    c = Container.run(
        cpu_image,
        "serve",
        options=[*model_mount(), "-e", "SAGEMAKER_BIND_TO_PORT=9091"],
        port=9091,
    )
    try:
        ready = c.wait_ready()
        print(f"/ping answered {ready:.1f} s after start")
        assert "0.0.0.0:9091" in c.logs()
        for image in samples()[:3]:
            status, body = post(c.url("/invocations"), image.read_bytes(), "image/png")
            assert status == 200, body
            assert_same_detections(
                json.loads(body)["detections"], host_predictions(image)
            )
        status, body = post(c.url("/invocations"), b"not an image", "image/png")
        assert status == 400 and "error" in json.loads(body)
        assert c.state()["Running"]
    finally:
        c.close()


def test_docker_stop_under_load_answers_in_flight_requests(cpu_image: str) -> None:
    """SIGTERM with requests queued and running: every one is answered, then the server exits 0."""
    # Each inference held 1 s (the server's test hook), so the load outlasts the stop signal.
    c = Container.run(
        cpu_image,
        "serve",
        options=[*model_mount(), "-e", "MASKSERVE_DEBUG_DELAY_MS=1000"],
    )
    try:
        c.wait_ready()
        url, image = c.url("/invocations"), samples()[0].read_bytes()
        results: list[tuple[float, int, bytes]] = []
        lock = threading.Lock()

        def one(_: int) -> None:
            status, body = post(url, image, "image/png", timeout=60)
            with lock:
                results.append((time.monotonic(), status, body))

        n = 8  # within the queue (16): none is refused for load, ~4 s of work for two backends
        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(one, i) for i in range(n)]
            time.sleep(0.5)  # every request is on its connection before SIGTERM
            stop_at = time.monotonic()
            stop = docker("stop", "-t", "30", c.name, timeout=60)
            stopped_in = time.monotonic() - stop_at
            for f in futures:
                f.result()
        assert stop.returncode == 0
        assert c.state()["ExitCode"] == 0, c.logs()
        assert stopped_in < 30, f"docker stop took {stopped_in:.1f} s"
        assert [s for _, s, _ in results] == [200] * n, [
            b[:200] for _, s, b in results if s != 200
        ]
        after = sum(1 for t, _, _ in results if t > stop_at)
        print(
            f"stop took {stopped_in:.1f} s; {after} of {n} requests were answered after SIGTERM"
        )
        assert after > 0, (
            "the load had finished before docker stop: the test proved nothing"
        )
    finally:
        c.close()


def cgroup_peak_bytes(c: Container) -> int:
    """Peak memory of the container's cgroup (v2 memory.peak, v1 memory.max_usage_in_bytes)."""
    for path in (
        "/sys/fs/cgroup/memory.peak",
        "/sys/fs/cgroup/memory/memory.max_usage_in_bytes",
    ):
        r = docker("exec", c.name, "cat", path, check=False)
        if r.returncode == 0:
            return int(r.stdout)
    raise AssertionError("no cgroup memory peak file in the container")


def test_cpu_and_memory_quota(cpu_image: str) -> None:
    """--cpus 1 --memory 1g: the server sizes its threads from the quota and stays under the limit
    at saturation (never OOM-killed)."""
    c = Container.run(
        cpu_image, "serve", options=[*model_mount(), "--cpus", "1", "--memory", "1g"]
    )
    try:
        c.wait_ready()
        assert "cpus=1 backends=1" in c.logs(), c.logs()
        url = c.url("/invocations")
        bodies = [p.read_bytes() for p in samples()]
        deadline = time.monotonic() + 15
        statuses: list[int] = []

        def loop(i: int) -> None:
            while time.monotonic() < deadline:
                statuses.append(
                    post(url, bodies[i % len(bodies)], "image/png", timeout=60)[0]
                )

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(loop, range(8)))
        peak = cgroup_peak_bytes(c)
        state = c.state()
        print(
            f"{len(statuses)} requests in 15 s at --cpus 1; peak memory {peak / 2**20:.0f} MiB of 1024"
        )
        assert state["Running"] and not state["OOMKilled"]
        assert statuses and set(statuses) <= {200, 503}, set(statuses)
        assert statuses.count(200) > 0
        assert peak < 2**30
    finally:
        c.close()


def test_read_only_root_with_tmpfs(cpu_image: str) -> None:
    c = Container.run(
        cpu_image, "serve", options=[*model_mount(), "--read-only", "--tmpfs", "/tmp"]
    )
    try:
        c.wait_ready()
        status, body = post(
            c.url("/invocations"), samples()[1].read_bytes(), "image/png"
        )
        assert status == 200 and json.loads(body)["detections"], body
    finally:
        c.close()


def test_multi_model_endpoint(cpu_image: str) -> None:
    """As a SageMaker multi-model endpoint runs the image: the capability label, models under
    /opt/ml/models/{name}/model (read-only), loaded, invoked and unloaded through /models."""
    labels = json.loads(
        docker("inspect", "-f", "{{json .Config.Labels}}", cpu_image).stdout
    )
    assert labels["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
    c = Container.run(
        cpu_image,
        "serve",
        options=[
            "-v",
            f"{MODEL_DIR}:/opt/ml/models/0a1b2c/model:ro",
            "-e",
            "SAGEMAKER_MULTI_MODEL=true",
            "--memory",
            "1g",
        ],
    )
    try:
        c.wait_ready()
        body = json.dumps(
            {"model_name": "0a1b2c", "url": "/opt/ml/models/0a1b2c/model"}
        ).encode()
        status, reply = post(c.url("/models"), body, "application/json")
        assert status == 200, reply
        # The budget follows the container's 1 GiB limit, not the host's memory.
        budget = re.search(r"budget_bytes=(\d+)", c.logs())
        assert budget and 0 < int(budget.group(1)) < 1 << 30, c.logs()[-2000:]
        image = samples()[0].read_bytes()
        status, reply = post(
            c.url("/models/0a1b2c/invoke"),
            image,
            "image/png",
            **{"X-Amzn-SageMaker-Target-Model": "shapes.tar.gz"},
        )
        assert status == 200 and json.loads(reply)["detections"], reply
        listed = json.loads(get(c.url("/models"))[1])
        assert [m["modelName"] for m in listed["models"]] == ["0a1b2c"]
        req = urllib.request.Request(c.url("/models/0a1b2c"), method="DELETE")
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 200
        status, _ = post(c.url("/models/0a1b2c/invoke"), image, "image/png")
        assert status == 404
    finally:
        c.close()
