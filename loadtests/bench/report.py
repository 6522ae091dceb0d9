"""The markdown table of one benchmark run (run.py's result dict)."""

from __future__ import annotations

from typing import Any


def _ratio(x: float | None, y: float | None) -> str:
    return f"{x / y:.2f}×" if x and y else "–"


def _lat(r: dict[str, Any]) -> str:
    if "p50_ms" not in r:
        return "–"
    s = f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f} / {r['p99_ms']:.0f}"
    if r.get("failed"):
        s += f" ({r['failed']:.0%} failed)"
    if r.get("dropped"):
        s += f" ({r['dropped']} dropped)"
    return s


ROWS = [
    ("floor", "(a) floor: ORT graphs only"),
    ("maskserve", "(b) maskserve over HTTP"),
    ("reference", "(c) Python reference"),
    ("torchserve", "(d) TorchServe, PyTorch eager"),
]
# Result key of each output check, and what maskserve was checked against.
CHECKS = [("check", "reference"), ("check_torchserve", "TorchServe")]


def _tp(r: dict[str, Any] | None) -> float | None:
    return r["saturation"]["images_per_s"] if r else None


def _cpu_per_image(r: dict[str, Any]) -> float:
    return r["saturation"]["cpu_cores"] / r["saturation"]["images_per_s"]


def table(res: dict[str, Any]) -> str:
    """One row per measured server; a "× TorchServe" column when TorchServe was measured."""
    floor, ref, ts = res.get("floor"), res.get("reference"), res.get("torchserve")
    rates = [r["rate"] for r in floor["rates"]] if floor else []
    head = ["", "images/s (saturation)", "× floor", "× reference"] + (["× TorchServe"] if ts else [])
    head += [f"p50/p95/p99 ms @ {r:g}/s" for r in rates]
    head += ["CPU cores (sat.)", "CPU s / image", "peak RSS MiB"]
    lines = []
    for key, label in ROWS:
        if not (r := res.get(key)):
            continue
        sat = r["saturation"]
        tp = sat["images_per_s"]
        cells = [label, f"{tp:.2f}", _ratio(tp, _tp(floor)), _ratio(tp, _tp(ref))]
        cells += [_ratio(tp, _tp(ts))] if ts else []
        cells += [_lat(x) for x in r["rates"]]
        cells += [f"{sat['cpu_cores']:.2f}", f"{sat['cpu_cores'] / tp:.3f}", f"{r['peak_rss_mib']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if not lines:
        return ""
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *lines]) + "\n"


def versus(ms: dict[str, Any], other: dict[str, Any], name: str) -> str:
    """maskserve's throughput, latency, CPU and memory as ratios to another server's."""
    p50 = [_ratio(o["p50_ms"], m["p50_ms"]) for m, o in zip(ms["rates"], other["rates"])]
    out = f"\nmaskserve / {name}: throughput {_ratio(_tp(ms), _tp(other))}"
    cpu = _ratio(_cpu_per_image(ms), _cpu_per_image(other))
    out += f", {name} p50 / maskserve p50 {', '.join(p50)}, CPU per image {cpu}"
    return out + f", peak RSS {_ratio(ms['peak_rss_mib'], other['peak_rss_mib'])}\n"


def check_line(kind: str, c: dict[str, Any], against: str) -> str:
    return (
        f"\noutput check, {kind} (maskserve vs {against}): {c['identical']}/{c['images']} images identical, "
        f"{c['matched']}/{c['detections']} detections matched (same label, box IoU ≥ 0.99, mask IoU ≥ 0.97), "
        f"{c['confident_matched']}/{c['confident']} of those with score ≥ 0.5; "
        f"worst box IoU {c['min_box_iou']:.4f}, worst mask IoU {c['min_mask_iou']:.4f}\n"
    )


def floors_line(res: dict[str, Any]) -> str:
    """Each floor configuration's saturation throughput; the best is the baseline (a)."""
    if len(res.get("floors", [])) < 2:
        return ""
    parts = [f"{f['sessions']}×{f['threads']}: {_tp(f):.2f}/s" for f in res["floors"]]
    best = res["floor"]
    return (
        f"\nfloor configurations (sessions × ORT threads): {', '.join(parts)}; "
        f"baseline (a) = the best, {best['sessions']}×{best['threads']}\n"
    )


def batching_table(res: dict[str, Any]) -> str:
    """maskserve at each --max-batch-size of the sweep."""
    runs, floor = res.get("batching"), res.get("floor")
    if not runs:
        return ""
    rates = [r["rate"] for r in floor["rates"]] if floor else []
    head = ["--max-batch-size", "images/s (saturation)", "× floor", "mean batch (whole run)"]
    head += [f"p50/p95/p99 ms @ {r:g}/s" for r in rates] + ["CPU cores (sat.)", "peak RSS MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b, r in runs.items():
        tp = _tp(r)
        mean = r.get("mean_batch_size")
        cells = [b, f"{tp:.2f}", _ratio(tp, _tp(floor)), f"{mean:.2f}" if mean else "–"]
        cells += [_lat(x) for x in r["rates"]]
        cells += [f"{r['saturation']['cpu_cores']:.2f}", f"{r['peak_rss_mib']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\nmaskserve by batch size (other settings as (b)):\n\n" + "\n".join(lines) + "\n"


def markdown(res: dict[str, Any]) -> str:
    floor, ms, ref, ts = res.get("floor"), res.get("maskserve"), res.get("reference"), res.get("torchserve")
    floor_tp = _tp(floor)
    out = table(res)
    if floor and ms:
        p50 = [_ratio(m["p50_ms"], f["p50_ms"]) for m, f in zip(ms["rates"], floor["rates"])]
        out += f"\nmaskserve / floor: throughput {_ratio(ms['saturation']['images_per_s'], floor_tp)}"
        out += f", p50 at the fixed rates {', '.join(p50)}"
        out += f", peak RSS {_ratio(ms['peak_rss_mib'], floor['peak_rss_mib'])}\n"
    if ref and ms:
        out += versus(ms, ref, "reference")
    if ts and ms:
        out += versus(ms, ts, "TorchServe")
    if ms and ms.get("stage_mean_ms"):
        stages = ", ".join(f"{k} {v:.1f}" for k, v in ms["stage_mean_ms"].items())
        out += f"\nmaskserve mean ms per stage (/metrics, whole run): {stages}"
        if ms.get("mean_batch_size"):
            out += f"; mean batch {ms['mean_batch_size']:.2f} images"
        out += "\n"
    out += floors_line(res) + batching_table(res)
    for key, against in CHECKS:
        for kind, c in res.get(key, {}).items():
            out += check_line(kind, c, against)
    return out
