"""One benchmark run: the ONNX Runtime floor, maskserve over HTTP, the Python reference server and
(with --torchserve) TorchServe serving the PyTorch checkpoint, on the same machine and the same
images, with the reference's and TorchServe's answers checked against maskserve's.

    python -m loadtests.bench.run --model models/shapes
    python -m loadtests.bench.run --model models/shapes --torchserve --torchserve-workers 2
    python -m loadtests.bench.run --model model-export/work/r50 --hd 8 --duration 60

Writes loadtests/results/bench-<name>.json and .md (the table) and prints the table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..torchserve import archive
from . import compare, floor, images, procs, report

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "loadtests" / "reference_server"))
from pipeline import Model, decode_image, preprocess  # noqa: E402


def image_set(a: argparse.Namespace, out: Path) -> list[Path]:
    if a.images:
        files = sorted(p for p in a.images.iterdir() if p.suffix.lower() in images.EXTS)
    else:
        # A --random export has no samples: the HD set is made from the fixture's.
        candidates = [a.model / "samples", ROOT / "model-export" / "work" / "samples-src" / "images"]
        src = next((c for c in candidates if c.is_dir()), ROOT / "models" / "shapes" / "samples")
        d = out / (f"images-hd{a.hd}" if a.hd else f"images-{a.model.name}")
        if not (d / "index.txt").exists():
            if a.hd:
                images.hd_jpegs(src, d, a.hd)
            else:
                images.png_and_jpeg(src, d, 8)
        files = [d / n for n in (d / "index.txt").read_text().split()]
    return files


def of_type(files: list[Path], content_type: str, required: bool = True) -> list[Path]:
    want = {"image/png": {".png"}, "image/jpeg": {".jpg", ".jpeg"}}.get(content_type, images.EXTS)
    out = [p for p in files if p.suffix.lower() in want]
    if not out and required:
        raise SystemExit(f"no {content_type} images")
    return out


def floor_inputs(model_dir: Path, files: list[Path], path: Path) -> None:
    """Preprocessed tensor, proposals and detections of each image, computed once (numpy + ORT)."""
    m = Model(model_dir)
    g = m.m["graphs"]
    arrays: dict[str, np.ndarray] = {"count": np.array(len(files))}
    names = [o.name for o in m.backbone.get_outputs()]
    for i, f in enumerate(files):
        pre = preprocess(decode_image(f.read_bytes()), m.m["preprocess"])
        outs = dict(zip(names, m.backbone.run(None, {m.input_name: pre.batch})))
        props = m.proposals(outs, (pre.batch.shape[2], pre.batch.shape[3]), pre.size)
        feats = {n: outs[n] for n in g["feature_names"]}
        rois = np.concatenate([np.zeros((len(props), 1), np.float32), props], axis=1)
        boxes, _, labels = np.zeros((0, 4), np.float32), None, np.zeros(0, np.int64)
        if len(props):
            logits, regr = m.heads.box(feats, rois)
            boxes, _, labels = m.detections(props, logits, regr, pre.size, {})
        arrays[f"{i}:batch"] = pre.batch
        arrays[f"{i}:rois"] = rois.astype(np.float32)
        arrays[f"{i}:det_rois"] = np.concatenate([np.zeros((len(boxes), 1), np.float32), boxes], axis=1)
        arrays[f"{i}:labels"] = labels.astype(np.int64)
    np.savez(path, **arrays)


def k6(scenario: str, srv: procs.Server, files: list[Path], out: Path, env: dict[str, str]) -> dict[str, Any]:
    summary = out / f"k6-{scenario}-{int(time.time() * 1000)}.json"
    full = {
        **os.environ,
        "K6_NO_USAGE_REPORT": "true",
        "TARGET_URL": srv.url,
        "INVOKE_PATH": srv.invoke_path,
        "IMAGE_FILES": ",".join(str(p.resolve()) for p in files),
        "SUMMARY_FILE": str(summary),
        "P95_MS": "600000",
        "MAX_ERROR_RATE": "1",
        "MIN_CHECK_RATE": "0",
        "REQUEST_TIMEOUT": "600s",
        **env,
    }
    points = summary.with_suffix(".points.json")
    c0, t0 = children_cpu(), time.monotonic()
    subprocess.run(
        ["k6", "run", "--quiet", "--out", f"json={points}", str(ROOT / "loadtests" / "k6" / f"{scenario}.js")],
        env=full,
        check=False,
        stdout=subprocess.DEVNULL,
    )
    client_cores = (children_cpu() - c0) / (time.monotonic() - t0)
    m = json.loads(summary.read_text())["metrics"]
    d = m["http_req_duration"]["values"]
    return {
        "count": m["http_reqs"]["values"]["count"],
        "images_per_s": completion_rate(points),
        "k6_rate": m["http_reqs"]["values"]["rate"],
        "failed": m.get("http_req_failed", {}).get("values", {}).get("rate", 0.0),
        "checks": m.get("checks", {}).get("values", {}).get("rate", 0.0),
        "dropped": m.get("dropped_iterations", {}).get("values", {}).get("count", 0),
        "p50_ms": d["med"],
        "p95_ms": d["p(95)"],
        "p99_ms": d["p(99)"],
        "client_cpu_cores": client_cores,
    }


def completion_rate(points: Path) -> float:
    """(n - 1) / (last - first completion): the server is busy all along in a closed loop (the
    clients keep it queued until the end), so this excludes k6's start-up and its drain tail."""
    times = []
    with points.open() as f:
        for line in f:
            p = json.loads(line)
            if p.get("type") == "Point" and p.get("metric") == "http_reqs":
                times.append(datetime.datetime.fromisoformat(p["data"]["time"]).timestamp())
    points.unlink()
    if len(times) < 2:
        return 0.0
    times.sort()
    return (len(times) - 1) / (times[-1] - times[0])


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def warm_up(srv: procs.Server, files: list[Path], n: int) -> None:
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        list(ex.map(lambda i: compare.invoke(srv.url, files[i % len(files)], srv.invoke_path), range(n)))


