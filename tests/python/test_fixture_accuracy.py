"""The bundled fixture, run by the real binary, on held-out shapes it never saw (a seed and a
count of its own): COCOeval of what `maskserve predict` returns, RLE decoded by pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "model-export"))

from maskexport.shapes import write_dataset

# Training used seeds 1 (train) and 2 (validation); this set is new to the model. The fixture's
# family (models/shapes/README.md): short sides 160-1000 px, shapes from 4 % of the short side.
HELD_OUT_SEED = 4242
MIN_SEGM_AP = 0.80
MIN_SEGM_AP50 = 0.95


def test_fixture_segm_ap_through_the_binary(tmp_path: Path) -> None:
    ann = write_dataset(tmp_path, seed=HELD_OUT_SEED, count=80)
    coco = COCO(str(ann))
    images = sorted(coco.loadImgs(coco.getImgIds()), key=lambda i: i["id"])
    binary = Path(os.environ.get("MASKSERVE_BIN", REPO / "target/release/maskserve"))
    paths = [str(tmp_path / "images" / i["file_name"]) for i in images]
    out = subprocess.run(
        [str(binary), "predict", "--model", str(REPO / "models/shapes"), *paths],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == len(images)
    results = []
    for info, res in zip(images, lines, strict=True):
        assert (res["width"], res["height"]) == (info["width"], info["height"])
        for d in res["detections"]:
            x1, y1, x2, y2 = d["box"]
            results.append(
                {
                    "image_id": info["id"],
                    "category_id": d["class_id"],
                    "score": d["score"],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "segmentation": d["mask"],
                }
            )
    assert results
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(results), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    segm_ap = float(ev.stats[0])
    print(
        f"fixture segm AP {segm_ap:.3f} / AP50 {ev.stats[1]:.3f} on {len(images)} held-out images"
    )
    assert segm_ap >= MIN_SEGM_AP
    assert ev.stats[1] >= MIN_SEGM_AP50
