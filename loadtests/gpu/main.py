"""The run: export, then each phase in its own process under its own timeout, all within the
profile's budget; gpu.json and gpu.md rewritten after every phase, a failed, timed-out or skipped
phase recorded with its reason instead of ending the run.

    python -m loadtests.gpu.main --out RESULTS_DIR [--smoke] [--work DIR]   (loadtests/gpu/run.sh)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..bench import procs
from . import report
from .images import hd_jpegs
from .settings import DEVICE, FIXTURE, ROOT, SMOKE, Context, Profile

# Seconds kept back at the end of the budget for the report; a phase is not started with less
# than MIN_PHASE_S left.
RESERVE_S = 8.0
MIN_PHASE_S = 10.0
# (name, module, extra arguments); each after the export, in this order (the most wanted first).
PHASES: list[tuple[str, str, list[str]]] = [
    ("parity", "loadtests.gpu.parity", []),
    ("maskserve", "loadtests.gpu.serve", []),
    ("floor", "loadtests.gpu.stages", []),
    ("eager", "loadtests.gpu.eager", []),
    ("train_fp32", "loadtests.gpu.train_speed", []),
    ("train_amp", "loadtests.gpu.train_speed", ["--amp"]),
]
ALL_PHASES = ["export", *(p[0] for p in PHASES)]


def env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), str(ROOT / "model-export"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path.rstrip(os.pathsep), "PYTHONUNBUFFERED": "1"}


def output(cmd: list[str], timeout: float = 60) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env())
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable: {e}"
    return p.stdout.strip() if p.returncode == 0 else f"unavailable: {p.stderr.strip()[-300:]}"


def machine(bin_: Path) -> dict[str, Any]:
    gpu = output(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], 30)
    probe = "import torch, torchvision as v; print(torch.__version__, v.__version__, torch.version.cuda, "
    probe += "torch.cuda.is_available())"
    torch_info = output([sys.executable, "-c", probe])
    coco = output([sys.executable, "-c", "import pycocotools; print(pycocotools.__file__)"])
    return {
        "gpu": None if gpu.startswith("unavailable") else gpu,
        "nvidia_smi": gpu,
        "torch_torchvision_cuda_available": torch_info,
        "pycocotools": coco,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "ort_dylib_path": os.environ.get("ORT_DYLIB_PATH"),
        "maskserve": str(bin_),
        "maskserve_bytes": bin_.stat().st_size if bin_.exists() else None,
        "git_head": output(["git", "-C", str(ROOT), "rev-parse", "HEAD"], 10),
    }


class Run:
    def __init__(self, profile: Profile, out: Path, work: Path, bin_: Path, budget_s: float) -> None:
        self.p, self.out, self.work, self.bin = profile, out, work, bin_
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget_s
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.result: dict[str, Any] = {
            "profile": profile.name,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "budget_s": budget_s,
            "command": " ".join(sys.argv),
            "phases": {},
        }

    def left(self) -> float:
        return self.deadline - time.monotonic() - RESERVE_S

    def write(self) -> None:
        self.result["elapsed_s"] = time.monotonic() - self.t0
        self.result["targets"] = report.targets(self.result["phases"])
        for name, text in (("gpu.json", json.dumps(self.result, indent=2)), ("gpu.md", report.markdown(self.result))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.out / name)
        logs = sorted((self.work / "logs").glob("*.log"), key=lambda f: f.stat().st_mtime)
        with (self.out / "gpu.log").open("w") as f:
            for log in logs:
                lines = log.read_text(errors="replace").splitlines()
                f.write(f"===== {log.name} (last {min(len(lines), 150)} of {len(lines)} lines)\n")
                f.write("\n".join(lines[-150:]) + "\n")

    def timeout(self, name: str) -> float:
        return min(float(self.p.timeouts[name]), self.left())

    def execute(self, name: str, cmd: list[str], timeout: float, cwd: Path = ROOT) -> tuple[int | None, float]:
        """Runs `cmd` in its own process group; None as the exit status when it was stopped at `timeout`."""
        self.result["phases"][name] = {"status": "running", "timeout_s": timeout}
        self.write()
        t = time.monotonic()
        with (self.work / "logs" / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=cwd, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                rc: int | None = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                procs.stop_group(proc, 10)
                rc = None
        return rc, time.monotonic() - t

    def export(self) -> None:
        name, timeout = "export", self.timeout("export")
        model = Path(self.result["main_model"])
        if model.exists():
            shutil.rmtree(model)
        cmd = [sys.executable, "-m", "maskexport.export", "--random", self.p.export_arch]
        cmd += ["--num-classes", str(self.p.export_classes), "--out", str(model), "--write-checkpoint", "--no-single"]
        rc, took = self.execute(name, cmd, timeout, ROOT / "model-export")
        res: dict[str, Any] = {"command": " ".join(["python", *cmd[1:]]), "phase_s": took, "timeout_s": timeout}
        if rc == 0 and (model / "model.json").exists() and (model / "checkpoint.pt").exists():
            res["status"] = "ok"
            res["files"] = {f.name: f.stat().st_size for f in sorted(model.iterdir())}
        else:
            why = f"timed out after {timeout:.0f} s" if rc is None else f"exited with {rc}"
            res.update({"status": "failed", "reason": f"export {why} (log: gpu.log)"})
        self.result["phases"][name] = res
        self.write()

    def phase(self, name: str, module: str, extra: list[str], context: Path) -> None:
        timeout = self.timeout(name)
        if timeout < MIN_PHASE_S:
            left = max(0.0, self.left())
            self.result["phases"][name] = {"status": "skipped", "reason": f"{left:.0f} s of the budget left"}
            self.write()
            return
        if module.endswith("train_speed"):
            # Model build, data, the first step and the checkpoint save fit in the rest.
            extra = [*extra, "--budget-s", f"{max(5.0, timeout * 0.6):.0f}"]
        path = self.work / f"phase-{name}.json"
        path.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", module, "--context", str(context), "--out", str(path), *extra]
        rc, took = self.execute(name, cmd, timeout)
        try:
            res: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            res = {"status": "failed"}
        if rc is None:
            res.update(
                {"status": "failed", "reason": f"timed out after {timeout:.0f} s; what it measured before is kept"}
            )
        elif rc != 0 and "reason" not in res:
            res.update({"status": "failed", "reason": f"exited with {rc} (log: gpu.log)"})
        res.update({"phase_s": took, "timeout_s": timeout})
        self.result["phases"][name] = res
        self.write()


def finalize(out: Path, why: str) -> None:
    """After run.sh's overall timeout: the phase that was running is marked, the report rewritten."""
    path = out / "gpu.json"
    result: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"phases": {}}
    for name in ALL_PHASES:
        ph = result["phases"].setdefault(name, {"status": "skipped", "reason": why})
        if ph.get("status") == "running":
            ph.update({"status": "failed", "reason": why})
    result["targets"] = report.targets(result["phases"])
    path.write_text(json.dumps(result, indent=2))
    (out / "gpu.md").write_text(report.markdown(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="RESULTS_DIR: gpu.json, gpu.md, gpu.log")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model and settings (a couple of minutes)")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--maskserve-bin", type=Path, default=ROOT / "target" / "release" / "maskserve")
    ap.add_argument("--budget-s", type=float, help="override the profile's budget for the whole run")
    ap.add_argument("--finalize", metavar="WHY", help="only mark what was left running, with this reason")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.finalize:
        finalize(a.out, a.finalize)
        return
    profile = SMOKE if a.smoke else DEVICE
    work = (a.work or Path(tempfile.mkdtemp(prefix="maskserve-gpu-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run = Run(profile, a.out, work, a.maskserve_bin.resolve(), a.budget_s or profile.budget_s)
    run.result["machine"] = machine(run.bin)
    main_model = work / ("r50" if profile.export_arch == "resnet50-fpn" else profile.export_arch)
    width, height = profile.image_size
    hd = hd_jpegs(FIXTURE / "samples", work / "hd", profile.hd_images, (width, height))
    run.result.update(
        {
            "model": f"{profile.export_arch}, random weights, {profile.export_classes} classes (maskexport.export)",
            "main_model": str(main_model),
            "image_size": f"{width}x{height} JPEG (synthetic)",
            "work": str(work),
        }
    )
    ctx = Context(profile, work, run.bin, main_model, hd, sorted((FIXTURE / "samples").glob("*.png")))
    context = work / "context.json"
    ctx.save(context)
    run.export()
    for name, module, extra in PHASES:
        run.phase(name, module, extra, context)
    print(report.markdown(run.result), end="")


if __name__ == "__main__":
    main()
