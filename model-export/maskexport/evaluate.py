"""COCOeval (bbox and segm) of a Mask R-CNN on a COCO-format data set."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import torch
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection import MaskRCNN

from .coco import CocoInstances, encode_mask
from .model import load_checkpoint


@torch.no_grad()
def predict_coco(model: MaskRCNN, ds: CocoInstances, mask_threshold: float = 0.5) -> list[dict]:
    model.eval()
    results = []
    for idx in range(len(ds)):
        img, target = ds[idx]
        out = model([img])[0]
        masks = (out["masks"][:, 0] >= mask_threshold).numpy()
        for box, label, score, m in zip(out["boxes"], out["labels"], out["scores"], masks):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {
                    "image_id": target["image_id"],
                    "category_id": ds.category_ids[int(label) - 1],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                    "segmentation": encode_mask(m),
                }
            )
    return results


def coco_metrics(ds: CocoInstances, results: list[dict]) -> dict[str, float]:
    """AP and AP50 for bbox and segm, quietly."""
    metrics: dict[str, float] = {}
    if not results:
        return {f"{t}_{k}": 0.0 for t in ("bbox", "segm") for k in ("AP", "AP50")}
    with contextlib.redirect_stdout(io.StringIO()):
        dets = ds.coco.loadRes(results)
        for iou_type in ("bbox", "segm"):
            ev = COCOeval(ds.coco, dets, iou_type)
            ev.params.imgIds = ds.ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            metrics[f"{iou_type}_AP"] = float(ev.stats[0])
            metrics[f"{iou_type}_AP50"] = float(ev.stats[1])
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="dir with images/ and annotations.json")
    a = p.parse_args(argv)
    model, _, _ = load_checkpoint(str(a.checkpoint))
    ds = CocoInstances(a.data / "images", a.data / "annotations.json")
    print(json.dumps(coco_metrics(ds, predict_coco(model, ds)), indent=1))


if __name__ == "__main__":
    main()
