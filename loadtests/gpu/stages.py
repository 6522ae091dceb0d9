"""The floor, approximately: the graphs' own time on the device under test, from `maskserve predict
--bench N` (median ms of each stage over N runs of one image at a time, after a warm-up).

loadtests.bench.floor (ONNX Runtime's Python package running the graphs alone) is the benchmark's
floor, but the GPU machine has no CUDA build of that package, only the C library maskserve loads.
So the floor here is 1000 / (backbone+RPN graph + box RoIAlign and head + mask RoIAlign and head
median ms) at batch 1: the graphs alone in maskserve's own sessions, no decoding, Rust stages, HTTP
or JSON; maskserve batched beyond 1 may beat it."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from typing import Any

from . import phase
from .settings import Context

GRAPH_STAGES = ("graph_backbone_rpn", "graph_box_head", "graph_mask_head")
METHOD = (
    "maskserve predict --bench: 1000 / the sum of the three graph stages' median ms (RoIAlign graphs "
    "included), batch 1, one session set; not loadtests.bench.floor (no ONNX Runtime CUDA Python package)"
)


def python_ort_providers() -> str:
    """What the machine's onnxruntime Python package offers, if it has one (recorded, not used)."""
    try:
        import onnxruntime
    except ImportError:
        return "no onnxruntime Python package"
    return ",".join(onnxruntime.get_available_providers())


def run(ctx: Context, rec: phase.Recorder, _: argparse.Namespace) -> None:
    if not (ctx.main_model / "model.json").exists():
        rec.result.update({"status": "unavailable", "reason": "no export (the export phase failed)"})
        return
    p = ctx.profile
    images = ctx.hd[: max(1, min(2, len(ctx.hd)))]
    cmd = [str(ctx.maskserve), "predict", "--model", str(ctx.main_model), *p.device_args]
    cmd += ["--bench", str(p.bench_runs), *map(str, images)]
    rec.result.update({"method": METHOD, "command": " ".join(["maskserve", *cmd[1:]])})
    rec.result["python_onnxruntime_providers"] = python_ort_providers()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"predict --bench exited with {out.returncode}: {out.stderr[-1500:]}")
    lines: list[dict[str, Any]] = [json.loads(x) for x in out.stdout.splitlines() if x.strip()]
    rec.result["per_image"] = lines
    graph_ms = [sum(line["median_ms"][s] for s in GRAPH_STAGES) for line in lines]
    total_ms = [line["median_ms"]["total"] for line in lines]
    rec.result.update(
        {
            "provider": lines[0]["provider"],
            "graph_ms": statistics.mean(graph_ms),
            "images_per_s": 1000.0 / statistics.mean(graph_ms),
            "one_at_a_time_total_ms": statistics.mean(total_ms),
            "one_at_a_time_images_per_s": 1000.0 / statistics.mean(total_ms),
        }
    )


if __name__ == "__main__":
    phase.main(run)
