"""Tiled inference on large images: seconds per image, tiles/s and the server's peak RSS.

    python -m loadtests.bench.tiled --model models/shapes --sides 4000,8000,10000

For each side, a square PNG of small shapes on a grid with jitter (known boxes and classes) is
posted once to a fresh `maskserve serve` with the asynchronous-inference settings (1 GiB body,
150 MP, an hour's timeout) and `tile_size`/`tile_overlap` as custom attributes. Reports the
wall time, the server's peak RSS (VmHWM) before and after the request, the detections with
score >= 0.5 and their box precision / recall against the placed shapes (IoU >= 0.5, same
class), and the same image through plain resizing (`tile_size=0`) for comparison. Writes JSON
and a markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from . import procs

ROOT = Path(__file__).resolve().parents[2]


def canvas(side: int, spacing: int, seed: int) -> tuple[bytes, list[tuple[int, list[float]]]]:
    """Shapes of radius 18-30 px, one per grid cell of `spacing`, jittered; their boxes."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (side, side), (200, 190, 170))
    d = ImageDraw.Draw(img)
    truth = []
    colours = [(30, 60, 200), (200, 40, 40), (30, 150, 60)]
    for gy in range(spacing // 2, side - spacing // 2, spacing):
        for gx in range(spacing // 2, side - spacing // 2, spacing):
            label = int(rng.integers(1, 4))
            r = float(rng.uniform(18, 30))
            cx, cy = (float(v) + float(rng.uniform(-spacing / 5, spacing / 5)) for v in (gx, gy))
            colour = colours[int(rng.integers(3))]
            if label == 1:
                d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
                box = [cx - r, cy - r, cx + r, cy + r]
            else:
                n, start = (4, math.pi / 4) if label == 2 else (3, -math.pi / 2)
                angles = [start + k * 2 * math.pi / n for k in range(n)]
                pts = [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in angles]
                d.polygon(pts, fill=colour)
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                box = [min(xs), min(ys), max(xs), max(ys)]
            truth.append((label, box))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), truth


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def precision_recall(dets: list[dict], truth: list[tuple[int, list[float]]], cell: int) -> tuple[float, float]:
    """Greedy one-to-one matching by score; truth indexed by grid cell for speed."""
    grid: dict[tuple[int, int], list[int]] = {}
    for i, (_, b) in enumerate(truth):
        grid.setdefault((int((b[0] + b[2]) / 2 // cell), int((b[1] + b[3]) / 2 // cell)), []).append(i)
    used = set()
    tp = 0
    for d in sorted(dets, key=lambda d: -d["score"]):
        b = d["box"]
        cx, cy = int((b[0] + b[2]) / 2 // cell), int((b[1] + b[3]) / 2 // cell)
        best, arg = 0.5, None
        for gx in (cx - 1, cx, cx + 1):
            for gy in (cy - 1, cy, cy + 1):
                for i in grid.get((gx, gy), []):
                    if i not in used and truth[i][0] == d["class_id"] and (v := iou(b, truth[i][1])) >= best:
                        best, arg = v, i
        if arg is not None:
            used.add(arg)
            tp += 1
    return (tp / len(dets) if dets else 0.0), tp / len(truth)


def post(port: int, body: bytes, attributes: str) -> tuple[float, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    t = time.perf_counter()
    conn.request(
        "POST",
        "/invocations",
        body=body,
        headers={"Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": attributes},
    )
    r = conn.getresponse()
    out = json.loads(r.read())
    elapsed = time.perf_counter() - t
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"{r.status}: {out}")
    return elapsed, out


def run_side(a: argparse.Namespace, side: int, out: Path) -> dict[str, Any]:
    png, truth = canvas(side, a.spacing, side)
    port = procs.free_port()
    env = {
        "MASKSERVE_MAX_PIXELS": "150000000",
        "MASKSERVE_MAX_PAYLOAD_BYTES": str(1 << 30),
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "3600",
        "MASKSERVE_BODY_TIMEOUT": "300",
        "MASKSERVE_LOG": "warn",
    }
    binary = ROOT / "target" / "release" / "maskserve"
    cmd = [str(binary), "serve", "--port", str(port), "--model", str(a.model), "--host", "127.0.0.1"]
    srv = procs.start("maskserve", cmd, port, out / f"tiled-{side}.log", env)
    try:
        srv.wait_ready()
        rss_ready = procs.peak_rss_mib(srv.proc.pid)
        attrs = f"tile_size={a.tile},tile_overlap={a.overlap}"
        seconds, res = post(port, png, attrs)
        rss_peak = procs.peak_rss_mib(srv.proc.pid)
        _, plain = post(port, png, "tile_size=0")
    finally:
        srv.stop()
    conf = [d for d in res["detections"] if d["score"] >= 0.5]
    plain_conf = [d for d in plain["detections"] if d["score"] >= 0.5]
    p, r = precision_recall(conf, truth, a.spacing)
    pp, pr = precision_recall(plain_conf, truth, a.spacing)
    stride = a.tile - a.overlap
    tiles = math.ceil(max(side - a.tile, 0) / stride + 1) ** 2
    row = {
        "side": side,
        "png_mib": len(png) / 2**20,
        "shapes": len(truth),
        "tiles": tiles,
        "seconds": seconds,
        "images_per_s": 1 / seconds,
        "tiles_per_s": tiles / seconds,
        "detections": len(res["detections"]),
        "confident": len(conf),
        "precision": p,
        "recall": r,
        "plain_precision": pp,
        "plain_recall": pr,
        "rss_ready_mib": rss_ready,
        "rss_peak_mib": rss_peak,
        "rgb_mib": side * side * 3 / 2**20,
    }
    print(json.dumps(row))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "shapes")
    ap.add_argument("--sides", default="4000,8000,10000")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=96)
    ap.add_argument("--spacing", type=int, default=180)
    ap.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows = [run_side(a, int(s), a.out) for s in a.sides.split(",")]
    (a.out / "tiled.json").write_text(json.dumps(rows, indent=1))
    head = (
        "| side | shapes | tiles | s / image | tiles/s | confident dets | precision / recall "
        "| plain resize P / R | RSS ready → peak MiB | RGB MiB |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        cells = [
            r["side"],
            r["shapes"],
            r["tiles"],
            f"{r['seconds']:.1f}",
            f"{r['tiles_per_s']:.1f}",
            r["confident"],
            f"{r['precision']:.3f} / {r['recall']:.3f}",
            f"{r['plain_precision']:.3f} / {r['plain_recall']:.3f}",
            f"{r['rss_ready_mib']:.0f} → {r['rss_peak_mib']:.0f}",
            f"{r['rgb_mib']:.0f}",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    (a.out / "tiled.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
