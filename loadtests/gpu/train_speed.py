"""Training speed: steps of the project's own training loop (maskexport.train.train) on synthetic shapes
(maskexport.shapes.write_dataset), every image resized by the model's transform to the profile's
size (800x1333 on the device), at the profile's batch size, fp32 or --amp (float16 autocast +
GradScaler); images/s on one device from train()'s own [train] log lines, the first logged window
(the first step: allocation, kernel choice) left out."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import time
from typing import Any

import torch
from maskexport.metrics_log import TRAIN_PREFIX
from maskexport.shapes import write_dataset
from maskexport.train import train

from . import phase
from .settings import Context

LINE = re.compile(r"it=(\d+)/\d+ .*images/s=([0-9.]+)")
# Speed does not depend on it; lower than train()'s default keeps a from-scratch R50 finite over
# the few steps timed.
LR = 0.01


def steady_rate(log: str, batch: int) -> dict[str, Any]:
    """Images/s over the logged windows after the first one."""
    windows = [
        (int(m[1]), float(m[2]))
        for line in log.splitlines()
        if line.startswith(TRAIN_PREFIX)
        if (m := LINE.search(line))
    ]
    out: dict[str, Any] = {"steps": windows[-1][0] if windows else 0, "logged_rates": [r for _, r in windows]}
    if len(windows) >= 2:
        steps = [b[0] - a[0] for a, b in zip(windows, windows[1:])]
        seconds = [s * batch / r for s, (_, r) in zip(steps, windows[1:]) if r > 0]
        out["images_per_s"] = sum(steps) * batch / sum(seconds) if seconds else 0.0
        out["timed_steps"] = sum(steps)
    elif windows:
        out["images_per_s"] = windows[0][1]
        out["timed_steps"] = windows[0][0]
        out["note"] = "one logged window: the first step is included"
    return out


def run(ctx: Context, rec: phase.Recorder, a: argparse.Namespace) -> None:
    p = ctx.profile
    data = ctx.work / "train-shapes"
    if not (data / "annotations.json").exists():
        write_dataset(data, seed=0, count=p.train_images)
    tag = "amp" if a.amp else "fp32"
    rec.result.update(
        {
            "arch": p.train_arch,
            "batch_size": p.train_batch,
            "min_size": p.train_min_size,
            "max_size": p.train_max_size,
            "precision": "amp (float16 autocast + GradScaler)" if a.amp else "fp32",
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "iterations": p.train_steps,
            "time_budget_s": a.budget_s,
        }
    )
    buf = io.StringIO()
    t0 = time.monotonic()
    try:
        with contextlib.redirect_stdout(buf):
            train(
                data,
                ctx.work / f"train-{tag}.pt",
                arch=p.train_arch,
                iterations=p.train_steps,
                batch_size=p.train_batch,
                lr=LR,
                log_every=p.train_log_every,
                time_budget_s=a.budget_s,
                min_sizes=(p.train_min_size,),
                max_size=p.train_max_size,
                amp=a.amp,
            )
    except ValueError as e:
        if not (a.amp and not torch.cuda.is_available()):
            raise
        rec.result.update({"status": "unavailable", "reason": f"train(amp=True) refused: {e}"})
        return
    finally:
        rec.result["wall_s"] = time.monotonic() - t0
        rec.result["log"] = buf.getvalue()[-4000:]
        rec.result.update(steady_rate(buf.getvalue(), p.train_batch))


def options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--budget-s", type=float, default=60.0, help="train()'s time_budget_s")


if __name__ == "__main__":
    phase.main(run, options)
