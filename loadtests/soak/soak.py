"""Soak test of `maskserve serve` (GitHub issue 7): a long run at about 70 % of saturation with
mixed valid and invalid requests and varied image sizes, sampling the server's RSS.

    python3 loadtests/soak/soak.py --model models/shapes                 # 30 minutes
    python3 loadtests/soak/soak.py --model models/shapes --duration 300 --tag quick
    python3 loadtests/soak/soak.py ... --server-arg=--ort-mem-pattern=on  # flags for serve

Steps: start the release server; measure saturation (closed loop, valid requests only); then
drive an open-loop arrival rate whose valid part is `--load` × saturation for `--duration`
seconds, with `--invalid-fraction` of the requests hostile (garbage, truncated, bombs, wrong
types, bad JSON); every `--sample-every` seconds append the server's RSS and the counters to
a CSV. The summary (printed and written as JSON) reports 5xx and other failures of valid
requests, unexpected answers to invalid ones, and RSS growth between the end of the warm-up
and the end. Exit status 1 when a criterion fails: any 5xx (or transport error) on a valid
request, or RSS growth after warm-up above `--max-growth` percent.

Only the standard library and Pillow. Results go to loadtests/results/soak-<tag>/.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import csv
import http.client
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Req:
    name: str
    content_type: str | None
    body: bytes
    valid: bool
    # Statuses an invalid request may get.
    expect: tuple[int, ...] = (200,)
    headers: dict[str, str] = field(default_factory=dict)


# Columns of rss.csv, in order.
RSS_COLUMNS = [
    "elapsed_s",
    "rss_mib",
    "hwm_mib",
    "valid_ok",
    "valid_5xx",
    "valid_other",
    "valid_transport",
    "invalid_expected",
    "invalid_unexpected",
    "p50_ms",
    "p99_ms",
]


def shapes_image(rng: random.Random, w: int, h: int) -> Image.Image:
    """Circles, squares and triangles on a dark background, like the shapes fixture."""
    img = Image.new("RGB", (w, h), tuple(rng.randint(0, 60) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 6)):
        s = rng.randint(max(8, min(w, h) // 10), max(9, min(w, h) // 3))
        x, y = rng.randint(0, max(0, w - s)), rng.randint(0, max(0, h - s))
        colour = tuple(rng.randint(90, 255) for _ in range(3))
        kind = rng.randrange(3)
        if kind == 0:
            d.ellipse((x, y, x + s, y + s), fill=colour)
        elif kind == 1:
            d.rectangle((x, y, x + s, y + s), fill=colour)
        else:
            d.polygon([(x + s / 2, y), (x, y + s), (x + s, y + s)], fill=colour)
    return img


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=90)
    else:
        img.save(buf, fmt)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def valid_requests(rng: random.Random, n: int) -> list[Req]:
    """`n` images with sides in 160..1000 px, PNG and JPEG, raw and JSON-wrapped."""
    out = []
    for i in range(n):
        w, h = rng.randint(160, 1000), rng.randint(160, 1000)
        img = shapes_image(rng, w, h)
        fmt = "PNG" if i % 2 else "JPEG"
        data = encode(img, fmt)
        if i % 3 == 2:
            body = json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}]}).encode()
            out.append(Req(f"json-{w}x{h}", "application/json", body, True))
        else:
            out.append(Req(f"{fmt.lower()}-{w}x{h}", f"image/{fmt.lower()}", data, True))
    return out


def invalid_requests(rng: random.Random, sample_png: bytes) -> list[Req]:
    garbage = bytes(rng.randrange(256) for _ in range(20_000))
    tiny = json.dumps({"instances": ["AAAA"] * 10_000}).encode()
    return [
        Req("garbage", "application/octet-stream", garbage, False, (400,)),
        Req("truncated-png", "image/png", sample_png[: len(sample_png) // 3], False, (400,)),
        Req("empty", "image/jpeg", b"", False, (400,)),
        Req("text-plain", "text/plain", sample_png, False, (415,)),
        Req("bad-json", "application/json", b'{"instances": [', False, (400,)),
        Req("bad-base64", "application/json", b'{"instances": ["!!!"]}', False, (400,)),
        Req("png-bomb", "image/png", png_bomb(), False, (413,)),
        Req("10000-instances", "application/json", tiny, False, (400,)),
        Req("nested-json", "application/json", b"[" * 100_000 + b"]" * 100_000, False, (400,)),
        Req("accept-html", "image/png", sample_png, False, (406,), {"Accept": "text/html"}),
    ]


class Client:
    """One keep-alive connection per thread; reconnects after errors or a server close."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def send(self, r: Req, timeout: float = 120.0) -> tuple[int, float]:
        """(status, seconds); status 0 on a transport error."""
        headers = {"Content-Length": str(len(r.body)), **r.headers}
        if r.content_type:
            headers["Content-Type"] = r.content_type
        t0 = time.monotonic()
        for attempt in range(2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
                self.local.conn = conn
            try:
                conn.request("POST", "/invocations", body=r.body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    self.local.conn = None
                return resp.status, time.monotonic() - t0
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                # A kept-alive connection the server closed meanwhile: retry once on a new one.
                if attempt == 1:
                    return 0, time.monotonic() - t0
        return 0, time.monotonic() - t0


@dataclass
class Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    valid_ok: int = 0
    valid_5xx: int = 0
    valid_other: int = 0
    valid_transport: int = 0
    invalid_expected: int = 0
    invalid_unexpected: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    unexpected: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    dropped: int = 0

    def record(self, r: Req, status: int, secs: float) -> None:
        with self.lock:
            key = f"{'valid' if r.valid else 'invalid'}:{status}"
            self.statuses[key] = self.statuses.get(key, 0) + 1
            if r.valid:
                self.latencies.append(secs)
                if status == 200:
                    self.valid_ok += 1
                elif status == 0:
                    self.valid_transport += 1
                elif status >= 500:
                    self.valid_5xx += 1
                else:
                    self.valid_other += 1
            elif status in r.expect:
                self.invalid_expected += 1
            else:
                self.invalid_unexpected += 1
                k = f"{r.name}:{status}"
                self.unexpected[k] = self.unexpected.get(k, 0) + 1


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            vals[k] = int(v.split()[0]) / 1024
    return vals.get("VmRSS", 0.0), vals.get("VmHWM", 0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(a: argparse.Namespace, out: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [str(a.bin), "serve", "--model", str(a.model), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--device", "cpu", "--workers", str(a.workers), "--queue-size", str(a.queue_size)]
    cmd += a.server_arg
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASKSERVE_", "SAGEMAKER_"))}
    env["RUST_LOG"] = "warn"
    for kv in a.server_env:
        k, _, v = kv.partition("=")
        env[k] = v
    log = open(out / "server.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {out / 'server.log'}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/ping")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("server not ready after 120 s")


def saturation(client: Client, reqs: list[Req], threads: int, seconds: float) -> float:
    """Valid requests per second with `threads` clients in a closed loop."""
    stop = time.monotonic() + seconds
    done = [0] * threads

    def loop(i: int) -> None:
        k = i
        while time.monotonic() < stop:
            status, _ = client.send(reqs[k % len(reqs)])
            if status == 200:
                done[i] += 1
            k += threads

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        list(ex.map(loop, range(threads)))
    return sum(done) / (time.monotonic() - t0)


def percentile(v: list[float], q: float) -> float:
    if not v:
        return 0.0
    s = sorted(v)
    return s[min(len(s) - 1, int(q * len(s)))]


def padded_shape(h: int, w: int, min_size: int, max_size: int, div: int) -> tuple[int, int]:
    """The input shape of graph (a) for an h × w image (GeneralizedRCNNTransform's resize + pad)."""
    scale = min(min_size / min(h, w), max_size / max(h, w))
    oh, ow = max(1, int(h * scale)), max(1, int(w * scale))
    return (-(-oh // div) * div, -(-ow // div) * div)


def sweep(a: argparse.Namespace, out: Path) -> int:
    """Sends one image per distinct graph input shape, in random order, then all of them again,
    sampling RSS after each request: memory against the number of shapes seen."""
    pre = json.loads((a.model / "model.json").read_text())["preprocess"]
    rng = random.Random(a.seed)
    shapes: dict[tuple[int, int], tuple[int, int]] = {}
    for _ in range(200_000):
        h, w = rng.randint(40, 1600), rng.randint(40, 1600)
        key = padded_shape(h, w, pre["min_size"], pre["max_size"], pre["size_divisible"])
        shapes.setdefault(key, (h, w))
    order = list(shapes.items())
    rng.shuffle(order)
    order = order[: a.sweep]
    print(f"{len(shapes)} distinct input shapes reachable; sending {len(order)} twice", flush=True)
    reqs = [Req(f"{k[0]}x{k[1]}", "image/jpeg", encode(shapes_image(rng, w, h), "JPEG"), True) for k, (h, w) in order]
    proc, port = start_server(a, out)
    client = Client(port)
    rows = []
    try:
        for rnd in range(2):
            for i, r in enumerate(reqs):
                status, secs = client.send(r)
                rss, hwm = rss_mib(proc.pid)
                rows.append([rnd, i + 1, r.name, status, round(secs * 1e3, 1), round(rss, 1), round(hwm, 1)])
    finally:
        proc.terminate()
        proc.wait(30)
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["round", "shapes_seen", "shape", "status", "ms", "rss_mib", "hwm_mib"])
        w.writerows(rows)
    first = [r for r in rows if r[0] == 0]
    second = [r for r in rows if r[0] == 1]
    summary = {
        "tag": a.tag,
        "server_args": a.server_arg,
        "server_env": a.server_env,
        "shapes": len(reqs),
        "rss_after_1": first[0][5],
        "rss_after_10": first[min(9, len(first) - 1)][5],
        "rss_after_all": first[-1][5],
        "rss_end_second_round": second[-1][5],
        "non_200": sum(1 for r in rows if r[3] != 200),
        "median_ms": sorted(r[4] for r in rows)[len(rows) // 2],
    }
    (out / "sweep-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "shapes")
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "release" / "maskserve")
    ap.add_argument("--duration", type=float, default=1800, help="soak seconds (default 30 min)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds excluded from the growth (default 1/6)")
    ap.add_argument("--load", type=float, default=0.7, help="valid-request rate as a fraction of saturation")
    ap.add_argument("--invalid-fraction", type=float, default=0.2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--queue-size", type=int, default=64)
    ap.add_argument("--saturation-seconds", type=float, default=30)
    ap.add_argument("--saturation-threads", type=int, default=None, help="default 2 × workers + 1")
    ap.add_argument("--rate", type=float, default=None, help="skip the saturation run: valid req/s")
    ap.add_argument("--sample-every", type=float, default=10)
    ap.add_argument("--images", type=int, default=200, help="distinct valid images")
    ap.add_argument("--max-growth", type=float, default=10.0, help="allowed RSS growth after warm-up, %%")
    ap.add_argument("--server-arg", action="append", default=[], help="extra `serve` flag (repeatable)")
    ap.add_argument("--server-env", action="append", default=[], help="K=V for the server (repeatable)")
    ap.add_argument("--sweep", type=int, default=0, help="instead of the soak: N distinct input shapes, twice")
    ap.add_argument("--tag", default="run")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    warmup = a.warmup if a.warmup is not None else a.duration / 6
    out = ROOT / "loadtests" / "results" / f"soak-{a.tag}"
    out.mkdir(parents=True, exist_ok=True)

    if a.sweep:
        return sweep(a, out)
    rng = random.Random(a.seed)
    valid = valid_requests(rng, a.images)
    invalid = invalid_requests(rng, encode(shapes_image(rng, 300, 200), "PNG"))
    proc, port = start_server(a, out)
    client = Client(port)
    rss_ready = rss_mib(proc.pid)[0]
    try:
        if a.rate:
            sat = a.rate / a.load
        else:
            threads = a.saturation_threads or 2 * a.workers + 1
            saturation(client, valid, threads, 5)  # warm the shapes and connections
            sat = saturation(client, valid, threads, a.saturation_seconds)
        rss_saturated = rss_mib(proc.pid)[0]
        valid_rate = a.load * sat
        total_rate = valid_rate / (1 - a.invalid_fraction)
        print(
            f"saturation {sat:.2f} valid req/s; soak at {valid_rate:.2f} valid + "
            f"{total_rate - valid_rate:.2f} invalid req/s for {a.duration:.0f} s",
            flush=True,
        )

        counters = Counters()
        stop = threading.Event()
        samples: list[dict] = []
        t_start = time.monotonic()

        def sampler() -> None:
            with open(out / "rss.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(RSS_COLUMNS)
                while True:
                    with counters.lock:
                        lat = counters.latencies[-2000:]
                        row = {
                            "elapsed_s": round(time.monotonic() - t_start, 1),
                            "valid_ok": counters.valid_ok,
                            "valid_5xx": counters.valid_5xx,
                            "valid_other": counters.valid_other,
                            "valid_transport": counters.valid_transport,
                            "invalid_expected": counters.invalid_expected,
                            "invalid_unexpected": counters.invalid_unexpected,
                        }
                    try:
                        rss, hwm = rss_mib(proc.pid)
                    except OSError:
                        rss, hwm = 0.0, 0.0
                    row.update(
                        rss_mib=round(rss, 1),
                        hwm_mib=round(hwm, 1),
                        p50_ms=round(percentile(lat, 0.5) * 1e3, 1),
                        p99_ms=round(percentile(lat, 0.99) * 1e3, 1),
                    )
                    samples.append(row)
                    w.writerow([row[k] for k in RSS_COLUMNS])
                    f.flush()
                    print(
                        f"  t={row['elapsed_s']:>6.0f}s rss={rss:7.1f} MiB ok={row['valid_ok']} "
                        f"5xx={row['valid_5xx']} p99={row['p99_ms']} ms",
                        flush=True,
                    )
                    if stop.wait(a.sample_every):
                        return

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        # Open loop: Poisson arrivals at total_rate, each request sent on a pool thread. A backlog
        # (the server slower than the arrivals) shows up as `dropped` beyond max_backlog.
        max_backlog = 64
        inflight = threading.Semaphore(max_backlog)
        with concurrent.futures.ThreadPoolExecutor(max_backlog) as ex:
            next_t = time.monotonic()
            end = t_start + a.duration
            i = 0
            while next_t < end:
                now = time.monotonic()
                if next_t > now:
                    time.sleep(next_t - now)
                next_t += rng.expovariate(total_rate)
                r = invalid[rng.randrange(len(invalid))] if rng.random() < a.invalid_fraction else valid[i % len(valid)]
                i += 1 if r.valid else 0
                if not inflight.acquire(blocking=False):
                    counters.dropped += 1
                    continue

                def run(r: Req = r) -> None:
                    try:
                        status, secs = client.send(r)
                        counters.record(r, status, secs)
                    finally:
                        inflight.release()

                ex.submit(run)
        stop.set()
        th.join()
        alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    after = [s for s in samples if s["elapsed_s"] >= warmup]
    base = after[0]["rss_mib"] if after else 0.0
    end_rss = samples[-1]["rss_mib"] if samples else 0.0
    peak_after = max((s["rss_mib"] for s in after), default=0.0)
    growth = 100 * (end_rss - base) / base if base else 0.0
    peak_growth = 100 * (peak_after - base) / base if base else 0.0
    lat = counters.latencies
    summary = {
        "tag": a.tag,
        "server_args": a.server_arg,
        "server_env": a.server_env,
        "workers": a.workers,
        "duration_s": a.duration,
        "warmup_s": warmup,
        "saturation_rps": round(sat, 3),
        "valid_rate_rps": round(valid_rate, 3),
        "valid_ok": counters.valid_ok,
        "valid_5xx": counters.valid_5xx,
        "valid_other_status": counters.valid_other,
        "valid_transport_errors": counters.valid_transport,
        "invalid_expected": counters.invalid_expected,
        "invalid_unexpected": counters.invalid_unexpected,
        "unexpected": counters.unexpected,
        "statuses": counters.statuses,
        "dropped_arrivals": counters.dropped,
        "latency_ms": {"p50": round(percentile(lat, 0.5) * 1e3, 1), "p99": round(percentile(lat, 0.99) * 1e3, 1)},
        "rss_mib": {
            "ready": round(rss_ready, 1),
            "after_saturation_run": round(rss_saturated, 1),
            "after_warmup": base,
            "end": end_rss,
            "peak_after_warmup": peak_after,
            "max_hwm": max((s["hwm_mib"] for s in samples), default=0.0),
        },
        "rss_growth_pct": round(growth, 2),
        "rss_peak_growth_pct": round(peak_growth, 2),
        "server_alive_at_end": alive,
    }
    ok = alive and counters.valid_5xx == 0 and counters.valid_transport == 0 and growth <= a.max_growth
    summary["pass"] = ok
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
