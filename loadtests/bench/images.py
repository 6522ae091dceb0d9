"""Image sets for the load tests and the benchmark: PNG + JPEG copies of a model's sample images,
or synthetic 1920x1080 JPEGs (the source images upscaled, with sensor-like noise).

    python -m loadtests.bench.images --src models/shapes/samples --out loadtests/results/images
    python -m loadtests.bench.images --src models/shapes/samples --out DIR --hd 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

EXTS = {".png", ".jpg", ".jpeg"}


def sources(src: Path) -> list[Path]:
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in EXTS)
    if not files:
        raise SystemExit(f"no images in {src}")
    return files


def write_index(out: Path) -> list[Path]:
    files = sorted(p for p in out.iterdir() if p.suffix.lower() in EXTS)
    (out / "index.txt").write_text("".join(f"{p.name}\n" for p in files))
    return files


def png_and_jpeg(src: Path, out: Path, limit: int, quality: int = 90) -> list[Path]:
    """Each source image as `<stem>.png` and `<stem>.jpg`."""
    out.mkdir(parents=True, exist_ok=True)
    for p in sources(src)[:limit]:
        img = Image.open(p).convert("RGB")
        img.save(out / f"{p.stem}.png")
        img.save(out / f"{p.stem}.jpg", quality=quality)
    return write_index(out)


def hd_jpegs(src: Path, out: Path, count: int, quality: int = 90, seed: int = 0, pngs: int = 2) -> list[Path]:
    """`count` 1920x1080 JPEGs made from the source images (cycled), and PNG copies of the first
    `pngs` of them."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    srcs = sources(src)
    for i in range(count):
        img = Image.open(srcs[i % len(srcs)]).convert("RGB").resize((1920, 1080), Image.Resampling.BICUBIC)
        px = np.asarray(img).astype(np.int16) + rng.normal(0, 6, (1080, 1920, 3)).astype(np.int16)
        Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(out / f"hd{i:03d}.jpg", quality=quality)
        if i < pngs:
            # The same pixels losslessly: both servers then decode identical inputs (output check).
            Image.open(out / f"hd{i:03d}.jpg").convert("RGB").save(out / f"hd{i:03d}.png", compress_level=1)
    return write_index(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=8, help="source images to convert")
    ap.add_argument("--hd", type=int, default=0, help="make this many 1920x1080 JPEGs instead")
    a = ap.parse_args()
    files = hd_jpegs(a.src, a.out, a.hd) if a.hd else png_and_jpeg(a.src, a.out, a.limit)
    print(f"{len(files)} images in {a.out}")


if __name__ == "__main__":
    main()
