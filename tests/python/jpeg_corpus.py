"""A corpus of JPEG files, written by Pillow's encoder (libjpeg-turbo), for decoder parity.

Baseline and progressive, 4:4:4 / 4:2:2 / 4:2:0, grayscale, CMYK (Adobe) and YCCK, restart
markers, optimised Huffman tables, quality 1 to 100, odd sizes down to 1x1, EXIF orientations
1-8 and an XMP orientation; then damaged files: truncated at several points, corrupt entropy
data, a missing EOI, a zero width. Deterministic: the same bytes on every run.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from PIL import Image

SIZES = [(1, 1), (2, 3), (15, 17), (33, 9), (129, 65), (640, 481), (1023, 7)]


def _picture(w: int, h: int, seed: int) -> np.ndarray:
    """Gradients, hard edges and noise: every kind of block an encoder meets."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [
            255 * xx / max(w - 1, 1),
            255 * yy / max(h - 1, 1),
            127 + 120 * np.sin((xx + yy) / 7.0),
        ],
        axis=-1,
    )
    img[(xx // 8 + yy // 8) % 3 == 0] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _orientation_exif(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def _ycck(cmyk_jpeg_of: np.ndarray) -> bytes:
    """A YCCK file: Y/Cb/Cr of (255 - C, 255 - M, 255 - Y) and K, written as a 4-channel JPEG
    by Pillow, with the Adobe marker's transform flag set to 2 (YCCK) as Photoshop writes it."""
    c = cmyk_jpeg_of.astype(np.float64)
    r, g, b = 255 - c[..., 0], 255 - c[..., 1], 255 - c[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    planes = np.stack([y, cb, cr, c[..., 3]], axis=-1)
    # Pillow writes CMYK inverted (Adobe polarity); pre-invert so the stored values are ours.
    stored = 255 - np.clip(np.round(planes), 0, 255).astype(np.uint8)
    data = bytearray(_save(Image.fromarray(stored, "CMYK"), quality=92))
    at = data.find(b"Adobe")
    assert at > 0 and data[at + 11] == 0, "Pillow wrote no Adobe marker with transform 0"
    data[at + 11] = 2
    return bytes(data)


def good_files() -> Iterator[tuple[str, bytes]]:
    """Files Pillow decodes."""
    for w, h in SIZES:
        rgb = Image.fromarray(_picture(w, h, w * 31 + h))
        for sub in ("4:4:4", "4:2:2", "4:2:0"):
            yield f"baseline-{sub}-{w}x{h}.jpg", _save(rgb, quality=85, subsampling=sub)
            yield f"progressive-{sub}-{w}x{h}.jpg", _save(
                rgb, quality=85, subsampling=sub, progressive=True
            )
        yield f"gray-{w}x{h}.jpg", _save(rgb.convert("L"), quality=80)
        yield f"cmyk-{w}x{h}.jpg", _save(rgb.convert("CMYK"), quality=90)
    big = Image.fromarray(_picture(640, 481, 5))
    for q in (1, 10, 50, 95, 100):
        yield f"quality-{q}.jpg", _save(big, quality=q)
    yield "optimized.jpg", _save(big, quality=75, optimize=True)
    yield "progressive-optimized-gray.jpg", _save(big.convert("L"), progressive=True, optimize=True)
    yield "restart-blocks.jpg", _save(big, quality=80, restart_marker_blocks=7)
    yield "restart-rows.jpg", _save(big, quality=80, restart_marker_rows=1, subsampling="4:2:0")
    cmyk = _picture(129, 65, 9)
    k = _picture(65, 129, 10)[..., 0].T
    yield "ycck-129x65.jpg", _ycck(np.dstack([cmyk, k]))
    small = Image.fromarray(_picture(33, 9, 11))
    for o in range(1, 9):
        yield f"exif-orientation-{o}.jpg", _save(small, quality=90, exif=_orientation_exif(o))
        yield f"exif-orientation-{o}-progressive-420.jpg", _save(
            small, quality=90, exif=_orientation_exif(o), progressive=True, subsampling="4:2:0"
        )
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    yield "xmp-orientation-6.jpg", _save(small, quality=90, xmp=xmp)
    # Flipped bits in the entropy data (never making or breaking a 0xFF byte): libjpeg warns
    # and decodes garbage there, and Pillow, ignoring warnings, gives the same garbage.
    corrupt = bytearray(_save(big, quality=85))
    for at in range(len(corrupt) // 2, len(corrupt) - 200, 997):
        if corrupt[at - 1] != 0xFF and corrupt[at] < 0xFE:
            corrupt[at] ^= 0x01
    yield "corrupt-entropy.jpg", bytes(corrupt)


def bad_files() -> Iterator[tuple[str, bytes]]:
    """Files Pillow rejects (it raises on open or on load)."""
    big = Image.fromarray(_picture(640, 481, 5))
    baseline = _save(big, quality=85)
    progressive = _save(big, quality=85, progressive=True)
    # Even only the EOI marker missing: Pillow's reader wants more data for its last MCU.
    yield "no-eoi.jpg", baseline[:-2]
    for frac in (0.02, 0.3, 0.9, 0.995):
        yield f"truncated-baseline-{frac}.jpg", baseline[: int(len(baseline) * frac)]
        yield f"truncated-progressive-{frac}.jpg", progressive[: int(len(progressive) * frac)]
    yield "soi-only.jpg", b"\xff\xd8\xff"
    # A frame header saying the image has no width.
    sof = baseline.find(b"\xff\xc0")
    zero_width = bytearray(baseline)
    zero_width[sof + 7 : sof + 9] = b"\x00\x00"
    yield "zero-width.jpg", bytes(zero_width)
