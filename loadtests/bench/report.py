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


def markdown(res: dict[str, Any]) -> str:
    floor, ms, ref = res.get("floor"), res.get("maskserve"), res.get("reference")
    rows = [("(a) floor: ORT graphs only", floor), ("(b) maskserve over HTTP", ms), ("(c) Python reference", ref)]
    rates = [r["rate"] for r in floor["rates"]] if floor else []
    head = ["", "images/s (saturation)", "× floor", "× reference"]
    head += [f"p50/p95/p99 ms @ {r:g}/s" for r in rates]
    head += ["CPU cores (sat.)", "CPU s / image", "peak RSS MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] if floor or ms or ref else []
    ref_tp = ref["saturation"]["images_per_s"] if ref else None
    floor_tp = floor["saturation"]["images_per_s"] if floor else None
    for label, r in rows:
        if not r:
            continue
        sat = r["saturation"]
        tp = sat["images_per_s"]
        cells = [label, f"{tp:.2f}", _ratio(tp, floor_tp), _ratio(tp, ref_tp)]
        cells += [_lat(x) for x in r["rates"]]
        cells += [f"{sat['cpu_cores']:.2f}", f"{sat['cpu_cores'] / tp:.3f}", f"{r['peak_rss_mib']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines) + "\n" if lines else ""
    if floor and ms:
        p50 = [_ratio(m["p50_ms"], f["p50_ms"]) for m, f in zip(ms["rates"], floor["rates"])]
        out += f"\nmaskserve / floor: throughput {_ratio(ms['saturation']['images_per_s'], floor_tp)}"
        out += f", p50 at the fixed rates {', '.join(p50)}"
        out += f", peak RSS {_ratio(ms['peak_rss_mib'], floor['peak_rss_mib'])}\n"
    if ref and ms:
        p50 = [_ratio(r["p50_ms"], m["p50_ms"]) for m, r in zip(ms["rates"], ref["rates"])]
        cpu_ms = ms["saturation"]["cpu_cores"] / ms["saturation"]["images_per_s"]
        cpu_ref = ref["saturation"]["cpu_cores"] / ref_tp
        out += f"\nmaskserve / reference: throughput {_ratio(ms['saturation']['images_per_s'], ref_tp)}"
        out += f", reference p50 / maskserve p50 {', '.join(p50)}, CPU per image {_ratio(cpu_ms, cpu_ref)}"
        out += f", peak RSS {_ratio(ms['peak_rss_mib'], ref['peak_rss_mib'])}\n"
    if ms and ms.get("stage_mean_ms"):
        stages = ", ".join(f"{k} {v:.1f}" for k, v in ms["stage_mean_ms"].items())
        out += f"\nmaskserve mean ms per stage (/metrics, whole run): {stages}\n"
    for kind, c in res.get("check", {}).items():
        out += (
            f"\noutput check, {kind} (maskserve vs reference): {c['identical']}/{c['images']} images identical, "
            f"{c['matched']}/{c['detections']} detections matched (same label, box IoU ≥ 0.99, mask IoU ≥ 0.97), "
            f"{c['confident_matched']}/{c['confident']} of those with score ≥ 0.5; "
            f"worst box IoU {c['min_box_iou']:.4f}, worst mask IoU {c['min_mask_iou']:.4f}\n"
        )
    return out
