"""gpu.json's numbers as gpu.md: one row per measurement, with maskserve's ratios to the baselines
measured in the same run, the issue's targets, and every phase's status or reason."""

from __future__ import annotations

from typing import Any

# The targets for R50-FPN at 800x1333, end to end.
TARGET_IMAGES_PER_S = 100.0
TARGET_VS_EAGER = 2.0
TARGET_VS_FLOOR = 0.9


def num(v: Any, digits: int = 1) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) else "–"


def ratio(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, int | float) and isinstance(b, int | float) and b > 0 else None


def why(d: dict[str, Any]) -> str:
    return f"{d.get('status', '?')}: {d.get('reason', 'no reason recorded')}".replace("\n", " ").replace("|", "/")


def baselines(phases: dict[str, Any]) -> dict[str, float | None]:
    eager = phases.get("eager", {})
    fp32 = eager.get("fp32", {}).get("best", {}).get("images_per_s")
    fp16 = eager.get("fp16", {}).get("best", {}).get("images_per_s")
    return {
        "eager_fp32": fp32,
        "eager_any": max((v for v in (fp32, fp16) if v), default=None),
        "floor": phases.get("floor", {}).get("images_per_s"),
    }


def targets(phases: dict[str, Any]) -> dict[str, Any]:
    """Each target with the best maskserve fp32 row's value and whether it is met (None: not measured)."""
    rows = phases.get("maskserve", {}).get("fp32", {}).values()
    best = max((r["images_per_s"] for r in rows if r.get("images_per_s")), default=None)
    b = baselines(phases)
    vs_eager = ratio(best, b["eager_any"])
    vs_floor = ratio(best, b["floor"])

    def met(v: float | None, t: float) -> bool | None:
        return None if v is None else v >= t

    return {
        "e2e_images_per_s": {"target": TARGET_IMAGES_PER_S, "value": best, "met": met(best, TARGET_IMAGES_PER_S)},
        "vs_eager_best": {"target": TARGET_VS_EAGER, "value": vs_eager, "met": met(vs_eager, TARGET_VS_EAGER)},
        "vs_eager_fp32_best": {
            "target": TARGET_VS_EAGER,
            "value": ratio(best, b["eager_fp32"]),
            "met": met(ratio(best, b["eager_fp32"]), TARGET_VS_EAGER),
        },
        "vs_floor": {"target": TARGET_VS_FLOOR, "value": vs_floor, "met": met(vs_floor, TARGET_VS_FLOOR)},
    }


def throughput_rows(phases: dict[str, Any]) -> list[str]:
    b = baselines(phases)
    rows = []
    ms = phases.get("maskserve", {})
    for batch, r in ms.get("fp32", {}).items():
        if not r.get("images_per_s"):
            rows.append(f"| maskserve e2e fp32, --max-batch-size {batch} | {why(r)} | | | | | |")
            continue
        ips = r["images_per_s"]
        rows.append(
            f"| maskserve e2e fp32, --max-batch-size {batch} (mean batch {num(r.get('mean_batch_size'), 2)}) "
            f"| {num(ips)} | {num(r.get('server_cpu_cores'), 2)} | {num(r.get('p50_ms'))} / {num(r.get('p99_ms'))} "
            f"| {num(ratio(ips, b['eager_fp32']), 2)} / {num(ratio(ips, b['eager_any']), 2)} "
            f"| {num(ratio(ips, b['floor']), 2)} | {r.get('provider', '?')}, {r.get('errors', 0)} errors |"
        )
    if not ms.get("fp32"):
        rows.append(f"| maskserve e2e fp32 | {why(ms)} | | | | | |")
    if "fp16" in ms:
        rows.append(f"| maskserve e2e fp16 | {ms['fp16'].get('reason')} | | | | | |")
    fl = phases.get("floor", {})
    if fl.get("images_per_s"):
        rows.append(
            f"| floor: graphs alone, batch 1 (`predict --bench`) | {num(fl['images_per_s'])} | | "
            f"{num(fl.get('graph_ms'))} ms graphs | | | {fl.get('provider')}; one image at a time end to end: "
            f"{num(fl.get('one_at_a_time_images_per_s'))} images/s |"
        )
    else:
        rows.append(f"| floor | {why(fl)} | | | | | |")
    eager = phases.get("eager", {})
    for dtype in ("fp32", "fp16"):
        e = eager.get(dtype, {})
        label = "fp32" if dtype == "fp32" else "fp16 (torch.autocast)"
        if not e.get("best"):
            rows.append(f"| PyTorch eager {label} | {why(e if e.get('status') else eager)} | | | | | |")
            continue
        rows.append(f"| PyTorch eager {label}, batch 1 | {num(e.get('batch1'))} | | | | | |")
        best = e["best"]
        rows.append(f"| PyTorch eager {label}, best (batch {best['batch']}) | {num(best['images_per_s'])} | | | | | |")
    for key, label in (("train_fp32", "training fp32"), ("train_amp", "training AMP")):
        t = phases.get(key, {})
        if t.get("images_per_s"):
            size = f"batch {t.get('batch_size')}, {t.get('min_size')}x{t.get('max_size')}, {t.get('timed_steps')} steps"
            rows.append(f"| {label} ({t.get('arch')}, {size}) | {num(t['images_per_s'])} | | | | | {t.get('device')} |")
        else:
            rows.append(f"| {label} | {why(t)} | | | | | |")
    return rows


