"""pycocotools decodes every RLE maskserve emits to the same pixels as maskserve's PNG masks and
maskserve's own RLE decoder.

Runs the real binary (target/debug/maskserve, or $MASKSERVE_BIN) with --mask-format png: each
detection then carries both the RLE and a PNG rendered from the pasted mask (not from the RLE).
Model: models/shapes, else $MASKSERVE_PARITY_MODEL, else model-export/work/random-tiny.
Needs ORT_DYLIB_PATH (or scripts/ort-lib.sh).
"""

import base64
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("MASKSERVE_BIN", ROOT / "target" / "debug" / "maskserve"))


def model_dir():
    for d in (
        ROOT / "models" / "shapes",
        os.environ.get("MASKSERVE_PARITY_MODEL"),
        ROOT / "model-export" / "work" / "random-tiny",
    ):
        if d and (Path(d) / "model.json").is_file():
            return Path(d)
    pytest.skip("no model directory (models/shapes not exported yet)")


def env():
    e = dict(os.environ)
    if not e.get("ORT_DYLIB_PATH"):
        e["ORT_DYLIB_PATH"] = subprocess.check_output(
            [str(ROOT / "scripts" / "ort-lib.sh")], text=True
        ).strip()
    return e


def images(tmp_path, model):
    ref = json.loads((model / "reference.json").read_text())
    files = [model / im["file"] for im in ref["images"]]
    # Own images: odd sizes, grayscale, RGBA, 16-bit, JPEG — masks touching every border.
    rng = np.random.default_rng(0)
    base = np.asarray(Image.open(files[0]).convert("RGB"))
    variants = {
        "tall.png": Image.fromarray(
            np.ascontiguousarray(np.repeat(base[:, :40], 3, axis=0))
        ),
        "gray.png": Image.fromarray(base).convert("L"),
        "rgba.png": Image.fromarray(base).convert("RGBA"),
        "gray16.png": Image.fromarray(
            np.asarray(Image.fromarray(base).convert("L")).astype(np.uint16) * 257
        ),
        "photo.jpg": Image.fromarray(base),
        "noise.png": Image.fromarray(
            rng.integers(0, 255, (97, 203, 3), dtype=np.uint8)
        ),
    }
    for name, im in variants.items():
        p = tmp_path / name
        im.save(p)
        files.append(p)
    return files


def run(args, **kw):
    r = subprocess.run(
        [str(BIN), *args], capture_output=True, env=env(), check=False, **kw
    )
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def test_pycocotools_decodes_our_rle(tmp_path):
    if not BIN.exists():
        pytest.skip(f"{BIN} not built (cargo build)")
    model = model_dir()
    files = images(tmp_path, model)
    out = run(
        [
            "predict",
            "--model",
            str(model),
            "--device",
            "cpu",
            "--mask-format",
            "png",
            *map(str, files),
        ]
    )
    results = [json.loads(l) for l in out.splitlines()]
    assert len(results) == len(files)
    rles = []
    checked = 0
    for f, res in zip(files, results):
        for d in res["detections"]:
            rle = d["mask"]
            assert rle["size"] == [res["height"], res["width"]]
            ours = (
                np.asarray(Image.open(io.BytesIO(base64.b64decode(d["mask_png"])))) > 0
            )
            coco = mask_utils.decode(
                {"size": rle["size"], "counts": rle["counts"].encode()}
            )
            assert coco.shape == ours.shape
            assert np.array_equal(coco.astype(bool), ours), f"{f}: RLE and PNG differ"
            # pycocotools re-encodes the same pixels to the identical string.
            again = mask_utils.encode(np.asfortranarray(coco))
            assert again["counts"].decode() == rle["counts"], (
                f"{f}: not pycocotools' encoding"
            )
            rles.append(rle)
            checked += 1
    assert checked > 0, "no detections to check"
    # maskserve's own decoder agrees too.
    dec = run(
        ["debug-rle-decode"], input="\n".join(json.dumps(r) for r in rles).encode()
    ).splitlines()
    assert len(dec) == len(rles)
    for rle, b64 in zip(rles, dec):
        ours = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))) > 0
        coco = mask_utils.decode(
            {"size": rle["size"], "counts": rle["counts"].encode()}
        ).astype(bool)
        assert np.array_equal(ours, coco)
