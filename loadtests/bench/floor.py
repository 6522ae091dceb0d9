"""The floor: ONNX Runtime alone running the split graphs on inputs prepared beforehand.

Run as its own process (so its CPU time and peak RSS are its own) by run.py:

    python -m loadtests.bench.floor --model DIR --inputs floor-inputs.npz --workers 1 --threads 2 \
        --duration 20 --rate-fractions 0.5,0.8

Each worker thread owns one session set (like a maskserve inference worker); per image it runs
graph (a) on the preprocessed tensor, graph (b) on (a)'s features and the proposals computed
beforehand, graph (c) on the features and the detections computed beforehand (for a per-level
export, (b) and (c) are its RoIAlign graph then its head graph). Nothing else is
timed: no decoding, pre/post-processing, HTTP or JSON. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference_server"))
from pipeline import Heads  # noqa: E402

Inputs = list[dict[str, np.ndarray]]


def load_inputs(path: Path) -> Inputs:
    z = np.load(path)
    n = int(z["count"])
    return [{k: z[f"{i}:{k}"] for k in ("batch", "rois", "det_rois", "labels")} for i in range(n)]


class SessionSet:
    def __init__(self, model_dir: Path, threads: int, spinning: bool) -> None:
        m = json.loads((model_dir / "model.json").read_text())
        so = session_options(threads, spinning)
        g = m["graphs"]
        prov = ["CPUExecutionProvider"]
        self.a = ort.InferenceSession(str(model_dir / g["backbone_rpn"]), so, providers=prov)
        self.heads = Heads(model_dir, m, so, prov)
        self.features = list(g["feature_names"])
        self.input = self.a.get_inputs()[0].name

    def run(self, x: dict[str, np.ndarray]) -> None:
        outs = self.a.run(self.features, {self.input: x["batch"]})
        feats = dict(zip(self.features, outs))
        if x["rois"].shape[0]:
            self.heads.box(feats, x["rois"])
        if x["det_rois"].shape[0]:
            self.heads.mask(feats, x["det_rois"], x["labels"])


def default_threads(workers: int) -> int:
    """maskserve's default: the CPUs this process may use, shared among the workers."""
    return max(len(os.sched_getaffinity(0)) // max(workers, 1), 1)


def session_options(threads: int, spinning: bool) -> ort.SessionOptions:
    """The options maskserve gives its sessions (runtime.rs)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    flag = "1" if spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", flag)
    so.add_session_config_entry("session.inter_op.allow_spinning", flag)
    return so


def saturation(sets: list[SessionSet], inputs: Inputs, duration: float) -> dict[str, Any]:
    """Closed loop: every worker runs images back to back for `duration` seconds."""
    stop = time.monotonic() + duration
    done = [0] * len(sets)
    lat: list[float] = []
    ends: list[float] = []

    def work(w: int) -> None:
        i = w
        while time.monotonic() < stop:
            t = time.perf_counter()
            sets[w].run(inputs[i % len(inputs)])
            lat.append(time.perf_counter() - t)
            ends.append(time.perf_counter())
            done[w] += 1
            i += len(sets)

    t0 = time.monotonic()
    threads = [threading.Thread(target=work, args=(w,)) for w in range(len(sets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ends.sort()
    # Same measure as for the servers: (n - 1) / (last - first completion).
    rate = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 else 0.0
    return {"images_per_s": rate, "count": sum(done), "elapsed_s": time.monotonic() - t0, **percentiles(lat)}


def open_loop(sets: list[SessionSet], inputs: Inputs, rate: float, duration: float) -> dict[str, Any]:
    """Fixed arrival rate: image i is due at i / rate; latency counts from its due time."""
    q: queue.Queue[tuple[int, float] | None] = queue.Queue()
    lat: list[float] = []

    def work(w: int) -> None:
        while (job := q.get()) is not None:
            i, due = job
            sets[w].run(inputs[i % len(inputs)])
            lat.append(time.perf_counter() - due)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(len(sets))]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    n = int(rate * duration)
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        q.put((i, due))
    for _ in threads:
        q.put(None)
    for t in threads:
        t.join()
    return {"rate": rate, "count": n, **percentiles(lat)}


def percentiles(lat: list[float]) -> dict[str, float]:
    if not lat:
        return {}
    a = np.asarray(lat) * 1e3
    return {f"p{q}_ms": float(np.percentile(a, q)) for q in (50, 95, 99)}


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--inputs", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="0: maskserve's default (CPUs / workers)")
    ap.add_argument("--spinning", action="store_true", help="let ORT pool threads spin (MASKSERVE_ORT_SPINNING=1)")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--rate-fractions", default="0.5,0.8", help="open-loop rates, as fractions of saturation")
    a = ap.parse_args()
    inputs = load_inputs(a.inputs)
    threads = a.threads or default_threads(a.workers)
    sets = [SessionSet(a.model, threads, a.spinning) for _ in range(a.workers)]
    for s in sets:  # warm-up
        s.run(inputs[0])
    out: dict[str, Any] = {"threads": threads, "spinning": a.spinning}
    c0, t0 = cpu_s(), time.monotonic()
    out["saturation"] = saturation(sets, inputs, a.duration)
    out["saturation"]["cpu_cores"] = (cpu_s() - c0) / (time.monotonic() - t0)
    out["rates"] = []
    sat = out["saturation"]["images_per_s"]
    for r in [round(float(v) * sat, 3) for v in a.rate_fractions.split(",") if v]:
        c0, t0 = cpu_s(), time.monotonic()
        res = open_loop(sets, inputs, r, a.duration)
        res["cpu_cores"] = (cpu_s() - c0) / (time.monotonic() - t0)
        out["rates"].append(res)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


if __name__ == "__main__":
    main()
