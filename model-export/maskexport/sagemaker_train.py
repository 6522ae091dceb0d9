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
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

ROOT_ENV = "MASKSERVE_OPT_ML"


def opt_ml() -> Path:
    return Path(os.environ.get(ROOT_ENV, "/opt/ml"))


def read_hyperparameters(root: Path) -> dict[str, Any]:
    """SageMaker passes every hyperparameter as a string; unknown keys and bad values are errors.

    (Imported here, not at the top, so that this file also loads on its own, outside the package.)
    """
    from .hyperparameters import read_hyperparameters as read

    return read(root)


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


def _cluster(root: Path) -> Any:
    """This host's Cluster (maskexport.torchrun_launch) from resourceconfig.json."""
    import torch

    from .torchrun_launch import Cluster

    path = root / "input/config/resourceconfig.json"
    cfg = json.loads(path.read_text()) if path.exists() else {}
    hosts = tuple(cfg.get("hosts", ["algo-1"]))
    current = cfg.get("current_host", hosts[0])
    if current not in hosts:
        raise ValueError(f"{path}: current_host {current!r} is not one of hosts {list(hosts)}")
    gpus = max(1, torch.cuda.device_count())
    return Cluster(hosts, current, gpus, cfg.get("network_interface_name"))


def _train_distributed(
    root: Path, params: dict[str, Any], cluster: Any, train_dir: Path, val_dir: Path | None, ckpt: Path
) -> None:
    """One torchrun per host; rank 0 (on hosts[0]) writes the checkpoint and the val metrics."""
    from .torchrun_launch import run_torchrun, torchrun_command, torchrun_env

    args = [
        f"--train={train_dir}",
        f"--out={ckpt}",
        f"--arch={params['arch']}",
        f"--iterations={params['iterations']}",
        f"--batch-size={params['batch_size']}",
        f"--lr={params['lr']}",
        f"--seed={params['seed']}",
        f"--log-every={params['log_every']}",
        f"--checkpoint-dir={root / 'checkpoints'}",
        f"--failure-dir={root / 'output/data/rank-failures'}",
    ]
    if params.get("threads"):
        args.append(f"--threads={params['threads']}")
    if val_dir is not None:
        args += [f"--val={val_dir}", f"--metrics-out={root / 'output/data/metrics.json'}"]
    cmd = torchrun_command(cluster, params["collective_timeout_s"], args)
    print(f"{cluster.describe()}: {' '.join(cmd)}", flush=True)
    run_torchrun(cmd, torchrun_env(cluster), cluster, root / "output/data/rank-failures")


def run(root: Path) -> None:
    params = read_hyperparameters(root)  # first: a bad value fails before anything else happens

    from .export import export_model_dir
    from .model import load_checkpoint
    from .torchrun_launch import ModelWritten
    from .train import train

    # Outside /opt/ml/output: SageMaker (and its local mode) uploads that folder, and these are
    # symlinks into /opt/ml/input that resolve only inside the container.
    scratch = Path(tempfile.mkdtemp(prefix="maskserve-layout-"))
    train_dir = _link_layout(*find_coco(root / "input/data/train"), scratch / "train")
    val_dir = None
    if (root / "input/data/val").exists():
        val_dir = _link_layout(*find_coco(root / "input/data/val"), scratch / "val")
    cluster = _cluster(root)
    ckpt = root / "output/data/checkpoint.pt"
    written = None
    if cluster.world_size > 1 and "WORLD_SIZE" not in os.environ:
        _train_distributed(root, params, cluster, train_dir, val_dir, ckpt)
        written = ModelWritten(cluster, 3 * params["collective_timeout_s"])
        if cluster.node_rank != 0:
            # Rank 0 lives on hosts[0]; that host alone writes the model directory.
            print(f"{cluster.describe()}: training done; waiting for hosts[0] to write the model", flush=True)
            written.wait()
            _finished()
            print(f"{cluster.describe()}: hosts[0] wrote the model", flush=True)
            return
    else:
        train(
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
            log_every=params["log_every"],
            collective_timeout_s=params["collective_timeout_s"],
            metrics_out=root / "output/data/metrics.json" if val_dir is not None else None,
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
        params["name"],
        samples,
        single=True,
        checkpoint=out / "checkpoint.pt",
    )
    _finished()
    print(f"model directory written to {out}", flush=True)
    if written is not None:
        written.announce()


def _finished() -> None:
    global _FINISHED  # noqa: PLW0603 - read by the signal handler
    _FINISHED = True


class Stopped(Exception):  # noqa: N818 - a stop, not an error
    """SIGTERM: SageMaker's StopTrainingJob (or `docker stop`), SIGKILL follows after a grace period."""


# Set once this host's part of the job is over: a SIGTERM then (SageMaker local mode stops every
# container when the first one exits) is a clean exit, not a stop.
_FINISHED = False


def _stop(signum: int, _frame: object) -> None:
    if _FINISHED:
        sys.exit(0)
    raise Stopped(signal.Signals(signum).name)


def main() -> None:
    root = opt_ml()
    # As PID 1 of the container, Python would ignore SIGTERM and wait for SIGKILL: stop at once.
    signal.signal(signal.SIGTERM, _stop)
    try:
        run(root)
    except Stopped as e:
        print(f"training stopped by {e}; no model written", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGTERM)
    except Exception as e:  # noqa: BLE001 - the contract wants every failure reported
        (root / "output").mkdir(parents=True, exist_ok=True)
        # SageMaker shows the start of this file as the job's FailureReason: the cause comes first.
        where = "".join(traceback.format_tb(e.__traceback__))
        (root / "output/failure").write_text(f"{type(e).__name__}: {e}\n\nTraceback:\n{where}")
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
