"""Synthetic JPEGs: loadtests.bench.images' HD set (source images upscaled, sensor-like noise), on the
device at 1333x800, the size the issue's targets are stated at, which R50-FPN's transform leaves as
it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..bench.images import sources
from .settings import HD_HEIGHT, HD_WIDTH


def hd_jpegs(
    src: Path, out: Path, count: int, size: tuple[int, int] = (HD_WIDTH, HD_HEIGHT), seed: int = 0, quality: int = 90
) -> list[Path]:
    """`count` JPEGs of `size` (width, height) made from the images in `src` (cycled)."""
    width, height = size
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    srcs = sources(src)
    files = []
    for i in range(count):
        path = out / f"hd{i:03d}-{width}x{height}.jpg"
        if not path.exists():
            img = Image.open(srcs[i % len(srcs)]).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
            px = np.asarray(img).astype(np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
            Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(path, quality=quality)
        files.append(path)
    return files
