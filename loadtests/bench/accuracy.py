"""Segmentation AP of a model through `maskserve predict` on held-out shapes images.

    python -m loadtests.bench.accuracy --seed 999 --count 300
    python -m loadtests.bench.accuracy --seed 999 --count 300 --jpeg-quality 90

Writes the data set (maskexport.shapes, the `wide` family unless --family), runs the release
binary on every image (PNG, or the same images saved as JPEG), and scores what it returns with
COCOeval, its RLE masks decoded by pycocotools.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "model-export"))

from maskexport.shapes import DEFAULT_FAMILY, FAMILIES, write_dataset  # noqa: E402


def evaluate(
    binary: Path, model: Path, seed: int, count: int, family: str, jpeg_quality: int | None, work: Path
) -> dict[str, float]:
    ann = write_dataset(work, seed, count, family)
    coco = COCO(str(ann))
    images = sorted(coco.loadImgs(coco.getImgIds()), key=lambda i: i["id"])
    paths = []
    for info in images:
        path = work / "images" / info["file_name"]
        if jpeg_quality is not None:
            jpg = work / "jpeg" / f"{path.stem}.jpg"
            jpg.parent.mkdir(exist_ok=True)
            Image.open(path).save(jpg, quality=jpeg_quality)
            path = jpg
        paths.append(str(path))
    run = subprocess.run(
        [str(binary), "predict", "--model", str(model), *paths], capture_output=True, text=True, check=True
    )
    lines = run.stdout.splitlines()
    assert len(lines) == len(images), f"{len(lines)} results for {len(images)} images"
    results = []
    for info, line in zip(images, lines, strict=True):
        result = json.loads(line)
        assert (result["width"], result["height"]) == (info["width"], info["height"])
        for d in result["detections"]:
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
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(results), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert results, "no detections at all"
    names = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"]
    return {f"segm_{n}": float(v) for n, v in zip(names, ev.stats[:6])}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models/shapes")
    p.add_argument("--binary", type=Path, default=ROOT / "target/release/maskserve")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--family", choices=sorted(FAMILIES), default=DEFAULT_FAMILY)
    p.add_argument("--jpeg-quality", type=int, help="send the images as JPEGs of this quality")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        m = evaluate(a.binary, a.model, a.seed, a.count, a.family, a.jpeg_quality, Path(tmp))
    kind = f"JPEG q{a.jpeg_quality}" if a.jpeg_quality else "PNG"
    rounded = {k: round(v, 3) for k, v in m.items()}
    print(f"seed {a.seed}, {a.count} images ({a.family}, {kind}): {json.dumps(rounded)}")


if __name__ == "__main__":
    main()
