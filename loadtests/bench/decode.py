"""JPEG decode time: maskserve's decoder (libjpeg-turbo, Pillow's settings) against the `image`
crate's (zune-jpeg, maskserve's decoder until issue 13) and Pillow itself, in the same run.

    python -m loadtests.bench.decode --out loadtests/results/decode

Writes a set of JPEGs (synthetic photos: gradients, edges, sensor-like noise) in the layouts
clients send: 1080p and 4k baseline 4:2:0, 1080p 4:4:4 and progressive, a small 400x300 image,
grayscale. Each file is decoded `--repeat` times, single-threaded like one request, by
`maskserve debug-decode --repeat` (both Rust decoders, median ms) and by Pillow
(`Image.open(...).convert("RGB")`, median ms). Prints and writes a markdown table and JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

FILES = {
    "1080p-420-q90.jpg": ((1920, 1080), {"quality": 90, "subsampling": "4:2:0"}),
    "1080p-444-q95.jpg": ((1920, 1080), {"quality": 95, "subsampling": "4:4:4"}),
    "1080p-progressive-q85.jpg": ((1920, 1080), {"quality": 85, "progressive": True}),
    "4k-420-q85.jpg": ((3840, 2160), {"quality": 85, "subsampling": "4:2:0"}),
    "400x300-q75.jpg": ((400, 300), {"quality": 75}),
    "1080p-gray-q90.jpg": ((1920, 1080), {"quality": 90, "gray": True}),
}


def _photo(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [
            255 * xx / (w - 1),
            255 * yy / (h - 1),
            127 + 100 * np.sin(xx / 37.0) * np.cos(yy / 23.0),
        ],
        axis=-1,
    )
    for _ in range(40):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, h / 6)
        img[(xx - x) ** 2 + (yy - y) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_files(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, ((w, h), kw)) in enumerate(FILES.items()):
        kw = dict(kw)
        img = Image.fromarray(_photo(w, h, i))
        if kw.pop("gray", False):
            img = img.convert("L")
        path = out / name
        img.save(path, "JPEG", **kw)
        paths.append(path)
    return paths


def pillow_ms(path: Path, repeat: int) -> float:
    data = path.read_bytes()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        with Image.open(io.BytesIO(data)) as im:
            im.convert("RGB").load()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "loadtests/results/decode")
    p.add_argument("--binary", type=Path, default=ROOT / "target/release/maskserve")
    p.add_argument("--repeat", type=int, default=30)
    a = p.parse_args(argv)
    paths = write_files(a.out / "images")
    run = subprocess.run(
        [str(a.binary), "debug-decode", "--repeat", str(a.repeat), *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
    )
    rust = {d["file"]: d for d in map(json.loads, run.stdout.splitlines())}
    rows = []
    for path in paths:
        r = rust[path.name]
        pil = pillow_ms(path, a.repeat)
        rows.append(
            {
                "file": path.name,
                "bytes": path.stat().st_size,
                "maskserve_ms": r["maskserve_ms"],
                "image_crate_ms": r["image_crate_ms"],
                "pillow_ms": pil,
            }
        )
    lines = [
        "| file | KiB | maskserve (libjpeg-turbo) ms | `image` crate (zune-jpeg) ms | ratio | Pillow ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["maskserve_ms"] / r["image_crate_ms"]
        lines.append(
            f"| {r['file']} | {r['bytes'] // 1024} | {r['maskserve_ms']:.2f} | "
            f"{r['image_crate_ms']:.2f} | {ratio:.2f}x | {r['pillow_ms']:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    (a.out / "decode.md").write_text(table + "\n")
    (a.out / "decode.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