def parity_rows(phases: dict[str, Any]) -> list[str]:
    p = phases.get("parity", {})
    rows = []
    for name, m in p.get("models", {}).items():
        if "pass" not in m:
            rows.append(f"| {name} | {why(m)} | | | |")
            continue
        c, cb = m["confident_reproduced"], m["confident_reproduced_back"]
        rows.append(
            f"| {name} ({m['images']} images; {m['device']['provider']} vs {m['reference']['provider']}) "
            f"| {'pass' if m['pass'] else 'FAIL'} | {c[0]}/{c[1]}, {cb[0]}/{cb[1]} "
            f"| {m['matched']}/{m['detections'][0]} (device {m['detections'][1]}) "
            f"| {num(m['min_box_iou'], 4)} / {num(m['min_mask_iou'], 4)} |"
        )
    if not rows:
        rows.append(f"| – | {why(p)} | | | |")
    return rows


def markdown(result: dict[str, Any]) -> str:
    phases = result.get("phases", {})
    lines = [
        f"# GPU check ({result.get('profile')}, {result.get('machine', {}).get('gpu') or 'no GPU'})",
        "",
        f"{result.get('started')}; {num(result.get('elapsed_s'))} s; model: {result.get('model')}; "
        f"images: {result.get('image_size')}.",
        "",
        "| measurement | images/s | server CPU cores | p50 / p99 ms | × eager best (fp32 / any) | × floor | note |",
        "|---|---|---|---|---|---|---|",
        *throughput_rows(phases),
        "",
        "CUDA against CPU (every detection of score ≥ 0.5 reproduced both ways: box IoU ≥ 0.99, mask IoU ≥ 0.97):",
        "",
        "| model | result | score ≥ 0.5 reproduced (CPU in CUDA, CUDA in CPU) | all matched | min box / mask IoU |",
        "|---|---|---|---|---|",
        *parity_rows(phases),
        "",
        "Targets (issue 11; R50-FPN 800x1333 end to end, maskserve's best fp32 row):",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    labels = {
        "e2e_images_per_s": "≥ 100 images/s",
        "vs_eager_best": "≥ 2× PyTorch eager's best (any precision)",
        "vs_eager_fp32_best": "≥ 2× PyTorch eager's best fp32",
        "vs_floor": "≥ 0.9× the floor (here: graphs alone at batch 1)",
    }
    for key, t in result.get("targets", {}).items():
        met = {True: "yes", False: "no", None: "not measured"}[t["met"]]
        lines.append(f"| {labels.get(key, key)} | {num(t['value'], 2)} | {met} |")
    lines += ["", "Phases:", ""]
    for name, ph in phases.items():
        extra = f": {ph['reason']}" if ph.get("reason") else ""
        lines.append(f"- {name}: {ph.get('status')} ({num(ph.get('phase_s'))} s){extra}")
    if result.get("profile") == "smoke":
        lines += ["", "Smoke profile: CPU only, tiny model and settings; the numbers test the script, not maskserve."]
    return "\n".join(lines) + "\n"
