"""PyTorch eager: torchvision's MaskRCNN with the export's own weights (checkpoint.pt through
maskexport.model.load_checkpoint) on the device under test, the synthetic images already decoded and
on the device, under torch.inference_mode(): transform, backbone, RPN, RoI heads and mask paste,
as torchvision users run it. Images/s at each batch size, fp32 and torch.autocast fp16, timed
with torch.cuda.synchronize after warm-up."""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import numpy as np
import torch
from maskexport.model import load_checkpoint
from PIL import Image

from . import phase
from .settings import Context, Profile


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(model: torch.nn.Module, batch: list[torch.Tensor], dev: torch.device, fp16: bool, p: Profile) -> dict:
    amp = torch.autocast(dev.type, dtype=torch.float16) if fp16 else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        for _ in range(p.eager_warmup):
            model(batch)
        sync(dev)
        runs, dets, t0 = 0, 0, time.perf_counter()
        while runs < p.eager_min_runs or time.perf_counter() - t0 < p.eager_s:
            out = model(batch)
            sync(dev)
            runs += 1
            dets += sum(len(o["scores"]) for o in out)
        elapsed = time.perf_counter() - t0
    n = runs * len(batch)
    return {
        "images_per_s": n / elapsed,
        "runs": runs,
        "ms_per_batch": 1e3 * elapsed / runs,
        "detections_per_image": dets / n,
    }


def run(ctx: Context, rec: phase.Recorder, _: argparse.Namespace) -> None:
    ckpt = ctx.main_model / "checkpoint.pt"
    if not ckpt.exists():
        rec.result.update({"status": "unavailable", "reason": f"no {ckpt.name} (the export phase failed)"})
        return
    dev = torch.device("cuda" if ctx.device == "cuda" else "cpu")
    model, arch, _classes = load_checkpoint(str(ckpt))
    model.to(dev).eval()
    imgs = [
        torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1).to(dev).float().div(255)
        for p in ctx.hd
    ]
    rec.result.update(
        {
            "arch": arch,
            "device": str(dev),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "image_size": list(imgs[0].shape[1:]),
        }
    )
    rec.result["fp16"] = {"status": "unavailable", "reason": "fp16 autocast is timed on CUDA only (slow on a CPU)"}
    for dtype in ("fp32", "fp16") if dev.type == "cuda" else ("fp32",):
        rows: dict[str, Any] = {}
        rec.result[dtype] = {"batches": rows}
        for b in ctx.profile.eager_batches:
            batch = [imgs[i % len(imgs)] for i in range(b)]
            try:
                rows[str(b)] = {"status": "ok", **timed(model, batch, dev, dtype == "fp16", ctx.profile)}
            except Exception as e:  # e.g. out of memory at the largest batch, or no fp16 autocast here
                rows[str(b)] = phase.failure(e)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            rec.save()
        ok = {b: r for b, r in rows.items() if r.get("images_per_s")}
        if ok:
            best = max(ok, key=lambda b: ok[b]["images_per_s"])
            rec.result[dtype]["best"] = {"batch": int(best), "images_per_s": ok[best]["images_per_s"]}
            rec.result[dtype]["batch1"] = ok.get("1", {}).get("images_per_s")
        else:
            rec.result[dtype].update({"status": "failed", "reason": "no batch size ran (see batches)"})


if __name__ == "__main__":
    phase.main(run)
