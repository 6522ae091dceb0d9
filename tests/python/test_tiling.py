"""Tiled inference on the release binary over real HTTP with the fixture model: shapes placed
across tile borders come out once each, whole; an image no larger than a tile gives the same
detections tiled or not; on large images full of small shapes tiling beats plain resizing on
AP; bad tiling options are 400s and the server stays healthy."""

from __future__ import annotations

import http.client
import io
import json
import math
import os
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from release_binary import REPO, binary, free_port

FIXTURE = REPO / "models" / "shapes"
# The fixture's own scale: a 256-pixel tile is its min_size, run without resizing.
TILE = "tile_size=256,tile_overlap=96"


class Server:
    def __init__(self) -> None:
        self.port = free_port()
        env = {**os.environ, "MASKSERVE_LOG": "warn"}
        self.proc = subprocess.Popen(
            [str(binary()), "serve", "--port", str(self.port), "--model", str(FIXTURE)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.post_ping() == 200:
                    return
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(
            f"no /ping: {self.proc.communicate(timeout=30)[1].decode()[-2000:]}"
        )

    def post_ping(self) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/ping")
            return conn.getresponse().status
        finally:
            conn.close()

    def invoke(self, png: bytes, attributes: str = "") -> tuple[int, dict]:
        headers = {"Content-Type": "image/png", "Accept": "application/json"}
        if attributes:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            conn.request("POST", "/invocations", body=png, headers=headers)
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.proc.terminate()
    s.proc.communicate(timeout=30)


def draw(
    h: int, w: int, shapes: list[tuple[int, float, float, float]], seed: int = 0
) -> tuple:
    """A plain canvas with shapes `(label, cx, cy, r)` (1 circle, 2 square, 3 triangle) in
    colours far from the background; returns the PNG and each shape's mask."""
    rng = np.random.default_rng(seed)
    bg = (200, 190, 170)
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    masks = []
    for label, cx, cy, r in shapes:
        colour = tuple(
            int(v) for v in rng.choice([(30, 60, 200), (200, 40, 40), (30, 150, 60)])
        )
        m = Image.new("L", (w, h), 0)
        dm = ImageDraw.Draw(m)
        if label == 1:
            box = [cx - r, cy - r, cx + r, cy + r]
            d.ellipse(box, fill=colour)
            dm.ellipse(box, fill=1)
        else:
            n = 4 if label == 2 else 3
            start = math.pi / 4 if label == 2 else -math.pi / 2
            pts = [
                (
                    cx + r * math.cos(start + k * 2 * math.pi / n),
                    cy + r * math.sin(start + k * 2 * math.pi / n),
                )
                for k in range(n)
            ]
            d.polygon(pts, fill=colour)
            dm.polygon(pts, fill=1)
        masks.append((label, np.asarray(m, dtype=np.uint8)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), masks


def confident(result: dict, score: float = 0.5) -> list[dict]:
    return [d for d in result["detections"] if d["score"] >= score]


def mask_iou(det: dict, truth: np.ndarray) -> float:
    gt = mask_utils.encode(np.asfortranarray(truth))
    return float(mask_utils.iou([det["mask"]], [gt], [False])[0][0])


def test_shapes_across_tile_borders_come_out_once_and_whole(server: Server) -> None:
    # Tiles of 256 every 160 px: borders at 160 and 256, 320 and 416, 480 and 576 on each
    # axis. Each shape straddles one (or, at the corners, two) of them.
    shapes = [
        (1, 256, 80, 34),
        (2, 170, 300, 32),
        (3, 420, 420, 36),
        (1, 330, 580, 30),
        (2, 575, 250, 33),
        (3, 90, 480, 35),
    ]
    png, truth = draw(680, 700, shapes)
    status, result = server.invoke(png, TILE)
    assert status == 200, result
    (res,) = result.get("predictions", [result])
    dets = confident(res)
    assert (res["width"], res["height"]) == (700, 680)
    matched = []
    for label, m in truth:
        ious = [(mask_iou(d, m), d) for d in dets if d["class_id"] == label]
        good = [d for iou, d in ious if iou >= 0.5]
        assert len(good) == 1, (label, [round(i, 3) for i, _ in ious])
        best = max(i for i, _ in ious)
        assert best >= 0.85, (label, best)
        matched.append(good[0])
    assert len(dets) == len(shapes), [(d["class_name"], d["box"]) for d in dets]


def test_shapes_larger_than_the_overlap_are_united(server: Server) -> None:
    # 140-160 px across against a 96 px overlap: no tile sees them whole, so each comes out of
    # two or four tiles in pieces (a half circle taken for a square among them).
    png, truth = draw(500, 600, [(1, 256, 200, 70), (2, 420, 290, 80)])
    status, res = server.invoke(png, TILE)
    assert status == 200, res
    dets = confident(res)
    assert sorted(d["class_id"] for d in dets) == sorted(label for label, _ in truth), [
        (d["class_name"], d["box"]) for d in dets
    ]
    for label, m in truth:
        (d,) = [d for d in dets if d["class_id"] == label]
        assert mask_iou(d, m) >= 0.9, (label, mask_iou(d, m))


def test_an_image_within_one_tile_is_the_same_tiled_or_not(server: Server) -> None:
    sample = (FIXTURE / "samples" / "00000.png").read_bytes()
    h, w = Image.open(io.BytesIO(sample)).size[::-1]
    _, plain = server.invoke(sample)
    _, tiled = server.invoke(sample, f"tile_size={max(h, w)},tile_overlap=0")
    key = [
        (
            d["class_id"],
            round(d["score"], 5),
            [round(v, 3) for v in d["box"]],
            d["mask"]["counts"],
        )
        for d in plain["detections"]
    ]
    assert len(key) > 3
    assert key == [
        (
            d["class_id"],
            round(d["score"], 5),
            [round(v, 3) for v in d["box"]],
            d["mask"]["counts"],
        )
        for d in tiled["detections"]
    ]


def _crowded(seed: int, side: int, n: int) -> tuple[bytes, list]:
    rng = np.random.default_rng(seed)
    shapes: list[tuple[int, float, float, float]] = []
    while len(shapes) < n:
        r = float(rng.uniform(18, 30))
        cx, cy = (float(v) for v in rng.uniform(r + 2, side - r - 2, size=2))
        if all(math.hypot(cx - x, cy - y) > r + rr + 6 for _, x, y, rr in shapes):
            shapes.append((int(rng.integers(1, 4)), cx, cy, r))
    return draw(side, side, shapes, seed)


def _ap(images: list[tuple[list, dict]], side: int) -> float:
    gt: dict = {
        "images": [],
        "annotations": [],
        "categories": [{"id": k} for k in (1, 2, 3)],
    }
    dt = []
    for i, (truth, res) in enumerate(images):
        gt["images"].append({"id": i, "height": side, "width": side})
        for label, m in truth:
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode()
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": i,
                    "category_id": label,
                    "segmentation": rle,
                    "area": float(m.sum()),
                    "bbox": list(mask_utils.toBbox(rle)),
                    "iscrowd": 0,
                }
            )
        for d in res["detections"]:
            dt.append(
                {
                    "image_id": i,
                    "category_id": d["class_id"],
                    "segmentation": d["mask"],
                    "score": d["score"],
                }
            )
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dt) if dt else COCO(), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0])


def test_tiling_beats_resizing_on_large_images_of_small_shapes(server: Server) -> None:
    side = 1200
    plain, tiled = [], []
    for seed in (1, 2):
        png, truth = _crowded(seed, side, 40)
        plain.append((truth, server.invoke(png)[1]))
        status, res = server.invoke(png, TILE)
        assert status == 200
        tiled.append((truth, res))
    ap_plain, ap_tiled = _ap(plain, side), _ap(tiled, side)
    print(
        f"segm AP on {side}px images of 40 small shapes: resized {ap_plain:.3f}, tiled {ap_tiled:.3f}"
    )
    assert ap_tiled > ap_plain + 0.3


def test_bad_tiling_options_are_400s(server: Server) -> None:
    sample = (FIXTURE / "samples" / "00001.png").read_bytes()
    for attrs in ("tile_size=256,tile_overlap=256", "tile_size=256,mask_format=png"):
        status, body = server.invoke(sample, attrs)
        assert status == 400, (attrs, body)
        assert "til" in json.dumps(body), body
    # An invalid value in the header is not applied (and said so): the image is not tiled.
    status, _ = server.invoke(sample, "tile_size=7")
    assert status == 200
    assert server.post_ping() == 200
