"""Synthetic shapes data set in COCO format, deterministic by seed.

Filled circles, squares (rotated too) and triangles in random colours on plain, gradient or
noisy backgrounds; instances that may overlap (later ones occlude earlier ones); images of varied
non-square sizes. Two families: ``wide`` (the default, the bundled fixture's since its second
training) and ``narrow`` (the first fixture's).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

CLASSES = ("circle", "square", "triangle")
MIN_PIXELS = 64


@dataclass(frozen=True)
class Family:
    """The ranges a data set is drawn from."""

    min_side: int
    max_side: int
    # Largest long side / short side; sides are drawn independently when it is 0.
    max_aspect: float
    # Shape radius as a fraction of the image's short side.
    min_radius: float
    max_radius: float
    max_instances: int
    # An instance occluded below this fraction of its own area is dropped from the image.
    min_visible: float


FAMILIES = {
    # Short side log-uniform in 160-1000 px, aspect up to 1.6; radius 4-30 % of the short side
    # (from 6 px, objects about 13 px across, on the smallest images); up to 6 instances.
    "wide": Family(160, 1000, 1.6, 0.04, 0.3, 6, 0.3),
    # The first fixture's: sides 160-400 px drawn independently, radius 8-30 %, up to 4.
    "narrow": Family(160, 400, 0.0, 0.08, 0.3, 4, 0.35),
}
DEFAULT_FAMILY = "wide"


@dataclass
class Instance:
    label: int  # 1-based COCO category id
    mask: np.ndarray  # bool [H, W], visible part


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = rng.integers(3)
    base = rng.uniform(0, 255, size=3)
    if kind == 0:
        img = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    elif kind == 1:
        other = rng.uniform(0, 255, size=3)
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        img = base[None, None, :] * (1 - t[..., None]) + other[None, None, :] * t[..., None]
    else:
        img = base[None, None, :] + rng.normal(0, rng.uniform(8, 30), size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.float32)


def _polygon(rng: np.random.Generator, label: int, cx: float, cy: float, r: float) -> list[float]:
    if label == 2:  # square, rotated by a random angle
        angle = rng.uniform(0, math.pi / 2) if rng.random() < 0.6 else 0.0
        corners = [angle + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        return [c for a in corners for c in (cx + r * math.cos(a), cy + r * math.sin(a))]
    # triangle: three vertices at jittered angles so shapes vary but stay fat
    base = rng.uniform(0, 2 * math.pi)
    angles = [base + k * 2 * math.pi / 3 + rng.uniform(-0.3, 0.3) for k in range(3)]
    return [c for a in angles for c in (cx + r * math.cos(a), cy + r * math.sin(a))]


def _size(rng: np.random.Generator, fam: Family) -> tuple[int, int]:
    if not fam.max_aspect:
        h, w = (int(v) for v in rng.integers(fam.min_side, fam.max_side + 1, size=2))
        return h, w
    short = math.exp(rng.uniform(math.log(fam.min_side), math.log(fam.max_side)))
    long = min(short * rng.uniform(1.0, fam.max_aspect), fam.max_side)
    h, w = round(short), round(long)
    return (h, w) if rng.random() < 0.5 else (w, h)


def _shape_mask(rng: np.random.Generator, label: int, h: int, w: int, fam: Family) -> np.ndarray:
    r = rng.uniform(fam.min_radius, fam.max_radius) * min(h, w)
    cx = rng.uniform(r * 0.5, w - r * 0.5)
    cy = rng.uniform(r * 0.5, h - r * 0.5)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if label == 1:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        draw.polygon(_polygon(rng, label, cx, cy, r), fill=1)
    return np.asarray(canvas, dtype=bool)


def _colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    # Keep the shape visibly different from the background around it.
    for _ in range(20):
        c = rng.uniform(0, 255, size=3)
        if np.abs(c - avoid).sum() > 120:
            return c
    return 255 - avoid


def render(seed: int, index: int, family: str = DEFAULT_FAMILY) -> tuple[np.ndarray, list[Instance]]:
    """Image ``index`` of the data set ``seed``: uint8 [H, W, 3] and its visible instances."""
    fam = FAMILIES[family]
    rng = np.random.default_rng([seed, index])
    h, w = _size(rng, fam)
    img = _background(rng, h, w)
    placed: list[tuple[int, np.ndarray]] = []
    for _ in range(int(rng.integers(1, fam.max_instances + 1))):
        label = int(rng.integers(1, len(CLASSES) + 1))
        m = _shape_mask(rng, label, h, w, fam)
        if m.sum() < MIN_PIXELS:
            continue
        avoid = img[m].mean(axis=0)
        img[m] = _colour(rng, avoid)
        placed.append((label, m))
    instances = []
    for i, (label, m) in enumerate(placed):
        visible = m.copy()
        for _, later in placed[i + 1 :]:
            visible &= ~later
        if visible.sum() >= fam.min_visible * m.sum() and visible.sum() >= MIN_PIXELS:
            instances.append(Instance(label, visible))
    return np.clip(img, 0, 255).astype(np.uint8), instances


def coco_annotation(ann_id: int, image_id: int, inst: Instance) -> dict:
    rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": inst.label,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()},
        "area": float(mask_utils.area(rle)),
        "bbox": bbox,
        "iscrowd": 0,
    }


def write_dataset(out: Path, seed: int, count: int, family: str = DEFAULT_FAMILY) -> Path:
    """Write ``count`` images and ``annotations.json`` (COCO) under ``out``; returns its path."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        img, instances = render(seed, i, family)
        name = f"{i:05d}.png"
        Image.fromarray(img).save(out / "images" / name)
        images.append({"id": i + 1, "file_name": name, "height": img.shape[0], "width": img.shape[1]})
        for inst in instances:
            annotations.append(coco_annotation(len(annotations) + 1, i + 1, inst))
    categories = [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CLASSES)]
    ann_path = out / "annotations.json"
    ann_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--family", choices=sorted(FAMILIES), default=DEFAULT_FAMILY)
    a = p.parse_args(argv)
    print(write_dataset(a.out, a.seed, a.count, a.family))


if __name__ == "__main__":
    main()
