"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/): small valid and
hostile inputs of every form the server accepts. Deterministic; rerun after changing it.

    python3 fuzz/make_seeds.py
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent


def picture(w: int, h: int, mode: str = "RGB") -> Image.Image:
    img = Image.new("RGB", (w, h), (20, 30, 40))
    d = ImageDraw.Draw(img)
    d.ellipse((w // 8, h // 8, w // 2, h // 2), fill=(220, 40, 40))
    d.rectangle((w // 2, h // 3, w - 2, h - 2), fill=(40, 40, 220))
    return img.convert(mode)


def save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


def exif_jpeg(orientation: int) -> bytes:
    jpg = save(picture(24, 16), "JPEG", quality=80)
    tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01" + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0" * 4
    app1 = b"Exif\0\0" + tiff
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:]


def images() -> dict[str, bytes]:
    p = picture(24, 16)
    out = {
        "rgb.png": save(p, "PNG"),
        "gray.png": save(picture(24, 16, "L"), "PNG"),
        "rgba.png": save(picture(24, 16, "RGBA"), "PNG"),
        "gray16.png": save(picture(24, 16, "L").convert("I;16"), "PNG"),
        "palette.png": save(p.convert("P"), "PNG"),
        "rgb.jpg": save(p, "JPEG", quality=80),
        "progressive.jpg": save(p, "JPEG", quality=80, progressive=True),
        "cmyk.jpg": save(picture(24, 16, "CMYK"), "JPEG", quality=80),
        "gray.jpg": save(picture(24, 16, "L"), "JPEG", quality=80),
        "exif6.jpg": exif_jpeg(6),
        "exif8.jpg": exif_jpeg(8),
        "rgb.gif": save(p.convert("P"), "GIF"),
        "rgb.bmp": save(p, "BMP"),
        "rgb.tif": save(p, "TIFF"),
        "lossless.webp": save(p, "WEBP", lossless=True),
        "lossy.webp": save(p, "WEBP", quality=50),
        "1x1.png": save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
        "wide.png": save(Image.new("RGB", (300, 2), (9, 90, 9)), "PNG"),
        "bomb.png": png_header(100_000, 100_000),
    }
    jpg = out["rgb.jpg"]
    sof = jpg.index(b"\xff\xc0")
    out["bomb.jpg"] = jpg[: sof + 5] + struct.pack(">HH", 65000, 65000) + jpg[sof + 9 :]
    out["truncated.png"] = out["rgb.png"][: len(out["rgb.png"]) // 2]
    return out


def requests(imgs: dict[str, bytes]) -> dict[str, bytes]:
    b64 = base64.b64encode(imgs["rgb.png"]).decode()
    url = base64.urlsafe_b64encode(imgs["rgb.jpg"]).decode().rstrip("=")

    def req(ct: str, accept: str, attrs: str, body: bytes | str) -> bytes:
        if isinstance(body, str):
            body = body.encode()
        return f"{ct}\n{accept}\n{attrs}\n".encode() + body

    j = json.dumps
    return {
        "raw-png": req("image/png", "", "", imgs["rgb.png"]),
        "raw-sniffed": req("", "*/*", "", imgs["rgb.jpg"]),
        "instances": req("application/json", "application/json", "score_threshold=0.3", j({"instances": [b64]})),
        "instances-b64": req("application/json", "", "", j({"instances": [{"b64": b64}, {"image_bytes": {"b64": url}}]})),
        "inputs-single": req("application/json", "", "", j({"inputs": {"b64": b64}})),
        "inputs-named": req("application/json", "", "", j({"inputs": {"image_bytes": [{"b64": b64}]}})),
        "seed-form": req(
            "application/json",
            "",
            "",
            j({"img_id": 7, "img_data": b64, "score_threshold": "0.5", "mask_threshold": 0.4}),
        ),
        "parameters": req(
            "text/json",
            "application/json;q=0.5, application/jsonlines",
            "mask_format=polygon;max_detections=5",
            j({"instances": [b64], "parameters": {"mask_format": "png", "max_dets": 3}}),
        ),
        "list": req("application/json", "", "", j([b64, {"b64": b64}])),
        "bare-string": req("", "", "", j(f"data:image/png;base64,{b64}")),
        "jsonlines": req("application/jsonlines", "application/x-jsonlines", "", f'"{b64}"\n{{"b64": "{b64}"}}\n'),
        "mime-base64": req("application/json", "", "", j({"instances": [base64.encodebytes(imgs["rgb.png"]).decode()]})),
        "bad-options": req("application/json", "", "score_threshold=2", j({"instances": [b64], "max_detections": 0})),
        "nested": req("application/json", "", "", "[" * 200 + "]" * 200),
        "both": req("application/json", "", "", j({"instances": [b64], "inputs": b64})),
        "accept-q0": req("image/png", "application/json;q=0, text/html", "debug_panic=1", b"x"),
    }


def main() -> None:
    imgs = images()
    for target, files in (("decode_preprocess", imgs), ("request_parsing", requests(imgs))):
        d = HERE / "corpus" / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
        print(f"{d}: {len(files)} files, {sum(len(v) for v in files.values())} bytes")


if __name__ == "__main__":
    main()
