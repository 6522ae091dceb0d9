"""The training manifests and image agree with model-export (maskexport.sagemaker_train)."""

from __future__ import annotations

import importlib
import json
import re
import sys
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


def _maskexport(name: str) -> ModuleType:
    """maskexport.<name>, imported as a package module (its modules import one another)."""
    if not (EXPORT / "maskexport" / f"{name}.py").exists():
        pytest.skip(f"model-export has no maskexport/{name}.py yet")
    if str(EXPORT) not in sys.path:
        sys.path.insert(0, str(EXPORT))
    return importlib.import_module(f"maskexport.{name}")


def _sagemaker_train() -> ModuleType:
    return _maskexport("sagemaker_train")


def _training_job(flavor: str) -> dict:
    return next(
        d for i in rm.render(flavor, ["train"]) for d in i.documents if d["kind"] == "TrainingJob"
    )


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
    raw = _training_job(flavor)["spec"]["hyperParameters"]
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
        assert [c["channelName"] for c in job["spec"]["inputDataConfig"]] == [
            "train",
            "val",
        ]
        assert job["spec"]["checkpointConfig"]["localPath"] == "/opt/ml/checkpoints"


@pytest.mark.parametrize("flavor", ["operator", "ack"])
def test_metric_definitions_are_the_ones_the_training_log_is_written_for(
    flavor: str,
) -> None:
    """The manifests chart exactly maskexport.metrics_log's regexes (its lines are tested there)."""
    metrics_log = _maskexport("metrics_log")
    spec = _training_job(flavor)["spec"]["algorithmSpecification"]
    assert spec["metricDefinitions"] == metrics_log.metric_definitions()
    names = [d["name"] for d in spec["metricDefinitions"]]
    assert {
        "train:loss",
        "train:lr",
        "train:images_per_second",
        "val:segm_AP",
        "val:bbox_AP",
    } <= set(names)
    assert len(names) == len(set(names)) <= 40  # SageMaker takes at most 40 per job
    for d in spec["metricDefinitions"]:
        assert 1 <= len(d["regex"]) <= 500 and re.compile(d["regex"]).groups >= 1, d


def test_metric_regexes_read_the_lines_metrics_log_writes() -> None:
    """Each regex picks its own value out of the formatted lines, and nothing else."""
    ml = _maskexport("metrics_log")
    parts = {"loss_classifier": 0.25, "loss_mask": 0.5}
    log = "\n".join(
        [
            ml.train_line(50, 3000, 1.2345, 2e-05, 12.5, 45, parts),
            ml.train_done_line(3000, 5400, 11.0),
            ml.val_line(
                {
                    "segm_AP": 0.301,
                    "segm_AP50": 0.512,
                    "bbox_AP": -1.0,
                    "bbox_AP50": 0.554,
                },
                500,
            ),
        ]
    )
    expected = {
        "train:loss": [1.2345],
        "train:lr": [2e-05],
        "train:images_per_second": [12.5],
        "val:segm_AP": [0.301],
        "val:segm_AP50": [0.512],
        "val:bbox_AP": [-1.0],
        "val:bbox_AP50": [0.554],
    }
    got = {
        d["name"]: [float(m.group(1)) for m in re.finditer(d["regex"], log)]
        for d in ml.metric_definitions()
    }
    assert got == expected
