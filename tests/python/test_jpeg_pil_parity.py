"""maskserve decodes JPEG exactly as Pillow does (libjpeg-turbo, Pillow's settings, Pillow's CMYK
conversion, `ImageOps.exif_transpose`): every file of the corpus gives identical pixels through
the real binary, and every file Pillow rejects gets a 400-class decode error, never a panic."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from jpeg_corpus import bad_files, good_files
from PIL import Image, ImageOps
from release_binary import binary


def _pil(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _ppm(path: Path) -> np.ndarray:
    magic, size, maxval, data = path.read_bytes().split(b"\n", 3)
    assert magic == b"P6" and maxval == b"255"
    w, h = (int(v) for v in size.split())
    return np.frombuffer(data, np.uint8).reshape(h, w, 3)


def _decode_all(files: list[tuple[str, bytes]], tmp: Path) -> dict[str, dict]:
    src, out = tmp / "src", tmp / "out"
    src.mkdir()
    out.mkdir()
    for name, data in files:
        (src / name).write_bytes(data)
    run = subprocess.run(
        [str(binary()), "debug-decode", "--out", str(out), *(str(src / n) for n, _ in files)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [d["file"] for d in lines] == [n for n, _ in files]
    return {d["file"]: d for d in lines}


def test_every_file_pillow_decodes_gives_identical_pixels(tmp_path: Path) -> None:
    files = list(good_files())
    results = _decode_all(files, tmp_path)
    mismatched = []
    for name, _ in files:
        ours = results[name]
        assert "error" not in ours, f"{name}: {ours}"
        expected = _pil(tmp_path / "src" / name)
        got = _ppm(tmp_path / "out" / f"{name}.ppm")
        if got.shape != expected.shape or not np.array_equal(got, expected):
            worst = (
                int(np.abs(got.astype(int) - expected.astype(int)).max())
                if got.shape == expected.shape
                else f"shape {got.shape} vs {expected.shape}"
            )
            mismatched.append(f"{name}: {worst}")
    assert not mismatched, mismatched
    assert len(files) >= 80


def test_files_pillow_rejects_are_decode_errors(tmp_path: Path) -> None:
    files = list(bad_files())
    results = _decode_all(files, tmp_path)
    answers = []
    for name, _ in files:
        with pytest.raises((OSError, SyntaxError, ValueError)):
            _pil(tmp_path / "src" / name)
        ours = results[name]
        assert ours.get("kind") in {"bad_image", "unsupported_format"}, f"{name}: {ours}"
        answers.append(f"{name}: {ours['error']}")
    print("\n".join(answers))