def measure(srv: procs.Server, a: argparse.Namespace, files: list[Path], rates: list[float], out: Path) -> dict:
    pid = srv.proc.pid
    env = {"CONTENT_TYPE": a.content_type, "DURATION": f"{a.duration}s"}
    c0, t0 = procs.cpu_seconds(pid), time.monotonic()
    sat = k6("saturation", srv, files, out, {**env, "VUS": str(a.vus)})
    sat["cpu_cores"] = (procs.cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    res: dict[str, Any] = {"saturation": sat, "rates": []}
    for r in rates:
        c0, t0 = procs.cpu_seconds(pid), time.monotonic()
        vus = str(max(4, int(r * 4) + 2))
        x = k6("constant", srv, files, out, {**env, "RATE": str(r), "VUS": vus})
        x["rate"] = r
        x["cpu_cores"] = (procs.cpu_seconds(pid) - c0) / (time.monotonic() - t0)
        res["rates"].append(x)
    res["peak_rss_mib"] = procs.peak_rss_mib(pid)
    if srv.name == "maskserve":
        res["stage_mean_ms"] = stage_means(srv.url)
        res["mean_batch_size"] = mean_batch_size(srv.url)
    return res


def stage_means(url: str) -> dict[str, float]:
    """Mean milliseconds per stage over the whole run, from maskserve's /metrics histograms."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
        text = r.read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for suffix, into in (("_sum", sums), ("_count", counts)):
            head = f"maskserve_stage_duration_seconds{suffix}{{"
            if line.startswith(head):
                labels, value = line[len(head) :].rsplit("} ", 1)
                stage = labels.split('stage="', 1)[1].split('"', 1)[0]
                into[stage] = float(value)
    return {k: round(1e3 * v / counts[k], 3) for k, v in sums.items() if counts.get(k)}


def mean_batch_size(url: str) -> float | None:
    """Images per graph run over the whole run (maskserve_batch_size_sum / _count)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
        values = dict(
            ln.rsplit(" ", 1) for ln in r.read().decode().splitlines() if ln.startswith("maskserve_batch_size_")
        )
    n = float(values.get("maskserve_batch_size_count", 0))
    return round(float(values["maskserve_batch_size_sum"]) / n, 3) if n else None


def start_maskserve(a: argparse.Namespace, out: Path, extra: list[str] | None = None) -> procs.Server:
    """maskserve with no engine flags (its machine-derived defaults) unless --workers/--threads
    or --maskserve-arg say otherwise."""
    port = procs.free_port()
    cmd = [str(a.maskserve_bin), "serve", "--model-dir", str(a.model), "--host", "127.0.0.1", "--port", str(port)]
    if a.workers:
        cmd += ["--workers", str(a.workers)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    if a.http_workers:
        cmd += ["--http-workers", str(a.http_workers)]
    cmd += a.maskserve_arg + (extra or [])
    env = {"MASKSERVE_ORT_SPINNING": "1"} if a.spinning else {}
    return procs.start("maskserve", cmd, port, out / "bench-maskserve.log", env)


def peer_workers(a: argparse.Namespace) -> int:
    """Workers of the other servers: --workers, else the best floor configuration's sessions."""
    return a.workers or a.best_floor[0]


def peer_threads(a: argparse.Namespace) -> int:
    return a.threads or (a.best_floor[1] if not a.workers else floor.default_threads(a.workers))


def start_reference(a: argparse.Namespace, out: Path) -> procs.Server:
    port = procs.free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-w", str(peer_workers(a)), "--threads", "1", "-b", f"127.0.0.1:{port}"]
    cmd += ["--timeout", "900", "--chdir", str(ROOT / "loadtests" / "reference_server"), "app:app"]
    env = {
        "REF_MODEL_DIR": str(a.model.resolve()),
        "REF_THREADS": str(peer_threads(a)),
        "REF_SPINNING": "1" if a.spinning else "0",
    }
    return procs.start("reference", cmd, port, out / "bench-reference.log", env)


def torchserve_workers(a: argparse.Namespace) -> int:
    return a.torchserve_workers or peer_workers(a)


def torchserve_threads(a: argparse.Namespace) -> int:
    if a.torchserve_threads:
        return a.torchserve_threads
    return floor.default_threads(torchserve_workers(a))


def torchserve_work(a: argparse.Namespace) -> Path:
    return (a.out / "torchserve").resolve()


def build_torchserve(a: argparse.Namespace) -> None:
    """The .mar, once per run, in <out>/torchserve (logs go to <out>/torchserve/logs)."""
    work = torchserve_work(a)
    archive.clean(work)
    archive.build_mar(a.model, work, torchserve_threads(a), torchserve_workers(a))


def start_torchserve(a: argparse.Namespace, out: Path) -> procs.Server:
    """TorchServe on three free 127.0.0.1 ports; ready when all its workers are READY."""
    ports = (procs.free_port(), procs.free_port(), procs.free_port())
    s = archive.setup(torchserve_work(a), ports, torchserve_workers(a), a.torchserve_queue)
    srv = procs.start("torchserve", s.cmd, s.port, out / "bench-torchserve.log", s.env, cwd=s.work, group=True)
    srv.invoke_path = s.invoke_path
    srv.ready = lambda: archive.workers_ready(s.management_url, torchserve_workers(a))
    return srv


Starter = Callable[[argparse.Namespace, Path], procs.Server]


def others(a: argparse.Namespace) -> list[tuple[str, Starter]]:
    """The servers compared with maskserve: the reference, TorchServe (in this order)."""
    out: list[tuple[str, Starter]] = []
    if not a.skip_reference:
        out.append(("reference", start_reference))
    if a.torchserve:
        out.append(("torchserve", start_torchserve))
    return out


CHECK_KEY = {"reference": "check", "torchserve": "check_torchserve"}


def output_check(ms: procs.Server, other: procs.Server, all_files: list[Path]) -> dict[str, Any]:
    """maskserve's answers against `other`'s, PNG and JPEG inputs apart."""
    res = {}
    for ct in ("image/png", "image/jpeg"):
        if subset := of_type(all_files, ct, required=False):
            res[ct] = compare.check_servers(ms.url, other.url, subset, ms.invoke_path, other.invoke_path)
    return res


def check_only(a: argparse.Namespace, all_files: list[Path]) -> None:
    if a.torchserve:
        build_torchserve(a)
    ms = start_maskserve(a, a.out)
    up = {name: fn(a, a.out) for name, fn in others(a)}
    res: dict[str, Any] = {}
    try:
        for s in [ms, *up.values()]:
            s.wait_ready(600)
        for name, s in up.items():
            res[CHECK_KEY[name]] = output_check(ms, s, all_files)
    finally:
        for s in [ms, *up.values()]:
            s.stop()
    (a.out / f"check-{a.name or a.model.name}.json").write_text(json.dumps(res, indent=2))
    print(report.markdown(res), end="")


def start_ready(fn: Starter, a: argparse.Namespace, files: list[Path]) -> procs.Server:
    """Started, ready, and warmed up with two requests per worker."""
    srv = fn(a, a.out)
    srv.wait_ready(600)
    warm_up(srv, files, 2 * (torchserve_workers(a) if srv.name == "torchserve" else max(peer_workers(a), 2)))
    return srv


def servers(a: argparse.Namespace, files: list[Path], all_files: list[Path], rates: list[float]) -> dict[str, Any]:
    """maskserve up; each other server started, its answers checked against maskserve's, stopped.
    Then maskserve measured alone, and each other server alone, restarted so that its peak RSS is
    the measurement's."""
    result: dict[str, Any] = {}
    up: dict[str, procs.Server] = {}
    try:
        up["maskserve"] = start_ready(start_maskserve, a, files)
        for name, fn in others(a):
            up[name] = start_ready(fn, a, files)
            print(f"== output check vs {name}", flush=True)
            result[CHECK_KEY[name]] = output_check(up["maskserve"], up[name], all_files)
            up.pop(name).stop()
        print("== maskserve", flush=True)
        result["maskserve"] = measure(up["maskserve"], a, files, rates, a.out)
        up.pop("maskserve").stop()
        for name, fn in others(a):
            up[name] = start_ready(fn, a, files)
            print(f"== {name}", flush=True)
            result[name] = measure(up[name], a, files, rates, a.out)
            up.pop(name).stop()
    finally:
        for s in up.values():
            s.stop()
    return result


def run_floor(a: argparse.Namespace, npz: Path, sessions: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "loadtests.bench.floor", "--model", str(a.model), "--inputs", str(npz)]
    cmd += ["--workers", str(sessions), "--threads", str(threads), "--duration", str(a.duration)]
    cmd += ["--rate-fractions", a.rate_fractions] + (["--spinning"] if a.spinning else [])
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout)
    res["sessions"] = sessions
    return res


def floor_configs(a: argparse.Namespace) -> list[tuple[int, int]]:
    """(sessions, threads) to measure: --workers/--threads when given, else --floor-configs."""
    if a.workers:
        return [(a.workers, a.threads or floor.default_threads(a.workers))]
    out = []
    for c in a.floor_configs.split(","):
        sessions, threads = c.lower().split("x")
        out.append((int(sessions), int(threads)))
    return out


def floors(a: argparse.Namespace, npz: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every floor configuration; the best (highest saturation throughput) is the baseline."""
    all_ = []
    for sessions, threads in floor_configs(a):
        print(f"== floor {sessions} sessions x {threads} threads", flush=True)
        all_.append(run_floor(a, npz, sessions, threads))
    best = max(all_, key=lambda r: r["saturation"]["images_per_s"])
    a.best_floor = (best["sessions"], best["threads"])
    return best, all_


def batch_sweep(a: argparse.Namespace, files: list[Path], rates: list[float]) -> dict[str, Any]:
    """maskserve at each --max-batch-size of --batch-sweep (other settings as the main run)."""
    out = {}
    for b in [int(v) for v in a.batch_sweep.split(",") if v]:
        print(f"== maskserve --max-batch-size {b}", flush=True)
        srv = start_maskserve(a, a.out, ["--max-batch-size", str(b)])
        try:
            srv.wait_ready(600)
            warm_up(srv, files, 4)
            out[str(b)] = measure(srv, a, files, rates, a.out)
        finally:
            srv.stop()
    return out


def machine() -> dict[str, Any]:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "load_avg_at_start": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "shapes")
    ap.add_argument("--images", type=Path, help="folder of images (default: PNG+JPEG of the model's samples)")
    ap.add_argument("--hd", type=int, default=0, help="use N synthetic 1920x1080 JPEGs")
    ap.add_argument("--content-type", default="image/jpeg", choices=["image/jpeg", "image/png"])
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="maskserve --workers, floor sessions, gunicorn/TorchServe workers (0: maskserve's defaults, "
        "the floor at each --floor-configs, the others at the best floor configuration)",
    )
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads per session (0: CPUs / workers)")
    ap.add_argument("--floor-configs", default="1x2,2x1", help="floor sessions x threads to try (without --workers)")
    ap.add_argument("--batch-sweep", default="", help="also measure maskserve at these --max-batch-size, e.g. 1,2,4,8")
    ap.add_argument("--spinning", action="store_true", help="let ORT's pool threads spin (MASKSERVE_ORT_SPINNING=1)")
    ap.add_argument("--http-workers", type=int, default=0, help="maskserve --http-workers (0: its default)")
    ap.add_argument("--maskserve-arg", action="append", default=[], help="extra `maskserve serve` argument")
    ap.add_argument("--duration", type=int, default=20, help="seconds per measurement")
    ap.add_argument("--vus", type=int, default=4, help="closed-loop clients at saturation")
    ap.add_argument("--rate-fractions", default="0.5,0.8", help="fixed arrival rates, fractions of the floor's")
    ap.add_argument("--maskserve-bin", type=Path, default=ROOT / "target" / "release" / "maskserve")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--torchserve", action="store_true", help="also measure TorchServe serving checkpoint.pt")
    ap.add_argument("--torchserve-workers", type=int, default=0, help="TorchServe workers (0: --workers)")
    ap.add_argument("--torchserve-threads", type=int, default=0, help="torch threads per worker (0: CPUs / workers)")
    ap.add_argument("--torchserve-queue", type=int, default=100, help="TorchServe job_queue_size")
    ap.add_argument("--check-only", action="store_true", help="only check the others' answers against maskserve's")
    ap.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    ap.add_argument("--name", default="")
    a = ap.parse_args()
    if not os.environ.get("ORT_DYLIB_PATH"):
        lib = subprocess.run([str(ROOT / "scripts" / "ort-lib.sh")], check=True, capture_output=True, text=True)
        os.environ["ORT_DYLIB_PATH"] = lib.stdout.strip()
    a.out.mkdir(parents=True, exist_ok=True)
    name = a.name or (a.model.name + (f"-hd{a.hd}" if a.hd else ""))
    all_files = image_set(a, a.out)
    files = of_type(all_files, a.content_type)
    result: dict[str, Any] = {
        "command": " ".join(["python -m loadtests.bench.run", *sys.argv[1:]]),
        "machine": machine(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "images": [str(p) for p in files],
    }
    if a.check_only:
        a.best_floor = floor_configs(a)[-1]
        check_only(a, all_files)
        return
    print(f"== {len(files)} images; floor inputs", flush=True)
    npz = a.out / f"floor-inputs-{name}.npz"
    floor_inputs(a.model, files, npz)
    floor_res, result["floors"] = floors(a, npz)
    result["floor"] = floor_res
    rates = [r["rate"] for r in floor_res["rates"]]
    if a.torchserve:
        build_torchserve(a)
    result.update(servers(a, files, all_files, rates))
    if a.batch_sweep:
        result["batching"] = batch_sweep(a, files, rates)
    (a.out / f"bench-{name}.json").write_text(json.dumps(result, indent=2))
    table = report.markdown(result)
    (a.out / f"bench-{name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
