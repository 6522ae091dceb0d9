"""The GPU check (loadtests/gpu/run.sh) in its smoke mode, on this machine's CPU: every phase of
gpu.json holds its numbers or the reason it has none, and the phases that can run on a CPU ran."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from release_binary import REPO, binary

pytest.importorskip("torch", reason="the GPU check's PyTorch eager and training phases need torch")
pytest.importorskip("torchvision", reason="the GPU check's PyTorch eager and training phases need torchvision")

PHASES = ["export", "parity", "maskserve", "floor", "eager", "train_fp32", "train_amp"]
STATUSES = {"ok", "partial", "failed", "skipped", "unavailable"}


def test_smoke_mode_records_every_phase(tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "MASKSERVE_BIN": str(binary()), "GPU_WORK": str(tmp_path / "work")}
    env.pop("GPU_SMOKE", None)
    p = subprocess.run(
        [str(REPO / "loadtests" / "gpu" / "run.sh"), "--smoke", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads((out / "gpu.json").read_text())
    assert (out / "gpu.md").read_text().startswith("# GPU check (smoke")
    assert (out / "gpu.log").exists()
    assert result["profile"] == "smoke"
    phases = result["phases"]
    for name in PHASES:
        ph = phases[name]
        assert ph["status"] in STATUSES, (name, ph)
        if ph["status"] != "ok":
            assert ph.get("reason"), (name, ph)

    # On a CPU only AMP training and fp16 eager have nothing to measure, and they say why.
    log = (out / "gpu.log").read_text()[-3000:]
    for name in PHASES[:-1]:
        assert phases[name]["status"] == "ok", (name, phases[name], log)
    parity = phases["parity"]
    assert parity["pass"] is True
    assert set(parity["models"]) == {"fixture", "export"}
    assert parity["models"]["fixture"]["confident_reproduced"][1] > 0
    for batch in ("1", "4", "8"):
        row = phases["maskserve"]["fp32"][batch]
        assert row["images_per_s"] > 0 and row["errors"] == 0, row
        assert row["server_cpu_cores"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0, row
    assert phases["maskserve"]["fp16"] == {"status": "unavailable", "reason": "not available: no fp16 export"}
    assert phases["floor"]["images_per_s"] > 0 and "predict --bench" in phases["floor"]["method"]
    assert phases["eager"]["fp32"]["best"]["images_per_s"] > 0
    assert phases["eager"]["fp16"]["status"] == "unavailable" and phases["eager"]["fp16"]["reason"]
    assert phases["train_fp32"]["images_per_s"] > 0
    assert phases["train_amp"]["status"] == "unavailable" and "CUDA" in phases["train_amp"]["reason"]
    targets = result["targets"]
    assert set(targets) == {"e2e_images_per_s", "vs_eager_best", "vs_eager_fp32_best", "vs_floor"}
    assert all(isinstance(t["value"], float) for t in targets.values()), targets
