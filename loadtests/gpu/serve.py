"""maskserve end to end over HTTP at saturation: `maskserve serve` with the device under test at each
--max-batch-size, the synthetic JPEGs (1333x800 on the device) posted to /invocations by closed-loop
clients; images/s, the server's CPU cores (user + system CPU seconds of its process / wall),
latency percentiles, and its own /metrics (provider, mean batch size, mean ms per stage)."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

from ..bench import compare, procs
from . import client, phase
from .settings import Context

NO_FP16 = "not available: no fp16 export"
PROVIDER = re.compile(r'^maskserve_execution_provider_info\{provider="([^"]+)"\} 1', re.M)


def fp16_graphs(model: Path) -> list[str]:
    """Graphs of the model directory that say they are fp16 (no export writes any yet)."""
    m = json.loads((model / "model.json").read_text())
    named = [p.name for p in model.glob("*.onnx") if "fp16" in p.name or "float16" in p.name]
    return named + ([str(m["precision"])] if "fp16" in str(m.get("precision", "")) else [])


def server_metrics(url: str) -> dict[str, Any]:
    """The provider in use and, through the benchmark's readers, mean batch size and ms per stage."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, Any] = {"provider": m.group(1) if (m := PROVIDER.search(text)) else "unknown"}
    try:
        from ..bench.run import mean_batch_size, stage_means
    except ImportError as e:  # run.py imports the reference server (ONNX Runtime's Python package)
        out["stage_mean_ms"] = f"not read: {e}"
        return out
    out["mean_batch_size"] = mean_batch_size(url)
    out["stage_mean_ms"] = stage_means(url)
    return out


def burst(srv: procs.Server, files: list[Path], k: int) -> None:
    """`k` requests at once: the batcher runs them together, so each batch size's shapes are seen
    (ONNX Runtime's CUDA provider picks its kernels per input shape) before the measurement."""
    with concurrent.futures.ThreadPoolExecutor(k) as ex:
        list(ex.map(lambda i: compare.invoke(srv.url, files[i % len(files)]), range(k)))


def measure(ctx: Context, batch: int) -> dict[str, Any]:
    p = ctx.profile
    port = procs.free_port()
    cmd = [str(ctx.maskserve), "serve", "--model", str(ctx.main_model), *p.device_args]
    # Room for every client: the default queue (16 on one GPU backend) would answer the surplus 503.
    cmd += ["--max-batch-size", str(batch), "--queue-size", str(max(16, 2 * p.clients))]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    srv = procs.start(f"maskserve-b{batch}", cmd, port, ctx.work / "logs" / f"serve-b{batch}.log")
    try:
        t = time.monotonic()
        srv.wait_ready(120)
        ready_s = time.monotonic() - t
        for k in range(1, batch + 1):
            burst(srv, ctx.hd, k)
        client.closed_loop(srv.url, ctx.hd, p.clients, p.warmup_s, p.client_procs)
        pid = srv.proc.pid
        c0, t0 = procs.cpu_seconds(pid), time.monotonic()
        res = client.closed_loop(srv.url, ctx.hd, p.clients, p.duration_s, p.client_procs)
        res["server_cpu_cores"] = (procs.cpu_seconds(pid) - c0) / (time.monotonic() - t0)
        res["server_peak_rss_mib"] = procs.peak_rss_mib(pid)
        res["ready_s"] = ready_s
        res["command"] = " ".join(["maskserve", *cmd[1:]])
        res.update(server_metrics(srv.url))
        return res
    finally:
        srv.stop()


def run(ctx: Context, rec: phase.Recorder, _: argparse.Namespace) -> None:
    if not (ctx.main_model / "model.json").exists():
        rec.result.update({"status": "unavailable", "reason": "no export (the export phase failed)"})
        return
    rec.result["model"] = str(ctx.main_model)
    rec.result["images"] = [p.name for p in ctx.hd]
    rec.result["fp32"] = {}
    graphs = fp16_graphs(ctx.main_model)
    rec.result["fp16"] = {
        "status": "unavailable",
        "reason": NO_FP16 if not graphs else f"fp16 graphs {graphs} found, but this script cannot select them",
    }
    for b in ctx.profile.batch_sizes:
        try:
            rec.result["fp32"][str(b)] = {"status": "ok", **measure(ctx, b)}
        except Exception as e:  # the other batch sizes still run
            rec.result["fp32"][str(b)] = phase.failure(e)
        rec.save()
    rows = {b: r for b, r in rec.result["fp32"].items() if r.get("images_per_s")}
    if not rows:
        rec.result.update({"status": "failed", "reason": "no batch size measured (see fp32)"})
        return
    best = max(rows, key=lambda b: rows[b]["images_per_s"])
    rec.result["best"] = {"max_batch_size": int(best), "images_per_s": rows[best]["images_per_s"]}
    if len(rows) < len(rec.result["fp32"]):
        rec.result.update({"status": "partial", "reason": "some batch sizes failed (see fp32)"})


if __name__ == "__main__":
    phase.main(run)
