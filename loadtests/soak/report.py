"""Markdown tables of soak results (for BENCHMARKS.md).

python3 loadtests/soak/report.py sweep loadtests/results/soak-sweep-default loadtests/results/soak-sweep-nopattern
python3 loadtests/soak/report.py soak loadtests/results/soak-30min --every 180
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

BARS = "▁▂▃▄▅▆▇█"


def spark(values: list[float], lo: float, hi: float) -> str:
    span = (hi - lo) or 1.0
    return "".join(BARS[min(len(BARS) - 1, int((v - lo) / span * (len(BARS) - 1) + 0.5))] for v in values)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def sweep(dirs: list[Path]) -> None:
    runs = []
    for d in dirs:
        s = json.loads((d / "sweep-summary.json").read_text())
        runs.append((s, rows(d / "sweep.csv")))
    n = max(len(r) for _, r in runs)
    marks = sorted({1, 5, 10, 15, 20, 25} | {n // 2})
    head = ["configuration"] + [f"after {m} shapes" if m <= n // 2 else f"round 2, {m - n // 2}" for m in marks]
    head += ["end", "median ms", "curve (both rounds)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    lo = min(float(x["rss_mib"]) for _, r in runs for x in r)
    hi = max(float(x["rss_mib"]) for _, r in runs for x in r)
    for s, r in runs:
        rss = [float(x["rss_mib"]) for x in r]
        cfg = ", ".join(s.get("server_env") or []) or "default (arena + memory pattern)"
        cells = [cfg] + [f"{rss[m - 1]:.0f}" for m in marks if m <= len(rss)]
        cells += [f"{rss[-1]:.0f}", f"{s['median_ms']:.0f}", spark(rss, lo, hi)]
        print("| " + " | ".join(cells) + " |")


def soak(d: Path, every: float) -> None:
    s = json.loads((d / "summary.json").read_text())
    r = rows(d / "rss.csv")
    print(
        f"Saturation {s['saturation_rps']} valid req/s; soak at {s['valid_rate_rps']} valid req/s "
        f"({s['duration_s'] / 60:.0f} min, warm-up {s['warmup_s'] / 60:.0f} min)."
    )
    print()
    print("| t (min) | RSS MiB | valid 200 | valid 5xx | invalid as expected | invalid unexpected | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    next_t = 0.0
    for x in r:
        t = float(x["elapsed_s"])
        if t + 1e-6 >= next_t or x is r[-1]:
            print(
                f"| {t / 60:.1f} | {float(x['rss_mib']):.1f} | {x['valid_ok']} | {x['valid_5xx']} | "
                f"{x['invalid_expected']} | {x['invalid_unexpected']} | {x['p50_ms']} | {x['p99_ms']} |"
            )
            next_t = t + every
    rss = [float(x["rss_mib"]) for x in r]
    print()
    print(f"RSS every 10 s: `{spark(rss, min(rss), max(rss))}` ({min(rss):.0f}–{max(rss):.0f} MiB)")
    print()
    m = s["rss_mib"]
    print(
        f"Valid: {s['valid_ok']} × 200, {s['valid_5xx']} × 5xx, {s['valid_other_status']} other, "
        f"{s['valid_transport_errors']} transport errors. Invalid: {s['invalid_expected']} answered as expected, "
        f"{s['invalid_unexpected']} not. RSS after warm-up {m['after_warmup']} MiB, end {m['end']} MiB "
        f"({s['rss_growth_pct']:+.1f} %), peak after warm-up {m['peak_after_warmup']} MiB "
        f"({s['rss_peak_growth_pct']:+.1f} %). Pass: {s['pass']}."
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("sweep")
    a.add_argument("dirs", type=Path, nargs="+")
    b = sub.add_parser("soak")
    b.add_argument("dir", type=Path)
    b.add_argument("--every", type=float, default=180)
    args = ap.parse_args()
    if args.cmd == "sweep":
        sweep(args.dirs)
    else:
        soak(args.dir, args.every)


if __name__ == "__main__":
    main()
