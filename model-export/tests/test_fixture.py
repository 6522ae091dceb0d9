"""The bundled fixture model directory is complete, valid and self-consistent."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest

from maskexport.export import FORBIDDEN_OPS, SPLIT_GRAPHS, graph_ops
from maskexport.manifest import ManifestError, validate
from maskexport.model import load_checkpoint

FIXTURE = Path(__file__).resolve().parents[2] / "models" / "shapes"


def test_fixture_manifest_valid() -> None:
    m = validate(FIXTURE)
    assert m["classes"] == ["__background__", "circle", "square", "triangle"]
    assert "single" in m["graphs"]


def test_fixture_graphs_load_and_are_static() -> None:
    m = validate(FIXTURE)
    assert m["graphs"]["roi_pooling"] == "per_level"
    for key in (*SPLIT_GRAPHS["per_level"], "single"):
        path = FIXTURE / m["graphs"][key]
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        if key != "single":
            assert not graph_ops(path) & FORBIDDEN_OPS


def test_fixture_reference_covers_samples() -> None:
    ref = json.loads((FIXTURE / "reference.json").read_text())
    samples = sorted(p.name for p in (FIXTURE / "samples").iterdir())
    assert sorted(Path(i["file"]).name for i in ref["images"]) == samples
    assert len(samples) >= 4
    assert sum(len(i["detections"]) for i in ref["images"]) > 0
    for img in ref["images"]:
        for d in img["detections"]:
            assert d["mask"]["size"] == [img["height"], img["width"]]


def test_fixture_checkpoint_reloads() -> None:
    model, arch, classes = load_checkpoint(str(FIXTURE / "checkpoint.pt"))
    assert arch == "tiny-fpn" and len(classes) == 4


def test_manifest_errors_name_the_problem(tmp_path: Path) -> None:
    m = json.loads((FIXTURE / "model.json").read_text())
    m["preprocess"]["std"] = [0.2, 0.0, 0.2]
    for f in FIXTURE.iterdir():
        if f.suffix == ".onnx" or f.name == "reference.json":
            (tmp_path / f.name).symlink_to(f)
    (tmp_path / "model.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="std"):
        validate(tmp_path)
