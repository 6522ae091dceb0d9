"""The GPU serving image, built on the CUDA 13 / cuDNN 9 stand-in, on a machine without a GPU:
every library ONNX Runtime's CUDA provider needs resolves (but the driver's, which the NVIDIA
container runtime mounts), `--device cuda` fails with a clear message, `--device auto` serves."""

from __future__ import annotations

import json
import re
import time

import pytest
from containers import Container, ImageBuilder, docker, get, model_mount, post, samples

ORT_LIB = "/opt/onnxruntime/lib"
CUDA_LIB = "/usr/local/cuda/lib64"
# Loaded by the CUDA provider at run time (dlopen), not listed as its dependencies.
LOADED_AT_RUN_TIME = ["libcudnn.so.9", "libcufft.so.12", "libnvrtc.so.13"]
# The NVIDIA driver's user-space library; on a GPU host the container runtime provides it.
DRIVER = "libcuda.so.1"


@pytest.fixture(scope="module")
def gpu_image(images: ImageBuilder) -> str:
    return images.get("gpu")


def in_image(image: str, *cmd: str) -> str:
    return docker("run", "--rm", "--entrypoint", cmd[0], image, *cmd[1:]).stdout


def unresolved(ldd_output: str) -> set[str]:
    return set(re.findall(r"^\s*(\S+) => not found", ldd_output, flags=re.MULTILINE))


def test_cuda_provider_libraries_resolve(gpu_image: str) -> None:
    out = in_image(gpu_image, "ldd", f"{ORT_LIB}/libonnxruntime_providers_cuda.so")
    assert "libcublas.so.13 => /usr/local/cuda/lib64/" in out, out
    assert unresolved(out) == {DRIVER}, out
    cache = in_image(gpu_image, "ldconfig", "-p")
    for lib in LOADED_AT_RUN_TIME:
        assert f"{lib} (" in cache, f"{lib} is not in the loader's cache"
    # cuDNN's own parts load each other: none may miss anything but the driver.
    script = (
        f"for f in {CUDA_LIB}/libcudnn*.so.9 {CUDA_LIB}/libcufft.so.12; do ldd $f; done"
    )
    deep = in_image(gpu_image, "bash", "-c", script)
    assert unresolved(deep) <= {DRIVER}, deep


def test_device_cuda_fails_clearly_without_a_driver(gpu_image: str) -> None:
    """The server never turns healthy: /ping answers 503 with the reason (as for any model that
    cannot load, so SageMaker's health check and a probe show why), the log says it once."""
    c = Container.run(gpu_image, "serve", "--device", "cuda", options=model_mount())
    try:
        deadline = time.monotonic() + 120
        status, body = 0, b""
        while time.monotonic() < deadline:
            try:
                status, body = get(c.url("/ping"))
            except (OSError, IndexError):
                time.sleep(0.2)
                continue
            if status != 503 or b"failed to load" in body:
                break
            time.sleep(0.2)
        message = json.loads(body)["error"]
        print(message)
        assert status == 503
        assert "CUDA execution provider could not be registered" in message
        assert DRIVER in message
        assert "model failed to load" in c.logs() and "panicked" not in c.logs()
        assert c.state()["Running"]
    finally:
        c.close()


def test_device_auto_serves_on_cpu(gpu_image: str) -> None:
    c = Container.run(gpu_image, "serve", "--device", "auto", options=model_mount())
    try:
        c.wait_ready()
        assert "execution provider: CPUExecutionProvider" in c.logs(), c.logs()
        status, body = post(
            c.url("/invocations"), samples()[0].read_bytes(), "image/png"
        )
        assert status == 200 and json.loads(body)["detections"], body
    finally:
        c.close()
