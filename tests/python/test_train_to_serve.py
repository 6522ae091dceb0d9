"""The seed's train → host loop on one machine: the SageMaker training contract writes a model
directory that ``maskserve serve`` serves as-is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXPORT = REPO / "model-export"
sys.path.insert(0, str(EXPORT))

from maskexport.shapes import write_dataset
from release_binary import binary, free_port


def _sagemaker_train(root: Path, hyperparameters: dict) -> subprocess.CompletedProcess:
    (root / "input/config").mkdir(parents=True, exist_ok=True)
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hyperparameters))
    (root / "input/config/resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )
    env = {**os.environ, "MASKSERVE_OPT_ML": str(root), "PYTHONPATH": str(EXPORT)}
    return subprocess.run(
        [sys.executable, "-m", "maskexport.sagemaker_train"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_training_failure_is_reported(tmp_path: Path) -> None:
    write_dataset(tmp_path / "input/data/train", seed=4, count=2)
    result = _sagemaker_train(tmp_path, {"no_such_knob": "1"})
    assert result.returncode != 0
    failure = (tmp_path / "output/failure").read_text()
    assert "no_such_knob" in failure


def test_train_then_serve(tmp_path: Path) -> None:
    write_dataset(tmp_path / "input/data/train", seed=4, count=8)
    write_dataset(tmp_path / "input/data/val", seed=5, count=3)
    hp = {
        "iterations": "6",
        "batch_size": "2",
        "samples": "2",
        "threads": "2",
        "name": "e2e",
    }
    result = _sagemaker_train(tmp_path, hp)
    assert result.returncode == 0, result.stderr[-3000:]
    model_dir = tmp_path / "model"
    manifest = json.loads((model_dir / "model.json").read_text())
    assert manifest["name"] == "e2e"
    assert (tmp_path / "checkpoints/checkpoint.pt").exists() or (
        model_dir / "checkpoint.pt"
    ).exists()

    port = free_port()
    env = {
        **os.environ,
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "MASKSERVE_MODEL_DIR": str(model_dir),
    }
    # The server's log goes to a file: a pipe nobody reads would fill up and block it.
    log_path = tmp_path / "server.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        [str(binary()), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/ping", timeout=2
                ) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert server.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, (
                "server never became ready:\n" + log_path.read_text()[-3000:]
            )
            time.sleep(0.3)
        image = min((model_dir / "samples").iterdir())
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=image.read_bytes(),
            headers={
                "Content-Type": "image/png",
                # A model trained for six steps is unsure of everything; ask for all it sees.
                "X-Amzn-SageMaker-Custom-Attributes": "score_threshold=0.0",
            },
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            assert r.status == 200
            body = json.loads(r.read())
        dets = body["detections"]
        assert len(dets) > 0
        for d in dets:
            assert d["class_name"] in manifest["classes"][1:]
            assert len(d["box"]) == 4 and "counts" in d["mask"]
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
