"""TorchServe for a model directory: the .mar (torch-model-archiver), config.properties and the
command line, all in a work folder (default loadtests/results/torchserve, not committed).

    python -m loadtests.torchserve.archive --model models/shapes --workers 1 --threads 2 --port 8085

prints the command that starts TorchServe in the foreground (logs in <work>/logs); then
`curl --data-binary @img.png -H 'Content-Type: image/png' http://127.0.0.1:8085/predictions/maskrcnn`.
The bench (`python -m loadtests.bench.run --torchserve`) does the same with free ports.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HANDLER = Path(__file__).resolve().parent / "handler.py"
PACKAGE = ROOT / "model-export" / "maskexport"
MODEL_NAME = "maskrcnn"


@dataclass
class Setup:
    """What starting TorchServe needs: its command, environment and working folder."""

    work: Path
    port: int
    management_port: int
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def invoke_path(self) -> str:
        return f"/predictions/{MODEL_NAME}"


def stage_package(work: Path) -> Path:
    """A folder holding only `maskexport/` (the export's package), for --extra-files: the
    archiver copies a folder's contents into the .mar's root, which is on the workers' path."""
    stage = work / "extra"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(PACKAGE, stage / "maskexport", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return stage


def model_config(work: Path, threads: int, workers: int, timeout_s: int) -> Path:
    """The model's YAML config: workers, response timeout, the handler's torch threads."""
    path = work / "model-config.yaml"
    text = f"minWorkers: {workers}\nmaxWorkers: {workers}\nresponseTimeout: {timeout_s}\n"
    path.write_text(text + f"handler:\n  threads: {threads}\n")
    return path


def build_mar(model_dir: Path, work: Path, threads: int, workers: int, timeout_s: int = 600) -> Path:
    """<work>/model-store/maskrcnn.mar: the checkpoint, model.json, the handler and maskexport."""
    ckpt = model_dir / "checkpoint.pt"
    if not ckpt.is_file():
        raise SystemExit(f"{model_dir} has no checkpoint.pt: TorchServe serves the PyTorch checkpoint")
    store = work / "model-store"
    store.mkdir(parents=True, exist_ok=True)
    extra = [str((model_dir / "model.json").resolve()), str(stage_package(work))]
    cmd = [shutil.which("torch-model-archiver") or "torch-model-archiver", "--model-name", MODEL_NAME]
    cmd += ["--version", "1.0", "--serialized-file", str(ckpt.resolve()), "--handler", str(HANDLER)]
    cmd += ["--extra-files", ",".join(extra), "--config-file", str(model_config(work, threads, workers, timeout_s))]
    cmd += ["--export-path", str(store), "--force"]
    subprocess.run(cmd, check=True)
    return store / f"{MODEL_NAME}.mar"


def properties(work: Path, ports: tuple[int, int, int], workers: int, queue: int) -> Path:
    """config.properties: every address on 127.0.0.1, no token auth, no model API, the .mar
    loaded at start with `workers` workers; logging asynchronous as in TorchServe's SageMaker config."""
    inference, management, metrics = ports
    lines = [
        f"inference_address=http://127.0.0.1:{inference}",
        f"management_address=http://127.0.0.1:{management}",
        f"metrics_address=http://127.0.0.1:{metrics}",
        f"model_store={work / 'model-store'}",
        f"load_models={MODEL_NAME}={MODEL_NAME}.mar",
        f"default_workers_per_model={workers}",
        f"job_queue_size={queue}",
        "disable_token_authorization=true",
        "enable_model_api=false",
        "install_py_dep_per_model=false",
        "decode_input_request=false",
        "async_logging=true",
        "max_request_size=104857600",
        "max_response_size=104857600",
    ]
    path = work / "config.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


def environment(work: Path) -> dict[str, str]:
    """Logs, metrics and temporary files (the .mar's extraction, the launcher's pid file) inside
    `work`, so runs do not write into the cwd or see each other."""
    tmp = work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    logs = str(work / "logs")
    return {"LOG_LOCATION": logs, "METRICS_LOCATION": logs, "TEMP": str(tmp), "TMPDIR": str(tmp)}


def command(config: Path, store: Path) -> list[str]:
    ts = shutil.which("torchserve") or "torchserve"
    return [ts, "--start", "--foreground", "--ncs", "--ts-config", str(config), "--model-store", str(store)]


def clean(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)


def setup(work: Path, ports: tuple[int, int, int], workers: int, queue: int = 100) -> Setup:
    """config.properties for the .mar in `work` (build_mar) on these ports; the launcher's stale
    pid file removed (it refuses to start while the pid it names looks alive)."""
    config = properties(work, ports, workers, queue)
    env = environment(work)
    (Path(env["TMPDIR"]) / ".model_server.pid").unlink(missing_ok=True)
    return Setup(work, ports[0], ports[1], command(config, work / "model-store"), env)


def workers_ready(management_url: str, n: int) -> bool:
    """All `n` workers of the model READY (TorchServe's /ping is 200 while they still load)."""
    try:
        with urllib.request.urlopen(f"{management_url}/models/{MODEL_NAME}", timeout=10) as r:
            desc = json.loads(r.read())
    except (OSError, ValueError):
        return False
    workers = desc[0].get("workers", []) if desc else []
    return sum(w.get("status") == "READY" for w in workers) >= n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "shapes")
    ap.add_argument("--work", type=Path, default=ROOT / "loadtests" / "results" / "torchserve")
    ap.add_argument("--port", type=int, default=8085, help="inference port (management +1, metrics +2)")
    ap.add_argument("--workers", type=int, default=1, help="default_workers_per_model")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: PyTorch's default)")
    ap.add_argument("--queue", type=int, default=100, help="job_queue_size")
    a = ap.parse_args()
    work = a.work.resolve()
    clean(work)
    build_mar(a.model, work, a.threads, a.workers)
    s = setup(work, (a.port, a.port + 1, a.port + 2), a.workers, a.queue)
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in s.env.items())
    print(f"cd {shlex.quote(str(s.work))} && {env} {shlex.join(s.cmd)}")
    print(f"# then POST images to {s.url}{s.invoke_path}")


if __name__ == "__main__":
    main()
