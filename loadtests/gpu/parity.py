"""CUDA against CPU: `maskserve predict` on the same images with the device under test and with the
reference (the CPU), every detection of score >= 0.5 of each reproduced by the other (same label,
box IoU >= 0.99, mask IoU >= 0.97: loadtests.bench.compare), for the fixture and the export."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from ..bench import compare
from . import phase
from .settings import FIXTURE, Context

PROVIDER = re.compile(r"execution provider: (\w+)")


def predict(ctx: Context, model: Path, args: list[str], images: list[Path]) -> tuple[list[dict[str, Any]], str]:
    """One JSON result per image, and the execution provider maskserve logged."""
    cmd = [str(ctx.maskserve), "predict", "--model", str(model), *args, *map(str, images)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:4] + args)} exited with {p.returncode}: {p.stderr[-1500:]}")
    results = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    if len(results) != len(images):
        raise RuntimeError(f"{len(results)} results for {len(images)} images")
    m = PROVIDER.search(p.stderr)
    return results, m.group(1) if m else "unknown"


def check(ctx: Context, model: Path, images: list[Path]) -> dict[str, Any]:
    ref, ref_provider = predict(ctx, model, ctx.profile.reference_args, images)
    dut, dut_provider = predict(ctx, model, ctx.profile.device_args, images)
    per = {}
    for im, r, d in zip(images, ref, dut):
        per[im.name] = {"reference_in_device": compare.compare(r, d), "device_in_reference": compare.compare(d, r)}
    fwd = [v["reference_in_device"] for v in per.values()]
    back = [v["device_in_reference"] for v in per.values()]
    confident = [sum(c["confident"][0] for c in fwd), sum(c["confident"][1] for c in fwd)]
    confident_back = [sum(c["confident"][0] for c in back), sum(c["confident"][1] for c in back)]
    out: dict[str, Any] = {
        "model": str(model),
        "reference": {"args": ctx.profile.reference_args, "provider": ref_provider},
        "device": {"args": ctx.profile.device_args, "provider": dut_provider},
        "images": len(images),
        "detections": [sum(c["count"][0] for c in fwd), sum(c["count"][1] for c in fwd)],
        "matched": sum(c["matched"] for c in fwd),
        "confident_reproduced": confident,
        "confident_reproduced_back": confident_back,
        "min_box_iou": min((c["min_box_iou"] for c in fwd + back), default=1.0),
        "min_mask_iou": min((c["min_mask_iou"] for c in fwd + back), default=1.0),
        "pass": confident[0] == confident[1] and confident_back[0] == confident_back[1],
        "criterion": f"every detection of score >= {compare.CONFIDENT} reproduced both ways "
        f"(box IoU >= {compare.BOX_IOU}, mask IoU >= {compare.MASK_IOU})",
        "per_image": per,
    }
    if confident[1] == 0 and confident_back[1] == 0:
        out["note"] = (
            f"no detection reaches {compare.CONFIDENT} (random weights?): the check is vacuous; "
            "'matched' counts every detection of the reference reproduced"
        )
    return out


def run(ctx: Context, rec: phase.Recorder, _: argparse.Namespace) -> None:
    p = ctx.profile
    rec.result["models"] = {}
    targets = [("fixture", FIXTURE, ctx.fixture_samples[: p.fixture_parity_images])]
    if (ctx.main_model / "model.json").exists():
        targets.append(("export", ctx.main_model, ctx.hd[: p.main_parity_images]))
    else:
        rec.result["models"]["export"] = {"status": "unavailable", "reason": "no export (the export phase failed)"}
    for name, model, images in targets:
        try:
            rec.result["models"][name] = check(ctx, model, images)
        except Exception as e:  # one model's failure does not hide the other's result
            rec.result["models"][name] = phase.failure(e)
        rec.save()
    checked = [m for m in rec.result["models"].values() if "pass" in m]
    rec.result["pass"] = bool(checked) and all(m["pass"] for m in checked)
    if len(checked) < len(rec.result["models"]):
        rec.result["status"] = "partial"
        rec.result["reason"] = "not every model could be checked (see models)"


if __name__ == "__main__":
    phase.main(run)
