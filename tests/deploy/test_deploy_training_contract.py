"""The training manifests and image agree with model-export (maskexport.sagemaker_train)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import render_manifests as rm
from deploy_support import REPO_ROOT

EXPORT = REPO_ROOT / "model-export"


def _pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def _sagemaker_train() -> ModuleType:
    path = EXPORT / "maskexport" / "sagemaker_train.py"
    if not path.exists():
        pytest.skip("model-export has no sagemaker_train.py yet")
    spec = importlib.util.spec_from_file_location("maskexport_sagemaker_train", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_image_pins_match_model_export() -> None:
    image = _pins(REPO_ROOT / "docker" / "requirements-train.txt")
    export_requirements = EXPORT / "requirements.txt"
    if not export_requirements.exists():
        pytest.skip("model-export/requirements.txt not present")
    export = _pins(export_requirements)
    for name, version in image.items():
        if name in export:
            assert export[name] == version, f"{name}: image {version}, model-export {export[name]}"
    assert {"torch", "torchvision"} <= image.keys()


@pytest.mark.parametrize("flavor", ["operator", "ack"])
def test_hyperparameters_are_ones_the_entry_point_accepts(flavor: str, tmp_path: Path) -> None:
    module = _sagemaker_train()
    job = next(
        d for i in rm.render(flavor, ["train"]) for d in i.documents if d["kind"] == "TrainingJob"
    )
    raw = job["spec"]["hyperParameters"]
    params = {p["name"]: p["value"] for p in raw} if isinstance(raw, list) else dict(raw)
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(params), "utf-8")
    parsed = module.read_hyperparameters(tmp_path)
    assert parsed["arch"] == rm.load_values()["hp_arch"]
    assert int(parsed["iterations"]) > 0


def test_channels_and_checkpoints_match_the_entry_point() -> None:
    source = (EXPORT / "maskexport" / "sagemaker_train.py").read_text(encoding="utf-8")
    assert '"input/data/train"' in source and '"input/data/val"' in source
    assert '"checkpoints"' in source
    for flavor in ("operator", "ack"):
        job = next(
            d
            for i in rm.render(flavor, ["train"])
            for d in i.documents
            if d["kind"] == "TrainingJob"
        )
        assert [c["channelName"] for c in job["spec"]["inputDataConfig"]] == ["train", "val"]
        assert job["spec"]["checkpointConfig"]["localPath"] == "/opt/ml/checkpoints"
