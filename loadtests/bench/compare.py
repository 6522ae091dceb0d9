"""Are two servers' answers the same? Labels equal, box IoU >= 0.99, mask IoU >= 0.97."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

BOX_IOU = 0.99
MASK_IOU = 0.97
# Detections at least this confident are reported apart: the low-score tail is where the two
# JPEG decoders' pixel differences (up to a few levels) change which boxes survive.
CONFIDENT = 0.5


def invoke(url: str, image: Path, path: str = "/invocations") -> dict[str, Any]:
    """POST the image to `url` + `path` (TorchServe: /predictions/<model>); the JSON answer."""
    ctype = "image/png" if image.suffix.lower() == ".png" else "image/jpeg"
    req = urllib.request.Request(
        f"{url}{path}",
        data=image.read_bytes(),
        headers={"Content-Type": ctype, "Accept": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def _xywh(b: list[float]) -> list[float]:
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def box_iou(a: list[float], b: list[float]) -> float:
    return float(mask_utils.iou([_xywh(a)], [_xywh(b)], [0])[0][0])


def mask_iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    ra = {"size": a["size"], "counts": a["counts"].encode()}
    rb = {"size": b["size"], "counts": b["counts"].encode()}
    if mask_utils.area(ra) == 0 and mask_utils.area(rb) == 0:
        return 1.0
    return float(mask_utils.iou([ra], [rb], [0])[0][0])


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Each detection of `a` paired with the unpaired one of `b` of the same label and largest box
    IoU (order-insensitive: near-equal scores may swap); same when every pair passes both IoUs."""
    da, db = a["detections"], b["detections"]
    free = list(range(len(db)))
    boxes, masks = [], []
    for x in da:
        cands = [(box_iou(x["box"], db[j]["box"]), j) for j in free if db[j]["class_id"] == x["class_id"]]
        if not cands:
            boxes.append(0.0)
            masks.append(0.0)
            continue
        iou, j = max(cands)
        free.remove(j)
        boxes.append(iou)
        masks.append(mask_iou(x["mask"], db[j]["mask"]))
    ok = [bi >= BOX_IOU and mi >= MASK_IOU for bi, mi in zip(boxes, masks)]
    matched = sum(ok)
    confident = [o for o, x in zip(ok, da) if x["score"] >= CONFIDENT]
    same = len(da) == len(db) and matched == len(da) and (a["width"], a["height"]) == (b["width"], b["height"])
    return {
        "count": [len(da), len(db)],
        "matched": matched,
        "confident": [sum(confident), len(confident)],
        "min_box_iou": min(boxes, default=1.0),
        "min_mask_iou": min(masks, default=1.0),
        "same": bool(same),
    }


def check_servers(
    url_a: str, url_b: str, images: list[Path], path_a: str = "/invocations", path_b: str = "/invocations"
) -> dict[str, Any]:
    per = {}
    for im in images:
        per[im.name] = compare(invoke(url_a, im, path_a), invoke(url_b, im, path_b))
    return {
        "images": len(per),
        "identical": sum(v["same"] for v in per.values()),
        "detections": sum(v["count"][0] for v in per.values()),
        "matched": sum(v["matched"] for v in per.values()),
        "confident_matched": sum(v["confident"][0] for v in per.values()),
        "confident": sum(v["confident"][1] for v in per.values()),
        "min_box_iou": min((v["min_box_iou"] for v in per.values()), default=1.0),
        "min_mask_iou": min((v["min_mask_iou"] for v in per.values()), default=1.0),
        "per_image": per,
    }
