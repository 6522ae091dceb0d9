"""The binary built without ONNX Runtime (`cargo build --release --no-default-features
--features tract`; path in $MASKSERVE_TRACT_BIN) serves the bundled fixture on tract, with no
ONNX Runtime library anywhere in its environment: /ping, then every sample PNG through
/invocations against PyTorch's detections (models/shapes/reference.json)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pycocotools import mask as mask_utils
from release_binary import free_port

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "models/shapes"
MIN_BOX_IOU = 0.99
MIN_MASK_IOU = 0.97
MAX_SCORE_DIFF = 1e-3


def tract_binary() -> Path:
    """$MASKSERVE_TRACT_BIN; without it the test skips, except in CI, where it fails."""
    value = os.environ.get("MASKSERVE_TRACT_BIN", "")
    if not value:
        why = (
            "MASKSERVE_TRACT_BIN is not set: build the binary without ONNX Runtime "
            "(cargo build --release --no-default-features --features tract; scripts/test.sh "
            "does) and point the variable at it"
        )
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    path = Path(value)
    if not path.is_file():
        pytest.fail(f"MASKSERVE_TRACT_BIN={path} does not exist")
    return path


def environment() -> dict[str, str]:
    """This process's environment without anything that could point at ONNX Runtime."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "ORT_DYLIB_PATH" and not k.startswith("MASKSERVE_")
    }
    env["MASKSERVE_LOG"] = "info"
    return env


def request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[int, subprocess.Popen]]:
    port = free_port()
    proc = subprocess.Popen(
        [str(tract_binary()), "serve", "--port", str(port), "--model", str(FIXTURE)],
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    ready = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if request(port, "GET", "/ping")[0] == 200:
                ready = True
                break
        except OSError:
            pass
        time.sleep(0.05)
    if not ready:
        proc.kill()
        _, err = proc.communicate(timeout=30)
        raise RuntimeError(
            f"the tract binary did not answer /ping: {err.decode()[-2000:]}"
        )
    yield port, proc
    proc.terminate()
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def box_iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


def rle(m: dict) -> dict:
    return {"size": m["size"], "counts": m["counts"].encode()}


def mask_iou(a: dict, b: dict) -> float:
    return float(mask_utils.iou([rle(a)], [rle(b)], [0])[0][0])


def test_the_binary_has_no_onnx_runtime() -> None:
    out = subprocess.run(
        [
            str(tract_binary()),
            "predict",
            "--backend",
            "ort",
            "--model",
            str(FIXTURE),
            "x.png",
        ],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0
    assert "built without the ort backend" in out.stderr, out.stderr
    assert "cargo build --release --features ort" in out.stderr, out.stderr
    assert "panicked" not in out.stderr


def test_ping_and_invocations_reproduce_pytorch(
    server: tuple[int, subprocess.Popen],
) -> None:
    port, _ = server
    assert request(port, "GET", "/ping")[0] == 200
    reference = json.loads((FIXTURE / "reference.json").read_text())
    compared = 0
    failures = []
    for im in reference["images"]:
        png = (FIXTURE / im["file"]).read_bytes()
        status, body = request(
            port, "POST", "/invocations", png, {"Content-Type": "image/png"}
        )
        assert status == 200, body[:500]
        got = json.loads(body)
        assert (got["width"], got["height"]) == (im["width"], im["height"])
        dets = got["detections"]
        want = im["detections"]
        if len(dets) != len(want):
            failures.append(f"{im['file']}: {len(dets)} detections, want {len(want)}")
            continue
        used = [False] * len(dets)
        for w in want:
            candidates = [
                (box_iou(w["box"], d["box"]), j)
                for j, d in enumerate(dets)
                if not used[j] and d["class_id"] == w["label"]
            ]
            if not candidates:
                failures.append(
                    f"{im['file']}: {w['class_name']} {w['score']:.3f} unmatched"
                )
                continue
            biou, j = max(candidates)
            used[j] = True
            miou = mask_iou(w["mask"], dets[j]["mask"])
            ds = abs(w["score"] - dets[j]["score"])
            compared += 1
            if biou < MIN_BOX_IOU or miou < MIN_MASK_IOU or ds > MAX_SCORE_DIFF:
                failures.append(
                    f"{im['file']}: {w['class_name']} box IoU {biou:.4f} "
                    f"mask IoU {miou:.4f} |Δscore| {ds:.6f}"
                )
    assert compared > 0
    assert not failures, "\n".join(failures)
    status, body = request(port, "GET", "/metrics")
    assert status == 200
    assert 'maskserve_execution_provider_info{provider="tract"} 1' in body.decode()
