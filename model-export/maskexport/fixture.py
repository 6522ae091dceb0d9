"""The bundled fixture (``models/shapes``) from nothing, in one command.

    python -m maskexport.fixture --work work/fixture --out ../models/shapes

Replays the recipe that made it, with the iteration counts the original runs reached in their
wall-clock budgets (README, "The fixture's figures"): two stages from scratch on the ``narrow``
shapes family at 256 x 400, then multi-scale fine-tuning on the ``wide`` family (short sides
224-320), then evaluation on the wide validation set at the test size (320 x 512) and the export
(graphs, model.json, reference outputs of the six samples). About 3.5 hours on 2 CPU cores;
thread scheduling may move the figures slightly.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from . import export, shapes
from .coco import CocoInstances
from .evaluate import coco_metrics, predict_coco
from .model import load_checkpoint
from .train import train


@dataclass(frozen=True)
class Stage:
    name: str
    family: str
    iterations: int
    lr: float
    warmup: int | None
    seed: int
    min_sizes: tuple[int, ...] | None = None
    max_size: int | None = None


STAGES = (
    Stage("stage1", "narrow", 1789, 0.02, None, 0, (256,), 400),
    Stage("stage2", "narrow", 1250, 0.01, 50, 1, (256,), 400),
    Stage("stage3", "wide", 2151, 0.01, 100, 3, (224, 256, 288, 320), 480),
)
TRAIN_IMAGES = {"narrow": 2000, "wide": 3000}
VAL_IMAGES = 200


def _data(work: Path, family: str) -> tuple[Path, Path]:
    train_dir, val_dir = work / f"{family}-train", work / f"{family}-val"
    if not (train_dir / "annotations.json").exists():
        shapes.write_dataset(train_dir, 1, TRAIN_IMAGES[family], family)
    if not (val_dir / "annotations.json").exists():
        shapes.write_dataset(val_dir, 2, VAL_IMAGES, family)
    return train_dir, val_dir


def build(work: Path, out: Path, threads: int) -> dict[str, float]:
    """Trains every stage not yet on disk, evaluates, exports; returns the wide val metrics."""
    previous: Path | None = None
    for stage in STAGES:
        train_dir, val_dir = _data(work, stage.family)
        ckpt = work / f"{stage.name}.pt"
        if not ckpt.exists():
            train(
                train_dir,
                ckpt,
                iterations=stage.iterations,
                lr=stage.lr,
                val_dir=val_dir,
                threads=threads,
                seed=stage.seed,
                init=previous,
                warmup=stage.warmup,
                min_sizes=stage.min_sizes,
                max_size=stage.max_size,
            )
        previous = ckpt
    assert previous is not None
    model, _, _ = load_checkpoint(str(previous))
    val = CocoInstances(work / "wide-val/images", work / "wide-val/annotations.json")
    metrics = coco_metrics(val, predict_coco(model, val))
    samples = work / "samples"
    if not samples.exists():
        shapes.write_dataset(samples, 7, 6, "narrow")
    export.main(
        [
            "--checkpoint",
            str(previous),
            "--name",
            "shapes-tiny",
            "--out",
            str(out),
            "--samples",
            *sorted(str(p) for p in (samples / "images").glob("*.png")),
        ]
    )
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("work/fixture"))
    p.add_argument("--out", type=Path, default=Path("../models/shapes"))
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    print(json.dumps(build(a.work, a.out, a.threads), indent=1))


if __name__ == "__main__":
    main()
