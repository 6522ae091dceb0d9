"""End to end on JPEG inputs: `maskserve predict` reproduces every confident detection that
PyTorch (torchvision eager, the fixture's checkpoint) finds on the same files decoded by Pillow
(`ImageOps.exif_transpose` then RGB), as the training data was. Held-out shapes images saved as
baseline and progressive JPEGs, 4:2:0 and 4:4:4, several qualities, some with an EXIF rotation."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from release_binary import REPO, binary

sys.path.insert(0, str(REPO / "model-export"))

from maskexport.model import load_checkpoint
from maskexport.shapes import render

FIXTURE = REPO / "models/shapes"
SEED = 9177  # never used in training
CONFIDENT = 0.5
MIN_BOX_IOU, MIN_MASK_IOU, MAX_SCORE_DIFF = 0.99, 0.97, 0.01
SETTINGS = [
    {"quality": 75, "subsampling": "4:2:0"},
    {"quality": 90, "subsampling": "4:4:4"},
    {"quality": 60, "subsampling": "4:2:2", "progressive": True},
    {"quality": 95, "subsampling": "4:2:0", "progressive": True},
]


def _jpeg(img: np.ndarray, i: int) -> bytes:
    kw: dict = dict(SETTINGS[i % len(SETTINGS)])
    if i % 5 == 4:
        # Stored sideways with EXIF orientation 6: both sides must rotate it upright.
        exif = Image.Exif()
        exif[0x0112] = 6
        kw["exif"] = exif.tobytes()
        img = np.ascontiguousarray(np.rot90(img, 1))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _torch(model: torch.nn.Module, path: Path) -> list[dict]:
    with Image.open(path) as im:
        rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0
    with torch.no_grad():
        out = model([x])[0]
    return [
        {"label": int(lab), "score": float(s), "box": b.numpy(), "mask": m[0].numpy() >= 0.5}
        for lab, s, b, m in zip(out["labels"], out["scores"], out["boxes"], out["masks"])
    ]


def _ours(result: dict) -> list[dict]:
    return [
        {
            "label": d["class_id"],
            "score": d["score"],
            "box": np.array(d["box"]),
            "mask": mask_utils.decode({**d["mask"], "counts": d["mask"]["counts"].encode()}) > 0,
        }
        for d in result["detections"]
    ]


def _unmatched(confident: list[dict], others: list[dict]) -> list[str]:
    """Each confident detection of one side against every detection of the other."""
    missing = []
    for d in confident:
        best = max(
            (o for o in others if o["label"] == d["label"]),
            key=lambda o: _box_iou(d["box"], o["box"]),
            default=None,
        )
        if best is None:
            missing.append(f"label {d['label']} score {d['score']:.3f}: nothing of its class")
            continue
        box_iou, mask_iou = _box_iou(d["box"], best["box"]), _mask_iou(d["mask"], best["mask"])
        if (
            box_iou < MIN_BOX_IOU
            or mask_iou < MIN_MASK_IOU
            or abs(d["score"] - best["score"]) > MAX_SCORE_DIFF
        ):
            missing.append(
                f"label {d['label']} score {d['score']:.3f} vs {best['score']:.3f}: "
                f"box IoU {box_iou:.4f}, mask IoU {mask_iou:.4f}"
            )
    return missing


def test_every_confident_detection_on_jpeg_matches_pytorch_with_pillow(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    model, _, _ = load_checkpoint(str(FIXTURE / "checkpoint.pt"))
    paths = []
    for i in range(24):
        img, _ = render(SEED, i)
        path = tmp_path / f"{i:03d}.jpg"
        path.write_bytes(_jpeg(img, i))
        paths.append(path)
    run = subprocess.run(
        [str(binary()), "predict", "--model", str(FIXTURE), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    results = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    assert len(results) == len(paths)
    failures, confident = [], 0
    for path, result in zip(paths, results, strict=True):
        theirs, ours = _torch(model, path), _ours(result)
        with Image.open(path) as im:
            w, h = ImageOps.exif_transpose(im).size
        assert (result["width"], result["height"]) == (w, h)
        sure_theirs = [d for d in theirs if d["score"] >= CONFIDENT]
        sure_ours = [d for d in ours if d["score"] >= CONFIDENT]
        confident += len(sure_theirs)
        failures += [f"{path.name} torch: {m}" for m in _unmatched(sure_theirs, ours)]
        failures += [f"{path.name} maskserve: {m}" for m in _unmatched(sure_ours, theirs)]
    print(f"{confident} confident PyTorch detections on {len(paths)} JPEGs; unmatched: {failures}")
    assert confident >= 40
    assert not failures, failures
