"""Every way of pooling the heads' RoIs gives the same detections: the fixture's per-level
RoIAlign graphs, maskserve's own MultiScaleRoIAlign, and a dense export of the same checkpoint
(the first model format, which old model directories still hold), on the fixture's samples
and on a batch of them; and all of them reproduce PyTorch (the fixture's reference.json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from release_binary import REPO, binary

FIXTURE = REPO / "models" / "shapes"
SAMPLES = sorted((FIXTURE / "samples").iterdir())


@pytest.fixture(scope="module")
def dense_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dense") / "model"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "maskexport.export",
            "--checkpoint",
            str(FIXTURE / "checkpoint.pt"),
        ]
        + ["--roi-pooling", "dense", "--no-single", "--out", str(out)],
        cwd=REPO / "model-export",
        check=True,
        capture_output=True,
        timeout=600,
    )
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["graphs"]["roi_pooling"] == "dense"
    assert "box_roi_align" not in manifest["graphs"]
    return out


def predict(model: Path, *args: str) -> list[dict]:
    out = subprocess.run(
        [str(binary()), "predict", "--model", str(model), *args, *map(str, SAMPLES)],
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
        env={**os.environ, "MASKSERVE_LOG": "info"},
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def detections(results: list[dict]) -> list[list[tuple]]:
    return [
        [
            (d["class_id"], d["score"], d["box"], d["mask"]["counts"])
            for d in r["detections"]
        ]
        for r in results
    ]


def test_every_pooling_gives_the_same_detections(dense_export: Path) -> None:
    graph = predict(FIXTURE, "--roi-align", "graph")
    rust = predict(FIXTURE, "--roi-align", "rust")
    dense = predict(dense_export)
    # Several images of one padded shape through the graphs at once, pooled in Rust.
    batched = predict(
        FIXTURE, "--roi-align", "rust", "--batch", "--max-batch-size", "4"
    )
    assert sum(len(r["detections"]) for r in graph) > 10
    assert detections(graph) == detections(rust)
    # The dense graphs pool each RoI on every level and sum: the same values up to float
    # rounding, which depends on the CPU's kernels (a few 1e-7 on some machines).
    for pooled, summed in zip(detections(rust), detections(dense)):
        assert [(d[0], d[3]) for d in pooled] == [(d[0], d[3]) for d in summed]
        np.testing.assert_allclose([d[1] for d in pooled], [d[1] for d in summed], atol=1e-5)
        np.testing.assert_allclose([d[2] for d in pooled], [d[2] for d in summed], atol=1e-3)
    for one, many in zip(detections(rust), detections(batched)):
        assert [d[0] for d in one] == [d[0] for d in many]
        np.testing.assert_allclose([d[1] for d in one], [d[1] for d in many], atol=1e-5)


def test_rust_pooling_reproduces_pytorch() -> None:
    ref = {
        Path(i["file"]).name: i
        for i in json.loads((FIXTURE / "reference.json").read_text())["images"]
    }
    for path, got in zip(SAMPLES, predict(FIXTURE, "--roi-align", "rust")):
        want = ref[path.name]["detections"]
        assert len(got["detections"]) == len(want), path.name
        for g, w in zip(got["detections"], want):
            assert g["class_id"] == w["label"]
            assert abs(g["score"] - w["score"]) < 1e-4
            iou = mask_utils.iou([g["mask"]], [w["mask"]], [False])[0][0]
            assert iou >= 0.99, (path.name, iou)


def test_rust_pooling_needs_a_per_level_export(dense_export: Path) -> None:
    out = subprocess.run(
        [
            str(binary()),
            "predict",
            "--model",
            str(dense_export),
            "--roi-align",
            "rust",
            str(SAMPLES[0]),
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "per-level" in out.stderr and "--roi-pooling" in out.stderr, out.stderr
