"""SageMaker training container entry point: train, then write a servable model directory.

Follows the SageMaker training contract: hyperparameters and the host layout from
``<root>/input/config``, COCO-format channels under ``<root>/input/data/<channel>``, checkpoints
to ``<root>/checkpoints``, the model directory (which SageMaker packs as model.tar.gz) to
``<root>/model``, and on failure the reason in ``<root>/output/failure`` with a non-zero exit.
``<root>`` is /opt/ml unless ``MASKSERVE_OPT_ML`` relocates it (tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

ROOT_ENV = "MASKSERVE_OPT_ML"
HYPERPARAMETERS = {
    "arch": str,
    "iterations": int,
    "batch_size": int,
    "lr": float,
    "seed": int,
    "threads": int,
    "name": str,
    "samples": int,
}
DEFAULTS = {"arch": "tiny-fpn", "iterations": 3000, "batch_size": 4, "lr": 0.02, "seed": 0, "samples": 4}


def opt_ml() -> Path:
    return Path(os.environ.get(ROOT_ENV, "/opt/ml"))


def read_hyperparameters(root: Path) -> dict:
    """SageMaker passes every hyperparameter as a string; unknown keys are an error, not ignored."""
    path = root / "input/config/hyperparameters.json"
    raw = json.loads(path.read_text()) if path.exists() else {}
    params = dict(DEFAULTS)
    for key, value in raw.items():
        k = key.replace("-", "_")
        if k not in HYPERPARAMETERS:
            raise ValueError(f"unknown hyperparameter {key!r}; known: {sorted(HYPERPARAMETERS)}")
        params[k] = HYPERPARAMETERS[k](value)
    return params


def find_coco(channel: Path) -> tuple[Path, Path]:
    """(images dir, annotations json) of a channel: shapes layout or COCO 2017 layout."""
    if (channel / "annotations.json").exists():
        return channel / "images", channel / "annotations.json"
    jsons = sorted((channel / "annotations").glob("instances_*.json"))
    if not jsons:
        raise FileNotFoundError(f"no annotations.json or annotations/instances_*.json in {channel}")
    split = jsons[0].stem.removeprefix("instances_")
    for cand in (channel / split, channel / "images", channel):
        if cand.is_dir() and (any(cand.glob("*.jpg")) or any(cand.glob("*.png"))):
            return cand, jsons[0]
    raise FileNotFoundError(f"no image directory for {jsons[0].name} in {channel}")


def _link_layout(images: Path, ann: Path, dst: Path) -> Path:
    """The trainer reads <dir>/images + <dir>/annotations.json; link the channel into that shape."""
    dst.mkdir(parents=True, exist_ok=True)
    for name, target in (("images", images), ("annotations.json", ann)):
        link = dst / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.resolve())
    return dst


def _world(root: Path) -> tuple[list[str], str, int]:
    path = root / "input/config/resourceconfig.json"
    cfg = json.loads(path.read_text()) if path.exists() else {}
    hosts = cfg.get("hosts", ["algo-1"])
    current = cfg.get("current_host", hosts[0])
    import torch

    return hosts, current, max(1, torch.cuda.device_count())


def run(root: Path) -> None:
    from .export import export_model_dir
    from .model import load_checkpoint
    from .train import train

    params = read_hyperparameters(root)
    scratch = root / "output/data/layout"
    train_dir = _link_layout(*find_coco(root / "input/data/train"), scratch / "train")
    val_dir = None
    if (root / "input/data/val").exists():
        val_dir = _link_layout(*find_coco(root / "input/data/val"), scratch / "val")
    hosts, current, gpus = _world(root)
    ckpt = root / "output/data/checkpoint.pt"
    if len(hosts) * gpus > 1 and "WORLD_SIZE" not in os.environ:
        # One process per GPU on each host; torchrun gives every rank its environment.
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={len(hosts)}",
            f"--node_rank={hosts.index(current)}",
            f"--nproc_per_node={gpus}",
            f"--master_addr={hosts[0]}",
            "--master_port=29500",
            "-m",
            "maskexport.train",
            "--train",
            str(train_dir),
            "--out",
            str(ckpt),
            "--arch",
            params["arch"],
            "--iterations",
            str(params["iterations"]),
            "--batch-size",
            str(params["batch_size"]),
            "--lr",
            str(params["lr"]),
            "--seed",
            str(params["seed"]),
        ]
        subprocess.run(cmd, check=True)
        if current != hosts[0]:
            return
        metrics = {}
    else:
        metrics = train(
            train_dir,
            ckpt,
            params["arch"],
            params["iterations"],
            params["batch_size"],
            params["lr"],
            val_dir,
            root / "checkpoints",
            params.get("threads"),
            params["seed"],
        )
    model, arch, classes = load_checkpoint(str(ckpt))
    sample_src = val_dir or train_dir
    samples = sorted((sample_src / "images").glob("*"))[: params["samples"]]
    out = root / "model"
    export_model_dir(
        model,
        out,
        arch,
        classes,
        params.get("name", "maskrcnn"),
        samples,
        single=True,
        checkpoint=out / "checkpoint.pt",
    )
    if metrics:
        (root / "output/data").mkdir(parents=True, exist_ok=True)
        (root / "output/data/metrics.json").write_text(json.dumps(metrics))
    print(f"model directory written to {out}", flush=True)


def main() -> None:
    root = opt_ml()
    try:
        run(root)
    except Exception as e:  # noqa: BLE001 - the contract wants every failure reported
        (root / "output").mkdir(parents=True, exist_ok=True)
        (root / "output/failure").write_text(f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}")
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
