"""Closed-loop HTTP clients: `clients` connections, each sending the next image as soon as its answer
is in, for `duration` seconds. The benchmark's k6 client does the same but its 65 MB binary cannot
travel to the GPU machine; this one is the standard library's, spread over processes so that the
GIL does not cap it, with the benchmark's measure: images/s = (n - 1) / (last - first completion).
Answers are read whole but not parsed (status 200 counts)."""

from __future__ import annotations

import http.client
import multiprocessing
import resource
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

# (completion time on the monotonic clock, which all processes share; latency s; ok)
Sample = tuple[float, float, bool]


def _loop(url: str, path: str, bodies: list[tuple[bytes, str]], first: int, stop: float, out: list[Sample]) -> None:
    u = urlsplit(url)

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=600)

    conn = connect()
    i = first
    while time.monotonic() < stop:
        body, ctype = bodies[i % len(bodies)]
        i += 1
        t = time.monotonic()
        try:
            conn.request("POST", path, body, {"Content-Type": ctype, "Accept": "application/json"})
            r = conn.getresponse()
            r.read()
            ok = r.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = connect()
        end = time.monotonic()
        out.append((end, end - t, ok))
    conn.close()


def _process(args: tuple[str, str, list[str], int, int, float]) -> list[Sample]:
    url, path, files, threads, first, stop = args
    bodies = [(Path(f).read_bytes(), "image/png" if f.endswith(".png") else "image/jpeg") for f in files]
    outs: list[list[Sample]] = [[] for _ in range(threads)]
    ts = [threading.Thread(target=_loop, args=(url, path, bodies, first + k, stop, outs[k])) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return [s for o in outs for s in o]


def closed_loop(
    url: str, files: list[Path], clients: int, duration: float, procs: int = 1, path: str = "/invocations"
) -> dict[str, Any]:
    """Images/s over the completions, latency percentiles, errors, and the clients' own CPU."""
    procs = max(1, min(procs, clients))
    per = [clients // procs + (1 if k < clients % procs else 0) for k in range(procs)]
    firsts = [sum(per[:k]) for k in range(procs)]
    stop = time.monotonic() + duration
    jobs = [(url, path, [str(f) for f in files], per[k], firsts[k], stop) for k in range(procs)]
    c0, t0 = _children_cpu(), time.monotonic()
    pool = multiprocessing.get_context("fork").Pool(procs)
    try:
        samples = [s for part in pool.map(_process, jobs) for s in part]
    finally:
        pool.close()
        pool.join()
    wall = time.monotonic() - t0
    ok = sorted(s for s in samples if s[2])
    ends = [s[0] for s in ok]
    rate = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else 0.0
    res: dict[str, Any] = {
        "clients": clients,
        "client_processes": procs,
        "duration_s": duration,
        "count": len(ok),
        "errors": len(samples) - len(ok),
        "images_per_s": rate,
        "client_cpu_cores": (_children_cpu() - c0) / wall,
    }
    if ok:
        lat = np.asarray([s[1] for s in ok]) * 1e3
        res.update({f"p{q}_ms": float(np.percentile(lat, q)) for q in (50, 95, 99)})
    return res


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
